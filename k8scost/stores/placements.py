"""``tenant_placements``: which tenant host runs which tenant's ledger.

One document per account, ``_id`` the account id. Inserting it is the one atomic step that
makes a host the tenant's single ledger writer: the supervisor and a backfill placing the
same new account at once agree on the host whose document landed. A host reads its
tenants here whenever it (re)starts, so a host Ray restarts runs the same tenants again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo.errors import BulkWriteError

from k8scost.stores.mongo import raises_store_unavailable

COLLECTION = "tenant_placements"
HOST_PREFIX = "tenant-host-"
_DUPLICATE_KEY = 11000


def host_name(index: int) -> str:
    return f"{HOST_PREFIX}{index}"


def assign(new: Iterable[str], placed: Mapping[str, str], per_host: int) -> dict[str, str]:
    """Hosts for the ``new`` accounts: the lowest-numbered host with room first, then new ones.

    ``placed``: account → host of the accounts already placed. Filling the lowest hosts keeps
    hosts full as accounts come and go, and reuses a host's name once it emptied.
    """
    load = Counter(placed.values())
    chosen: dict[str, str] = {}
    index = 0
    for account in new:
        while load[host_name(index)] >= per_host:
            index += 1
        chosen[account] = host_name(index)
        load[host_name(index)] += 1
    return chosen


@raises_store_unavailable
class PlacementStore:
    """Reads and writes ``tenant_placements``."""

    def __init__(self, db: AsyncIOMotorDatabase) -> None:
        self._collection = db[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self._collection.create_index("host")

    async def all(self) -> dict[str, str]:
        """account → host, every placed account."""
        return {doc["_id"]: doc["host"] async for doc in self._collection.find({}, {"host": 1})}

    async def on(self, host: str) -> dict[str, str]:
        """account → organization, the tenants placed on ``host``."""
        return {doc["_id"]: doc["organization_id"] async for doc in self._collection.find({"host": host})}

    async def place(
        self, accounts: Mapping[str, str], per_host: int, placed: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """account → host for ``accounts`` (account → organization), placing those not placed yet.

        What is stored wins: an account another placer got to first keeps that host.
        ``placed``: every placement (``all``) as the caller just read it, not read again.
        """
        placed = await self.all() if placed is None else placed
        new = assign(sorted(accounts.keys() - placed.keys()), placed, per_host)
        if new:
            docs = [{"_id": a, "host": host, "organization_id": accounts[a]} for a, host in new.items()]
            try:
                await self._collection.insert_many(docs, ordered=False)
            except BulkWriteError as error:
                if any(e["code"] != _DUPLICATE_KEY for e in error.details["writeErrors"]):
                    raise
            placed = {doc["_id"]: doc["host"]
                      async for doc in self._collection.find({"_id": {"$in": list(accounts)}}, {"host": 1})}
        return {account: placed[account] for account in accounts}

    async def remove(self, account_ids: Iterable[str]) -> None:
        await self._collection.delete_many({"_id": {"$in": list(account_ids)}})
