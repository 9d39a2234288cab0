"""Small tools the tests share: processes, ports, waiting, TSDB queries, Serve deploys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from k8scost.simulator.customer import free_port  # noqa: F401  (re-exported for tests)

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services.sh"
TSDB_URL = "http://127.0.0.1:9090"
SERVE_URL = "http://127.0.0.1:8000"
RAY_DASHBOARD = "http://127.0.0.1:8265"
WRITE_URL = f"{SERVE_URL}/storage/api/v2/write"

T = TypeVar("T")


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
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


def services(*args: str) -> None:
    subprocess.run([str(SERVICES), *args], check=True, cwd=ROOT)


def start_process(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A child process in its own session, output to ``log``."""
    handle = open(log, "ab")
    return subprocess.Popen(
        args, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}, start_new_session=True
    )


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def tsdb_query(query: str, at: float | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"query": query}
    if at is not None:
        params["time"] = at
    answer = httpx.get(f"{TSDB_URL}/api/v1/query", params=params, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def tsdb_range(query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{TSDB_URL}/api/v1/query_range",
        params={"query": query, "start": start, "end": end, "step": step},
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def deploy_serve(env_vars: dict[str, str], applications: set[str] | None = None) -> None:
    """Deploy cluster_config/serve_config.yaml with ``env_vars`` added to each application; wait until running."""
    config = yaml.safe_load((ROOT / "cluster_config" / "serve_config.yaml").read_text())
    if applications is not None:
        config["applications"] = [a for a in config["applications"] if a["name"] in applications]
    for app in config["applications"]:
        app.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env_vars)
    # Replicas import our code when they start: begin from none, so they run this checkout.
    httpx.delete(f"{RAY_DASHBOARD}/api/serve/applications/", timeout=60).raise_for_status()
    wait_for("Serve to shut down", lambda: not httpx.get(f"{RAY_DASHBOARD}/api/serve/applications/", timeout=10).json().get("applications"), timeout=120, interval=1)
    answer = httpx.put(f"{RAY_DASHBOARD}/api/serve/applications/", json=config, timeout=60)
    assert answer.status_code == 200, answer.text

    def running() -> bool:
        status = httpx.get(f"{RAY_DASHBOARD}/api/serve/applications/", timeout=10).json()
        apps = status.get("applications", {})
        wanted = {a["name"] for a in config["applications"]}
        return wanted <= set(apps) and all(apps[name]["status"] == "RUNNING" for name in wanted)

    wait_for("Serve applications to run", running, timeout=180, interval=1)
