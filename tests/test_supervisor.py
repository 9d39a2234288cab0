"""The tenant supervisor on a local Ray: every live account placed on a host, restarted, reported, measured."""

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

from actors.host import tenant_host
from actors.supervisor import TenantSupervisor
from actors.tenant import TenantConfig
from k8scost import raylocal
from k8scost.settings import LedgerSettings, StoreSettings, from_env
from k8scost.stores.accounts import AccountStore
from k8scost.stores.clickhouse import ExpenseRow, ExpenseStore
from k8scost.stores.mongo import connect
from k8scost.stores.placements import PlacementStore
from tests import helpers
from tests.test_stores import _clickhouse, _dsn, scratch_database  # noqa: F401 (a fixture)

pytestmark = pytest.mark.services

RAY_METRICS = "http://127.0.0.1:25080/metrics"  # scripts/services.sh RAY_METRICS_PORT


@pytest.fixture()
def isolated(serve_apps: str):
    """A database and a Ray namespace of the test's own: the supervisor sees only its accounts."""
    suffix = uuid.uuid4().hex[:8]
    stores = from_env(StoreSettings, mongodb_database=f"cloudtuner_supervisor_{suffix}")
    ledger = from_env(LedgerSettings, cycle_seconds=2.0, reconcile_seconds=1.0, tenants_per_host=2,
                      ray_namespace=f"supervisor-{suffix}")
    config = TenantConfig(ledger, stores, "test-secret")
    loop = asyncio.new_event_loop()
    store = AccountStore(connect(stores))
    raylocal.connect(helpers.RAY_ADDRESS, ledger.ray_namespace)
    supervisor = TenantSupervisor.remote(config)
    yield config, store, loop, supervisor
    for account in loop.run_until_complete(store.list()):
        loop.run_until_complete(store.delete(account.id))
    ray.get(supervisor.reconcile.remote())  # stops the remaining tenant hosts
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


def test_supervisor_places_accounts_on_hosts_and_restarts_them(isolated) -> None:
    config, store, loop, supervisor = isolated
    namespace = config.ledger.ray_namespace
    first, _ = loop.run_until_complete(store.create("org-s", "first"))
    second, _ = loop.run_until_complete(store.create("org-s", "second"))
    third, _ = loop.run_until_complete(store.create("org-s", "third"))

    def reported() -> dict:
        return ray.get(supervisor.status.remote())["tenants"]

    # New accounts are placed, two a host (the test's TENANTS_PER_HOST): the two lowest
    # account ids share tenant-host-0, the third gets tenant-host-1; each tenant cycles
    # (no data yet: nothing to write).
    helpers.wait_for("every tenant to cycle", lambda: all(
        reported().get(a.id, {}).get("cycles", 0) >= 1 for a in (first, second, third)), timeout=90, interval=1)
    placed = loop.run_until_complete(PlacementStore(connect(config.stores)).all())
    in_order = sorted((first, second, third), key=lambda a: a.id)
    assert [placed[a.id] for a in in_order] == ["tenant-host-0", "tenant-host-0", "tenant-host-1"]
    report = reported()
    assert {a.id: report[a.id]["host"] for a in in_order} == {a.id: placed[a.id] for a in in_order}
    assert report[in_order[0].id]["pid"] == report[in_order[1].id]["pid"] != report[in_order[2].id]["pid"]
    assert all(report[a.id]["last_error"] is None for a in in_order)

    # A crashed host comes back by itself with its tenants, which go on cycling; the
    # other host's tenants are untouched.
    alone, shared_pid, pid = in_order[2], report[in_order[0].id]["pid"], report[in_order[2].id]["pid"]
    os.kill(pid, signal.SIGKILL)
    helpers.wait_for("the killed host to be back", lambda: reported().get(alone.id, {}).get("pid") not in (None, pid)
                     and reported()[alone.id]["cycles"] >= 1, timeout=90, interval=1)
    assert reported()[in_order[0].id]["pid"] == shared_pid

    # A deleted account's tenant stops, its host goes on with the other; a host left with
    # no tenant stops.
    assert loop.run_until_complete(store.delete(in_order[0].id))
    helpers.wait_for("the deleted account's tenant to stop", lambda: set(reported()) == {in_order[1].id, alone.id},
                     timeout=30, interval=1)
    assert ray.get(supervisor.status.remote())["hosts"] == {"tenant-host-0": [in_order[1].id],
                                                              "tenant-host-1": [alone.id]}
    assert reported()[in_order[1].id]["pid"] == shared_pid
    assert loop.run_until_complete(store.delete(alone.id))
    helpers.wait_for("the emptied host to stop", lambda: not actor_alive("tenant-host-1", namespace), timeout=30, interval=1)
    assert actor_alive("tenant-host-0", namespace)

    # The per-tenant state is also exported as metrics.
    helpers.wait_for("the lag metric of the tenant", lambda: any(
        line.startswith("ray_cloudtuner_ledger_lag_seconds") and in_order[1].id in line
        for line in httpx.get(RAY_METRICS, timeout=10).text.splitlines()), timeout=60, interval=2)


def test_a_restarted_supervisor_stops_a_host_left_with_no_tenant_while_it_was_down(isolated) -> None:
    config, store, loop, supervisor = isolated
    namespace = config.ledger.ray_namespace
    account, _ = loop.run_until_complete(store.create("org-s", "kept"))
    helpers.wait_for("the tenant to cycle", lambda: ray.get(supervisor.status.remote())["tenants"].get(
        account.id, {}).get("cycles", 0) >= 1, timeout=90, interval=1)
    # A host whose tenants were all deleted while the supervisor was down (here: one never
    # placed, which the running supervisor never knew) ...
    orphan = tenant_host("tenant-host-7", config)
    assert ray.get(orphan.report.remote()) == {}
    time.sleep(3 * config.ledger.reconcile_seconds)
    assert actor_alive("tenant-host-7", namespace)
    # ... is found and stopped by the supervisor once Ray restarts it.
    ray.kill(supervisor, no_restart=False)
    helpers.wait_for("the orphan host to stop", lambda: not actor_alive("tenant-host-7", namespace),
                     timeout=60, interval=1)
    helpers.wait_for("the tenant's host alone reported", lambda: ray.get(supervisor.status.remote())["hosts"]
                     == {"tenant-host-0": [account.id]}, timeout=30, interval=1)


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
