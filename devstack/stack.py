"""The whole stack on one machine, for the demo, the tests and the benchmarks.

Wraps ``scripts/services.sh`` (real servers and a local Ray) and deploys
``cluster_config/serve_config.yaml`` through Ray's dashboard, as production deploys it.
Everything listens on 127.0.0.1 at the ports services.sh documents.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import httpx
import yaml

from serve_apps.ingress.remote_write import encode

ROOT = Path(__file__).resolve().parent.parent
# Where scripts/services.sh keeps the servers' data, logs and pids: CLOUDTUNER_DATA lets a
# second checkout use the servers of the first.
DATA = Path(os.environ.get("CLOUDTUNER_DATA") or ROOT / ".data")
SERVICES = ROOT / "scripts" / "services.sh"
SERVE_CONFIG = ROOT / "cluster_config" / "serve_config.yaml"
# scripts/services.sh's TSDB, Thanos: Query's PromQL, Receive's remote write (a tenant per
# THANOS-TENANT header), the Store Gateway's HTTP, the bucket's configuration.
TSDB_URL = "http://127.0.0.1:9090"
TSDB_WRITE_URL = "http://127.0.0.1:10908/api/v1/receive"
TENANT_HEADER = "THANOS-TENANT"
THANOS_STORE_URL = "http://127.0.0.1:10912"
THANOS_OBJSTORE = DATA / "thanos" / "objstore.yaml"
# scripts/setup.sh's tools cache: the binaries it builds from their Go modules.
TOOLS = Path(os.environ.get("CLOUDTUNER_TOOLS", Path.home() / ".cache" / "cloudtuner-k8s")) / "bin"
THANOS = TOOLS / "thanos"
PROMETHEUS_3 = TOOLS / "prometheus3"
SERVE_URL = "http://127.0.0.1:8000"
RAY_DASHBOARD = "http://127.0.0.1:8265"
RAY_ADDRESS = "127.0.0.1:6379"
WRITE_URL = f"{SERVE_URL}/storage/api/v2/write"
# Ray's workers listen on 20000-24999 and its agents on 25001-25099 (scripts/services.sh).
_RAY_PORTS = range(20000, 26000)

T = TypeVar("T")


def free_port() -> int:
    """A free port on 127.0.0.1 outside the ports Ray takes."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _RAY_PORTS:
            return port
    raise RuntimeError("no free port outside Ray's range")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25) -> T:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:  # the thing waited for may not answer yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


def wait_until_answers(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 2xx; fail early if ``process`` died."""

    def answers() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        return httpx.get(url, timeout=2).is_success

    try:
        wait_for(url, answers, timeout, interval=0.2)
    except TimeoutError:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}") from None
        raise


def services(*args: str) -> None:
    """``scripts/services.sh ARGS``, e.g. ``services("start", "ray")``."""
    subprocess.run([str(SERVICES), *args], check=True, cwd=ROOT)


def services_up(*names: str) -> list[str]:
    """Which of ``names`` (clickhouse, mongodb, tsdb, ray) answer now."""
    status = subprocess.run([str(SERVICES), "status", *names], check=True, cwd=ROOT, capture_output=True, text=True)
    return [line.split(":")[0] for line in status.stdout.splitlines() if line.endswith(": up")]


def deploy_serve(env_vars: dict[str, str] | None = None, *, fresh: bool = True) -> None:
    """Deploy the Serve config with ``env_vars`` added to each application; wait until it runs.

    ``fresh`` removes the running applications first: replicas import our code when they
    start, so only new replicas are sure to run this checkout.
    """
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    for app in config["applications"]:
        app.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env_vars or {})
    applications = f"{RAY_DASHBOARD}/api/serve/applications/"
    if fresh:
        httpx.delete(applications, timeout=60).raise_for_status()
        wait_for("Serve to shut down", lambda: not httpx.get(applications, timeout=10).json().get("applications"),
                 timeout=120, interval=1)
    answer = httpx.put(applications, json=config, timeout=60)
    if answer.status_code != 200:
        raise RuntimeError(f"Serve refused the config: {answer.text}")
    wanted = {app["name"] for app in config["applications"]}

    def running() -> bool:
        apps = httpx.get(applications, timeout=10).json().get("applications", {})
        failed = [f"{name}: {apps[name].get('message')}" for name in wanted & set(apps) if apps[name]["status"] == "DEPLOY_FAILED"]
        if failed:
            raise RuntimeError(f"Serve deploy failed: {failed}")
        return wanted <= set(apps) and all(apps[name]["status"] == "RUNNING" for name in wanted)

    wait_for("Serve applications to run", running, timeout=180, interval=1)


def tsdb_pids() -> tuple[int, ...]:
    """The TSDB's processes as scripts/services.sh runs them: Thanos Receive, Store Gateway, Query, Compactor."""
    return tuple(int((DATA / "run" / f"thanos-{component}.pid").read_text())
                 for component in ("receive", "store", "query", "compact"))


def write_samples(series: Iterable[tuple[Mapping[str, str], Iterable[tuple[int, float]]]],
                  http: httpx.Client | None = None) -> None:
    """Remote-write ``series`` straight into the local TSDB, one write per tenant, as the
    ingress forwards them: Receive files a write under its THANOS-TENANT header, so each
    series goes under its own ``tenant_id`` label. Raises on any refusal; returns once
    Query answers every tenant's samples (all written first: Query learns new tenants
    together, every 5 s, so 200 tenants waited for one by one took 997 s)."""
    by_tenant: dict[str, list] = {}
    for labels, samples in series:
        by_tenant.setdefault(labels["tenant_id"], []).append((labels, samples))
    oldest: dict[str, int] = {}
    for tenant, members in by_tenant.items():
        answer = (http or httpx).post(TSDB_WRITE_URL, content=encode(members), timeout=60, headers={
            "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0", TENANT_HEADER: tenant})
        if not answer.is_success:
            raise RuntimeError(f"the TSDB refused a write of {tenant}'s samples: {answer.status_code} {answer.text}")
        first = min((t for _, samples in members for t, _ in samples), default=None)
        if first is not None:
            oldest[tenant] = first
    for tenant, first in oldest.items():
        wait_until_queryable(tenant, first)


def wait_until_queryable(tenant: str, since_ms: int, timeout: float = 30.0, group: str | None = None) -> None:
    """Wait until Query asks, for ``tenant``'s series, a store (of ``group``: ``receive``,
    ``store``; any if None) that holds them from ``since_ms``.

    Query learns which tenants and times its stores hold every 5 s and skips the others: a
    new tenant's first samples are answered some seconds after Receive took them.
    """
    def known() -> bool:
        groups = httpx.get(f"{TSDB_URL}/api/v1/stores", timeout=10).json()["data"]
        stores = [store for name, members in groups.items() if group in (None, name) for store in members]
        return any(store["minTime"] <= since_ms and any(labels.get("tenant_id") == tenant for labels in store["labelSets"])
                   for store in stores)

    wait_for(f"Query to answer {tenant}'s samples from {since_ms} ms", known, timeout, interval=0.5)


def load_blocks(blocks_dir: Path, timeout: float = 120.0) -> dict[str, list[str]]:
    """Load the history ``write_blocks`` wrote into ``blocks_dir`` (a directory of blocks per
    tenant) into the local TSDB; the block ids per tenant, once Query answers from them."""
    return upload_blocks({tenant.name: tenant for tenant in sorted(blocks_dir.iterdir()) if tenant.is_dir()}, timeout)


def upload_blocks(blocks: Mapping[str, Path], timeout: float = 120.0) -> dict[str, list[str]]:
    """Upload each tenant's TSDB blocks (tenant id → its blocks' directory) to the local Thanos
    bucket; the ids uploaded per tenant, once Query answers from them.

    No restart: the Store Gateway loads them at its next sync (10 s), then Query learns at
    its next look at the Store Gateway (5 s) which tenants and times it holds.
    """
    from devstack.simulator.history import upload_blocks  # the simulator imports this module

    uploaded = {tenant: upload_blocks(path, tenant, THANOS_OBJSTORE, THANOS) for tenant, path in blocks.items()}
    oldest = {tenant: min(json.loads((blocks[tenant] / ulid / "meta.json").read_text())["minTime"] for ulid in ulids)
              for tenant, ulids in uploaded.items() if ulids}
    wanted = {ulid for ulids in uploaded.values() for ulid in ulids}

    def loaded() -> bool:
        blocks_loaded = httpx.get(f"{THANOS_STORE_URL}/api/v1/blocks", params={"view": "loaded"}, timeout=10).json()
        return wanted <= {block["ulid"] for block in blocks_loaded["data"]["blocks"]}

    started = time.monotonic()
    wait_for(f"the Store Gateway to load {len(wanted)} blocks", loaded, timeout, interval=0.5)
    for tenant, since in oldest.items():
        wait_until_queryable(tenant, since, max(1.0, timeout - (time.monotonic() - started)), group="store")
    return uploaded
