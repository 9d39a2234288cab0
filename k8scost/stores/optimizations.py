"""Optimizations in MongoDB: each module's latest run per cloud account, its items, and users' marks.

Three collections:

- ``optimization_runs``: one document per (module, account), ``_id`` ``<module>/<account>``:
  ``last_run`` (when the latest run started), ``last_completed`` (when the latest run that
  finished did), ``next_run`` (when the schedule runs it again), ``progress`` (``done`` and
  ``total`` clusters or series of the run going on or last finished), ``status``
  (``running``, ``completed``, ``failed``), ``error``, the run's ``options`` and ``notes``
  (what it could not look at, e.g. "insufficient data: …" for the whole account).
- ``optimization_items``: one document per recommendation, ``_id`` a UUID5 of (module,
  account, the item's key), so an item keeps its id from run to run; its ``saving`` (USD per
  month), the OptScale fields (``resource_id``, ``cloud_resource_id``, ``resource_name``,
  ``cloud_account_id``) and the module's own under ``fields``. A completed run replaces the
  account's items of its module as a whole (delete, then one insert: see
  ``k8scost.stores.rightsizing`` for why on FerretDB 1.24).
- ``optimization_marks``: a user's verdict on an item, ``_id`` the item's id: ``dismissed``
  (this recommendation is not wanted) or ``excluded`` (this resource is left out of the
  module). Marks live apart from the items, so a rerun that replaces the items keeps them;
  restoring an item deletes its mark.

Every document carries ``schema`` (``SCHEMA``); readers skip items of another schema, so a
release that changes the item shape reads no half-understood item. ``ensure_indexes`` is
idempotent and uses plain compound keys (what FerretDB 1.24 and MongoDB 6 both build).
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo import ASCENDING

from k8scost.stores.mongo import raises_store_unavailable

RUNS, ITEMS, MARKS = "optimization_runs", "optimization_items", "optimization_marks"
SCHEMA = 1
# Fixed forever: changing it would give every item a new id, and orphan every mark.
_ID_NAMESPACE = uuid.UUID("9c4e2a71-3b1f-4d0e-8f26-5a7c1e9b0d34")


class Module(enum.StrEnum):
    RIGHTSIZING = "k8s_rightsizing"
    CLUSTER_RIGHTSIZING = "k8s_cluster_rightsizing"
    SPOT_INSTANCES = "k8s_spot_instances"
    COST_ANOMALIES = "k8s_cost_anomalies"


class Mark(enum.StrEnum):
    DISMISSED = "dismissed"
    EXCLUDED = "excluded"


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


def item_id(module: Module | str, cloud_account_id: str, key: Sequence[str]) -> str:
    """The stable id of an item: ``key`` names its subject within the module and account."""
    # JSON keeps the parts apart whatever characters they hold.
    return str(uuid.uuid5(_ID_NAMESPACE, json.dumps([str(module), cloud_account_id, *key])))


def item(
    module: Module,
    cloud_account_id: str,
    organization_id: str,
    key: Sequence[str],
    *,
    resource_id: str,
    cloud_resource_id: str,
    resource_name: str,
    saving: float,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """The stored form of one recommendation."""
    return {
        "_id": item_id(module, cloud_account_id, key),
        "schema": SCHEMA,
        "module": str(module),
        "cloud_account_id": cloud_account_id,
        "organization_id": organization_id,
        "resource_id": resource_id,
        "cloud_resource_id": cloud_resource_id,
        "resource_name": resource_name,
        "saving": float(saving),
        "fields": fields,
    }


def _run_id(module: Module | str, cloud_account_id: str) -> str:
    return f"{module}/{cloud_account_id}"


@raises_store_unavailable
class OptimizationStore:
    """Reads and writes the three collections."""

    def __init__(self, db: AsyncIOMotorDatabase) -> None:
        self._runs, self._items, self._marks = db[RUNS], db[ITEMS], db[MARKS]

    async def ensure_indexes(self) -> None:
        await self._runs.create_index([("cloud_account_id", ASCENDING), ("module", ASCENDING)])
        await self._items.create_index([("cloud_account_id", ASCENDING), ("module", ASCENDING)])
        await self._marks.create_index([("cloud_account_id", ASCENDING), ("module", ASCENDING)])

    # --- runs (the jobs) ---------------------------------------------------------------------

    async def start_run(
        self, module: Module, cloud_account_id: str, organization_id: str, started: int, next_run: int,
        options: dict[str, Any], total: int = 0,
    ) -> None:
        """Record that a run of ``module`` over the account started; its items stay until it completes."""
        await self._runs.update_one(
            {"_id": _run_id(module, cloud_account_id)},
            {
                "$set": {
                    "schema": SCHEMA, "module": str(module), "cloud_account_id": cloud_account_id,
                    "organization_id": organization_id, "last_run": started, "next_run": next_run,
                    "status": str(RunStatus.RUNNING), "error": None, "options": options,
                    "progress": {"done": 0, "total": total},
                },
                "$setOnInsert": {"last_completed": 0, "notes": []},
            },
            upsert=True,
        )

    async def progress(self, module: Module, cloud_account_id: str, done: int, total: int) -> None:
        await self._runs.update_one(
            {"_id": _run_id(module, cloud_account_id)}, {"$set": {"progress": {"done": done, "total": total}}}
        )

    async def complete_run(
        self, module: Module, cloud_account_id: str, items: Sequence[dict[str, Any]], notes: Sequence[str] = (),
        completed: int | None = None,
    ) -> None:
        """Make ``items`` (all of the module's for the account) its items, and the run completed."""
        await self._items.delete_many({"cloud_account_id": cloud_account_id, "module": str(module)})
        if items:
            await self._items.insert_many(list(items), ordered=False)
        await self._runs.update_one(
            {"_id": _run_id(module, cloud_account_id)},
            {"$set": {"status": str(RunStatus.COMPLETED), "last_completed": completed or int(time.time()),
                      "notes": list(notes)}},
        )

    async def fail_run(self, module: Module, cloud_account_id: str, error: str) -> None:
        """The run failed: its previous items stay, as ``last_completed`` says."""
        await self._runs.update_one(
            {"_id": _run_id(module, cloud_account_id)},
            {"$set": {"status": str(RunStatus.FAILED), "error": error[:1000]}},
        )

    # --- reads (the REST API) ----------------------------------------------------------------

    async def runs(self, cloud_account_ids: Iterable[str], modules: Iterable[str]) -> list[dict[str, Any]]:
        """The runs of these accounts and modules."""
        query = {"cloud_account_id": {"$in": [str(a) for a in cloud_account_ids]},
                 "module": {"$in": [str(m) for m in modules]}, "schema": SCHEMA}
        return await self._runs.find(query).sort("_id", ASCENDING).to_list(None)

    async def items(self, cloud_account_ids: Iterable[str], modules: Iterable[str]) -> list[dict[str, Any]]:
        """The items of these accounts and modules, the largest saving first (then by id)."""
        query = {"cloud_account_id": {"$in": [str(a) for a in cloud_account_ids]},
                 "module": {"$in": [str(m) for m in modules]}, "schema": SCHEMA}
        found = await self._items.find(query).to_list(None)
        # Sorted here: FerretDB 1.24 sorts in memory anyway, and the totals need every item.
        return sorted(found, key=lambda doc: (-doc["saving"], doc["_id"]))

    async def marks(self, cloud_account_ids: Iterable[str]) -> dict[str, Mark]:
        """Item id → its mark, for the accounts' marked items."""
        query = {"cloud_account_id": {"$in": [str(a) for a in cloud_account_ids]}}
        return {doc["_id"]: Mark(doc["mark"]) async for doc in self._marks.find(query)}

    # --- marks (users) -----------------------------------------------------------------------

    async def find_item(self, item_id_: str, cloud_account_ids: Iterable[str]) -> dict[str, Any] | None:
        """The item, if it is one of these accounts'."""
        return await self._items.find_one(
            {"_id": str(item_id_), "cloud_account_id": {"$in": [str(a) for a in cloud_account_ids]}}
        )

    async def mark(self, found: dict[str, Any], mark: Mark | None, user_id: str | None) -> None:
        """Set (or, with None, remove: the item is active again) the mark of an item ``find_item`` gave."""
        if mark is None:
            await self._marks.delete_one({"_id": found["_id"]})
            return
        await self._marks.update_one(
            {"_id": found["_id"]},
            {"$set": {"schema": SCHEMA, "mark": str(mark), "module": found["module"],
                      "cloud_account_id": found["cloud_account_id"], "organization_id": found["organization_id"],
                      "user_id": user_id, "marked_at": int(time.time())}},
            upsert=True,
        )
