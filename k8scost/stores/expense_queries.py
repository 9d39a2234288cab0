"""The read side of the ClickHouse ledger for the REST API: costs per resource, filter values, days.

Every query sums ``cost * sign`` and keeps groups with ``sum(sign) > 0``: ``expenses`` is a
CollapsingMergeTree, and a correction's −1 row and the +1 row it cancels may both still be
stored. User values only ever reach ClickHouse as bound parameters; the only text put into
SQL is a column name, and only from the allow-lists below. The daily breakdown of namespaces
reads ``expenses_namespace_daily`` instead (migration 4), whose rows hold ``cost * sign``
and the summed signs already.

Resource types overlap — a pod's cost is inside its namespace's, a namespace's inside its
cluster's — so a caller that adds costs up must restrict a ``Scope`` to one
``resource_type``; the queries do not guess one. The cluster cost components (``K8s
Cluster Cost``) are read only by ``cluster_components``, or by a scope that names their type.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from k8scost.ledger import TENANCY_NAMESPACES
from k8scost.promql import IDLE_NAMESPACE
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.stores.migrations import NAMESPACE_DAILY, NAMESPACE_DAILY_VIEW
from k8scost.stores.resources import RESOURCE_TYPES, Kind

# Columns requests may filter on (each with a set of values), besides the accounts.
FILTER_COLUMNS = ("k8s_cluster", "k8s_namespace", "k8s_node", "k8s_service", "resource_type")
# Columns a daily breakdown may group by.
BREAKDOWN_COLUMNS = ("k8s_namespace", "k8s_node", "k8s_service", "k8s_cluster", "cloud_account_id", "resource_type")

NAMESPACE_TYPE = RESOURCE_TYPES[Kind.NAMESPACE]
COMPONENT_TYPE = RESOURCE_TYPES[Kind.CLUSTER_COST]

# The version of a row for "the resource's latest dimensions": later days win, and on one
# day a +1 row (the live value) wins over the −1 row it replaced.
_VERSION = "toUInt64(toUnixTimestamp(date)) * 2 + (sign > 0)"

# One scan gives the page and the totals: per resource (or per resource and day: ``{group}``),
# its cost and latest dimensions (one argMax over a tuple: a quarter faster than one per
# column); then the count, the sum, and the costliest ``limit`` sorted by ClickHouse. A
# separate totals query would read every row a second time (measured on 18.16, 90 days of
# 21,000 resources: 110 ms vs 190 ms).
_PAGE = f"""
SELECT count(), sum(total),
       arraySlice(arraySort(r -> (-tupleElement(r, 4), tupleElement(r, 1), tupleElement(r, 5)),
                            groupArray(tuple(rid, account, dims, total, first, last))), 1, %(limit)s)
FROM (
    SELECT resource_id AS rid,
           any(cloud_account_id) AS account,
           argMax(tuple(resource_name, resource_type, k8s_cluster, k8s_namespace, k8s_node, k8s_service),
                  {_VERSION}) AS dims,
           sum(cost * sign) AS total,
           toUnixTimestamp(min(date)) AS first,
           toUnixTimestamp(max(date)) AS last
    FROM {{source}}
    WHERE {{where}}
    GROUP BY {{group}}
    HAVING sum(sign) > 0
)
"""
_PER_ACCOUNT = """
SELECT cloud_account_id, sum(cost * sign) FROM {source} WHERE {where}
GROUP BY cloud_account_id HAVING sum(sign) > 0
"""
# Values of live rows only: a value whose rows were all corrected away is not offered.
_FILTER_VALUES = """
SELECT groupUniqArray(cloud_account_id), groupUniqArray(resource_type), groupUniqArray(k8s_cluster),
       groupUniqArray(k8s_namespace), groupUniqArray(k8s_node), groupUniqArray(k8s_service)
FROM (
    SELECT cloud_account_id, resource_type, k8s_cluster, k8s_namespace, k8s_node, k8s_service
    FROM {source} WHERE {where}
    GROUP BY cloud_account_id, resource_type, k8s_cluster, k8s_namespace, k8s_node, k8s_service
    HAVING sum(sign) > 0
)
"""
# One row per day with its keys and costs as arrays: ClickHouse ships arrays as whole
# blocks, which the driver decodes far faster than one row per (key, day), and the answer
# is built day by day as OptScale's breakdown nests it (key-major arrays cost the REST
# benchmark's 90-day breakdown 70 ms more to build and 55 ms more to encode). Days before
# %(daily_from)s are summed into one bucket, day 0: a comparison period needs only its total.
_DAILY = """
SELECT day, groupArray(key), groupArray(total) FROM (
    SELECT ifNull({column}, '') AS key,
           if(date >= toDateTime(%(daily_from)s), toUnixTimestamp(date), 0) AS day,
           sum({cost}) AS total
    FROM {source} WHERE {where}
    GROUP BY key, day HAVING sum(sign) > 0
) GROUP BY day
"""
# What a daily breakdown may read from NAMESPACE_DAILY instead of ``expenses``: the
# columns that table keeps, besides the day and the account.
_NAMESPACE_DAILY_COLUMNS = ("k8s_namespace", "k8s_cluster", "cloud_account_id")
# How long a replica that found no NAMESPACE_DAILY (a ledger not migrated yet) reads
# ``expenses`` before it looks again.
_RECHECK_SECONDS = 60.0

# Per account, each cluster cost component's sum (components carry no namespace, node or service).
_COMPONENTS = """
SELECT cloud_account_id, resource_name, sum(cost * sign) FROM expenses WHERE {where}
GROUP BY cloud_account_id, resource_name HAVING sum(sign) > 0
"""
# The namespace rows with the cluster's tenancy lines (TENANCY_NAMESPACES) shared over its
# namespaces in proportion to their cost, per cluster-day, as Kubecost's shareTenancyCosts
# does: one net row per namespace-day. Idle capacity neither takes a share nor counts in the
# proportion; a cluster-day with no workload keeps its lines, so the sum never changes.
# The inner WHERE reads only what the share depends on: the accounts, days and clusters.
_TENANCY = ", ".join(f"'{name}'" for name in TENANCY_NAMESPACES)
_SHARED_NAMESPACES = f"""(
    SELECT cloud_account_id, resource_id, date, toInt8(1) AS sign, k8s_cluster,
           k8s_namespace, CAST(NULL AS Nullable(String)) AS k8s_node,
           CAST(NULL AS Nullable(String)) AS k8s_service, '{NAMESPACE_TYPE}' AS resource_type,
           k8s_namespace AS resource_name,
           if(base = 0, own, if(k8s_namespace = '{IDLE_NAMESPACE}', own, own + shared * own / base)) AS cost
    FROM (
        SELECT cloud_account_id, k8s_cluster, date, groupArray(rid) AS ids, groupArray(ns) AS names,
               groupArray(c) AS costs,
               arraySum(arrayMap((n, x) -> if(n IN ({_TENANCY}), x, 0), names, costs)) AS shared,
               arraySum(arrayMap((n, x) -> if(n IN ({_TENANCY}) OR n = '{IDLE_NAMESPACE}', 0, x), names, costs)) AS base
        FROM (
            SELECT cloud_account_id, k8s_cluster, date, resource_id AS rid, ifNull(any(k8s_namespace), '') AS ns,
                   sum(cost * sign) AS c
            FROM expenses
            WHERE {{inner}}
            GROUP BY cloud_account_id, k8s_cluster, date, resource_id
            HAVING sum(sign) > 0
        )
        GROUP BY cloud_account_id, k8s_cluster, date
    )
    ARRAY JOIN ids AS resource_id, names AS k8s_namespace, costs AS own
    WHERE base = 0 OR k8s_namespace NOT IN ({_TENANCY})
)"""


@dataclasses.dataclass(frozen=True)
class Scope:
    """Which ledger rows a query reads.

    ``accounts``: cloud account ids, already checked to belong to the caller. Days count
    when their UTC start lies in [start, end). ``filters``: column of ``FILTER_COLUMNS`` →
    the values a row must have one of (an empty or absent entry does not filter); without
    a ``resource_type`` filter every type but the cluster cost components is read.
    ``share_tenancy``: a scope of namespaces reads them with the tenancy lines shared
    (``_SHARED_NAMESPACES``); it changes nothing for other types.
    """

    accounts: tuple[str, ...]
    start: int
    end: int
    filters: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    share_tenancy: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.filters) - set(FILTER_COLUMNS)
        if unknown:
            raise ValueError(f"cannot filter expenses by {sorted(unknown)}")

    def replace(self, **changes: Any) -> Scope:
        return dataclasses.replace(self, **changes)

    def where(self, typed: bool = True) -> tuple[str, dict[str, Any]]:
        """The WHERE clause and its parameters; without the resource type's (``typed=False``)
        for a table of one type (NAMESPACE_DAILY)."""
        clauses = [
            "cloud_account_id IN %(accounts)s",
            "date >= toDateTime(%(start)s)",
            "date < toDateTime(%(end)s)",
        ]
        params: dict[str, Any] = {"accounts": tuple(self.accounts), "start": self.start, "end": self.end}
        for column in FILTER_COLUMNS:  # the allow-list, not the caller's keys, names the columns
            values = self.filters.get(column)
            if values and (typed or column != "resource_type"):
                clauses.append(f"{column} IN %(f_{column})s")
                params[f"f_{column}"] = tuple(values)
        if typed and not self.filters.get("resource_type"):
            clauses.append(f"resource_type != '{COMPONENT_TYPE}'")
        return " AND ".join(clauses), params

    def source(self) -> str:
        """What the query reads: ``expenses``, or the namespaces with the tenancy lines shared."""
        if not (self.share_tenancy and tuple(self.filters.get("resource_type", ())) == (NAMESPACE_TYPE,)):
            return "expenses"
        # The share depends on every namespace of a cluster-day: only the accounts, days
        # and clusters narrow what it reads; the other filters apply to its result.
        inner = Scope(self.accounts, self.start, self.end, {
            "resource_type": (NAMESPACE_TYPE,), "k8s_cluster": tuple(self.filters.get("k8s_cluster", ()))
        })
        return _SHARED_NAMESPACES.format(inner=inner.where()[0])

    def fits_namespace_daily(self, by: str) -> bool:
        """Whether a daily breakdown by ``by`` reads the same from NAMESPACE_DAILY: namespaces
        alone, unshared, filtered and grouped by columns that table keeps."""
        return (
            by in _NAMESPACE_DAILY_COLUMNS
            and not self.share_tenancy
            and tuple(self.filters.get("resource_type", ())) == (NAMESPACE_TYPE,)
            and all(not values or column in (*_NAMESPACE_DAILY_COLUMNS, "resource_type")
                    for column, values in self.filters.items())
        )


@dataclasses.dataclass(frozen=True)
class ResourceCost:
    """One resource's cost over a scope, with its latest dimensions in that scope.

    ``first_day``/``last_day``: the first and last ledger days (unix) it has rows on in the scope.
    """

    resource_id: str
    resource_name: str
    cloud_account_id: str
    resource_type: str
    k8s_cluster: str | None
    k8s_namespace: str | None
    k8s_node: str | None
    k8s_service: str | None
    cost: float
    first_day: int = 0
    last_day: int = 0


@dataclasses.dataclass(frozen=True)
class ResourcePage:
    """The costliest resources of a scope, and how many there are and cost in all."""

    total_count: int
    total_cost: float
    resources: list[ResourceCost]


@dataclasses.dataclass(frozen=True)
class DailyCosts:
    """Per day (unix day start; 0: the days before ``daily_from`` summed), each key's cost."""

    by_day: dict[int, dict[str, float]]

    def per_key(self) -> dict[str, dict[int, float]]:
        """The same costs per key, then day in order: what a model of each key's series reads."""
        keyed: dict[str, dict[int, float]] = {}
        for day in sorted(self.by_day):
            for key, cost in self.by_day[day].items():
                keyed.setdefault(key, {})[day] = cost
        return keyed


class ExpenseQueries:
    """Read-only queries over ``expenses``, on the pool of an ``ExpenseStore``."""

    def __init__(self, store: ExpenseStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._namespace_daily_checked: float | None = None  # when it was last found missing
        self._namespace_daily = False

    async def _select(
        self, template: str, scope: Scope, params: dict[str, Any] | None = None, column: str = "", group: str = "",
        source: str = "",
    ) -> list[tuple]:
        """``template`` over ``scope``'s rows: of ``source`` (a table of namespaces alone) if given."""
        if not scope.accounts:  # ``IN ()`` is a syntax error; no account, no rows
            return []
        where, bound = scope.where(typed=not source)
        query = template.format(
            where=where, column=column, source=source or scope.source(), group=group,
            cost="cost" if source else "cost * sign",  # NAMESPACE_DAILY's costs are signed already
        )
        return await self._store.select(query, {**bound, **(params or {})})

    async def _has_namespace_daily(self) -> bool:
        """Whether migration 4 made NAMESPACE_DAILY (its view exists only once the table is whole);
        a REST replica may start before any actor migrated the ledger."""
        if self._namespace_daily:
            return True
        now = self._clock()
        if self._namespace_daily_checked is None or now - self._namespace_daily_checked >= _RECHECK_SECONDS:
            rows = await self._store.select(
                "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = %(view)s",
                {"view": NAMESPACE_DAILY_VIEW},
            )
            self._namespace_daily = rows[0][0] > 0
            self._namespace_daily_checked = now
        return self._namespace_daily

    async def resource_page(self, scope: Scope, limit: int, per_day: bool = False) -> ResourcePage:
        """How many resources have cost in ``scope``, their summed cost, and the ``limit``
        costliest, costliest first (equal costs by id, then day).

        ``per_day``: the same over resource-days, each its own entry (``first_day`` ==
        ``last_day``, its day), so the count is of resource-days.
        """
        group = "resource_id, date" if per_day else "resource_id"
        rows = await self._select(_PAGE, scope, {"limit": limit}, group=group)
        if not rows:
            return ResourcePage(0, 0.0, [])
        [(count, total, page)] = rows
        resources = [
            ResourceCost(rid, name, account, rtype, *dims, cost, first, last)
            for rid, account, (name, rtype, *dims), cost, first, last in page
        ]
        return ResourcePage(int(count), float(total), resources)

    async def per_account(self, scope: Scope) -> dict[str, float]:
        """Cloud account id → summed cost."""
        return {account: cost for account, cost in await self._select(_PER_ACCOUNT, scope)}

    async def cluster_components(self, scope: Scope) -> dict[str, dict[str, float]]:
        """Cloud account id → cluster cost component (``management_cost``, …) → summed cost;
        of the scope's accounts, days and clusters (components have no other dimension)."""
        components = Scope(scope.accounts, scope.start, scope.end, {
            "resource_type": (COMPONENT_TYPE,), "k8s_cluster": tuple(scope.filters.get("k8s_cluster", ()))
        })
        found: dict[str, dict[str, float]] = {}
        for account, component, cost in await self._select(_COMPONENTS, components):
            found.setdefault(account, {})[component] = cost
        return found

    async def filter_values(self, scope: Scope) -> dict[str, list[str]]:
        """Column → the sorted distinct values live rows have in ``scope`` (NULLs left out)."""
        columns = ("cloud_account_id", "resource_type", "k8s_cluster", "k8s_namespace", "k8s_node", "k8s_service")
        rows = await self._select(_FILTER_VALUES, scope)
        values = rows[0] if rows else ([],) * len(columns)
        return {column: sorted(found) for column, found in zip(columns, values)}

    async def daily(self, scope: Scope, by: str, daily_from: int | None = None) -> DailyCosts:
        """Per day, each value of column ``by`` ("" where a row has none) and its cost.

        Days before ``daily_from`` (default: the scope's start) come summed, as day 0. Read
        from NAMESPACE_DAILY when the scope fits it (``Scope.fits_namespace_daily``).
        """
        if by not in BREAKDOWN_COLUMNS:
            raise ValueError(f"cannot break expenses down by {by!r}; choose one of {BREAKDOWN_COLUMNS}")
        since = scope.start if daily_from is None else daily_from
        source = NAMESPACE_DAILY if scope.fits_namespace_daily(by) and await self._has_namespace_daily() else ""
        rows = await self._select(_DAILY, scope, {"daily_from": since}, column=by, source=source)
        return DailyCosts({day: dict(zip(keys, costs)) for day, keys, costs in rows})

    async def daily_per_resource(self, scope: Scope, daily_from: int | None = None) -> DailyCosts:
        """Per day, each resource name's cost (a pod's, for a scope of pods of one cluster and namespace).

        ``daily``'s query keyed by ``resource_name``, a column no request may break down by
        (a name is unique only within its type, cluster and namespace: narrow the scope so).
        """
        since = scope.start if daily_from is None else daily_from
        rows = await self._select(_DAILY, scope, {"daily_from": since}, column="resource_name")
        return DailyCosts({day: dict(zip(keys, costs)) for day, keys, costs in rows})
