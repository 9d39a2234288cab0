"""The MongoDB (or FerretDB) connection every SaaS component shares."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo.errors import ConnectionFailure

from k8scost.settings import StoreSettings
from k8scost.stores import StoreUnavailable

# Fail a request in seconds rather than hang it: callers turn the error into a 503 and
# their clients retry, which is what a short outage of the database needs.
_SERVER_SELECTION_TIMEOUT_MS = 3000

StoreClass = TypeVar("StoreClass", bound=type)


def connect(settings: StoreSettings) -> AsyncIOMotorDatabase:
    """The database named by ``settings``; connects lazily, on first use."""
    client: AsyncIOMotorClient = AsyncIOMotorClient(
        settings.mongodb_url,
        serverSelectionTimeoutMS=_SERVER_SELECTION_TIMEOUT_MS,
        connectTimeoutMS=_SERVER_SELECTION_TIMEOUT_MS,
        tz_aware=True,
    )
    return client[settings.mongodb_database]


def raises_store_unavailable(store_class: StoreClass) -> StoreClass:
    """Makes every public coroutine method of a MongoDB store raise StoreUnavailable where the
    driver lost the database: callers answer one exception, whichever store and method."""
    for name, method in list(vars(store_class).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(method):
            setattr(store_class, name, _reachable(method))
    return store_class


def _reachable(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except ConnectionFailure as exc:  # ServerSelectionTimeoutError, AutoReconnect, NetworkTimeout
            raise StoreUnavailable("MongoDB", str(exc)) from exc

    return call
