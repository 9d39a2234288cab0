"""Per-tenant ledger metrics, exported through Ray's metrics agent (prefix ``ray_``): the supervisor's
view of each tenant, and the failed cycles each tenant actor counts itself."""

from __future__ import annotations

from ray.util import metrics

TENANTS = metrics.Gauge("cloudtuner_ledger_tenants", description="Tenant actors the supervisor runs.")
LAST_SUCCESS = metrics.Gauge(
    "cloudtuner_ledger_last_success_timestamp_seconds",
    description="When the tenant's last good ledger cycle ended.",
    tag_keys=("tenant",),
)
LAG = metrics.Gauge(
    "cloudtuner_ledger_lag_seconds", description="Seconds since the tenant's last good ledger cycle.", tag_keys=("tenant",)
)
ROWS_WRITTEN = metrics.Gauge(
    "cloudtuner_ledger_rows_written", description="Expense rows the tenant actor wrote since it started.", tag_keys=("tenant",)
)
FAILING = metrics.Gauge(
    "cloudtuner_ledger_failing", description="1 while the tenant's last cycle failed.", tag_keys=("tenant",)
)
RESTARTS = metrics.Counter(
    "cloudtuner_ledger_actor_restarts",
    description="Tenant actors the supervisor restarted for not answering or stalling.",
    tag_keys=("tenant",),
)
# Counted by the actor itself: the supervisor samples FAILING once a reconciliation and
# misses a failure the next cycle repaired; a counter shows every one, e.g. a store outage.
CYCLE_FAILURES = metrics.Counter(
    "cloudtuner_ledger_cycle_failures",
    description="Failed ledger cycles of the tenant actor, by error type (a store down: StoreUnavailable).",
    tag_keys=("tenant", "error"),
)
