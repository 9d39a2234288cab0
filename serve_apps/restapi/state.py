"""What one REST app holds: its configuration and its stores, opened once per event loop."""

from __future__ import annotations

import asyncio
import dataclasses

from k8scost.metroculus_client import MetroculusClient
from k8scost.settings import LedgerSettings, MetroculusSettings, RestApiSettings, StoreSettings, from_env
from k8scost.stores.accounts import AccountStore
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.stores.expense_queries import ExpenseQueries
from k8scost.stores.mongo import connect
from k8scost.stores.optimizations import OptimizationStore
from k8scost.stores.organizations import OrganizationStore
from k8scost.stores.rightsizing import RightsizingStore
from k8scost.stores.sessions import SessionStore
from k8scost.stores.signins import SignInThrottle
from k8scost.stores.tasks import TaskStore
from serve_apps.restapi.expenses import ExpenseService


@dataclasses.dataclass(frozen=True)
class RestApiConfig:
    """Everything the API reads from the environment, read once by whoever builds it."""

    api: RestApiSettings
    stores: StoreSettings
    cluster_secret: str
    metroculus_url: str

    @classmethod
    def from_env(cls) -> RestApiConfig:
        return cls(
            from_env(RestApiSettings),
            from_env(StoreSettings),
            from_env(MetroculusSettings).cluster_secret,
            from_env(LedgerSettings).metroculus_url,
        )


class OpenStores:
    """The stores of one event loop."""

    def __init__(self, config: RestApiConfig, expenses: ExpenseStore, metroculus: MetroculusClient | None) -> None:
        db = connect(config.stores)
        self.accounts = AccountStore(db)
        self.organizations = OrganizationStore(db)
        self.tasks = TaskStore(db, config.api.task_timeout_seconds)
        self.rightsizing = RightsizingStore(db)
        self.optimizations = OptimizationStore(db)
        self.sessions = SessionStore(db)
        api = config.api
        self.signins = SignInThrottle(
            db, api.signin_failures_per_email, api.signin_failures_per_address, api.signin_window_seconds
        )
        # The live view is its only use, and passes RESTAPI_LIVE_TIMEOUT with each call.
        self.metroculus = metroculus or MetroculusClient(config.metroculus_url, config.cluster_secret)
        self.expenses = ExpenseService(self.accounts, ExpenseQueries(expenses))
        self.indexed = False


class Stores:
    """Opens the stores lazily, once per event loop (motor and httpx clients belong to one)."""

    def __init__(self, config: RestApiConfig, metroculus: MetroculusClient | None = None) -> None:
        self._config = config
        self._metroculus = metroculus
        self._expenses = ExpenseStore(config.stores)  # keeps a pool per loop by itself
        self._open: OpenStores | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._index_lock: asyncio.Lock | None = None

    async def get(self) -> OpenStores:
        loop = asyncio.get_running_loop()
        if self._open is None or self._loop is not loop:
            self._open = OpenStores(self._config, self._expenses, self._metroculus)
            self._loop, self._index_lock = loop, asyncio.Lock()
        opened = self._open
        if not opened.indexed:
            assert self._index_lock is not None
            async with self._index_lock:
                if not opened.indexed:
                    # Idempotent; the unique email index is what makes sign-up safe.
                    await opened.organizations.ensure_indexes()
                    await opened.accounts.ensure_indexes()
                    await opened.tasks.ensure_indexes()
                    await opened.sessions.ensure_indexes()
                    await opened.signins.ensure_indexes()
                    await opened.optimizations.ensure_indexes()
                    opened.indexed = True
        return opened

    async def close(self) -> None:
        await self._expenses.close()
        if self._open is not None and self._metroculus is None:  # an injected client is its owner's
            await self._open.metroculus.aclose()
