"""Cost math of the ledger: Metroculus answers → daily costs per resource → expense rows.

Pure functions; the tenant actor does the I/O. A resource-day is written once as a +1
row; when its cost changes, a −1 row repeating the written cost and a +1 row with the
new one go out in the same INSERT, so the ledger never holds a half-made correction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from k8scost.promql import CLUSTER_COST_METRICS
from k8scost.stores.clickhouse import ExpenseRow
from k8scost.stores.resources import RESOURCE_TYPES, Kind, Resource

DAY = 86400
IDLE_NAMESPACE = "__idle__"

# What the ledger reads from Metroculus, and the kind of resource each series costs.
POD_METRIC = "cloudtuner_kubecost_pod_total_cost"
NAMESPACE_METRIC = "cloudtuner_kubecost_namespace_total_cost"
IDLE_METRIC = "cloudtuner_kubecost_idle_cost"
NODE_METRIC = "cloudtuner_kubecost_node_total_cost"
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
    (a pod that moved node, the six cluster cost components) add up.
    """
    wanted = set(days)
    costs: dict[ResourceDay, float] = {}
    resources: dict[str, Resource] = {}
    for metric, body in ((m, b) for answer in answers for m, b in answer["metrics"].items()):
        for series in body["data"]["result"]:
            resource = resource_of(metric, series["metric"])
            if resource is None:
                continue
            rid = resource.id(cloud_account_id)
            resources[rid] = resource
            for end, value in series["values"]:
                day = day_start(float(end) - DAY)
                if day in wanted:
                    costs[(rid, day)] = costs.get((rid, day), 0.0) + float(value)
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
