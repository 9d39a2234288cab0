"""``expenses_async`` tasks in MongoDB (``expenses_tasks``), so any replica can answer for them.

A task is computed by the replica that accepted it; its result is stored as zlib-compressed
JSON, which keeps a 50,000-resource answer far below MongoDB's 16 MB document limit and
is one opaque field to FerretDB. A replica that dies mid-task leaves it pending: a reader
reports such a task failed once it is older than ``RESTAPI_TASK_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from typing import Any

from bson import Binary
from motor.motor_asyncio import AsyncIOMotorDatabase

from k8scost.stores.mongo import raises_store_unavailable

COLLECTION = "expenses_tasks"
PENDING, DONE, FAILED = "pending", "done", "failed"


@raises_store_unavailable
class TaskStore:
    def __init__(self, db: AsyncIOMotorDatabase, timeout_seconds: float) -> None:
        self._collection = db[COLLECTION]
        self._timeout = timeout_seconds

    async def ensure_indexes(self) -> None:
        await self._collection.create_index("organization_id")

    async def create(self, organization_id: str, params: dict[str, Any]) -> str:
        task_id = str(uuid.uuid4())
        await self._collection.insert_one(
            {
                "_id": task_id,
                "organization_id": organization_id,
                "status": PENDING,
                "params": params,
                "created_at": time.time(),
                "finished_at": None,
                "result": None,
                "error": None,
            }
        )
        return task_id

    async def finish(self, task_id: str, result: dict[str, Any]) -> None:
        packed = Binary(zlib.compress(json.dumps(result, separators=(",", ":")).encode(), 6))
        await self._collection.update_one(
            {"_id": task_id}, {"$set": {"status": DONE, "result": packed, "finished_at": time.time()}}
        )

    async def fail(self, task_id: str, message: str) -> None:
        await self._collection.update_one(
            {"_id": task_id}, {"$set": {"status": FAILED, "error": message, "finished_at": time.time()}}
        )

    async def get(self, task_id: str, organization_id: str | None) -> dict[str, Any] | None:
        """The task's status and result, or None if it is unknown or another organization's."""
        query: dict[str, Any] = {"_id": task_id}
        if organization_id is not None:
            query["organization_id"] = organization_id
        doc = await self._collection.find_one(query)
        if doc is None:
            return None
        status, result, error = doc["status"], None, doc.get("error")
        if status == DONE:
            result = json.loads(zlib.decompress(bytes(doc["result"])))
        elif status == PENDING and time.time() - doc["created_at"] > self._timeout:
            status, error = FAILED, "abandoned: the replica computing it stopped; submit it again"
        answer: dict[str, Any] = {"task_id": task_id, "status": status, "result": result}
        if error:
            answer["error"] = {"reason": "task_failed", "message": error}
        return answer
