"""Cost math of the ledger: Metroculus answers → daily costs per resource → expense rows.

Pure functions; the tenant actor does the I/O. A resource-day is written once as a +1
row; when its cost changes, a −1 row repeating the written cost and a +1 row with the
new one go out in the same INSERT, so the ledger never holds a half-made correction.

Per cluster and day the namespaces add up to the cluster, to the cent:

    cluster      = Σ components            (management, CPU, RAM, PV, network, load balancer)
    __management__ = the management component (a fee Kubecost allocates to no workload)
    __unallocated__ = cluster − Σ namespaces (idle included) − __management__,
                      written when |·| ≥ UNALLOCATED_MIN_COST, else 0
    Σ namespaces + __idle__ + __management__ + __unallocated__ = cluster

``__unallocated__`` is every other cluster cost no namespace carries (an unmounted volume,
a load balancer of no service); it is negative when allocations exceed the cluster's assets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from k8scost.promql import (
    CLUSTER_COST_COMPONENTS,
    CLUSTER_COST_METRICS,
    IDLE_METRIC,
    IDLE_NAMESPACE,
    NAMESPACE_METRIC,
    NODE_METRIC,
    POD_METRIC,
)
from k8scost.settings import DAY
from k8scost.stores.clickhouse import ExpenseRow
from k8scost.stores.resources import RESOURCE_TYPES, Kind, Resource

# Cluster costs no namespace carries, shown as namespaces beside __idle__ (no real
# namespace has an underscore: Kubernetes names are DNS labels).
MANAGEMENT_NAMESPACE = "__management__"
UNALLOCATED_NAMESPACE = "__unallocated__"
# The lines a reader may share over the namespaces, as Kubecost's shareTenancyCosts does.
TENANCY_NAMESPACES = (MANAGEMENT_NAMESPACE, UNALLOCATED_NAMESPACE)
# Below this the cluster and its namespaces differ by float rounding only (the TSDB sums
# them in its own order): a hundredth of a cent per cluster-day.
UNALLOCATED_MIN_COST = 1e-4
_COMPONENT_OF = {metric: name for name, metric in CLUSTER_COST_COMPONENTS.items()}

# What the ledger reads from Metroculus (``resource_of`` tells the resource each series costs).
LEDGER_METRICS = (POD_METRIC, NAMESPACE_METRIC, IDLE_METRIC, NODE_METRIC, *CLUSTER_COST_METRICS)

# Costs are sums of floats whose order the TSDB picks: closer than this is "unchanged".
_RELATIVE_TOLERANCE = 1e-9
_ABSOLUTE_TOLERANCE = 1e-12

ResourceDay = tuple[str, datetime]  # (resource id, UTC day start)


def day_start(moment: float) -> datetime:
    """The UTC midnight on or before ``moment`` (unix seconds)."""
    return datetime.fromtimestamp(moment - moment % DAY, UTC)


def open_days(now: float, count: int) -> list[datetime]:
    """The ``count`` most recent UTC days, oldest first: the days whose cost may still change."""
    today = day_start(now)
    return [today - timedelta(days=back) for back in range(count - 1, -1, -1)]


def resource_of(metric: str, labels: Mapping[str, str]) -> Resource | None:
    """The resource a series of ``metric`` costs; None for a series without the labels it needs."""
    cluster = labels.get("cluster")
    if not cluster:
        return None
    if metric == POD_METRIC:
        namespace, pod = labels.get("namespace"), labels.get("pod")
        if not namespace or not pod:
            return None
        meta = {"controller_kind": labels["controller_kind"]} if labels.get("controller_kind") else {}
        return Resource(Kind.POD, cluster, namespace, pod, node=labels.get("node") or None,
                        service=labels.get("controller") or None, meta=meta)
    if metric == NAMESPACE_METRIC:
        namespace = labels.get("namespace")
        return Resource(Kind.NAMESPACE, cluster, namespace, namespace) if namespace else None
    if metric == IDLE_METRIC:
        # Kubecost shows idle capacity as the namespace "__idle__": so does the ledger.
        return Resource(Kind.NAMESPACE, cluster, IDLE_NAMESPACE, IDLE_NAMESPACE)
    if metric == NODE_METRIC:
        node = labels.get("node")
        return Resource(Kind.NODE, cluster, None, node, node=node) if node else None
    if metric in CLUSTER_COST_METRICS:
        return Resource(Kind.CLUSTER, cluster, None, cluster)
    return None


def _component_of(metric: str, labels: Mapping[str, str]) -> Resource | None:
    """The cluster cost component a cluster gauge's series is, beside the cluster it adds to."""
    component, cluster = _COMPONENT_OF.get(metric), labels.get("cluster")
    return Resource(Kind.CLUSTER_COST, cluster, None, component) if component and cluster else None


def _namespace(cluster: str, name: str) -> Resource:
    return Resource(Kind.NAMESPACE, cluster, name, name)


@dataclass
class DailyCosts:
    """Cost per (resource, day) of one account, with the resources themselves."""

    costs: dict[ResourceDay, float]
    resources: dict[str, Resource]  # by resource id


def daily_costs(
    cloud_account_id: str, answers: Iterable[Mapping[str, Any]], days: Iterable[datetime]
) -> DailyCosts:
    """Turn ``kubecost_metrics`` answers with ``step`` = one day into costs per resource-day.

    Each value is the cost of the day that ends at its timestamp. Series of one resource
    (a pod that moved node, the six cluster cost components) add up. Each cluster-day
    also gets its components and the namespaces ``__management__`` and ``__unallocated__``
    (module docstring), so namespaces add up to clusters.
    """
    wanted = set(days)
    costs: dict[ResourceDay, float] = {}
    resources: dict[str, Resource] = {}

    def add(resource: Resource, day: datetime, cost: float) -> None:
        rid = resource.id(cloud_account_id)
        resources[rid] = resource
        costs[(rid, day)] = costs.get((rid, day), 0.0) + cost

    # Per (cluster, day): [cluster cost, namespaces' cost, management fee].
    balance: dict[tuple[str, datetime], list[float]] = {}
    for metric, body in ((m, b) for answer in answers for m, b in answer["metrics"].items()):
        for series in body["data"]["result"]:
            resource = resource_of(metric, series["metric"])
            if resource is None:
                continue
            component = _component_of(metric, series["metric"])
            for end, value in series["values"]:
                day, cost = day_start(float(end) - DAY), float(value)
                if day not in wanted:
                    continue
                add(resource, day, cost)
                sums = balance.setdefault((resource.cluster, day), [0.0, 0.0, 0.0])
                if component is not None:
                    add(component, day, cost)
                    sums[0] += cost
                    if component.name == "management_cost":
                        sums[2] += cost
                elif resource.kind is Kind.NAMESPACE:
                    sums[1] += cost
    for (cluster, day), (cluster_cost, allocated, management) in balance.items():
        if cluster_cost == 0.0 and management == 0.0:
            continue  # no cluster series that day: nothing to balance against
        unallocated = cluster_cost - allocated - management
        add(_namespace(cluster, MANAGEMENT_NAMESPACE), day, management)
        add(_namespace(cluster, UNALLOCATED_NAMESPACE), day, unallocated if abs(unallocated) >= UNALLOCATED_MIN_COST else 0.0)
    return DailyCosts(costs, resources)


def unchanged(written: float, cost: float) -> bool:
    return math.isclose(written, cost, rel_tol=_RELATIVE_TOLERANCE, abs_tol=_ABSOLUTE_TOLERANCE)


def corrections(
    cloud_account_id: str, written: Mapping[ResourceDay, ExpenseRow], daily: DailyCosts
) -> tuple[list[ExpenseRow], dict[ResourceDay, ExpenseRow]]:
    """The rows that bring the ledger from ``written`` (the live +1 rows) to ``daily``, and the new live rows.

    A correction repeats the written row with sign −1, dimensions included, so sums per
    namespace or node stay right before ClickHouse merges. A resource-day that vanished
    from the answer keeps its cost: a TSDB that lost data must not erase what was billed.
    A zero cost never written is not written.
    """
    rows: list[ExpenseRow] = []
    changed: dict[ResourceDay, ExpenseRow] = {}
    for (rid, day), cost in daily.costs.items():
        before = written.get((rid, day))
        resource = daily.resources[rid]
        row = ExpenseRow(
            cloud_account_id=cloud_account_id,
            resource_id=rid,
            date=day,
            cost=cost,
            sign=1,
            k8s_cluster=resource.cluster,
            k8s_namespace=resource.namespace,
            k8s_node=resource.node,
            k8s_service=resource.service,
            resource_type=RESOURCE_TYPES[resource.kind],
            resource_name=resource.name,
        )
        if before is None:
            if cost == 0.0:
                continue
        elif unchanged(before.cost, cost) and before[5:] == row[5:]:
            continue
        else:
            rows.append(before._replace(sign=-1))
        rows.append(row)
        changed[(rid, day)] = row
    return rows, changed
