"""The expense answers: ``clean_expenses``, ``available_filters``, ``breakdown_expenses``.

An organization's costs are those of its live cloud accounts (the ledger has no
organization column; deleted accounts' rows stay in ClickHouse but are not shown). Every
sum is over one resource type, because types overlap: a pod's cost is inside its
namespace's, which is inside its cluster's. Without ``resource_type`` the namespaces are
summed — they add up to the clusters: idle capacity is ``__idle__``, the management fee
``__management__`` and any other cluster cost no namespace carries ``__unallocated__`` —
except where the grouping asks for another level (nodes, services).

Every answer comes from the ledger (ClickHouse) alone: no request calls Metroculus or
reads the resource collection, so its time does not grow with the TSDB or with MongoDB.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from k8scost.promql import CLUSTER_COST_COMPONENTS
from k8scost.stores.accounts import Account, AccountStore
from k8scost.stores.expense_queries import ExpenseQueries, ResourceCost, Scope
from k8scost.settings import DAY
from k8scost.stores.resources import RESOURCE_TYPES, Kind, Resource
from serve_apps.restapi.errors import not_found
from serve_apps.restapi.params import NAMESPACE, ExpenseRequest, summed_type

CLUSTER = RESOURCE_TYPES[Kind.CLUSTER]
# The level a breakdown sums when the request names no resource_type: the one that
# carries the grouped column (only pods have a service; nodes are their own rows).
BREAKDOWN_DEFAULT_TYPE: dict[str, str | None] = {
    "k8s_node": "K8s Node",
    "k8s_service": "K8s Pod",
    "resource_type": None,  # every type, each its own key
}


class ExpenseService:
    def __init__(self, accounts: AccountStore, queries: ExpenseQueries) -> None:
        self._accounts = accounts
        self._queries = queries

    async def scope_accounts(self, organization_id: str, asked: Iterable[str]) -> list[Account]:
        """The organization's live accounts, or the asked ones; 404 for one not among them."""
        accounts = await self._accounts.list(organization_id)
        by_id = {account.id: account for account in accounts}
        asked = list(asked)
        for account_id in asked:
            if account_id not in by_id:
                raise not_found("cloud_account_id", account_id)
        return [by_id[account_id] for account_id in asked] if asked else accounts

    async def clean_expenses(
        self, organization_id: str, request: ExpenseRequest, per_day: bool = False
    ) -> dict[str, Any]:
        """The costliest resources of one type, totals, and each account's cluster cost by component.

        ``per_day`` (the design's shape): an entry per resource and day, dated ``date``
        (``YYYY-MM-DD``, UTC), the limit and ``total_count`` counting resource-days.
        """
        resource_type = summed_type(request, NAMESPACE)
        accounts = await self.scope_accounts(organization_id, request.accounts)
        ids = tuple(account.id for account in accounts)
        scope = Scope(ids, request.first_day, request.end, {**request.filters, "resource_type": (resource_type,)},
                      request.share_tenancy)
        clusters = request.filters.get("k8s_cluster", ())
        # The cluster rows carry the whole cost of each account; only the cluster filter
        # applies to them (they have no namespace, node or service).
        cluster_scope = Scope(ids, request.first_day, request.end, {"resource_type": (CLUSTER,), "k8s_cluster": clusters})
        page, per_account, components = await asyncio.gather(
            self._queries.resource_page(scope, request.limit, per_day),
            self._queries.per_account(cluster_scope),
            self._queries.cluster_components(cluster_scope),
        )
        by_id = {account.id: account for account in accounts}
        return {
            "start_date": request.start,
            "end_date": request.end,
            "total_count": page.total_count,
            "total_cost": page.total_cost,
            "clean_expenses": [_expense(row, by_id[row.cloud_account_id], per_day) for row in page.resources],
            "k8s_costs": {
                "k8s_total_cost": sum(per_account.values()),
                "k8s_cost_breakdown": [
                    {
                        "cloud_account_id": account.id,
                        "cloud_account_name": account.name,
                        "total_cost": per_account.get(account.id, 0.0),
                        "breakdown": {
                            name: components.get(account.id, {}).get(name, 0.0) for name in CLUSTER_COST_COMPONENTS
                        },
                    }
                    for account in accounts
                ],
            },
            "resource_type": resource_type,
            "share_tenancy_costs": request.share_tenancy,
        }

    async def available_filters(self, organization_id: str, request: ExpenseRequest) -> dict[str, Any]:
        """Values each filter may take in the range (of every resource type unless one is asked)."""
        accounts = await self.scope_accounts(organization_id, request.accounts)
        scope = Scope(tuple(account.id for account in accounts), request.first_day, request.end, request.filters)
        values = await self._queries.filter_values(scope)
        by_id = {account.id: account for account in accounts}
        return {
            "filter_values": {
                "k8s_cluster": values["k8s_cluster"],
                "k8s_namespace": values["k8s_namespace"],
                "k8s_node": values["k8s_node"],
                "k8s_service": values["k8s_service"],
                "cloud_account": [
                    {"id": by_id[i].id, "name": by_id[i].name, "type": by_id[i].type}
                    for i in values["cloud_account_id"]
                    if i in by_id
                ],
                "resource_type": values["resource_type"],
            }
        }

    async def breakdown_expenses(self, organization_id: str, request: ExpenseRequest) -> dict[str, Any]:
        """Daily costs per value of ``breakdown_by``, with totals for this and the previous period."""
        by = request.breakdown_by
        filters = dict(request.filters)
        if by == "resource_type":
            # Each type is its own key, so the types may be several (or all) without double counting.
            resource_type = filters["resource_type"][0] if len(filters.get("resource_type", ())) == 1 else None
        else:
            resource_type = summed_type(request, BREAKDOWN_DEFAULT_TYPE.get(by, NAMESPACE))
            filters["resource_type"] = (resource_type,)  # type: ignore[assignment]
        accounts = await self.scope_accounts(organization_id, request.accounts)
        first_day = request.first_day
        previous_start = request.start - (request.end - request.start)
        previous_first_day = previous_start - previous_start % DAY
        scope = Scope(
            tuple(account.id for account in accounts), previous_first_day, request.end, filters, request.share_tenancy
        )
        # The previous period comes as one bucket per key (day 0): only its total is shown.
        by_day = (await self._queries.daily(scope, by, daily_from=first_day)).by_day
        previous = by_day.pop(0, {})
        breakdown = {str(day): {} for day in range(first_day, request.end, DAY)}
        current: dict[str, float] = {}
        for day in sorted(by_day):
            costs = by_day[day]
            breakdown[str(day)] = {key: {"cost": cost} for key, cost in costs.items()}
            for key, cost in costs.items():
                current[key] = current.get(key, 0.0) + cost
        counts = {key: {"total": current.get(key, 0.0), "previous_total": previous.get(key, 0.0)}
                  for key in current.keys() | previous.keys()}
        total, previous_total = sum(current.values()), sum(previous.values())
        return {
            "start_date": request.start,
            "end_date": request.end,
            "breakdown_by": by,
            "total": total,
            "previous_total": previous_total,
            "previous_range_start": previous_start,
            "breakdown": breakdown,
            "counts": counts,
            "resource_type": resource_type,
            "share_tenancy_costs": request.share_tenancy,
        }


def _expense(row: ResourceCost, account: Account, dated: bool = False) -> dict[str, Any]:
    """One resource (or resource-day: ``dated``, with its ``date``) of a page. ``cloud_resource_id``
    is built by the function the resource store uses; ``first_seen``/``last_seen`` bound the
    resource's days with cost in the asked range (the ledger's; MongoDB's document spans all time)."""
    resource = Resource(_KINDS[row.resource_type], row.k8s_cluster or "", row.k8s_namespace, row.resource_name)
    day = {"date": datetime.fromtimestamp(row.first_day, UTC).date().isoformat()} if dated else {}
    return {
        **day,
        "resource_id": row.resource_id,
        "resource_name": row.resource_name,
        "cloud_resource_id": resource.cloud_resource_id(),
        "cloud_account_id": account.id,
        "cloud_account_name": account.name,
        "cloud_account_type": account.type,
        "resource_type": row.resource_type,
        "k8s_cluster": row.k8s_cluster,
        "k8s_namespace": row.k8s_namespace,
        "k8s_node": row.k8s_node,
        "k8s_service": row.k8s_service,
        "cost": row.cost,
        "first_seen": row.first_day,
        "last_seen": row.last_day + DAY,
    }


_KINDS = {name: kind for kind, name in RESOURCE_TYPES.items()}


def check_clean_request(request: ExpenseRequest) -> None:
    """Refuse now, before a task is queued, what ``clean_expenses`` would refuse (several types)."""
    summed_type(request, NAMESPACE)
