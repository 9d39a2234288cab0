"""``backfill_runs``: which days of a backfill are done, so an interrupted run resumes.

A run is keyed by what it covers (accounts and days): rerunning the same backfill while
it is unfinished skips the days already written; once it finished, the same command
starts over and recomputes every day (which changes nothing if the TSDB did not change).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from datetime import date

from motor.motor_asyncio import AsyncIOMotorDatabase

from k8scost.stores.mongo import raises_store_unavailable

COLLECTION = "backfill_runs"


def run_id(account_ids: Iterable[str], start: date, end: date) -> str:
    """The run's key: the same accounts and range give the same run."""
    covered = ",".join(sorted(set(account_ids))) + f"|{start.isoformat()}|{end.isoformat()}"
    return hashlib.sha256(covered.encode()).hexdigest()[:32]


def task_key(account_id: str, day: date) -> str:
    return f"{account_id}/{day.isoformat()}"


@raises_store_unavailable
class BackfillStore:
    """Reads and writes ``backfill_runs``."""

    def __init__(self, db: AsyncIOMotorDatabase) -> None:
        self._collection = db[COLLECTION]

    async def begin(self, run: str, account_ids: list[str], start: date, end: date) -> set[str]:
        """Open ``run``; the task keys already done when it resumes an unfinished run."""
        doc = await self._collection.find_one({"_id": run})
        if doc is not None and not doc.get("finished_at"):
            await self._collection.update_one({"_id": run}, {"$set": {"resumed_at": int(time.time())}})
            return set(doc.get("done", []))
        fresh = {
            "account_ids": sorted(account_ids),
            "start": start.isoformat(),
            "end": end.isoformat(),
            "started_at": int(time.time()),
            "finished_at": 0,
            "done": [],
        }
        await self._collection.replace_one({"_id": run}, fresh, upsert=True)
        return set()

    async def mark_done(self, run: str, key: str) -> None:
        await self._collection.update_one({"_id": run}, {"$addToSet": {"done": key}})

    async def finish(self, run: str) -> None:
        await self._collection.update_one({"_id": run}, {"$set": {"finished_at": int(time.time())}})
