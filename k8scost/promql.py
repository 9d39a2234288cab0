"""PromQL for cost, live and rightsizing queries, built so that a query can only ever read one
tenant's series.

Every selector carries ``tenant_id="<tenant>"`` with the value escaped, names only a
metric of its list (the cost gauges, the exporter's container gauges and node prices, the
customer's usage families of ``k8scost.usage_series``) and only well-formed label names:
no caller input reaches a query unchecked, whatever validation happened before.

The live usage queries, per container c over the rate window W = LIVE_RATE_SECONDS (120 s):

    CPU usage      rate(cpu_seconds_c[W])
    throttled      rate(throttled_periods_c[W]) / rate(periods_c[W])
    working set, requests, limits, restarts, OOM-killed, node memory: the series' value

each the ``max`` over the group's series (one, twice for an HA pair), a missing series no point.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from k8scost.usage_series import INSTANCE_TYPE_LABEL, SAFE_TO_EVICT_LABEL, USAGE_FAMILIES

TENANT_LABEL = "tenant_id"

# The exporter's gauges are named here, once (exporter/ spells them as it exports them: it
# imports nothing of ours but the settings). Hourly rates in USD, per resource:
POD_METRIC = "cloudtuner_kubecost_pod_total_cost"
NAMESPACE_METRIC = "cloudtuner_kubecost_namespace_total_cost"
NODE_METRIC = "cloudtuner_kubecost_node_total_cost"
IDLE_METRIC = "cloudtuner_kubecost_idle_cost"
# The namespace IDLE_METRIC's cost is shown as, in the ledger and the live view, as Kubecost
# shows idle capacity (no real namespace has an underscore: Kubernetes names are DNS labels).
IDLE_NAMESPACE = "__idle__"
# The Phase 1 cluster gauges, each a component of a cluster's bill under the seed's
# breakdown name: together, with the management fee, a cluster's whole bill.
CLUSTER_COST_COMPONENTS: dict[str, str] = {
    "management_cost": "kubecost_cluster_management_cost",
    "cpu_cost": "kubecost_cluster_cpu_cost",
    "ram_cost": "kubecost_cluster_memory_cost",
    "pv_cost": "kubecost_cluster_storage_cost",
    "network_cost": "kubecost_cluster_network_cost",
    "load_balancer_cost": "kubecost_cluster_load_balancer_cost",
}
CLUSTER_COST_METRICS: tuple[str, ...] = tuple(CLUSTER_COST_COMPONENTS.values())
# Every metric a cost query may read; each is an hourly rate in USD, labelled tenant_id.
COST_METRICS: tuple[str, ...] = (
    NAMESPACE_METRIC,
    "cloudtuner_kubecost_namespace_cpu_cost",
    "cloudtuner_kubecost_namespace_ram_cost",
    "cloudtuner_kubecost_namespace_pv_cost",
    POD_METRIC,
    "cloudtuner_kubecost_pod_cpu_cost",
    "cloudtuner_kubecost_pod_ram_cost",
    NODE_METRIC,
    "cloudtuner_kubecost_node_cpu_cost",
    "cloudtuner_kubecost_node_ram_cost",
    IDLE_METRIC,
    *CLUSTER_COST_METRICS,
)
# The exporter's container gauges by (resource, statistic): cores or bytes, not costs.
CONTAINER_METRICS: dict[tuple[str, str], str] = {
    ("cpu", "request"): "cloudtuner_kubecost_container_cpu_request_cores",
    ("cpu", "usage_average"): "cloudtuner_kubecost_container_cpu_usage_average_cores",
    ("cpu", "usage_max"): "cloudtuner_kubecost_container_cpu_usage_max_cores",
    ("memory", "request"): "cloudtuner_kubecost_container_memory_request_bytes",
    ("memory", "usage_average"): "cloudtuner_kubecost_container_memory_usage_average_bytes",
    ("memory", "usage_max"): "cloudtuner_kubecost_container_memory_usage_max_bytes",
}
# The exporter's node prices by resource: USD per core-hour, per GiB-hour.
NODE_PRICE_METRICS: dict[str, str] = {
    "cpu": "cloudtuner_kubecost_node_cpu_price_per_core_hour",
    "memory": "cloudtuner_kubecost_node_ram_price_per_gib_hour",
}

# Label names as Prometheus allows them, minus the reserved ``__`` prefix (``__name__``).
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def escape_label_value(value: str) -> str:
    """``value`` made safe inside a double-quoted PromQL string (backslash, quote, newline)."""
    return value.translate(_ESCAPES)


def selector(metric: str, tenant_id: str, **matchers: str) -> str:
    """``metric{tenant_id="<tenant_id>", name="value", ...}``: equality matchers only.

    Raises ValueError for a metric outside ``COST_METRICS``, an empty tenant or a bad label name.
    """
    if metric not in COST_METRICS:
        raise ValueError(f"unknown cost metric {metric!r}")
    return metric + "{" + _matchers(tenant_id, matchers) + "}"


# Label that tells apart the metrics of one cost query (``costs_selector``): the functions
# that integrate a series drop its ``__name__``.
METRIC_LABEL = "cloudtuner_metric"


def costs_selector(metrics: Iterable[str], tenant_id: str) -> str:
    """The series of one tenant of every cost metric in ``metrics``, each labelled with its
    metric's name in METRIC_LABEL, so one query reads them all and its answer still says
    which is which. Raises ValueError as ``selector`` does, and for no metric."""
    metrics = tuple(metrics)
    unknown = [metric for metric in metrics if metric not in COST_METRICS]
    if not metrics or unknown:
        raise ValueError(f"unknown cost metric(s) {unknown!r}")
    return f'label_replace({_any_of(metrics, tenant_id, {})}, "{METRIC_LABEL}", "$1", "__name__", "(.+)")'


def _matchers(tenant_id: str, matchers: dict[str, str]) -> str:
    """``tenant_id="<tenant_id>", name="value", ...``, values escaped, label names checked."""
    if not tenant_id:
        raise ValueError("tenant_id must not be empty")
    for name in matchers:
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"invalid label name {name!r}")
    pairs = {TENANT_LABEL: tenant_id, **matchers}
    return ", ".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs.items())


# How far back a PromQL point looks for a series' latest sample: Prometheus' and Thanos'
# default --query.lookback-delta, which the TSDBs we run keep.
LOOKBACK_SECONDS = 300


def window(seconds: int) -> str:
    """A range duration covering exactly (t − seconds, t] when evaluated at t.

    Prometheus 2.x range selectors are closed on the left, [t − range, t] (3.x made them
    left-open); one millisecond less gives the same half-open window on both, so a sample
    exactly on a boundary counts in one window only.
    """
    return f"{seconds * 1000 - 1}ms"


def integral(expr: str, range_seconds: int, resolution_seconds: int) -> str:
    """The cost in USD over (t − range, t] of ``expr``, an hourly-rate gauge, evaluated at t.

    A subquery samples ``expr`` every ``resolution_seconds``; each point takes the latest
    sample within the lookback (``LOOKBACK_SECONDS``) and nothing after a staleness marker,
    so a vanished pod stops costing at once and a gap costs at most the lookback at the
    last rate. Each point stands for the ``resolution_seconds`` that end at it.

    Alignment: Prometheus places subquery points at multiples of the resolution since the
    epoch, and ``window`` makes the range (t − range, t]. Evaluated at t = end with
    range = end − start, both multiples of the resolution, the points are start + res, …,
    end: the cost over (start, end], each step costed at its right end.
    """
    if range_seconds <= 0 or resolution_seconds <= 0 or range_seconds % resolution_seconds:
        raise ValueError(f"range {range_seconds}s must be a positive multiple of the resolution {resolution_seconds}s")
    return f"sum_over_time(({expr})[{window(range_seconds)}:{resolution_seconds}s]) * {resolution_seconds} / 3600"


# --- the live view: allow-listed range queries (Metroculus k8s_live, the Grafana dashboard) ---

# The exporter's container gauges the live view reads beside the cost rates: requests and
# average usage, in cores and bytes. They are not costs and are never integrated, so they
# have their own list; COST_METRICS stays what cost queries may read.
USAGE_METRICS: tuple[str, ...] = tuple(
    CONTAINER_METRICS[resource, statistic]
    for resource in ("cpu", "memory")
    for statistic in ("request", "usage_average")
)
# Groups (pods, namespaces, nodes, clusters) one live answer holds at most: those with the
# largest sum over the range, so a tenant of 20,000 pods gets its 50 heaviest, not 20,000 series.
LIVE_MAX_SERIES = 50
# Label that tells a live answer's parts apart (usage and request), set with label_replace.
PART_LABEL = "part"
# Labels a live request may filter on (equality), where the query groups by them.
LIVE_FILTERS: tuple[str, ...] = ("cluster", "namespace")


@dataclasses.dataclass(frozen=True)
class LiveSource:
    """Series summed into one part of a live query: one metric, or several summed (a
    cluster's cost components), and labels it lacks but the group has, set to a constant."""

    metrics: tuple[str, ...]
    constant: tuple[tuple[str, str], ...] = ()


# The window the live view's counters are rated over: eight scrapes at the customers' 15 s,
# so a missed scrape still leaves a rate, short enough that a 1-minute spike shows.
LIVE_RATE_SECONDS = 120


@dataclasses.dataclass(frozen=True)
class UsageSource:
    """A function of the customer's usage series (``k8scost.usage_series``) forming one part.

    ``template`` is PromQL per series: ``{0}``, ``{1}``, … stand for the tenant's series of
    ``metrics`` (with the equality ``matchers``), ``{rate}`` for the rate window. The part is
    its ``max`` per group: a group is one container or node, which has one series, written
    twice only by an HA pair of Prometheus (a sum would double it, a ratio would add up).
    """

    template: str
    metrics: tuple[str, ...]
    matchers: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class LiveQuery:
    """One allow-listed live query: per group of ``group_by`` labels, a time series per part."""

    group_by: tuple[str, ...]
    parts: tuple[tuple[str, tuple[LiveSource | UsageSource, ...]], ...]  # (part name, its sources), in answer order
    unit: str
    description: str

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.parts)

    @property
    def filters(self) -> tuple[str, ...]:
        return tuple(name for name in LIVE_FILTERS if name in self.group_by)


@dataclasses.dataclass(frozen=True)
class LivePromql:
    """The PromQL of one live request: the range query, and the count of all its groups."""

    range: str
    count: str


def _usage_vs_requests(resource: str, unit: str, group_by: tuple[str, ...]) -> LiveQuery:
    per = group_by[-1]
    return LiveQuery(
        group_by,
        (
            ("usage", (LiveSource((CONTAINER_METRICS[resource, "usage_average"],)),)),
            ("request", (LiveSource((CONTAINER_METRICS[resource, "request"],)),)),
        ),
        unit,
        f"{resource.upper() if resource == 'cpu' else resource.title()} usage (the exporter's hourly averages) "
        f"and requests per {per}, summed over its containers",
    )


# Counters rated over LIVE_RATE_SECONDS. A restarted container counts from 0 again under the
# same labels once its ``id`` is dropped: rate() takes the drop for a reset from 0, on every
# engine alike, and misses only what the old container used after its last scrape (at most a
# scrape interval of it). A window with a reset cannot be left out instead: Thanos Query
# adjusts counters for resets before resets() sees them, which then answers 0 (tests/test_tsdb.py).
_RATE = "rate({0}[{rate}])"
_CONTAINER = ("cluster", "namespace", "pod", "container")
_CAPACITY = {"cpu": (("resource", "cpu"), ("unit", "core")), "memory": (("resource", "memory"), ("unit", "byte"))}


def _against_requests_and_limits(usage: UsageSource, resource: str) -> tuple[tuple[str, tuple[UsageSource, ...]], ...]:
    """The usage, and kube-state-metrics' request and limit in force (only those set: else a gap)."""
    return (
        ("usage", (usage,)),
        ("request", (UsageSource("{0}", ("kube_pod_container_resource_requests",), _CAPACITY[resource]),)),
        ("limit", (UsageSource("{0}", ("kube_pod_container_resource_limits",), _CAPACITY[resource]),)),
    )


# The live usage queries: the customer's cAdvisor, kube-state-metrics and node-exporter series
# (``k8scost.usage_series``), per container as kubernetes-mixin's "Compute Resources /
# Namespace (Pods)" shows them, and the nodes' memory. A missing exporter leaves its parts empty.
LIVE_USAGE_QUERIES: dict[str, LiveQuery] = {
    "cpu_usage_by_container": LiveQuery(
        _CONTAINER,
        _against_requests_and_limits(UsageSource(_RATE, ("container_cpu_usage_seconds_total",)), "cpu"),
        "cores",
        f"CPU usage (cAdvisor's counter rated over {LIVE_RATE_SECONDS} s, a restart a reset from 0) "
        "against the requests and limits of kube-state-metrics, per container",
    ),
    "memory_working_set_by_container": LiveQuery(
        _CONTAINER,
        _against_requests_and_limits(UsageSource("{0}", ("container_memory_working_set_bytes",)), "memory"),
        "bytes",
        "Memory working set (cAdvisor) against the requests and limits of kube-state-metrics, per container",
    ),
    "cpu_throttling_by_container": LiveQuery(
        _CONTAINER,
        (("throttled", (UsageSource(
            "rate({0}[{rate}]) / rate({1}[{rate}])",
            ("container_cpu_cfs_throttled_periods_total", "container_cpu_cfs_periods_total"),
        ),)),),
        "ratio",
        f"Share of CFS periods throttled over {LIVE_RATE_SECONDS} s, per container with a CPU limit (cAdvisor)",
    ),
    "restarts_by_container": LiveQuery(
        _CONTAINER,
        (
            ("restarts", (UsageSource("{0}", ("kube_pod_container_status_restarts_total",)),)),
            ("oom_killed", (UsageSource(
                "{0}", ("kube_pod_container_status_last_terminated_reason",), (("reason", "OOMKilled"),)
            ),)),
        ),
        "count",
        "Restarts of each container, and 1 while its last termination was an OOM kill (kube-state-metrics)",
    ),
    "node_memory_available": LiveQuery(
        ("cluster", "node"),
        (
            ("available", (UsageSource("{0}", ("node_memory_MemAvailable_bytes",)),)),
            ("allocatable", (UsageSource("{0}", ("kube_node_status_allocatable",), _CAPACITY["memory"]),)),
        ),
        "bytes",
        "Memory available on each node (node-exporter) against its allocatable memory (kube-state-metrics)",
    ),
}

LIVE_QUERIES: dict[str, LiveQuery] = {
    **LIVE_USAGE_QUERIES,
    "cpu_usage_vs_requests_by_namespace": _usage_vs_requests("cpu", "cores", ("cluster", "namespace")),
    "cpu_usage_vs_requests_by_pod": _usage_vs_requests("cpu", "cores", ("cluster", "namespace", "pod")),
    "memory_usage_vs_requests_by_namespace": _usage_vs_requests("memory", "bytes", ("cluster", "namespace")),
    "memory_usage_vs_requests_by_pod": _usage_vs_requests("memory", "bytes", ("cluster", "namespace", "pod")),
    "cost_rate_by_namespace": LiveQuery(
        ("cluster", "namespace"),
        (
            (
                "cost_rate",
                (
                    LiveSource((NAMESPACE_METRIC,)),
                    LiveSource((IDLE_METRIC,), (("namespace", IDLE_NAMESPACE),)),
                ),
            ),
        ),
        "USD/hour",
        f"Cost rate per namespace, idle capacity as namespace {IDLE_NAMESPACE}",
    ),
    "cost_rate_by_node": LiveQuery(
        ("cluster", "node"),
        (("cost_rate", (LiveSource((NODE_METRIC,)),)),),
        "USD/hour",
        "Cost rate allocated on each node (idle capacity excluded)",
    ),
    "cost_rate_by_cluster": LiveQuery(
        ("cluster",),
        (("cost_rate", (LiveSource(CLUSTER_COST_METRICS),)),),
        "USD/hour",
        "Cost rate of each whole cluster: its components, idle included, and the management fee",
    ),
}


def live_selector(metrics: tuple[str, ...], tenant_id: str, **matchers: str) -> str:
    """The series of one tenant of any of ``metrics`` (cost or usage gauges), equality matchers only.

    One metric is named as such; several by an alternation of their names, which only
    ever holds names of the allow-lists. Raises ValueError as ``selector`` does.
    """
    unknown = [metric for metric in metrics if metric not in COST_METRICS and metric not in USAGE_METRICS]
    if not metrics or unknown:
        raise ValueError(f"unknown live metric(s) {unknown!r}")
    return _any_of(metrics, tenant_id, matchers)


def _any_of(metrics: tuple[str, ...], tenant_id: str, matchers: dict[str, str]) -> str:
    """The tenant's series of any of ``metrics``, names its callers checked against an allow-list
    ([a-z_] only: nothing in the alternation is a regex operator): one named as such, several
    by an alternation of their names."""
    inner = _matchers(tenant_id, matchers)
    if len(metrics) == 1:
        return metrics[0] + "{" + inner + "}"
    return "{" + f'__name__=~"{"|".join(metrics)}", ' + inner + "}"


def usage_selector(metric: str, tenant_id: str, **matchers: str) -> str:
    """``metric{tenant_id="<tenant_id>", ...}`` for a family of ``k8scost.usage_series``; ValueError as ``selector``."""
    if metric not in USAGE_FAMILIES:
        raise ValueError(f"unknown usage family {metric!r}")
    return metric + "{" + _matchers(tenant_id, matchers) + "}"


def live_promql(
    name: str, tenant_id: str, range_window: str, filters: dict[str, str] | None = None,
    max_series: int = LIVE_MAX_SERIES,
) -> LivePromql:
    """PromQL of live query ``name`` for one tenant; ``filters``: label → value, equality.

    Each part is summed per group and labelled ``part``. The range query keeps the
    ``max_series`` groups whose largest part has the largest sum of samples over
    ``range_window`` (a PromQL duration: the API's range, Grafana's ``$__range``), read
    from the raw samples where it can (``_source_sum``): a subquery of the per-pod sums
    took a 2,000-pod tenant's TSDB 10 s, the raw samples 0.1 s. ``@ end()`` pins the choice
    to the range's end: every step shows the same groups, and the TSDB ranks once per
    query. Raises ValueError for an unknown query or filter.
    """
    query = LIVE_QUERIES.get(name)
    if query is None:
        raise ValueError(f"unknown live query {name!r}")
    filters = filters or {}
    for label in filters:
        if label not in query.filters:
            raise ValueError(f"live query {name} cannot filter on {label!r}")
    by = ", ".join(query.group_by)

    def parts(rank_window: str) -> str:
        labelled = []
        for part, sources in query.parts:
            summed = [
                expr for source in sources
                if (expr := _source_sum(source, query.group_by, tenant_id, filters, rank_window))
            ]
            labelled.append(f'label_replace({" or ".join(summed)}, "{PART_LABEL}", "{part}", "", "")')
        return " or ".join(labelled)

    # A filter can rule out a constant-labelled source only; the first source of each part
    # carries every label, so no part is ever empty.
    rank = f"max by ({by}) ({parts(range_window)})"
    return LivePromql(range=f"({parts('')}) and on ({by}) topk({max_series}, {rank})", count=f"count({rank})")


def _source_sum(
    source: LiveSource | UsageSource, group_by: tuple[str, ...], tenant_id: str, filters: dict[str, str], rank_window: str
) -> str | None:
    """``source`` summed per group, its constant labels added; None if a filter rules it out.

    With ``rank_window``, the group's sum of samples over that window up to the range's end
    instead: from the raw samples for one metric; for several (a cluster's components, a few
    series per cluster) from a subquery of their sum, as functions of several metric names
    give series that only their names told apart, which Prometheus refuses.
    """
    if isinstance(source, UsageSource):
        return _usage_max(source, group_by, tenant_id, filters, rank_window)
    constant = dict(source.constant)
    if any(constant[label] != value for label, value in filters.items() if label in constant):
        return None
    matchers = {label: value for label, value in filters.items() if label not in constant}
    by = ", ".join(label for label in group_by if label not in constant)
    series = live_selector(source.metrics, tenant_id, **matchers)
    if not rank_window:
        expr = f"sum by ({by}) ({series})"
    elif len(source.metrics) == 1:
        expr = f"sum by ({by}) (sum_over_time({series}[{rank_window}] @ end()))"
    else:
        expr = f"sum_over_time((sum by ({by}) ({series}))[{rank_window}:] @ end())"
    for label, value in source.constant:
        expr = f'label_replace({expr}, "{label}", "{escape_label_value(value)}", "", "")'
    return expr


def _usage_max(
    source: UsageSource, group_by: tuple[str, ...], tenant_id: str, filters: dict[str, str], rank_window: str
) -> str:
    """``source`` per group (its max), or with ``rank_window`` the sum of that over the window
    up to the range's end (a subquery: a function of the series is no raw sample)."""
    selectors = [usage_selector(metric, tenant_id, **filters, **dict(source.matchers)) for metric in source.metrics]
    expr = f"max by ({', '.join(group_by)}) ({source.template.format(*selectors, rate=window(LIVE_RATE_SECONDS))})"
    return f"sum_over_time(({expr})[{rank_window}:] @ end())" if rank_window else expr


# --- rightsizing: the container requests and usage, and the node prices (jobs/rightsizing.py) ---

# What the rightsizing job reads: every container gauge (peaks included) and the nodes'
# prices. Neither is a cost rate, so they have their own list: COST_METRICS stays what cost
# queries may read, and Metroculus never integrates these.
RIGHTSIZING_METRICS: tuple[str, ...] = (*CONTAINER_METRICS.values(), *NODE_PRICE_METRICS.values())


def rightsizing_selector(metric: str, tenant_id: str, **matchers: str) -> str:
    """``metric{tenant_id="<tenant_id>", ...}`` for a metric of ``RIGHTSIZING_METRICS``; ValueError as ``selector``."""
    if metric not in RIGHTSIZING_METRICS:
        raise ValueError(f"unknown rightsizing metric {metric!r}")
    return metric + "{" + _matchers(tenant_id, matchers) + "}"


# --- optimizations: the nodes' types and capacity, the pods' volumes (jobs/optimizations.py) ---

# Query → (family, its labels kept, equality matchers): what ``estate_queries`` reads of the
# kube-state-metrics families of ``k8scost.usage_series`` (its docstring says why these).
ESTATE_SOURCES: dict[str, tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "instance_type": ("kube_node_labels", ("cluster", "node", INSTANCE_TYPE_LABEL), ()),
    "cpu_cores": ("kube_node_status_allocatable", ("cluster", "node"), (("resource", "cpu"), ("unit", "core"))),
    "memory_bytes": ("kube_node_status_allocatable", ("cluster", "node"), (("resource", "memory"), ("unit", "byte"))),
    "pods": ("kube_pod_annotations", ("cluster", "namespace", "pod", SAFE_TO_EVICT_LABEL), ()),
    "claims": ("kube_pod_spec_volumes_persistentvolumeclaims_info", ("cluster", "namespace", "pod", "persistentvolumeclaim"), ()),
    "volumes": ("kube_persistentvolumeclaim_info", ("cluster", "namespace", "persistentvolumeclaim", "volumename"), ()),
    "local_volumes": ("kube_persistentvolume_info", ("cluster", "persistentvolume", "local_path", "host_path"), ()),
}


def estate_queries(tenant_id: str, window_seconds: int) -> dict[str, str]:
    """The instant queries of ``ESTATE_SOURCES`` for one tenant: each series' last value over
    the ``window_seconds`` before the query's time, ``max by`` the labels kept (which drops
    the scrape's own, so an HA pair's copies are one series). A label a series lacks is
    absent from its answer too."""
    range_ = window(window_seconds)
    return {
        name: f"max by ({', '.join(labels)}) (last_over_time({usage_selector(metric, tenant_id, **dict(matchers))}[{range_}]))"
        for name, (metric, labels, matchers) in ESTATE_SOURCES.items()
    }
