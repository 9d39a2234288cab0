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

A cycle reads either whole days (``LEDGER_MODE=full``: one bucket per day) or, by
default, only the hours that can have changed since the last cycle (``plan_cycle``).
Metroculus' bucket (b − s, b] of step s is the integral over its subquery points in
(b − s + lag, b + lag], points at multiples of the resolution (``k8scost.promql.integral``);
buckets that tile a day hold each point of the day once, so for hour ends h:

    cost(day d) = Σ_{h = d+1h … d+24h} cost((h − 1h, h])     exactly, up to float rounding

and every sum above (a resource's cost, a cluster-day's balance) is a sum over buckets.
With now the cycle's clock, lag = LEDGER_RATE_LAG_SECONDS, delay = LEDGER_CLOSE_DELAY_SECONDS:

    closed = ⌊(now − lag − delay) / 1h⌋ · 1h     hours ending by it are final: every sample
                                                 their points read was due delay s ago
    until  = ⌈(now − lag + lookback) / 1h⌉ · 1h  hours after it have no point within the TSDB's
                                                 lookback of a sample taken by now
    day cost = (its closed hours, folded once) + (its hours in (closed, until], read every cycle)

Samples that arrive after their hour closed (a sender catching up) land at the next
*settle*, which reads the days from their start again (``settle_reason``): when the ingress
recorded such a write since the last settle began (``k8scost.stores.late_samples``), when a
day closes, after a restart or a failed cycle, for days asked for by name, and on a
schedule, a backstop. A sample at t can move the points in [t, t + lookback], so only the
hours ending after t − lag; it arrives late when after t + delay, so every write that
reaches a closed hour (closed ≤ arrival − lag − delay) is on record.

A tenant actor's loop waits before its first cycle (``start_delay``), with
spread = LEDGER_START_SPREAD_SECONDS and h = the first 64 bits of BLAKE2b(account id):

    delay = spread · ⌊h / 2¹¹⌋ / 2⁵³      in [0, spread), uniform over account ids
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from k8scost.promql import (
    CLUSTER_COST_COMPONENTS,
    CLUSTER_COST_METRICS,
    IDLE_METRIC,
    IDLE_NAMESPACE,
    LOOKBACK_SECONDS,
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
Dimensions = tuple[Any, ...]  # a resource as its expense rows carry it: ``ExpenseRow[5:]``
HOUR = 3600  # the bucket an incremental cycle reads and keeps


def day_start(moment: float) -> datetime:
    """The UTC midnight on or before ``moment`` (unix seconds)."""
    return datetime.fromtimestamp(moment - moment % DAY, UTC)


def open_days(now: float, count: int) -> list[datetime]:
    """The ``count`` most recent UTC days, oldest first: the days whose cost may still change."""
    today = day_start(now)
    return [today - timedelta(days=back) for back in range(count - 1, -1, -1)]


def start_delay(account_id: str, spread: float) -> float:
    """Seconds the actor of ``account_id`` waits before its first cycle: in [0, ``spread``), the
    same for the same id in every process, spread uniformly over ids (module docstring).

    A hash, not a random draw: a tenant restarted again and again (by Ray, or by the
    supervisor) waits as long each time, so its phase, its ledger's lag after a restart and
    the supervisor's patience are the same every time; a node's worth of tenants still lands
    evenly over the spread. Not ``hash()``: Python salts it per process.
    """
    h = int.from_bytes(hashlib.blake2b(account_id.encode(), digest_size=8).digest(), "big")
    # 53 bits: exactly a double's mantissa, so the fraction stays below 1 (64 would round up to 1.0).
    return spread * ((h >> 11) / 2**53)


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


@dataclass
class SeriesCosts:
    """Metroculus' buckets added up per resource-day, before the lines derived per cluster-day.

    ``balance``: per (cluster, day), [cluster cost, namespaces' cost (idle included),
    management fee], what ``__management__`` and ``__unallocated__`` are derived from. Every
    field is a sum over buckets, so the costs of disjoint spans add up (``plus``).
    """

    costs: dict[ResourceDay, float] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)
    balance: dict[tuple[str, datetime], list[float]] = field(default_factory=dict)

    def plus(self, other: SeriesCosts) -> SeriesCosts:
        """The costs of both spans; a resource as ``other`` (the later read) has it."""
        costs = dict(self.costs)
        for key, cost in other.costs.items():
            costs[key] = costs.get(key, 0.0) + cost
        balance = {key: list(sums) for key, sums in self.balance.items()}
        for key, sums in other.balance.items():
            balance[key] = [a + b for a, b in zip(balance.get(key, [0.0, 0.0, 0.0]), sums)]
        return SeriesCosts(costs, {**self.resources, **other.resources}, balance)


def fold(cloud_account_id: str, answers: Iterable[Mapping[str, Any]], days: Iterable[datetime]) -> SeriesCosts:
    """Add up the buckets of ``kubecost_metrics`` answers per resource-day of ``days``.

    A value at t of an answer of step s is the cost of (t − s, t], a bucket that must lie
    within one UTC day (the day of t − s). Series of one resource (a pod that moved node,
    the six cluster cost components) add up.
    """
    wanted = set(days)
    folded = SeriesCosts()
    costs, resources, balance = folded.costs, folded.resources, folded.balance

    def add(rid: str, day: datetime, cost: float) -> None:
        costs[(rid, day)] = costs.get((rid, day), 0.0) + cost

    for answer in answers:
        step = float(answer["step"])
        days_of: dict[Any, datetime] = {}  # bucket end → its day: every series has the same ends
        for metric, body in answer["metrics"].items():
            for series in body["data"]["result"]:
                resource = resource_of(metric, series["metric"])
                if resource is None:
                    continue
                # Ids once per series (and cached across cycles: ``resource_id``), days once
                # per bucket end: folding 20,000 pods' two hourly buckets took 0.44 s with
                # both made per value, 0.25 s so (ad hoc).
                rid = resource.id(cloud_account_id)
                component = _component_of(metric, series["metric"])
                component_id = component.id(cloud_account_id) if component is not None else ""
                for end, value in series["values"]:
                    day = days_of.get(end)
                    if day is None:
                        day = days_of[end] = day_start(float(end) - step)
                    if day not in wanted:
                        continue
                    cost = float(value)
                    resources[rid] = resource
                    add(rid, day, cost)
                    sums = balance.setdefault((resource.cluster, day), [0.0, 0.0, 0.0])
                    if component is not None:
                        resources[component_id] = component
                        add(component_id, day, cost)
                        sums[0] += cost
                        if component.name == "management_cost":
                            sums[2] += cost
                    elif resource.kind is Kind.NAMESPACE:
                        sums[1] += cost
    return folded


def balanced(cloud_account_id: str, series: SeriesCosts) -> DailyCosts:
    """The day costs: the series' own, and each cluster-day's ``__management__`` and
    ``__unallocated__`` lines (module docstring), so namespaces add up to clusters."""
    costs, resources = dict(series.costs), dict(series.resources)
    for (cluster, day), (cluster_cost, allocated, management) in series.balance.items():
        if cluster_cost == 0.0 and management == 0.0:
            continue  # no cluster series that day: nothing to balance against
        unallocated = cluster_cost - allocated - management
        lines = ((MANAGEMENT_NAMESPACE, management),
                 (UNALLOCATED_NAMESPACE, unallocated if abs(unallocated) >= UNALLOCATED_MIN_COST else 0.0))
        for name, cost in lines:
            resource = _namespace(cluster, name)
            rid = resource.id(cloud_account_id)
            resources[rid] = resource
            costs[(rid, day)] = costs.get((rid, day), 0.0) + cost
    return DailyCosts(costs, resources)


def daily_costs(
    cloud_account_id: str, answers: Iterable[Mapping[str, Any]], days: Iterable[datetime]
) -> DailyCosts:
    """Turn ``kubecost_metrics`` answers (buckets of whole days or less) into costs per resource-day."""
    return balanced(cloud_account_id, fold(cloud_account_id, answers, days))


@dataclass(frozen=True)
class Read:
    """One ``kubecost_metrics`` call: buckets of ``step`` seconds over (start, end], unix seconds."""

    start: int
    end: int
    step: int


@dataclass(frozen=True)
class Hours:
    """What lets a cycle read only new hours: the closed hours of ``days``, folded.

    Kept in memory only, and only after a good cycle: a restarted or failed actor has
    none, so its next cycle settles.
    """

    days: tuple[datetime, ...]
    closed_until: int  # every bucket of ``days`` ending at or before it is in ``closed``
    closed: SeriesCosts
    settled_at: float  # when the days were last read from their start
    # The tenant's late-sample record (``k8scost.stores.late_samples``) as read before that
    # read of the TSDB: a later record is a late write the settle may have missed.
    late_seen: float | None = None


@dataclass(frozen=True)
class CyclePlan:
    """What a cycle reads: the hours closed since ``base`` (one bucket per day, then kept)
    and the open hours (hourly, read again by the next cycle)."""

    settle: str | None  # why the days are read from their start; None: from ``base`` on
    base: SeriesCosts
    closed_until: int
    closed_reads: list[Read]
    open_reads: list[Read]


def closed_until(now: float, lag: int, delay: int) -> int:
    """⌊(now − lag − delay) / 1h⌋ · 1h: the end of the last hour whose samples are all due (module docstring)."""
    return math.floor((now - lag - delay) / HOUR) * HOUR


def read_until(now: float, lag: int) -> int:
    """⌈(now − lag + lookback) / 1h⌉ · 1h: the end of the last hour that can have cost yet (module docstring)."""
    return math.ceil((now - lag + LOOKBACK_SECONDS) / HOUR) * HOUR


def settle_reason(
    hours: Hours | None, days: Sequence[datetime], now: float, closed: int, settle_seconds: float, asked: bool = False,
    late_landed_at: float | None = None,
) -> str | None:
    """Why a cycle over ``days`` at ``now`` must read them from their start, or None.

    Days ``asked`` for by name (an operator's or a test's ``cycle(days)``) are read whole:
    whoever names a day wants all of it, late samples included, not the hours since the
    last cycle of other days.
    ``hours`` must exist, be younger than ``settle_seconds``, hold every day it is asked
    (a day it lacks must not have begun before ``closed_until``: nothing of it was folded),
    and no day may have closed since: its last hours then get one full read, which also
    picks up the samples that came after their hour closed. ``late_landed_at``: the tenant's
    late-sample record, read before this cycle's reads; one other than the settle saw is a
    late write that settle may have missed (comparing records, not clocks: the ingress's
    clock is another machine's).
    """
    if asked:
        return "days asked"
    if hours is None:
        return "no hours kept"
    if late_landed_at != hours.late_seen:
        return "late samples"
    if now - hours.settled_at >= settle_seconds:
        return "schedule"
    if any(day not in hours.days and day.timestamp() < hours.closed_until for day in days):
        return "days changed"
    if any(hours.closed_until < day.timestamp() + DAY <= closed for day in days):
        return "day closed"
    return None


def plan_cycle(
    hours: Hours | None, days: Sequence[datetime], now: float, lag: int, delay: int, settle_seconds: float,
    asked: bool = False, late_landed_at: float | None = None,
) -> CyclePlan:
    """The reads of a cycle over ``days`` at ``now``: a settle when ``settle_reason`` says so.

    Per day d (D = d + 1 day), from f = ``hours.closed_until`` (d on a settle), with
    C = ``closed_until`` and E = ``read_until``:

        closed read  (max(f, d), min(C, D)]  one bucket       the hours closed since
        open read    (max(f, C, d), min(E, D)]  hourly         the hours not closed yet

    Settling a day that closed long ago is one bucket of a whole day: the full read.
    """
    closed = closed_until(now, lag, delay)
    until = read_until(now, lag)
    settle = settle_reason(hours, days, now, closed, settle_seconds, asked, late_landed_at)
    known = None if settle or hours is None else hours.closed_until
    base = SeriesCosts() if hours is None or known is None else _only_days(hours.closed, days)
    closed_reads, open_reads = [], []
    for day in sorted(days):
        start, end = int(day.timestamp()), int(day.timestamp()) + DAY
        first = start if known is None else max(known, start)
        if first < min(closed, end):
            closed_reads.append(Read(first, min(closed, end), min(closed, end) - first))
        if max(first, closed) < min(until, end):
            open_reads.append(Read(max(first, closed), min(until, end), HOUR))
    return CyclePlan(settle, base, closed if known is None else max(known, closed), closed_reads, open_reads)


def _only_days(series: SeriesCosts, days: Sequence[datetime]) -> SeriesCosts:
    """``series`` without the days not in ``days`` (the open days moved on)."""
    wanted = set(days)
    if {day for _, day in series.balance} <= wanted:
        return series
    costs = {key: cost for key, cost in series.costs.items() if key[1] in wanted}
    return SeriesCosts(
        costs,
        {rid: series.resources[rid] for rid, _ in costs},
        {key: sums for key, sums in series.balance.items() if key[1] in wanted},
    )


def _dimensions(resource: Resource) -> Dimensions:
    """``ExpenseRow[5:]`` of ``resource``: cluster, namespace, node, service, type, name."""
    return (resource.cluster, resource.namespace, resource.node, resource.service,
            RESOURCE_TYPES[resource.kind], resource.name)


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
    dimensions: dict[str, Dimensions] = {}  # per resource, not per resource-day: most days are unchanged
    for (rid, day), cost in daily.costs.items():
        before = written.get((rid, day))
        if before is None and cost == 0.0:
            continue
        if rid not in dimensions:
            dimensions[rid] = _dimensions(daily.resources[rid])
        if before is not None:
            if unchanged(before.cost, cost) and before[5:] == dimensions[rid]:
                continue
            rows.append(before._replace(sign=-1))
        row = ExpenseRow(cloud_account_id, rid, day, cost, 1, *dimensions[rid])
        rows.append(row)
        changed[(rid, day)] = row
    return rows, changed




def documents_of_rows(known: Mapping[str, Dimensions], rows: Iterable[ExpenseRow]) -> dict[str, Dimensions]:
    """``known`` (resource id → the dimensions its document was written with) and what live rows tell.

    The actor writes a resource's document before its first row, and again before a row
    of other dimensions (an expense never exists without its resource), so a live row
    proves its resource's document exists with the row's dimensions. What ``known`` holds
    wins: it is what this process wrote. A resource whose rows disagree (moved between
    days, or a write that failed between document and rows) stays unknown, and its next
    change rewrites its document. Rows do not carry a pod's ``meta`` (its controller's
    kind), which does not change in a pod's life.
    """
    found: dict[str, Dimensions | None] = {}
    for row in rows:
        if row.resource_type == RESOURCE_TYPES[Kind.CLUSTER_COST] or row.resource_id in known:
            continue  # a ledger row without a document; or known already
        dimensions = row[5:]
        found[row.resource_id] = dimensions if found.get(row.resource_id, dimensions) == dimensions else None
    return {**known, **{rid: dimensions for rid, dimensions in found.items() if dimensions is not None}}
