"""The cost metrics, and the pure function turning one poll's answers into their values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter.allocation import Allocation

# Aggregations asked of the allocation API each poll. "namespace,pod" because
# aggregate=pod merges same-named pods of different namespaces.
AGGREGATES = ("cluster", "node", "namespace", "namespace,pod", "namespace,pod,container")


def allocation_params(window: str, aggregate: str) -> dict[str, str]:
    """Query of the allocation API for one of AGGREGATES: one accumulated set, idle included."""
    return {"window": window, "aggregate": aggregate, "accumulate": "true", "includeIdle": "true"}


def assets_params(window: str) -> dict[str, str]:
    """Query of the assets API for the cluster-management fee."""
    return {"window": window, "aggregate": "type", "accumulate": "true"}


@dataclass(frozen=True)
class CostMetric:
    """One exported gauge."""

    name: str
    help: str
    labels: tuple[str, ...]


# Label values of one series, in the order of its CostMetric.labels.
Series = tuple[str, ...]
# Values of every cost series of one poll.
Snapshot = dict[CostMetric, dict[Series, float]]

_CLUSTER = ("tenant_id", "cluster")
_NAMESPACE = (*_CLUSTER, "namespace")
_POD = (*_NAMESPACE, "pod", "node", "controller_kind", "controller")
_NODE = (*_CLUSTER, "node")
_CONTAINER = (*_NAMESPACE, "pod", "container", "node", "controller_kind", "controller")

_RATE = "in Kubecost's currency per hour (window cost / the hours Kubecost covered)"

# Gauges keyed by the Rates or Usage field they export.
NAMESPACE_GAUGES = {
    field: CostMetric(
        f"cloudtuner_kubecost_namespace_{field}_cost", f"{what} cost of the namespace, {_RATE}.", _NAMESPACE
    )
    for field, what in (("total", "Total"), ("cpu", "CPU"), ("ram", "Memory"), ("pv", "Persistent-volume"))
}
POD_GAUGES = {
    field: CostMetric(f"cloudtuner_kubecost_pod_{field}_cost", f"{what} cost of the pod, {_RATE}.", _POD)
    for field, what in (("total", "Total"), ("cpu", "CPU"), ("ram", "Memory"))
}
NODE_GAUGES = {
    field: CostMetric(f"cloudtuner_kubecost_node_{field}_cost", f"{what} cost allocated on the node, {_RATE}.", _NODE)
    for field, what in (("total", "Total"), ("cpu", "CPU"), ("ram", "Memory"))
}
# The node's own prices, keyed by the Prices field they export: what a change of requests
# on the node saves or costs (rightsizing). Kubecost calls them node_cpu_hourly_cost and
# node_ram_hourly_cost; here they come from the allocation API, so no second API is asked.
NODE_PRICE_GAUGES = {
    field: CostMetric(f"cloudtuner_kubecost_node_{name}", f"{what}, allocated cost ÷ allocated {unit}.", _NODE)
    for field, name, what, unit in (
        ("cpu_per_core_hour", "cpu_price_per_core_hour", "CPU price of the node per core-hour", "core-hours"),
        ("ram_per_gib_hour", "ram_price_per_gib_hour", "Memory price of the node per GiB-hour", "GiB-hours"),
    )
}
IDLE_GAUGE = CostMetric(
    "cloudtuner_kubecost_idle_cost", f"Cost of the cluster's unallocated (idle) capacity, {_RATE}.", _CLUSTER
)
CLUSTER_GAUGES = {
    field: CostMetric(
        f"kubecost_cluster_{name}_cost", f"{what} cost of the whole cluster, idle included, {_RATE}.", _CLUSTER
    )
    for field, name, what in (
        ("cpu", "cpu", "CPU"),
        ("ram", "memory", "Memory"),
        ("pv", "storage", "Storage"),
        ("network", "network", "Network"),
        ("load_balancer", "load_balancer", "Load-balancer"),
    )
}
MANAGEMENT_GAUGE = CostMetric(
    "kubecost_cluster_management_cost", f"Cluster-management fee (Kubecost assets API), {_RATE}.", _CLUSTER
)
CONTAINER_GAUGES = {
    field: CostMetric(f"cloudtuner_kubecost_container_{name}", f"{what} of the container over the window.", _CONTAINER)
    for field, name, what in (
        ("cpu_request", "cpu_request_cores", "Average CPU request in cores"),
        ("cpu_usage_average", "cpu_usage_average_cores", "Average CPU usage in cores"),
        ("cpu_usage_max", "cpu_usage_max_cores", "Maximum CPU usage in cores (the average if Kubecost has no max)"),
        ("memory_request", "memory_request_bytes", "Average memory request in bytes"),
        ("memory_usage_average", "memory_usage_average_bytes", "Average memory usage in bytes"),
        ("memory_usage_max", "memory_usage_max_bytes", "Maximum memory usage in bytes (the average if no max)"),
    )
}

COST_METRICS: tuple[CostMetric, ...] = (
    *CLUSTER_GAUGES.values(),
    MANAGEMENT_GAUGE,
    IDLE_GAUGE,
    *NODE_GAUGES.values(),
    *NODE_PRICE_GAUGES.values(),
    *NAMESPACE_GAUGES.values(),
    *POD_GAUGES.values(),
    *CONTAINER_GAUGES.values(),
)


def build_snapshot(
    allocations: Mapping[str, Sequence[Allocation]],
    management_rate: float | None,
    tenant_id: str,
    cluster: str,
) -> Snapshot:
    """Every cost series of one poll; ``allocations`` maps each of AGGREGATES to its answer.

    Entries whose labels coincide are summed, so a series is never written twice; node
    prices are set, not summed (a node is one entry of ``aggregate=node``).
    """
    snapshot: Snapshot = {metric: {} for metric in COST_METRICS}

    def add(metric: CostMetric, labels: Series, value: float | None) -> None:
        if value is not None:
            series = snapshot[metric]
            series[labels] = series.get(labels, 0.0) + value

    base = (tenant_id, cluster)
    for a in allocations["cluster"]:  # idle included: the whole cluster's cost
        for field, metric in CLUSTER_GAUGES.items():
            add(metric, base, getattr(a.rates, field))
    add(MANAGEMENT_GAUGE, base, management_rate)

    for a in allocations["namespace"]:
        if a.idle:
            add(IDLE_GAUGE, base, a.rates.total)
            continue
        for field, metric in NAMESPACE_GAUGES.items():
            add(metric, (*base, a.labels.get("namespace", "")), getattr(a.rates, field))

    for a in _allocated(allocations["node"]):
        node = (*base, a.labels.get("node", ""))
        for field, metric in NODE_GAUGES.items():
            add(metric, node, getattr(a.rates, field))
        for field, metric in NODE_PRICE_GAUGES.items():
            if (price := getattr(a.prices, field)) is not None:
                snapshot[metric][node] = price  # a price is never summed: one node, one entry

    for a in _allocated(allocations["namespace,pod"]):
        labels = (*base, *(a.labels.get(key, "") for key in ("namespace", "pod", "node", "controllerKind", "controller")))
        for field, metric in POD_GAUGES.items():
            add(metric, labels, getattr(a.rates, field))

    for a in _allocated(allocations["namespace,pod,container"]):
        keys = ("namespace", "pod", "container", "node", "controllerKind", "controller")
        labels = (*base, *(a.labels.get(key, "") for key in keys))
        for field, metric in CONTAINER_GAUGES.items():
            add(metric, labels, getattr(a.usage, field))
    return snapshot


def _allocated(allocations: Sequence[Allocation]) -> list[Allocation]:
    """The entries that are real workloads: idle is no node, pod or container."""
    return [a for a in allocations if not a.idle]
