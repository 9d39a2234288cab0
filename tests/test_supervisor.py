"""The tenant supervisor on a local Ray: one actor per live account, restarted, reported, measured."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
import ray

from actors.supervisor import TenantSupervisor, tenant_actor_name
from actors.tenant import TenantConfig
from k8scost import raylocal
from k8scost.settings import LedgerSettings, StoreSettings, from_env
from k8scost.stores.accounts import AccountStore
from k8scost.stores.clickhouse import ExpenseRow, ExpenseStore
from k8scost.stores.mongo import connect
from tests import helpers
from tests.test_stores import _clickhouse, _dsn, scratch_database  # noqa: F401 (a fixture)

pytestmark = pytest.mark.services

RAY_METRICS = "http://127.0.0.1:25080/metrics"  # scripts/services.sh RAY_METRICS_PORT


@pytest.fixture()
def isolated(serve_apps: str):
    """A database and a Ray namespace of the test's own: the supervisor sees only its accounts."""
    suffix = uuid.uuid4().hex[:8]
    stores = from_env(StoreSettings, mongodb_database=f"cloudtuner_supervisor_{suffix}")
    ledger = from_env(LedgerSettings, cycle_seconds=2.0, reconcile_seconds=1.0, ray_namespace=f"supervisor-{suffix}")
    config = TenantConfig(ledger, stores, "test-secret")
    loop = asyncio.new_event_loop()
    store = AccountStore(connect(stores))
    raylocal.connect(helpers.RAY_ADDRESS, ledger.ray_namespace)
    supervisor = TenantSupervisor.remote(config)
    yield config, store, loop, supervisor
    for account in loop.run_until_complete(store.list()):
        loop.run_until_complete(store.delete(account.id))
    ray.get(supervisor.reconcile.remote())  # stops the remaining tenant actors
    ray.kill(supervisor)
    ray.shutdown()


def actor_alive(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
        return True
    except ValueError:
        return False


def metric_value(name: str) -> float | None:
    for line in httpx.get(RAY_METRICS, timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_supervisor_follows_accounts_and_restarts_actors(isolated) -> None:
    config, store, loop, supervisor = isolated
    namespace = config.ledger.ray_namespace
    first, _ = loop.run_until_complete(store.create("org-s", "first"))
    second, _ = loop.run_until_complete(store.create("org-s", "second"))

    def reported() -> dict:
        return ray.get(supervisor.status.remote())["tenants"]

    # New accounts get their actors, which cycle (no data yet: nothing to write).
    helpers.wait_for("both actors to cycle", lambda: all(
        reported().get(a.id, {}).get("cycles", 0) >= 1 for a in (first, second)), timeout=90, interval=1)
    assert reported()[first.id]["last_error"] is None
    assert actor_alive(tenant_actor_name(first.id), namespace)

    # A crashed actor comes back by itself and goes on cycling.
    pid = reported()[second.id]["pid"]
    os.kill(pid, signal.SIGKILL)
    helpers.wait_for("the killed actor to be back", lambda: reported().get(second.id, {}).get("pid") not in (None, pid)
                     and reported()[second.id]["cycles"] >= 1, timeout=90, interval=1)

    # A deleted account loses its actor.
    assert loop.run_until_complete(store.delete(first.id))
    helpers.wait_for("the deleted account's actor to stop",
                     lambda: not actor_alive(tenant_actor_name(first.id), namespace), timeout=30, interval=1)
    assert set(reported()) == {second.id}
    assert actor_alive(tenant_actor_name(second.id), namespace)

    # The per-tenant state is also exported as metrics.
    helpers.wait_for("the lag metric of the tenant", lambda: any(
        line.startswith("ray_cloudtuner_ledger_lag_seconds") and second.id in line
        for line in httpx.get(RAY_METRICS, timeout=10).text.splitlines()), timeout=60, interval=2)


async def test_the_supervisors_loop_expires_the_ledger(scratch_database: str) -> None:
    """The supervisor's own loop runs the retention (no Ray needed: the actor's class, run in this loop)."""
    suffix = uuid.uuid4().hex[:8]
    stores = from_env(StoreSettings, clickhouse_url=_dsn(scratch_database), mongodb_database=f"cloudtuner_supervisor_{suffix}")
    expenses = ExpenseStore(stores)
    old, recent = datetime(2001, 3, 5, tzinfo=UTC), datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        await expenses.migrate()
        await expenses.insert([ExpenseRow("acc", "pod", day, 2.5, 1, "c", "ns", "n", None) for day in (old, recent)])
    finally:
        await expenses.close()
    supervisor = TenantSupervisor.__ray_metadata__.modified_class(
        TenantConfig(from_env(LedgerSettings, reconcile_seconds=3600.0), stores, "test-secret"))
    try:
        deadline = time.monotonic() + 30
        while supervisor.retention["last_run"] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        status = await supervisor.status()
    finally:
        supervisor.loop.cancel()
        await supervisor.expenses.close()
        await connect(stores).client.drop_database(stores.mongodb_database)
    assert status["retention"]["dropped"] == [200103]
    assert status["retention"]["error"] is None
    rows = await _clickhouse("SELECT toUnixTimestamp(date), cost FROM expenses", scratch_database)
    assert rows == [(int(recent.timestamp()), 2.5)]
    assert supervisor.next_expiry > time.monotonic() + 3000  # not again before an hour
