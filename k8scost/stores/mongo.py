"""The MongoDB (or FerretDB) connection every SaaS component shares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo.errors import ConnectionFailure

from k8scost.settings import StoreSettings
from k8scost.stores import StoreUnavailable

# Fail a request in seconds rather than hang it: callers turn the error into a 503 and
# their clients retry, which is what a short outage of the database needs.
_SERVER_SELECTION_TIMEOUT_MS = 3000


def connect(settings: StoreSettings) -> AsyncIOMotorDatabase:
    """The database named by ``settings``; connects lazily, on first use."""
    client: AsyncIOMotorClient = AsyncIOMotorClient(
        settings.mongodb_url,
        serverSelectionTimeoutMS=_SERVER_SELECTION_TIMEOUT_MS,
        connectTimeoutMS=_SERVER_SELECTION_TIMEOUT_MS,
        tz_aware=True,
    )
    return client[settings.mongodb_database]


@asynccontextmanager
async def reachable() -> AsyncIterator[None]:
    """Turns a lost connection into StoreUnavailable, which callers answer with a 503 and retry."""
    try:
        yield
    except ConnectionFailure as exc:  # ServerSelectionTimeoutError, AutoReconnect, NetworkTimeout
        raise StoreUnavailable(f"MongoDB: {exc}") from exc
