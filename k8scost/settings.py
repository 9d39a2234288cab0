"""Every setting of every component, read from environment variables.

Each component has one frozen dataclass; each field names its environment variable,
its default and what it means. ``python -m k8scost.settings`` prints them all as the
Markdown table that the README carries, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# Seconds in a day: the unit of the settings counted in days and of the ledger's UTC days.
DAY = 86_400
# How a ledger cycle reads the TSDB (LedgerSettings.mode).
LEDGER_MODES = ("incremental", "full")


def setting(env: str, default: Any, doc: str) -> Any:
    """A dataclass field read from the environment variable ``env``."""
    return dataclasses.field(default=default, metadata={"env": env, "doc": doc})


class SettingsError(ValueError):
    """An environment variable holds a value of the wrong type."""


def _cast(raw: str, kind: type, env: str) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{env}={raw!r} is not a valid {kind.__name__}") from None


def from_env(cls: type[T], environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build ``cls`` from ``environ`` (default: the process environment); ``overrides`` win."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif f.metadata["env"] in environ:
            values[f.name] = _cast(environ[f.metadata["env"]], type(f.default), f.metadata["env"])
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class ExporterSettings:
    """The allocation-exporter, running in the customer's cluster."""

    kubecost_url: str = setting(
        "KUBECOST_URL", "http://127.0.0.1:9003", "Base URL of Kubecost/OpenCost's cost-model API."
    )
    allocation_path: str = setting(
        "KUBECOST_ALLOCATION_PATH", "/model/allocation", "Path of the allocation API, appended to `KUBECOST_URL`."
    )
    assets_path: str = setting(
        "KUBECOST_ASSETS_PATH",
        "/model/assets",
        "Path of the assets API (cluster management cost), appended to `KUBECOST_URL`.",
    )
    tenant_id: str = setting(
        "TENANT_ID", "", "Cloud account id of this cluster (label `tenant_id`; the ingress overwrites it anyway)."
    )
    cluster_name: str = setting("CLUSTER_NAME", "default-cluster", "Label `cluster` on every series.")
    scrape_interval: float = setting(
        "SCRAPE_INTERVAL", 60.0, "Seconds between two polls of the allocation API."
    )
    allocation_window: str = setting(
        "ALLOCATION_WINDOW", "1h", "Allocation window asked of Kubecost; rates are cost ÷ the minutes it answers."
    )
    stale_after_failures: int = setting(
        "EXPORTER_STALE_AFTER_FAILURES",
        2,
        "Failed polls in a row after which cost series are withdrawn, so no stale rate is billed.",
    )
    request_timeout: float = setting("KUBECOST_TIMEOUT", 20.0, "Seconds to wait for one Kubecost answer.")
    listen_host: str = setting("EXPORTER_HOST", "0.0.0.0", "Address the /metrics endpoint binds to.")
    listen_port: int = setting("EXPORTER_PORT", 19090, "Port of the /metrics endpoint.")


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    """Where the SaaS side keeps its state."""

    mongodb_url: str = setting(
        "MONGODB_URL", "mongodb://127.0.0.1:27017", "MongoDB (or FerretDB) holding accounts and resources."
    )
    mongodb_database: str = setting("MONGODB_DATABASE", "cloudtuner", "Database name in MongoDB.")
    clickhouse_url: str = setting(
        "CLICKHOUSE_URL", "clickhouse://default:@127.0.0.1:9000/default", "ClickHouse native-protocol DSN (expenses)."
    )
    tsdb_url: str = setting(
        "TSDB_URL", "http://127.0.0.1:9090", "PromQL API of the TSDB (Thanos Query in production)."
    )
    expenses_retention_years: int = setting(
        "EXPENSES_RETENTION_YEARS",
        2,
        "Years the ClickHouse ledger keeps a day's expenses (at least 1); a month goes whole once all of it is older.",
    )
    tsdb_raw_retention_days: int = setting(
        "TSDB_RAW_RETENTION_DAYS",
        100,
        "Days the TSDB keeps raw samples (the Thanos Compactor's `--retention.resolution-raw`, "
        "cluster_config/thanos/compact.yaml); the backfill refuses older days, which would read as no cost.",
    )


@dataclasses.dataclass(frozen=True)
class IngressSettings:
    """The remote_write ingress (Ray Serve)."""

    tsdb_remote_write_url: str = setting(
        "TSDB_REMOTE_WRITE_URL",
        "http://127.0.0.1:10908/api/v1/receive",
        "Where accepted writes go: Thanos Receive's /api/v1/receive.",
    )
    tenant_header: str = setting(
        "TSDB_TENANT_HEADER", "THANOS-TENANT", "Header naming the tenant on forwarded writes."
    )
    allowed_metrics: str = setting(
        "INGRESS_ALLOWED_METRICS",
        "cloudtuner_.+|kubecost_.+",
        "Regex (full match) of CloudTuner's own metric names kept; the usage families of "
        "k8scost/usage_series.py are kept too, with their label allow-lists; other series are dropped and counted.",
    )
    max_body_bytes: int = setting("INGRESS_MAX_BODY_BYTES", 10 << 20, "Largest compressed body; above it 413.")
    max_decoded_bytes: int = setting(
        "INGRESS_MAX_DECODED_BYTES", 64 << 20, "Largest decompressed body (zip-bomb guard); above it 413."
    )
    max_labels_per_series: int = setting("INGRESS_MAX_LABELS", 40, "Most labels one series may carry.")
    max_label_name_length: int = setting("INGRESS_MAX_LABEL_NAME_LENGTH", 1024, "Longest label name.")
    max_label_value_length: int = setting("INGRESS_MAX_LABEL_VALUE_LENGTH", 2048, "Longest label value.")
    max_future_seconds: float = setting(
        "INGRESS_MAX_FUTURE_SECONDS",
        600.0,
        "Samples further ahead than this are refused: one blocks all later writes to a Prometheus TSDB.",
    )
    max_past_seconds: float = setting(
        "INGRESS_MAX_PAST_SECONDS",
        29.0 * DAY,
        "Samples older than this are refused (400); keep it under the TSDB's out-of-order window (30 days) less "
        "INGRESS_MAX_FUTURE_SECONDS: the TSDB answers older ones 500, which senders retry forever.",
    )
    tenant_samples_per_second: float = setting(
        "INGRESS_TENANT_SAMPLES_PER_SECOND", 200_000.0, "Sustained samples/s one tenant may send to one replica."
    )
    tenant_burst_samples: float = setting(
        "INGRESS_TENANT_BURST_SAMPLES", 2_000_000.0, "Samples a tenant may send at once before 429."
    )
    max_series_per_tenant: int = setting(
        "INGRESS_MAX_SERIES_PER_TENANT",
        150_000,
        "Active series a tenant may have (Mimir's max_global_series_per_user); the new series of a write past "
        "it are refused, 400 (not retried), its other series stored. Each replica counts the series it saw "
        "against the whole limit: Serve spreads a tenant's writes over every replica.",
    )
    active_series_seconds: float = setting(
        "INGRESS_ACTIVE_SERIES_SECONDS",
        1200.0,
        "A series counts against INGRESS_MAX_SERIES_PER_TENANT until it has had no sample for this long.",
    )
    auth_cache_seconds: float = setting(
        "INGRESS_AUTH_CACHE_SECONDS",
        30.0,
        "How long a credential check is reused; a deleted account stops writing within this time.",
    )
    forward_timeout: float = setting("INGRESS_FORWARD_TIMEOUT", 30.0, "Seconds to wait for the TSDB.")
    forward_connections: int = setting(
        "INGRESS_FORWARD_CONNECTIONS", 64, "Pooled connections from one replica to the TSDB."
    )


@dataclasses.dataclass(frozen=True)
class MetroculusSettings:
    """Metroculus, the cost-query API (Ray Serve).

    The TSDB it reads is `StoreSettings.tsdb_url` (`TSDB_URL`).
    """

    cluster_secret: str = setting(
        "CLUSTER_SECRET", "dev-cluster-secret", "Shared secret callers send in the `Secret` header."
    )
    resolution_seconds: int = setting(
        "METROCULUS_RESOLUTION_SECONDS",
        60,
        "Step at which hourly-rate gauges are integrated; dates and steps must be multiples of it.",
    )
    max_range_days: int = setting("METROCULUS_MAX_RANGE_DAYS", 92, "Longest start_date..end_date span a request may ask.")
    tsdb_timeout: float = setting("METROCULUS_TSDB_TIMEOUT", 30.0, "Seconds to wait for one TSDB query.")
    tsdb_connections: int = setting(
        "METROCULUS_TSDB_CONNECTIONS", 32, "Pooled connections from one replica to the TSDB."
    )


@dataclasses.dataclass(frozen=True)
class LedgerSettings:
    """Tenant hosts and their supervisor (the ledger writers, on Ray)."""

    cycle_seconds: float = setting("CYCLE_SECONDS", 300.0, "Seconds between two ledger cycles of a tenant.")
    start_spread_seconds: float = setting(
        "LEDGER_START_SPREAD_SECONDS",
        60.0,
        "Seconds over which tenants' first cycles are spread: a tenant's loop waits a share of it fixed by "
        "its account id before its first cycle, so a node's worth of tenants (re)started at once does not hit "
        "Metroculus and the TSDB at once; explicit cycles and backfills never wait; 0: at once. A fifth of "
        "`CYCLE_SECONDS`: 1,000 tenants started together make ≈ 17 first cycles a second, and a restarted "
        "tenant's ledger is at most a minute later.",
    )
    open_days: int = setting(
        "OPEN_DAYS", 2, "UTC days a cycle recomputes (today and the days before it): late samples still land."
    )
    metroculus_url: str = setting(
        "METROCULUS_URL", "http://127.0.0.1:8000/metroculus", "Base URL of Metroculus, as the actors reach it."
    )
    rate_lag_seconds: int = setting(
        "LEDGER_RATE_LAG_SECONDS",
        1800,
        "Half the exporters' ALLOCATION_WINDOW: their rates are trailing averages, read this much later per day.",
    )
    mode: str = setting(
        "LEDGER_MODE",
        "incremental",
        "`incremental`: a cycle reads only the hours not closed yet, and settles (reads the open days whole) "
        "on a schedule, when a day closes and after a restart or failed cycle; `full`: every cycle reads the open "
        "days whole.",
    )
    settle_seconds: float = setting(
        "LEDGER_SETTLE_SECONDS",
        21600.0,
        "Incremental mode: longest time between two settles. A backstop: the ingress records every write with "
        "samples older than `LEDGER_CLOSE_DELAY_SECONDS`, and the tenant's next cycle settles on that record.",
    )
    close_delay_seconds: int = setting(
        "LEDGER_CLOSE_DELAY_SECONDS",
        300,
        "Incremental mode: seconds after its last sample is due that an hour counts as closed and is no longer read; "
        "a scrape and a remote-write batch still land in it. The ingress reads it too: a sample older than this on "
        "arrival is late, and its write is recorded for the tenant to settle on.",
    )
    ray_namespace: str = setting("RAY_NAMESPACE", "cloudtuner", "Ray namespace of the named, detached actors.")
    tenants_per_host: int = setting(
        "TENANTS_PER_HOST",
        8,
        "Tenants whose ledgers one Ray actor process runs (`actors.host`): the process, ≈ 70 MB, is most of a "
        "small tenant's cost; a host's crash or restart makes all its tenants settle.",
    )
    host_memory_mb: int = setting(
        "TENANT_HOST_MEMORY_MB", 256, "Memory each tenant host reserves, so Ray's autoscaler sees tenants."
    )
    host_slot_resource: str = setting(
        "TENANT_HOST_SLOT_RESOURCE",
        "",
        "Custom Ray resource each tenant host takes one unit of (`tenant_slots` on KubeRay, which only the "
        "tenants group offers); empty: none.",
    )
    reconcile_seconds: float = setting(
        "SUPERVISOR_RECONCILE_SECONDS", 15.0, "Seconds between two reconciliations of tenant hosts with accounts."
    )
    stalled_after_cycles: float = setting(
        "TENANT_ACTOR_STALLED_AFTER_CYCLES",
        3.0,
        "A tenant with no good cycle and no error for this many cycles has its host restarted (before its first "
        "good cycle, counted from its start: `LEDGER_START_SPREAD_SECONDS` more).",
    )

    def __post_init__(self) -> None:
        if self.mode not in LEDGER_MODES:
            raise SettingsError(f"LEDGER_MODE={self.mode!r} is not one of {', '.join(LEDGER_MODES)}")
        if self.tenants_per_host < 1:
            raise SettingsError(f"TENANTS_PER_HOST={self.tenants_per_host!r} is not a positive number of tenants")
        if self.start_spread_seconds < 0:
            raise SettingsError(f"LEDGER_START_SPREAD_SECONDS={self.start_spread_seconds!r} is negative")


@dataclasses.dataclass(frozen=True)
class RestApiSettings:
    """The REST API for users and services (Ray Serve, `/restapi`).

    It also reads `CLUSTER_SECRET` (service callers' `Secret` header) and `METROCULUS_URL`
    (the cluster cost breakdown) from the settings above.
    """

    jwt_secret: str = setting(
        "RESTAPI_JWT_SECRET",
        "dev-jwt-secret-change-me-in-production",
        "HS256 key (32+ bytes) signing users' bearer tokens; every replica needs the same one.",
    )
    token_ttl_seconds: int = setting(
        "RESTAPI_TOKEN_TTL_SECONDS",
        DAY,
        "Lifetime of a bearer token (sign-up, sign-in, password change); sign-out and a password change end it sooner.",
    )
    public_write_url: str = setting(
        "RESTAPI_PUBLIC_WRITE_URL",
        "http://127.0.0.1:8000/storage/api/v2/write",
        "Remote-write URL put in the configuration handed to customers (the ingress as they reach it).",
    )
    max_range_days: int = setting(
        "RESTAPI_MAX_RANGE_DAYS", 366, "Longest start_date..end_date span an expenses request may ask."
    )
    default_limit: int = setting(
        "RESTAPI_DEFAULT_LIMIT", 5000, "Resources `clean_expenses` returns when `limit` is not given."
    )
    max_limit: int = setting("RESTAPI_MAX_LIMIT", 50_000, "Largest `limit` a `clean_expenses` request may ask.")
    live_timeout: float = setting(
        "RESTAPI_LIVE_TIMEOUT",
        30.0,
        "Seconds to wait for Metroculus's `k8s_live` answer (a day of a big tenant's pods takes seconds); past it 503.",
    )
    task_timeout_seconds: float = setting(
        "RESTAPI_TASK_TIMEOUT_SECONDS",
        900.0,
        "An `expenses_async` task still pending after this long is reported failed (its replica died).",
    )
    signin_failures_per_email: int = setting(
        "RESTAPI_SIGNIN_FAILURES_PER_EMAIL",
        10,
        "Failed password checks (sign-in, password change) of one email per throttle window; past them every "
        "attempt is 429 until the window ends, the right password too.",
    )
    signin_failures_per_address: int = setting(
        "RESTAPI_SIGNIN_FAILURES_PER_ADDRESS",
        50,
        "The same per client address (several users behind one NAT share it: keep it above the per-email limit).",
    )
    signin_window_seconds: float = setting(
        "RESTAPI_SIGNIN_WINDOW_SECONDS",
        900.0,
        "Length of the sign-in throttle's windows, aligned on the Unix epoch; the counts are in MongoDB, for every replica.",
    )
    forwarded_hops: int = setting(
        "RESTAPI_FORWARDED_HOPS",
        0,
        "Trusted proxies in front of Serve that append to `X-Forwarded-For`; the client address of the sign-in "
        "throttle is the entry this far from its right end. 0: the TCP peer (no proxy).",
    )


@dataclasses.dataclass(frozen=True)
class RightsizingSettings:
    """The rightsizing job (`python -m jobs.rightsizing`, a Ray task per tenant).

    It reads the TSDB and writes MongoDB named by `StoreSettings`; its flags override the
    defaults below (k8scost/rightsizing.py and k8scost/usage_sizing.py document the formulas).
    """

    window_days: int = setting(
        "RIGHTSIZING_WINDOW_DAYS", 7, "Days of usage a recommendation is computed over (`--window-days`)."
    )
    recommender: str = setting(
        "RIGHTSIZING_RECOMMENDER",
        "vpa",
        "How requests are sized on per-container usage samples (k8scost/usage_sizing.py): `vpa` (the VPA "
        "recommender's way: p90 of a decaying histogram + 15 %, daily memory peaks, OOM bump) or `request-sizing-v2` "
        "(Kubecost's: peak or quantile ÷ target utilization). `vpa` because on simulated workloads "
        "(scripts/bench_rightsizing_algorithms.py) it left 1.5 % of containers' memory below the next day's peak, "
        "against 2.5 % for request-sizing-v2's peak at 10 times the over-provisioned cost and 28.5 % for today's "
        "hourly averages. The job sizes each container that has usage series with it (`--recommender`); the others on "
        "the exporter's hourly averages with request-sizing-v2 (`--algorithm`), saying so (`sized_on`).",
    )
    algorithm: str = setting(
        "RIGHTSIZING_ALGORITHM",
        "max",
        "What request-sizing-v2 sizes on: `max` (peak usage) or `quantile` (of the usage samples) (`--algorithm`).",
    )
    quantile: float = setting("RIGHTSIZING_QUANTILE", 0.95, "Quantile the `quantile` algorithm sizes on (`--quantile`).")
    target_cpu_utilization: float = setting(
        "RIGHTSIZING_TARGET_CPU_UTILIZATION",
        0.7,
        "Share of the recommended CPU request the sized usage fills (`--target-cpu-utilization`).",
    )
    target_memory_utilization: float = setting(
        "RIGHTSIZING_TARGET_MEMORY_UTILIZATION",
        0.7,
        "Share of the recommended memory request the sized usage fills (`--target-memory-utilization`).",
    )
    tsdb_timeout: float = setting(
        "RIGHTSIZING_TSDB_TIMEOUT", 300.0, "Seconds to wait for one TSDB query over a tenant's whole window."
    )
    task_cpus: float = setting(
        "RIGHTSIZING_TASK_CPUS", 0.5, "CPUs each tenant's Ray task reserves (KubeRay's batch group scales on them)."
    )


ALL_SETTINGS: tuple[type, ...] = (ExporterSettings, StoreSettings, IngressSettings, LedgerSettings, MetroculusSettings, RestApiSettings, RightsizingSettings)


def settings_table() -> str:
    """The Markdown table of every setting, for the README."""
    rows = ["| component | variable | default | meaning |", "| --- | --- | --- | --- |"]
    for cls in ALL_SETTINGS:
        component = (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")
        for f in dataclasses.fields(cls):
            rows.append(f"| {component} | `{f.metadata['env']}` | `{f.default}` | {f.metadata['doc']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(settings_table() + "\n")
