"""``GET /v2/organizations/{organization_id}/k8s_rightsizing``: the rightsizing job's recommendations.

Parameters are checked as the expense endpoints check theirs (``params``): unknown or
repeated ones are refused, every problem is a 400 naming the parameter. Only the
organization's live accounts are read; an account id of another organization is a 404.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from k8scost.rightsizing import Status
from k8scost.stores.accounts import Account
from k8scost.stores.rightsizing import SORT_FIELDS, RightsizingStore
from serve_apps.restapi.errors import bad_request
from serve_apps.restapi.params import _integer, split_query

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
    """The checked request, or ``ApiError`` 400 naming the first parameter at fault."""
    single, given = split_query(items, PARAMS, FILTERS)
    filters: dict[str, tuple[str, ...]] = {}
    for name, field in FILTERS.items():
        values = given.get(name, ())
        if name == "status" and (wrong := [v for v in values if v not in STATUSES]):
            raise bad_request(f"status: {wrong[0][:64]!r} is not one of {', '.join(STATUSES)}")
        if values:
            filters[field] = values
    sort_by = single.get("sort_by", "monthly_savings")
    if sort_by not in SORT_FIELDS:
        raise bad_request(f"sort_by: {sort_by[:64]!r} is not one of {', '.join(SORT_FIELDS)}")
    order = single.get("order", "desc")
    if order not in ORDERS:
        raise bad_request(f"order: {order[:64]!r} is not one of {', '.join(ORDERS)}")
    limit = _integer(single, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
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
