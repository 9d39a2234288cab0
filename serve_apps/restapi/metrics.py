"""The REST API's own metrics, exported by Ray's metrics agent (prefix ``ray_``).

Outside a Ray worker (tests, the benchmark's uvicorn) ray.util.metrics records nothing
and raises nothing, so the app runs the same everywhere.
"""

from __future__ import annotations

from ray.util import metrics

REQUESTS = metrics.Counter(
    "cloudtuner_restapi_requests",
    description="Requests answered, by route template, method and HTTP status.",
    tag_keys=("route", "method", "code"),
)
REQUEST_SECONDS = metrics.Histogram(
    "cloudtuner_restapi_request_seconds",
    description="Time to answer one request, by route template.",
    boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30],
    tag_keys=("route",),
)
STORE_ERRORS = metrics.Counter(
    "cloudtuner_restapi_store_errors",
    description="Requests answered 503 because a store was unreachable.",
    tag_keys=("route",),
)
METROCULUS_FAILURES = metrics.Counter(
    "cloudtuner_restapi_metroculus_failures",
    description="Cost breakdowns left null because Metroculus failed or was slow.",
)
SIGNIN_FAILURES = metrics.Counter(
    "cloudtuner_restapi_signin_failures",
    description="Wrong email or password at sign-in, or wrong current password at a password change.",
)
SIGNIN_THROTTLED = metrics.Counter(
    "cloudtuner_restapi_signin_throttled",
    description="Sign-ins and password changes answered 429, by the count at its limit: email or address.",
    tag_keys=("by",),
)
