"""The allocation-exporter against a real HTTP server answering like Kubecost, scraped over real HTTP."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.__main__ import parse_settings
from exporter.allocation import BadResponse, parse_allocations, parse_management_rate
from exporter.server import running
from k8scost.settings import ExporterSettings, IngressSettings, from_env

ROOT = Path(__file__).resolve().parents[1]
CUSTOMER = ROOT / "cluster_config" / "customer"
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "opencost" / "allocation_namespace_7d.json").read_text())
FIXTURE_MINUTES = 10079.22199
TENANT, CLUSTER = "acct-1", "c1"
PROMTOOL = "/usr/bin/promtool"
GIB = 2**30


def _alloc(minutes: float | None, properties: dict[str, str], **costs: float | None) -> dict[str, Any]:
    """An allocation entry with every cost field; ``costs`` overrides (cpu=, ram=, ... by short name)."""
    fields = {"cpu": "cpuCost", "ram": "ramCost", "pv": "pvCost", "network": "networkCost", "lb": "loadBalancerCost"}
    entry: dict[str, Any] = {"properties": properties, "minutes": minutes, "sharedCost": 0}
    entry.update({field: costs.pop(short, 0.0) for short, field in fields.items()})
    entry["totalCost"] = sum(entry[field] for field in fields.values())
    entry.update(costs)  # remaining keys are raw field names (usage, requests)
    return entry


def _answer(entries: dict[str, Any]) -> dict[str, Any]:
    return {"code": 200, "status": "success", "data": [entries]}


IDLE_ENTRY = _alloc(FIXTURE_MINUTES, {"cluster": "default-cluster"}, cpu=2.0, ram=1.0)
NAMESPACE_ANSWER = copy.deepcopy(FIXTURE)
NAMESPACE_ANSWER["data"][0]["__idle__"] = IDLE_ENTRY

ANSWERS = {
    "namespace": NAMESPACE_ANSWER,
    # window=1h answered with 55 minutes, as OpenCost does at its 5-minute resolution.
    "cluster": _answer(
        {
            "default-cluster": _alloc(
                55, {"cluster": "default-cluster"}, cpu=0.55, ram=0.22, pv=0.11, network=0.011, lb=0.0275
            ),
            "__idle__": _alloc(55, {"cluster": "default-cluster"}, cpu=0.33, ram=0.11),
        }
    ),
    "node": _answer(
        {
            # Allocated core-hours and byte-hours: the node's prices are cost ÷ those.
            "node-a": _alloc(55, {"node": "node-a"}, cpu=0.44, ram=0.11, cpuCoreHours=11.0, ramByteHours=22 * GIB),
            # label from the key; no core-hours: no CPU price
            "node-b": _alloc(30, {}, cpu=0.1, ram=0.05, cpuCoreHours=0, ramByteHours=10 * GIB),
            "node-gone": _alloc(0, {"node": "node-gone"}, cpu=1.0),  # did not run: skipped
            "__idle__": _alloc(55, {}, cpu=0.33),
        }
    ),
    "namespace,pod": _answer(
        {
            "opencost/opencost-6d8f": _alloc(
                55,
                {"namespace": "opencost", "pod": "opencost-6d8f", "node": "node-a",
                 "controllerKind": "deployment", "controller": "opencost"},
                cpu=0.011,
                ram=0.0055,
            ),
            # Same pod name in two namespaces: two series.
            "a/web-0": _alloc(55, {"namespace": "a", "pod": "web-0", "node": "node-a"}, cpu=0.22),
            "b/web-0": _alloc(27.5, {}, cpu=0.05, ram=0.01),  # labels from the key, no node
            "default/gone": _alloc(None, {"namespace": "default", "pod": "gone"}, cpu=1.0),
            "__idle__": _alloc(55, {}, cpu=0.33),
        }
    ),
    "namespace,pod,container": _answer(
        {
            "opencost/opencost-6d8f/opencost": _alloc(
                55,
                {
                    "namespace": "opencost",
                    "pod": "opencost-6d8f",
                    "container": "opencost",
                    "node": "node-a",
                    "controller": "opencost",
                    "controllerKind": "deployment",
                },
                cpu=0.011,
                cpuCoreRequestAverage=0.1,
                cpuCoreUsageAverage=0.02,
                cpuCoreUsageMax=0.09,
                ramByteRequestAverage=1e8,
                ramByteUsageAverage=5e7,
                ramByteUsageMax=8e7,
            ),
            # OpenCost: no *Max fields (falls back to the average), labels from the key.
            "kube-system/coredns-1/coredns": _alloc(
                55,
                {"namespace": "kube-system"},
                cpuCoreRequestAverage=0.1,
                cpuCoreUsageAverage=0.003,
                ramByteRequestAverage=7e7,
                ramByteUsageAverage=2e7,
            ),
            # null usage (NaN): those gauges are left out for this container.
            "kube-system/coredns-1/sidecar": _alloc(
                55,
                {},
                cpuCoreRequestAverage=0.01,
                cpuCoreUsageAverage=None,
                ramByteRequestAverage=1e6,
                ramByteUsageAverage=5e5,
            ),
            "__idle__": _alloc(55, {}, cpu=0.33),
        }
    ),
}
ASSETS_ANSWER = _answer(
    {
        "ClusterManagement": {"type": "ClusterManagement", "minutes": 55, "totalCost": 0.0917},
        "Node": {"type": "Node", "minutes": 55, "totalCost": 3.0},
    }
)
# namespace, idle, node, node prices, pod, cluster (with management), container
COST_SERIES = 12 + 1 + 6 + 3 + 9 + 6 + 16


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeKubecost:
    """A real HTTP server on 127.0.0.1 answering like Kubecost; ``mode`` picks how it misbehaves."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "ok"
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                fake.requests.append((url.path, query))
                status, body = fake.answer(url.path, query)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()  # NaN stays NaN
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, object]:
        if self.mode == "slow":
            time.sleep(5.0)  # far past the exporter's timeout in that test, even if its loop stalls
        if self.mode == "500":
            return 500, b"internal error"
        if self.mode == "garbage":
            return 200, b"<html>Kubecost is starting</html>"
        if self.mode == "code":
            return 200, {"code": 500, "message": "boom", "data": None}
        if path == "/model/assets":
            return (500, b"no assets") if self.mode == "assets_500" else (200, ASSETS_ANSWER)
        if path != "/model/allocation" or query.get("accumulate") != "true" or query.get("includeIdle") != "true":
            return 400, b"bad request"
        answer = copy.deepcopy(ANSWERS[query["aggregate"]])
        if self.mode in ("negative", "nan"):
            for entry in answer["data"][0].values():
                entry["cpuCost"] = -0.01 if self.mode == "negative" else float("nan")
        return 200, answer


@pytest.fixture(scope="module")
def module_kubecost() -> Iterator[FakeKubecost]:
    fake = FakeKubecost()
    yield fake
    fake.stop()


@pytest.fixture
def kubecost(module_kubecost: FakeKubecost) -> FakeKubecost:
    if not module_kubecost.running:
        module_kubecost.start()
    module_kubecost.mode = "ok"
    module_kubecost.requests.clear()
    return module_kubecost


def _settings(kubecost: FakeKubecost, **overrides: Any) -> ExporterSettings:
    values: dict[str, Any] = {
        "kubecost_url": kubecost.url,
        "tenant_id": TENANT,
        "cluster_name": CLUSTER,
        "allocation_window": "1h",
        # The fake answers in milliseconds: a busy machine must not turn that into a timeout.
        "request_timeout": 10.0,
        "listen_host": "127.0.0.1",
        "listen_port": _free_port(),
    }
    return from_env(ExporterSettings, {}, **{**values, **overrides})


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape_text(settings: ExporterSettings) -> str:
    response = httpx.get(f"http://127.0.0.1:{settings.listen_port}/metrics", timeout=5)
    response.raise_for_status()
    return response.text


def _parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _scrape(settings: ExporterSettings) -> Samples:
    return _parse(_scrape_text(settings))


def _get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _cost_series(samples: Samples) -> int:
    return sum(1 for name, _ in samples if name.startswith(("cloudtuner_kubecost_", "kubecost_cluster_")))


C = {"tenant_id": TENANT, "cluster": CLUSTER}


async def test_exports_hourly_rates_with_the_right_labels(kubecost: FakeKubecost) -> None:
    settings = _settings(kubecost)
    async with running(settings) as poller:
        await poller.poll()
        s = _scrape(settings)

    # The real OpenCost fixture: 7-day window cost over its own minutes.
    ns = "cloudtuner_kubecost_namespace_"
    assert _get(s, ns + "total_cost", **C, namespace="kube-system") == 1.52743 / (FIXTURE_MINUTES / 60)
    assert _get(s, ns + "cpu_cost", **C, namespace="kube-system") == 1.43086 / (FIXTURE_MINUTES / 60)
    assert _get(s, ns + "ram_cost", **C, namespace="opencost") == 0.04577 / (FIXTURE_MINUTES / 60)
    assert _get(s, ns + "pv_cost", **C, namespace="prometheus") == 0.0
    # __idle__ is the idle gauge, not a namespace.
    assert _get(s, "cloudtuner_kubecost_idle_cost", **C) == 3.0 / (FIXTURE_MINUTES / 60)
    assert not any(name.startswith(ns) and ("namespace", "__idle__") in labels for name, labels in s)

    # 55 minutes answered for window=1h: cost / (55/60), idle included in the cluster gauges.
    hours = 55 / 60
    assert _get(s, "kubecost_cluster_cpu_cost", **C) == pytest.approx(0.55 / hours + 0.33 / hours, rel=1e-12)
    assert _get(s, "kubecost_cluster_memory_cost", **C) == pytest.approx(0.22 / hours + 0.11 / hours, rel=1e-12)
    assert _get(s, "kubecost_cluster_storage_cost", **C) == pytest.approx(0.11 / hours, rel=1e-12)
    assert _get(s, "kubecost_cluster_network_cost", **C) == pytest.approx(0.011 / hours, rel=1e-12)
    assert _get(s, "kubecost_cluster_load_balancer_cost", **C) == pytest.approx(0.0275 / hours, rel=1e-12)
    assert _get(s, "kubecost_cluster_management_cost", **C) == 0.0917 / hours

    node = "cloudtuner_kubecost_node_"
    assert _get(s, node + "cpu_cost", **C, node="node-a") == 0.44 / hours
    assert _get(s, node + "total_cost", **C, node="node-a") == pytest.approx(0.55 / hours, rel=1e-12)
    # node-b ran 30 of the 55 minutes: its cost spreads over the whole window, so that
    # integrating the rate over time gives back what it cost.
    assert _get(s, node + "ram_cost", **C, node="node-b") == 0.05 / hours
    assert _get(s, node + "total_cost", **C, node="node-gone") is None
    assert _get(s, node + "total_cost", **C, node="__idle__") is None
    # Prices: USD per allocated core-hour and GiB-hour, whatever share of the window ran.
    assert _get(s, node + "cpu_price_per_core_hour", **C, node="node-a") == 0.44 / 11.0 == 0.04
    assert _get(s, node + "ram_price_per_gib_hour", **C, node="node-a") == 0.11 / 22.0 == 0.005
    assert _get(s, node + "cpu_price_per_core_hour", **C, node="node-b") is None  # zero hours
    assert _get(s, node + "ram_price_per_gib_hour", **C, node="node-b") == 0.05 / 10.0 == 0.005
    assert _get(s, node + "cpu_price_per_core_hour", **C, node="node-gone") is None
    assert _get(s, node + "cpu_price_per_core_hour", **C, node="__idle__") is None

    pod = "cloudtuner_kubecost_pod_"
    owner = {"controller_kind": "deployment", "controller": "opencost"}
    no_owner = {"controller_kind": "", "controller": ""}
    assert _get(s, pod + "cpu_cost", **C, namespace="opencost", pod="opencost-6d8f", node="node-a", **owner) == 0.011 / hours
    assert _get(s, pod + "cpu_cost", **C, namespace="a", pod="web-0", node="node-a", **no_owner) == 0.22 / hours
    # ran 27.5 of the 55 minutes
    assert _get(s, pod + "ram_cost", **C, namespace="b", pod="web-0", node="", **no_owner) == 0.01 / hours
    assert not any(name.startswith(pod) and ("pod", "gone") in labels for name, labels in s)

    container = "cloudtuner_kubecost_container_"
    opencost = dict(
        C,
        namespace="opencost",
        pod="opencost-6d8f",
        container="opencost",
        node="node-a",
        controller_kind="deployment",
        controller="opencost",
    )
    assert _get(s, container + "cpu_request_cores", **opencost) == 0.1
    assert _get(s, container + "cpu_usage_average_cores", **opencost) == 0.02
    assert _get(s, container + "cpu_usage_max_cores", **opencost) == 0.09
    assert _get(s, container + "memory_request_bytes", **opencost) == 1e8
    assert _get(s, container + "memory_usage_average_bytes", **opencost) == 5e7
    assert _get(s, container + "memory_usage_max_bytes", **opencost) == 8e7
    coredns = dict(C, namespace="kube-system", pod="coredns-1", container="coredns")
    coredns.update(node="", controller_kind="", controller="")
    assert _get(s, container + "cpu_usage_max_cores", **coredns) == 0.003  # no max: the average
    assert _get(s, container + "memory_usage_max_bytes", **coredns) == 2e7
    sidecar = dict(coredns, container="sidecar")
    assert _get(s, container + "cpu_request_cores", **sidecar) == 0.01
    assert _get(s, container + "cpu_usage_average_cores", **sidecar) is None
    assert _get(s, container + "cpu_usage_max_cores", **sidecar) is None
    assert _get(s, container + "memory_usage_max_bytes", **sidecar) == 5e5

    assert _cost_series(s) == COST_SERIES
    assert _get(s, "cloudtuner_exporter_series") == COST_SERIES
    assert _get(s, "cloudtuner_exporter_up") == 1
    assert time.time() - 60 < _get(s, "cloudtuner_exporter_last_success_timestamp_seconds") <= time.time()
    assert _get(s, "cloudtuner_exporter_poll_duration_seconds_count") == 1
    assert _get(s, "cloudtuner_exporter_poll_failures_total", reason="bad_response") == 0

    allocation_queries = sorted(q["aggregate"] for path, q in kubecost.requests if path == "/model/allocation")
    assert allocation_queries == sorted(["cluster", "node", "namespace", "namespace,pod", "namespace,pod,container"])
    for path, query in kubecost.requests:
        assert query["window"] == "1h" and query["accumulate"] == "true"
        assert query.get("includeIdle" if path == "/model/allocation" else "aggregate") == (
            "true" if path == "/model/allocation" else "type"
        )


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("down", "unreachable"),
        ("slow", "timeout"),
        ("500", "http_error"),
        ("garbage", "bad_response"),
        ("code", "bad_response"),
        ("negative", "bad_response"),
        ("nan", "bad_response"),
    ],
)
async def test_failures_keep_then_withdraw_then_restore_cost_series(
    kubecost: FakeKubecost, mode: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(kubecost, **({"request_timeout": 0.3} if mode == "slow" else {}))
    async with running(settings) as poller:
        await poller.poll()
        assert _cost_series(_scrape(settings)) == COST_SERIES

        if mode == "down":
            kubecost.stop()
        kubecost.mode = mode
        caplog.clear()
        await poller.poll()
        s = _scrape(settings)
        assert _get(s, "cloudtuner_exporter_up") == 0
        assert _get(s, "cloudtuner_exporter_poll_failures_total", reason=reason) == 1
        assert _cost_series(s) == COST_SERIES  # one failure: last snapshot kept
        failure_lines = [r.message for r in caplog.records if "poll of Kubecost failed" in r.message]
        assert len(failure_lines) == 1 and f"({reason}, 1 in a row)" in failure_lines[0]

        await poller.poll()
        s = _scrape(settings)
        assert _cost_series(s) == 0  # two in a row: withdrawn
        assert _get(s, "cloudtuner_exporter_series") == 0
        assert _get(s, "cloudtuner_exporter_up") == 0
        assert _get(s, "cloudtuner_exporter_poll_failures_total", reason=reason) == 2
        assert _get(s, "cloudtuner_exporter_poll_duration_seconds_count") == 3

        if mode == "down":
            kubecost.start()
        kubecost.mode = "ok"
        await poller.poll()
        s = _scrape(settings)
        assert _get(s, "cloudtuner_exporter_up") == 1
        assert _cost_series(s) == COST_SERIES
        assert _get(s, "cloudtuner_kubecost_namespace_total_cost", **C, namespace="kube-system") == 1.52743 / (
            FIXTURE_MINUTES / 60
        )


async def test_failed_assets_call_only_drops_the_management_gauge(kubecost: FakeKubecost) -> None:
    kubecost.mode = "assets_500"
    settings = _settings(kubecost)
    async with running(settings) as poller:
        await poller.poll()
        s = _scrape(settings)
    assert _get(s, "cloudtuner_exporter_up") == 1
    assert _get(s, "kubecost_cluster_management_cost", **C) is None
    assert _cost_series(s) == COST_SERIES - 1
    assert _get(s, "kubecost_cluster_cpu_cost", **C) == pytest.approx((0.55 + 0.33) / (55 / 60), rel=1e-12)


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=30)


async def test_promtool_check_metrics_is_silent_on_real_scrapes(kubecost: FakeKubecost) -> None:
    settings = _settings(kubecost, stale_after_failures=1)
    async with running(settings) as poller:
        await poller.poll()
        full = _scrape_text(settings)
        kubecost.mode = "500"
        await poller.poll()
        health_only = _scrape_text(settings)
    assert "cloudtuner_kubecost_container_cpu_usage_max_cores{" in full
    assert "cloudtuner_kubecost_" not in health_only and "cloudtuner_exporter_up 0.0" in health_only
    for text in (full, health_only):
        result = _promtool("check", "metrics", stdin=text)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_parse_rejects_garbage_and_skips_entries_that_did_not_run() -> None:
    good = {"minutes": 30, "cpuCost": 1, "ramCost": 0, "pvCost": 0, "networkCost": 0, "loadBalancerCost": 0}
    good["totalCost"] = 1
    [only] = parse_allocations(_answer({"x": good, "y": dict(good, minutes=0), "z": dict(good, minutes=None)}), "node")
    assert (only.labels, only.rates.cpu, only.rates.total) == ({"node": "x"}, 2.0, 2.0)
    assert parse_allocations({"code": 200, "data": []}, "node") == []
    for body in (
        [],
        {"code": 200},
        {"code": 400, "data": []},
        {"code": 200, "data": [{}, {}]},
        {"code": 200, "data": ["x"]},
        _answer({"x": "not an object"}),
        _answer({"x": dict(good, cpuCost=None)}),
        _answer({"x": dict(good, totalCost=float("inf"))}),
        _answer({"x": dict(good, ramCost="1")}),
        _answer({"x": dict(good, minutes=-5)}),
        _answer({"x": dict(good, cpuCoreUsageAverage=-1)}),
    ):
        with pytest.raises(BadResponse):
            parse_allocations(body, "node")
    assert parse_management_rate(_answer({"Node": {"type": "Node", "minutes": 60, "totalCost": 1}})) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scrape-interval", "abc"], "--scrape-interval: invalid float value"),
        (["--scrape-interval", "-1"], "--scrape-interval / SCRAPE_INTERVAL must be a positive number"),
        (["--port", "70000"], "--port / EXPORTER_PORT must be a port number"),
        (["--kubecost-url", "kubecost:9090"], "--kubecost-url / KUBECOST_URL must start with http://"),
        (["--stale-after-failures", "-1"], "EXPORTER_STALE_AFTER_FAILURES must be 0 or more"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORTER_PORT", "9999")
    monkeypatch.setenv("CLUSTER_NAME", "from-env")
    monkeypatch.setenv("KUBECOST_ALLOCATION_PATH", "/allocation")
    settings = parse_settings(["--port", "1234", "--tenant-id", "t-9"])
    assert (settings.listen_port, settings.cluster_name, settings.tenant_id) == (1234, "from-env", "t-9")
    assert settings.allocation_path == "/allocation"


def _exporter_env() -> dict[str, str]:
    settings_env = {f.metadata["env"] for f in ExporterSettings.__dataclass_fields__.values()}
    return {k: v for k, v in os.environ.items() if k not in settings_env}


def test_cli_bad_environment_value_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter"],
        cwd=ROOT,
        env={**_exporter_env(), "SCRAPE_INTERVAL": "soon"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "SCRAPE_INTERVAL='soon' is not a valid float" in result.stderr


def _wait_for(port: int, predicate: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        try:
            samples = _parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text)
            if predicate(samples):
                return samples
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the timeout")
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_polls_on_its_interval_and_exits_0_on_signal(
    kubecost: FakeKubecost, tmp_path: Path, signum: signal.Signals
) -> None:
    port = _free_port()
    argv = [
        *("--kubecost-url", kubecost.url, "--tenant-id", TENANT, "--cluster-name", CLUSTER),
        *("--host", "127.0.0.1", "--port", str(port), "--scrape-interval", "0.2", "--kubecost-timeout", "10"),
    ]
    log_path = tmp_path / "exporter.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "exporter", *argv], cwd=ROOT, env=_exporter_env(), stdout=log, stderr=log
        )
    try:
        kube_system = ("cloudtuner_kubecost_namespace_total_cost", frozenset(dict(C, namespace="kube-system").items()))
        s = _wait_for(port, lambda s: s.get(("cloudtuner_exporter_up", frozenset())) == 1)
        assert s[kube_system] == 1.52743 / (FIXTURE_MINUTES / 60)
        if signum == signal.SIGTERM:  # the loop on its own: failures, withdrawal, recovery
            kubecost.mode = "500"
            s = _wait_for(port, lambda s: _cost_series(s) == 0)
            assert _get(s, "cloudtuner_exporter_up") == 0
            assert _get(s, "cloudtuner_exporter_poll_failures_total", reason="http_error") >= 2
            kubecost.mode = "ok"
            s = _wait_for(port, lambda s: _cost_series(s) == COST_SERIES)
            assert _get(s, "cloudtuner_exporter_up") == 1
        process.send_signal(signum)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
    lines = log_path.read_text().splitlines()
    assert "allocation-exporter starting: ExporterSettings(kubecost_url=" in lines[0]
    assert lines[-1].endswith("allocation-exporter stopped")
    assert not [line for line in lines if "Traceback" in line or "HTTP Request" in line]
    if signum == signal.SIGTERM:
        assert any("poll of Kubecost failed (http_error, 2 in a row, cost series withdrawn)" in line for line in lines)
        assert any("poll of Kubecost succeeded again" in line for line in lines)


def _substituted_remote_write(password_file: Path) -> str:
    text = (CUSTOMER / "prometheus-remote-write.yaml").read_text()
    text = text.replace("<saas-host>", "cloudtuner.example.com").replace("<account-id>", "6b7f0c1e-acct")
    text = text.replace("/etc/prometheus/secrets/cloudtuner/password", str(password_file))
    assert not re.search(r"<[a-z-]+>", text), "a placeholder is left"
    return text


def test_prometheus_remote_write_config_passes_promtool(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(_substituted_remote_write(password))
    result = _promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


async def test_remote_write_relabel_keeps_every_exported_metric_and_nothing_else(
    kubecost: FakeKubecost, tmp_path: Path
) -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(_substituted_remote_write(tmp_path / "password"))
    [remote] = config["remote_write"]
    assert remote["url"] == "https://cloudtuner.example.com/storage/api/v2/write"
    assert remote["headers"] == {"Cloud-Account-Id": "6b7f0c1e-acct"}
    assert remote["basic_auth"]["username"] == "6b7f0c1e-acct"
    keep = remote["write_relabel_configs"][0]  # then the usage families' cgroup and label rules (test_usage_series.py)
    assert (keep["source_labels"], keep["action"]) == (["__name__"], "keep")
    settings = _settings(kubecost)
    async with running(settings) as poller:
        await poller.poll()
        names = {name for name, _ in _scrape(settings)}
    assert len(names) > 30
    assert all(re.fullmatch(keep["regex"], name) for name in names)  # Prometheus anchors the regex
    assert "cloudtuner_kubecost_node_cpu_price_per_core_hour" in names
    # ... and the SaaS ingress keeps them all too (its allow-list is a full match as well).
    assert all(re.fullmatch(from_env(IngressSettings, {}).allowed_metrics, name) for name in names)
    assert not any(re.fullmatch(keep["regex"], name) for name in ("up", "process_cpu_seconds_total", "kube_pod_info"))


def test_deployment_matches_the_exporter() -> None:
    yaml = pytest.importorskip("yaml")
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((CUSTOMER / "exporter-deployment.yaml").read_text()) if doc}
    assert set(docs) == {"Deployment", "Service", "NetworkPolicy"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    known_env = {f.metadata["env"] for f in ExporterSettings.__dataclass_fields__.values()}
    env = {e["name"] for e in container["env"]}
    assert {"KUBECOST_URL", "TENANT_ID", "CLUSTER_NAME", "SCRAPE_INTERVAL"} <= env <= known_env
    assert container["ports"][0]["containerPort"] == 19090
    assert container["livenessProbe"]["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"] == "/metrics"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert docs["Deployment"]["spec"]["replicas"] == 1  # two replicas would export every cost twice
    policy = docs["NetworkPolicy"]["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert [p["port"] for p in policy["ingress"][0]["ports"]] == [19090]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {9090, 9003, 53}
