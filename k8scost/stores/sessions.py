"""Sessions in MongoDB (``sessions``): the users' bearer tokens in force, so that one can be revoked.

Contract: a user's token names its session (its ``jti`` claim, serve_apps/restapi/auth.py), and
the REST API serves it only while that session exists, checked on every request by its ``_id``
(one indexed read). Sign-out deletes the token's session; a password change deletes every
session of the user. A revoked token is therefore refused by every replica from the next
request on, with no cache to wait out; an expired one is refused by its own ``exp`` anyway.

Why sessions rather than a list of revoked tokens beside a per-user ``tokens_valid_after``
stamp: both needs (one token, all of a user's) are then one lookup instead of two, and the
collection holds the tokens in force, a few per user and day, swept as they expire.
FerretDB 1.24 has no TTL index (``expireAfterSeconds`` is "not implemented"), so expired
sessions are deleted when a new one opens.
"""

from __future__ import annotations

import uuid

from motor.motor_asyncio import AsyncIOMotorDatabase

from k8scost.stores.mongo import raises_store_unavailable

COLLECTION = "sessions"


@raises_store_unavailable
class SessionStore:
    """Opens, checks and closes sessions; ``expires_at`` is the token's ``exp`` (Unix seconds)."""

    def __init__(self, db: AsyncIOMotorDatabase) -> None:
        self._sessions = db[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self._sessions.create_index("user_id")  # a password change closes them all
        await self._sessions.create_index("expires_at")  # the sweep

    async def open(self, user_id: str, expires_at: int, now: float) -> str:
        """A new session of ``user_id`` until ``expires_at``; its id goes into the token."""
        await self._sessions.delete_many({"expires_at": {"$lte": now}})
        session_id = str(uuid.uuid4())
        await self._sessions.insert_one({"_id": session_id, "user_id": user_id, "expires_at": expires_at})
        return session_id

    async def is_open(self, session_id: str, user_id: str) -> bool:
        """Whether the session exists and is ``user_id``'s."""
        # By `_id` alone, the owner compared here: FerretDB 1.24 answers a filter on `_id` and
        # another field several times slower than one on `_id` alone.
        doc = await self._sessions.find_one({"_id": session_id})
        return doc is not None and doc["user_id"] == user_id

    async def close(self, session_id: str) -> None:
        """Sign-out: the session's token is refused from now on."""
        await self._sessions.delete_one({"_id": session_id})

    async def close_all(self, user_id: str) -> int:
        """Every session of ``user_id`` closed (a password change); how many there were."""
        return (await self._sessions.delete_many({"user_id": user_id})).deleted_count
