"""The ingress's own metrics, exported by Ray's metrics agent (prefix ``ray_``)."""

from __future__ import annotations

from ray.util import metrics

REQUESTS = metrics.Counter(
    "cloudtuner_ingress_requests",
    description="Remote-write requests answered, by tenant and HTTP status.",
    tag_keys=("tenant", "code"),
)
SAMPLES = metrics.Counter(
    "cloudtuner_ingress_samples",
    description="Samples received, by tenant, outcome (accepted, rejected, dropped) and reason.",
    tag_keys=("tenant", "outcome", "reason"),
)
ACTIVE_SERIES = metrics.Gauge(
    "cloudtuner_ingress_active_series",
    description="Series of a tenant with a sample in the last INGRESS_ACTIVE_SERIES_SECONDS, as one replica counts them.",
    tag_keys=("tenant",),
)
FORWARD_SECONDS = metrics.Histogram(
    "cloudtuner_ingress_forward_seconds",
    description="Time the TSDB took to take a forwarded write.",
    boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    tag_keys=("outcome",),
)
BODIES = metrics.Counter(
    "cloudtuner_ingress_bodies",
    description="Bodies policed, by path: fast (every series known, one sample each) or full. "
    "A falling fast share costs the ingress CPU.",
    tag_keys=("path",),
)
LATE_WRITES = metrics.Counter(
    "cloudtuner_ingress_late_writes",
    description="Writes with a sample older than LEDGER_CLOSE_DELAY_SECONDS on arrival, put on record for the "
    "tenant's ledger to settle on. A steady rate is a sender running behind.",
    tag_keys=("tenant",),
)
