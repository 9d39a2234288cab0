"""Metroculus's own metrics, exported by Ray's metrics agent (prefix ``ray_``)."""

from __future__ import annotations

from ray.util import metrics

REQUESTS = metrics.Counter(
    "cloudtuner_metroculus_requests",
    description="Requests answered, by endpoint and HTTP status.",
    tag_keys=("endpoint", "code"),
)
TSDB_SECONDS = metrics.Histogram(
    "cloudtuner_metroculus_tsdb_query_seconds",
    description="Time one TSDB query took, by kind (instant, range) and outcome.",
    boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    tag_keys=("kind", "outcome"),
)
TSDB_ERRORS = metrics.Counter(
    "cloudtuner_metroculus_tsdb_errors",
    description="TSDB queries that failed, by kind and reason (unavailable, refused).",
    tag_keys=("kind", "reason"),
)
