"""The dashboard's own metrics, exported by Ray's metrics agent (prefix ``ray_``)."""

from __future__ import annotations

from ray.util import metrics

REQUESTS = metrics.Counter(
    "cloudtuner_dashboard_requests",
    description="Dashboard files served, by file (or 'unknown') and HTTP status.",
    tag_keys=("file", "code"),
)
