"""``GET /v2/organizations/{organization_id}/optimizations``, in OptScale's shape, and the item marks.

Parameters are checked as every endpoint checks its own (``k8scost.query_params``):
``type`` (repeatable, the modules; default all), ``cloud_account_id`` (repeatable; default
every live account of the organization, another's → 404), ``limit`` (items listed per
module) and ``status`` (``active``, the default; ``dismissed``; ``excluded``).

Which items count. An item's status is its mark (``k8scost.stores.optimizations``), else
``active``. ``optimizations.<module>`` holds the module's items of the asked status among
the asked accounts: ``count`` and ``saving`` (Σ of their ``saving``) cover every one of
them, ``items`` lists the first ``limit``, the largest saving first; ``total_saving`` is Σ
of the modules' ``saving``. ``dismissed_optimizations`` and ``excluded_optimizations``
give each module's ``count`` and ``saving`` of dismissed and excluded items, whatever
``status`` asks. Run times: each module's ``last_run`` and ``last_completed`` are the
latest over its runs of the asked accounts, ``next_run`` the earliest (0: never ran); the
top level takes the same over the modules asked. A module's ``options`` are those of its
latest run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from k8scost.query_params import QueryParams
from k8scost.stores.accounts import Account
from k8scost.stores.optimizations import Mark, Module, OptimizationStore

ACTIVE = "active"
STATUSES = (ACTIVE, *(str(m) for m in Mark))
MODULES = tuple(str(m) for m in Module)
DEFAULT_LIMIT = 1000
MAX_LIMIT = 50_000
REPEATABLE = ("type", "cloud_account_id")
PARAMS = frozenset({*REPEATABLE, "limit", "status"})

OPENAPI = {
    "parameters": [
        {"name": "type", "in": "query", "required": False,
         "description": "Repeatable: only these modules (default all).",
         "schema": {"type": "array", "items": {"type": "string", "enum": list(MODULES)}}},
        {"name": "cloud_account_id", "in": "query", "required": False,
         "description": "Repeatable: only these accounts (of the organization).",
         "schema": {"type": "array", "items": {"type": "string"}}},
        {"name": "limit", "in": "query", "required": False,
         "description": f"Most items listed per module (default {DEFAULT_LIMIT}, at most {MAX_LIMIT}); "
         "count and saving cover all.", "schema": {"type": "integer"}},
        {"name": "status", "in": "query", "required": False,
         "description": "Which items `optimizations` holds: active (default), dismissed or excluded.",
         "schema": {"type": "string", "enum": list(STATUSES)}},
    ]
}


@dataclasses.dataclass(frozen=True)
class OptimizationsRequest:
    modules: tuple[str, ...]
    accounts: tuple[str, ...]  # empty: all of the organization's
    limit: int
    status: str


def parse(items: Iterable[tuple[str, str]]) -> OptimizationsRequest:
    """The checked request, or ``BadParameter`` naming the first parameter at fault."""
    query = QueryParams(items, PARAMS, REPEATABLE)
    modules = query.values("type", MODULES) or MODULES
    accounts = query.values("cloud_account_id")
    limit = query.integer("limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
    status = query.choice("status", STATUSES, ACTIVE)
    return OptimizationsRequest(tuple(m for m in MODULES if m in modules), accounts, limit, status)


def listed(doc: dict[str, Any], names: dict[str, str], status: str) -> dict[str, Any]:
    """An item as the answer lists it: the module's own fields, then OptScale's."""
    return {
        **doc["fields"],
        "id": doc["_id"],
        "module": doc["module"],
        "resource_id": doc["resource_id"],
        "cloud_resource_id": doc["cloud_resource_id"],
        "resource_name": doc["resource_name"],
        "cloud_account_id": doc["cloud_account_id"],
        "cloud_account_name": names.get(doc["cloud_account_id"]),
        "saving": doc["saving"],
        "status": status,
    }


def _times(runs: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {
        "last_run": max((r["last_run"] for r in runs), default=0),
        "last_completed": max((r["last_completed"] for r in runs), default=0),
        "next_run": min((r["next_run"] for r in runs), default=0),
    }


async def answer(store: OptimizationStore, accounts: Sequence[Account], request: OptimizationsRequest) -> dict[str, Any]:
    """The optimizations of ``accounts`` (already scoped to the organization)."""
    names = {account.id: account.name for account in accounts}
    runs = await store.runs(names, request.modules)
    found = await store.items(names, request.modules)
    marks = await store.marks(names)
    per_status: dict[str, dict[str, list[dict[str, Any]]]] = {s: {m: [] for m in request.modules} for s in STATUSES}
    for doc in found:
        per_status[str(marks.get(doc["_id"], ACTIVE))][doc["module"]].append(doc)
    optimizations = {}
    for module in request.modules:
        own = [r for r in runs if r["module"] == module]
        latest = max(own, key=lambda r: r["last_run"], default=None)
        chosen = per_status[request.status][module]
        optimizations[module] = {
            "count": len(chosen),
            "saving": sum(doc["saving"] for doc in chosen),
            "items": [listed(doc, names, request.status) for doc in chosen[: request.limit]],
            "options": latest["options"] if latest else {},
            **_times(own),
            "runs": [
                {"cloud_account_id": r["cloud_account_id"], "status": r["status"], "error": r["error"],
                 "progress": r["progress"], "notes": r["notes"], **_times([r])}
                for r in own
            ],
        }
    summaries = {
        f"{mark}_optimizations": {
            module: {"count": len(docs), "saving": sum(doc["saving"] for doc in docs)}
            for module, docs in per_status[str(mark)].items()
        }
        for mark in Mark
    }
    return {
        "total_saving": sum(o["saving"] for o in optimizations.values()),
        **_times(runs),
        "status": request.status,
        "optimizations": optimizations,
        **summaries,
    }


async def set_status(store: OptimizationStore, accounts: Sequence[Account], item_id: str, status: str,
                     user_id: str | None) -> dict[str, Any] | None:
    """Mark an item of ``accounts`` (``active`` removes its mark); the item as listed, None if not theirs."""
    found = await store.find_item(item_id, [a.id for a in accounts])
    if found is None:
        return None
    await store.mark(found, None if status == ACTIVE else Mark(status), user_id)
    return listed(found, {a.id: a.name for a in accounts}, status)
