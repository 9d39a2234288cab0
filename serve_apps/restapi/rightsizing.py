"""``GET /v2/organizations/{organization_id}/k8s_rightsizing``: the rightsizing job's recommendations.

Parameters are checked as every endpoint checks its own (``k8scost.query_params``): unknown
or repeated ones are refused, every problem is a 400 naming the parameter. Only the
organization's live accounts are read; an account id of another organization is a 404.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from k8scost.query_params import QueryParams
from k8scost.rightsizing import Status
from k8scost.stores.accounts import Account
from k8scost.stores.rightsizing import SORT_FIELDS, RightsizingStore

DEFAULT_LIMIT = 1000
MAX_LIMIT = 50_000
ORDERS = ("desc", "asc")
STATUSES = tuple(str(s) for s in Status)
# Repeatable filters → the stored field they match.
FILTERS = {"cloud_account_id": "cloud_account_id", "k8s_cluster": "cluster", "k8s_namespace": "namespace",
           "status": "status"}
PARAMS = frozenset({*FILTERS, "sort_by", "order", "limit"})

OPENAPI = {
    "parameters": [
        {"name": "cloud_account_id", "in": "query", "required": False,
         "description": "Repeatable: only these accounts (of the organization).",
         "schema": {"type": "array", "items": {"type": "string"}}},
        {"name": "k8s_cluster", "in": "query", "required": False, "description": "Repeatable: only these clusters.",
         "schema": {"type": "array", "items": {"type": "string"}}},
        {"name": "k8s_namespace", "in": "query", "required": False, "description": "Repeatable: only these namespaces.",
         "schema": {"type": "array", "items": {"type": "string"}}},
        {"name": "status", "in": "query", "required": False, "description": "Repeatable: only these statuses.",
         "schema": {"type": "array", "items": {"type": "string", "enum": list(STATUSES)}}},
        {"name": "sort_by", "in": "query", "required": False,
         "description": "Field the list is sorted by (default monthly_savings; unknown values last when descending).",
         "schema": {"type": "string", "enum": list(SORT_FIELDS)}},
        {"name": "order", "in": "query", "required": False, "description": "desc (default) or asc.",
         "schema": {"type": "string", "enum": list(ORDERS)}},
        {"name": "limit", "in": "query", "required": False,
         "description": f"Most recommendations listed (default {DEFAULT_LIMIT}, at most {MAX_LIMIT}); "
         "the counts and sums cover all that match.",
         "schema": {"type": "integer"}},
    ]
}


@dataclasses.dataclass(frozen=True)
class RightsizingRequest:
    accounts: tuple[str, ...]  # empty: all of the organization's
    filters: dict[str, tuple[str, ...]]  # stored field → values
    sort_by: str
    descending: bool
    limit: int


def parse(items: Iterable[tuple[str, str]]) -> RightsizingRequest:
    """The checked request, or ``BadParameter`` naming the first parameter at fault."""
    query = QueryParams(items, PARAMS, FILTERS)
    filters = {
        field: values
        for name, field in FILTERS.items()
        if (values := query.values(name, STATUSES if name == "status" else None))
    }
    sort_by = query.choice("sort_by", SORT_FIELDS, "monthly_savings")
    order = query.choice("order", ORDERS, "desc")
    limit = query.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    accounts = filters.pop("cloud_account_id", ())
    return RightsizingRequest(accounts, filters, sort_by, order == "desc", limit)


async def answer(store: RightsizingStore, accounts: Sequence[Account], request: RightsizingRequest) -> dict[str, Any]:
    """The recommendations of ``accounts`` (already scoped to the organization), and their totals."""
    names = {account.id: account.name for account in accounts}
    found, summary = await store.find(list(names), request.filters, request.sort_by, request.descending, request.limit)
    items = []
    for doc in found:
        item = {"id": doc.pop("_id"), **doc}
        item["cloud_account_name"] = names.get(item["cloud_account_id"])
        items.append(item)
    return {
        "k8s_rightsizing": items,
        "total_count": sum(int(s["count"]) for s in summary.values()),
        "monthly_savings": summary[str(Status.OVER)]["monthly_savings"],
        "extra_monthly_cost": 0.0 - summary[str(Status.UNDER)]["monthly_savings"],
        "statuses": summary,
        "sort_by": request.sort_by,
        "order": "desc" if request.descending else "asc",
    }
