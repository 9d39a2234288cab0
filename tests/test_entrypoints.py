"""The README's CLIs and job entry points, run as from a plain shell on the machine running the local Ray.

Each runs in a subprocess whose environment lacks RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER (and
RAY_ADDRESS), as a user's shell does, against the Ray that scripts/services.sh started on
127.0.0.1; k8scost.raylocal is what lets them reach it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import pymongo
import pytest

from k8scost.settings import StoreSettings, from_env
from tests import helpers

pytestmark = pytest.mark.services

FAST_SECONDS = 30  # a CLI facing no Ray says so within this, imports included; Ray's own retries take minutes


def plain_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env.pop("RAY_ADDRESS", None)
    return {**env, **extra}


def run(*argv: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], cwd=helpers.ROOT, env=plain_env(**extra), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_ray(real_services: None) -> None:
    helpers.services("start", "ray")


@pytest.fixture()
def empty_database(real_services: None):
    """A MongoDB database with no account, dropped afterwards: a supervisor there starts no tenant host."""
    name = f"entrypoints_{uuid.uuid4().hex[:8]}"
    yield name
    with pymongo.MongoClient(from_env(StoreSettings).mongodb_url) as client:
        client.drop_database(name)


def test_actors_start_status_stop(local_ray: None, empty_database: str) -> None:
    env = {"MONGODB_DATABASE": empty_database, "RAY_NAMESPACE": f"entrypoints-{uuid.uuid4().hex[:8]}"}
    try:
        started = run("-m", "actors", "start", **env)
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout) == {}  # the reconcile report: no account, no tenant
        status = run("-m", "actors", "status", **env)
        assert status.returncode == 0, status.stderr
        reported = json.loads(status.stdout)
        # the supervisor's first retention run has passed, on whatever the shared ledger holds
        assert reported.pop("retention")["error"] is None
        assert reported == {"tenants": {}, "hosts": {}, "last_error": None}
    finally:
        stopped = run("-m", "actors", "stop", **env)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == {"stopped": ["supervisor"], "tenants": []}
    helpers.wait_for("the supervisor to be gone", lambda: (
        (gone := run("-m", "actors", "status", **env)).returncode == 1
        and "error: no tenant supervisor is running" in gone.stderr), timeout=60, interval=1)


def test_accounts_create_list_rotate_delete(real_services: None, accounts) -> None:
    organization = f"org-{uuid.uuid4().hex[:8]}"
    created = run("scripts/accounts.py", "create", "--organization-id", organization, "--name", "plain shell")
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)
    assert accounts.get(account["id"]).organization_id == organization
    listed = run("scripts/accounts.py", "list", "--organization-id", organization)
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [account["id"]]
    rotated = run("scripts/accounts.py", "rotate", account["id"])
    assert rotated.returncode == 0 and json.loads(rotated.stdout)["password"] != account["password"]
    deleted = run("scripts/accounts.py", "delete", account["id"])
    assert deleted.returncode == 0 and json.loads(deleted.stdout) == {"deleted": account["id"]}
    assert accounts.get(account["id"]) is None
    refused = run("scripts/accounts.py", "create", "--organization-id", " ", "--name", "x")
    assert refused.returncode == 2 and "must not be empty" in refused.stderr


def test_backfill_reaches_ray_then_names_a_bad_argument(local_ray: None) -> None:
    bad_day = run("-m", "jobs.backfill", "--cloud-account-id", "x", "--start", "2026-13-01", "--end", "2026-10-01")
    assert bad_day.returncode == 2 and "'2026-13-01' is not a day in the form YYYY-MM-DD" in bad_day.stderr
    # Accounts are looked up after ray.init: this answer comes from a driver that reached the local Ray.
    unknown = run("-m", "jobs.backfill", "--cloud-account-id", "no-such-account", "--start", "2026-10-01",
                  "--end", "2026-10-02")
    assert unknown.returncode == 2, unknown.stderr
    assert "error: cloud account 'no-such-account' does not exist" in unknown.stderr


def test_rightsizing_runs_a_tenant_on_the_local_ray(local_ray: None, accounts) -> None:
    bad = run("-m", "jobs.rightsizing", "--quantile", "1.5")
    assert bad.returncode == 2 and "--quantile / RIGHTSIZING_QUANTILE: 1.5 is not a number in (0, 1]" in bad.stderr
    account, _ = accounts.create(f"org-{uuid.uuid4().hex[:8]}")
    try:
        done = run("-m", "jobs.rightsizing", "--cloud-account-id", account.id, "--window-days", "1")
    finally:
        accounts.delete(account.id)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert (summary["accounts"], summary["done"], summary["failed"]) == (1, 1, [])  # its task ran on Ray


def test_optimizations_runs_a_tenant_on_the_local_ray(local_ray: None, accounts) -> None:
    bad = run("-m", "jobs.optimizations", "--spot-discount", "1.5")
    assert bad.returncode == 2 and "--spot-discount / --node-type-discount: spot discount of 'default'" in bad.stderr
    account, _ = accounts.create(f"org-{uuid.uuid4().hex[:8]}")
    try:
        done = run("-m", "jobs.optimizations", "--cloud-account-id", account.id, "--module", "k8s_cost_anomalies")
    finally:
        accounts.delete(account.id)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert (summary["accounts"], summary["done"], summary["failed"]) == (1, 1, [])  # its task ran on Ray
    assert f"optimizations: tenant {account.id}: k8s_cost_anomalies " in done.stdout and "(1/1 tenants)" in done.stdout


@pytest.mark.parametrize("entry", ["actors", "backfill", "rightsizing", "optimizations"])
def test_no_ray_at_the_address_is_a_fast_clear_error(real_services: None, accounts, entry: str) -> None:
    address = f"127.0.0.1:{helpers.free_port()}"  # closed: nothing listens there, nor on the machine's address
    if entry == "actors":
        argv = ["-m", "actors", "status"]
    elif entry == "backfill":
        argv = ["-m", "jobs.backfill", "--cloud-account-id", "x", "--start", "2026-10-01", "--end", "2026-10-02"]
    else:  # the rightsizing and optimizations jobs ask Ray only once they have a tenant
        account, _ = accounts.create(f"org-{uuid.uuid4().hex[:8]}")
        argv = ["-m", f"jobs.{entry}", "--cloud-account-id", account.id]
    try:
        result = run(*argv, "--address", address, timeout=FAST_SECONDS)
    finally:
        if entry in ("rightsizing", "optimizations"):
            accounts.delete(account.id)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"error: no Ray cluster at {address}: nothing answers on {address}"), result.stderr
    assert "Traceback" not in result.stderr


def probe_in_a_plain_process(address: str) -> tuple[str, bool]:
    """What k8scost.raylocal.prepare makes of ``address`` in a process like a user's: where Ray will dial, and
    whether Ray still swaps loopback addresses for the machine's."""
    code = ("import json, sys; from k8scost import raylocal; from ray._private import ray_constants; "
            "print(json.dumps([raylocal.prepare(sys.argv[1]), ray_constants.ENABLE_RAY_CLUSTER]))")
    result = run("-c", code, address, timeout=FAST_SECONDS)
    assert result.returncode == 0, result.stderr
    dialed, swaps = json.loads(result.stdout)
    return dialed, swaps


def test_a_gcs_on_loopback_keeps_the_loopback_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert probe_in_a_plain_process(address) == (address, False)


def test_a_gcs_on_the_machines_address_is_left_to_rays_swap() -> None:
    # KubeRay's head pod: RAY_ADDRESS=127.0.0.1:6379, the GCS listening on the pod's IP.
    found = run("-c", "import ray; print(ray.util.get_node_ip_address())", timeout=FAST_SECONDS)
    node_ip = found.stdout.strip()
    if node_ip == "127.0.0.1":
        pytest.skip("this machine has no address but loopback")
    with socket.create_server((node_ip, 0)) as listener:
        port = listener.getsockname()[1]
        assert probe_in_a_plain_process(f"127.0.0.1:{port}") == (f"{node_ip}:{port}", True)
