"""``late_samples``: when each tenant's samples last came late, the evidence its ledger settles on.

The ingress records a write whose samples include one older than its arrival by more than
``LEDGER_CLOSE_DELAY_SECONDS``: a sample that can cost an hour a tenant already closed
(``k8scost.ledger.settle_reason``). It records the write once the TSDB has it, and before it
answers the sender: a write answered 2xx is on record, and one the record failed for is
answered 503 and sent again. One document per account, ``_id`` the account id,
``landed_at`` the latest such write's landing (unix seconds), moved forward only.
"""

from __future__ import annotations

from motor.motor_asyncio import AsyncIOMotorDatabase

from k8scost.stores.mongo import raises_store_unavailable

COLLECTION = "late_samples"


@raises_store_unavailable
class LateSampleStore:
    """Reads and writes ``late_samples``."""

    def __init__(self, db: AsyncIOMotorDatabase) -> None:
        self._collection = db[COLLECTION]

    async def record(self, account_id: str, landed_at: float) -> None:
        """Late samples of ``account_id`` are in the TSDB since ``landed_at``."""
        await self._collection.update_one({"_id": account_id}, {"$max": {"landed_at": landed_at}}, upsert=True)

    async def landed_at(self, account_id: str) -> float | None:
        """When the account's late samples last landed; None when they never did."""
        doc = await self._collection.find_one({"_id": account_id})
        return None if doc is None else doc["landed_at"]
