"""Session fixtures: the real servers (scripts/services.sh), a local Ray with Serve, accounts."""

from __future__ import annotations

import asyncio
import os

import pytest

from k8scost.settings import StoreSettings, from_env
from k8scost.stores.accounts import Account, AccountStore, Credentials
from k8scost.stores.mongo import connect
from tests import helpers


# Accounts the tests create stay out of the demo's database: the demo's supervisor starts
# an actor for every account it finds. Set before any store settings are read.
os.environ.setdefault("MONGODB_DATABASE", "cloudtuner_tests")
# The tests' actors (their LedgerSettings come from this environment, and so do the
# subprocesses' started from here) cycle as soon as they start: the tests wait for those
# first cycles, and a few actors need no spreading.
os.environ["LEDGER_START_SPREAD_SECONDS"] = "0"

# What the Serve applications run with in tests: short caches so deletions are seen fast.
TEST_SERVE_ENV = {
    "INGRESS_AUTH_CACHE_SECONDS": "1",
    "INGRESS_TENANT_SAMPLES_PER_SECOND": "20000",
    "INGRESS_TENANT_BURST_SAMPLES": "100000",
    "METROCULUS_RESOLUTION_SECONDS": "15",
    "CLUSTER_SECRET": "test-secret",
    "MONGODB_DATABASE": os.environ["MONGODB_DATABASE"],
}


@pytest.fixture(scope="session")
def real_services() -> None:
    """ClickHouse, MongoDB wire (FerretDB or MONGODB_URL) and the TSDB, up."""
    helpers.services("start")


@pytest.fixture(scope="session")
def serve_apps(real_services: None) -> str:
    """A local Ray with the Serve applications of cluster_config/serve_config.yaml; their base URL."""
    helpers.services("start", "ray")
    helpers.deploy_serve(TEST_SERVE_ENV)
    return helpers.SERVE_URL


class SyncAccounts:
    """The account store for synchronous test code, on a loop of its own."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._store = AccountStore(connect(from_env(StoreSettings)))

    def create(self, organization_id: str = "org-test") -> tuple[Account, Credentials]:
        return self._loop.run_until_complete(self._store.create(organization_id, "test cluster"))

    def get(self, account_id: str) -> Account | None:
        return self._loop.run_until_complete(self._store.get(account_id))

    def delete(self, account_id: str) -> bool:
        return self._loop.run_until_complete(self._store.delete(account_id))

    def rotate(self, account_id: str) -> Credentials | None:
        return self._loop.run_until_complete(self._store.rotate(account_id))


@pytest.fixture(scope="session")
def accounts(real_services: None) -> SyncAccounts:
    return SyncAccounts()


# --- figures of the reliability and security suite (tests/figures.py) ---
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every ``FIGURE Rn:`` line recorded in this run, again at the end: they show under -q."""
    from tests import figures

    lines = figures.recorded()
    if lines:
        terminalreporter.write_sep("-", "figures")
        for line in lines:
            terminalreporter.write_line(line)
