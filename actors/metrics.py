"""Per-tenant ledger metrics, exported through Ray's metrics agent (prefix ``ray_``): the supervisor's
view of each tenant, and the failed cycles each tenant counts itself."""

from __future__ import annotations

from ray.util import metrics

TENANTS = metrics.Gauge("cloudtuner_ledger_tenants", description="Tenants whose ledgers the supervisor runs.")
HOSTS = metrics.Gauge("cloudtuner_ledger_tenant_hosts", description="Tenant hosts (Ray actor processes) the supervisor runs.")
LAST_SUCCESS = metrics.Gauge(
    "cloudtuner_ledger_last_success_timestamp_seconds",
    description="When the tenant's last good ledger cycle ended.",
    tag_keys=("tenant",),
)
LAG = metrics.Gauge(
    "cloudtuner_ledger_lag_seconds", description="Seconds since the tenant's last good ledger cycle.", tag_keys=("tenant",)
)
ROWS_WRITTEN = metrics.Gauge(
    "cloudtuner_ledger_rows_written", description="Expense rows the tenant wrote since its host started.", tag_keys=("tenant",)
)
FAILING = metrics.Gauge(
    "cloudtuner_ledger_failing", description="1 while the tenant's last cycle failed.", tag_keys=("tenant",)
)
RESTARTS = metrics.Counter(
    "cloudtuner_ledger_actor_restarts",
    description="Restarts of the tenant's host by the supervisor: the host did not answer, or one of its tenants stalled.",
    tag_keys=("tenant",),
)
# Counted by the tenant itself: the supervisor samples FAILING once a reconciliation and
# misses a failure the next cycle repaired; a counter shows every one, e.g. a store outage.
CYCLE_FAILURES = metrics.Counter(
    "cloudtuner_ledger_cycle_failures",
    description="Failed ledger cycles of the tenant, by error type (a store down: StoreUnavailable).",
    tag_keys=("tenant", "error"),
)
