"""Live-view freshness: the age of the newest point the REST API's ``k8s_live`` answers, end to end
from the simulator's usage exporters.

    .venv/bin/python scripts/bench_freshness.py --in-process [--seconds 300]
    .venv/bin/python scripts/bench_freshness.py --serve [--seconds 300]

A simulated container's working set changes every 15 s (the estate's usage period, aligned
on the epoch), so the value of the newest point says which 15 s period it was scraped in.
Once a second the bench asks ``memory_working_set_by_container`` up to now (a 15 s step)
and records now − the start of that period: the age of the newest data the Live tab would
draw; and, per period, that age when the period is first shown (the path's delay, to the
second). It prints p50 and p95 beside today's source, the exporter's hourly averages.

``--in-process``: no Serve. The bench scrapes the exporters itself at each period's start,
relabels the scrape as the shipped customer configuration does and writes it through the
ingress's Serve class in-process (``func_or_class``, no Ray) into the shared TSDB; the REST
API (in-process FastAPI) asks Metroculus's class in-process. The age is then exact: the
scrape interval's phase, the ingress, the TSDB and the REST path. Not in it: a real
Prometheus' scrape and remote-write batching (``batch_send_deadline``: 5 s as shipped; a
big cluster fills a batch sooner) and Serve's proxy hops.

``--serve``: the whole path, as the demo runs it (the bench starts the servers and Ray and
deploys Serve): the simulator, a real Prometheus with the shipped configuration scraping it
every 15 s and writing to the ingress on Serve with the shipped batching, the REST API on Serve. Prometheus scrapes at an offset
within each period, so the age is measured from the period's start: an upper bound, at
most 15 s above the true age.

Either way the Live tab adds its own refresh (every 30 s while open) on top.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
import yaml  # noqa: E402
from starlette.requests import Request  # noqa: E402

from devstack.simulator import Cluster, Container, Estate, Namespace, Node, Pod, create_app  # noqa: E402
from devstack.simulator.customer import REMOTE_WRITE_TEMPLATE, prometheus_config, write_relabel  # noqa: E402
from devstack.simulator.usage import UsageExporters  # noqa: E402
from devstack import stack  # noqa: E402
from devstack.stack import SERVE_URL, WRITE_URL, free_port  # noqa: E402
from k8scost.metroculus_client import MetroculusClient  # noqa: E402
from k8scost.settings import RestApiSettings, StoreSettings, from_env  # noqa: E402
from k8scost.stores.mongo import connect  # noqa: E402
from k8scost.usage_series import USAGE_FAMILIES, write_relabel_configs  # noqa: E402
from serve_apps.ingress.remote_write import encode  # noqa: E402

PERIOD = 15  # the estate's usage period and the scrape interval
CLUSTER, NAMESPACE, POD, CONTAINER = "c1", "apps", "web-0", "app"
GIB = 1024**3
QUERY = "memory_working_set_by_container"
TODAY = "the exporter's hourly averages: Kubecost's 1-hour allocation windows, about 1 h"


def estate(t0: float) -> Estate:
    node = Node("n1", 4.0, 16 * GIB, 0.03, 0.004, "i-1")
    pod = Pod(POD, "n1", "statefulset", "web", t0, None, [Container(CONTAINER, 1.0, 2 * GIB, 0.5, 1 * GIB)])
    return Estate(11, [Cluster(CLUSTER, 0.1, [node], [Namespace(NAMESPACE, {}, [pod])])], PERIOD, 0.5)


class Truth:
    """Which period a working-set value was scraped in."""

    def __init__(self, t0: float) -> None:
        self.exporters = UsageExporters(estate(t0), CLUSTER)
        [namespace] = self.exporters.cluster.namespaces
        self.pod = namespace.pods[0]

    def working_set(self, t: float) -> float:
        truth = self.exporters.container(NAMESPACE, self.pod, self.pod.containers[0], t)
        assert truth is not None
        return truth.ram_bytes

    def period_of(self, value: float, now: float, back: int = 40) -> int | None:
        """The start of the latest period up to now whose working set is ``value`` (None if none of the last ``back``)."""
        latest = int(now) // PERIOD * PERIOD
        for start in range(latest, latest - back * PERIOD, -PERIOD):
            if self.working_set(start) == value:
                return start
        return None


async def signup(rest: httpx.AsyncClient) -> tuple[str, dict[str, str], str, str]:
    """A fresh organization and account: (organization, auth headers, account id, its password)."""
    body = (await rest.post("/v2/signup", json={
        "organization_name": "freshness", "email": f"fresh-{uuid.uuid4().hex[:8]}@example.com",
        "password": "correct horse battery", "display_name": "freshness"})).raise_for_status().json()
    headers = {"Authorization": f"Bearer {body['token']}"}
    account = (await rest.post(f"/v2/organizations/{body['organization_id']}/cloud_accounts",
                               json={"name": "prod", "type": "kubernetes_cnr"}, headers=headers)).raise_for_status().json()
    return body["organization_id"], headers, account["id"], account["credentials"]["password"]



async def measure(rest: httpx.AsyncClient, organization: str, headers: dict[str, str], account: str, truth: Truth,
                  seconds: float) -> tuple[list[float], list[float], int]:
    """Ages of the newest point, one a second for ``seconds``; each period's age when first
    shown (its scrape's delay to the answer, to the second); the polls without a known newest point."""
    ages, unknown, first_shown = [], 0, {}
    deadline = time.time() + seconds
    while time.time() < deadline:
        end = int(time.time())
        answer = await rest.get(f"/v2/organizations/{organization}/k8s_live", headers=headers, params={
            "cloud_account_id": account, "query": QUERY, "start_date": end - 4 * PERIOD, "end_date": end,
            "step": PERIOD})
        answered = time.time()
        answer.raise_for_status()
        points = [s["usage"] for s in answer.json()["series"] if s["labels"]["container"] == CONTAINER]
        newest = points[0][-1] if points and points[0] else None
        start = truth.period_of(newest[1], answered) if newest and newest[0] == end else None
        if start is None:
            unknown += 1
        else:
            ages.append(answered - start)
            first_shown.setdefault(start, answered - start)
        await asyncio.sleep(max(0.0, 1 - (time.time() - answered)))
    # The first period shown may have been scraped before the polls began.
    return ages, [age for _, age in sorted(first_shown.items())[1:]], unknown


def asgi(replica: Any, route_prefix: str = "") -> Callable[..., Awaitable[None]]:
    """A Serve replica as an ASGI app, called as Serve's proxy calls it."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        response = await replica(Request({**scope, "root_path": route_prefix}, receive))
        await response(scope, receive, send)

    return app


@asynccontextmanager
async def in_process() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(REST API, ingress), in-process on a fresh MongoDB database, over the shared TSDB."""
    from serve_apps.ingress import app as ingress_app
    from serve_apps.metroculus import app as metroculus_app
    from serve_apps.restapi.api import RestApiConfig, create_api

    database, secret = f"bench_freshness_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    os.environ.update(MONGODB_DATABASE=database, CLUSTER_SECRET=secret)
    stores = from_env(StoreSettings)
    ingress, metroculus = ingress_app.RemoteWriteIngress.func_or_class(), metroculus_app.Metroculus.func_or_class()
    client = MetroculusClient("http://metroculus.bench/metroculus", secret,
                              transport=httpx.ASGITransport(app=asgi(metroculus, "/metroculus")))
    api = create_api(RestApiConfig(from_env(RestApiSettings, {}, jwt_secret=uuid.uuid4().hex * 2), stores, secret,
                                   "http://127.0.0.1:1/unused"), client)
    rest = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://restapi.bench", timeout=60)
    write = httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi(ingress)), base_url="http://ingress.bench",
                              timeout=60)
    try:
        yield rest, write
    finally:
        for http in (rest, write, client):
            await http.aclose()
        await ingress.tsdb.aclose()
        await metroculus.tsdb.aclose()
        await api.state.stores.close()
        await connect(stores).client.drop_database(database)


async def scrape_and_send(write: httpx.AsyncClient, account: str, password: str, exporters: UsageExporters,
                          until: float) -> None:
    """Every period's start: the exporters' scrape, relabelled as shipped, written through the ingress."""
    while (start := (int(time.time()) // PERIOD + 1) * PERIOD) < until:
        await asyncio.sleep(start - time.time())
        series = []
        for labels, value in exporters.series(start):
            family = USAGE_FAMILIES[labels["__name__"]]
            kept = write_relabel({**labels, "job": family.source, "instance": "sim:9003"}, write_relabel_configs())
            if kept is not None:
                series.append(({**kept, "cluster": CLUSTER}, [(start * 1000, value)]))
        answer = await write.post("/storage/api/v2/write", content=encode(series), auth=(account, password), headers={
            "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0", "Cloud-Account-Id": account})
        answer.raise_for_status()


async def run_in_process(seconds: float) -> tuple[list[float], list[float], int]:
    t0 = time.time() - 600
    truth = Truth(t0)
    async with in_process() as (rest, write):
        organization, headers, account, password = await signup(rest)
        sender = asyncio.ensure_future(scrape_and_send(write, account, password, UsageExporters(estate(t0), CLUSTER),
                                                       time.time() + seconds + 2 * PERIOD))
        await asyncio.sleep(2 * PERIOD)  # a scrape or two in: the newest point exists
        try:
            return await measure(rest, organization, headers, account, truth, seconds)
        finally:
            sender.cancel()


async def run_serve(seconds: float) -> tuple[list[float], list[float], int]:
    stack.services("start", "clickhouse", "mongodb", "tsdb", "ray")
    stack.deploy_serve()
    t0 = time.time() - 600
    truth = Truth(t0)
    simulator = uvicorn.Server(uvicorn.Config(create_app(estate(t0), CLUSTER), host="127.0.0.1", port=free_port(),
                                              log_level="warning"))
    threading.Thread(target=simulator.run, daemon=True).start()
    target = f"127.0.0.1:{simulator.config.port}"
    async with httpx.AsyncClient(base_url=f"{SERVE_URL}/restapi", timeout=60) as rest:
        organization, headers, account, password = await signup(rest)
        with tempfile.TemporaryDirectory() as workdir:
            (Path(workdir) / "password").write_text(password)
            config = prometheus_config(account_id=account, password_file=Path(workdir) / "password", write_url=WRITE_URL,
                                       exporter_target=target, scrape_interval=60.0, usage_target=target,
                                       usage_interval=PERIOD)
            config["global"]["external_labels"] = {"cluster": CLUSTER}
            # The shipped batching, not devstack's quicker one: its deadline is part of the age.
            [shipped] = yaml.safe_load(REMOTE_WRITE_TEMPLATE.read_text())["remote_write"]
            config["remote_write"][0]["queue_config"] = shipped["queue_config"]
            (Path(workdir) / "prometheus.yml").write_text(yaml.safe_dump(config))
            prometheus = subprocess.Popen(
                ["prometheus", f"--config.file={workdir}/prometheus.yml", f"--storage.tsdb.path={workdir}/tsdb",
                 f"--web.listen-address=127.0.0.1:{free_port()}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                await asyncio.sleep(4 * PERIOD)  # Prometheus' first scrapes and writes
                return await measure(rest, organization, headers, account, truth, seconds)
            finally:
                prometheus.terminate()
                prometheus.wait(15)
                simulator.should_exit = True


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--in-process", action="store_true", help="ingress, Metroculus and REST in-process (no Serve)")
    mode.add_argument("--serve", action="store_true", help="simulator → Prometheus → Serve's ingress and REST")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to poll, once a second")
    args = parser.parse_args()
    ages, shown_after, unknown = asyncio.run((run_in_process if args.in_process else run_serve)(args.seconds))
    path = ("scrape at each period's start → ingress (in-process) → TSDB → Metroculus → REST (in-process)"
            if args.in_process else "simulator → Prometheus (15 s scrape) → ingress → TSDB → Metroculus → REST, on Serve")
    print(f"{len(ages)} polls, {unknown} without a known newest point; {path}\n")
    print("| source of the Live tab | newest point's age p50 | p95 | max |\n| --- | --- | --- | --- |")
    if ages:
        print(f"| usage series ({QUERY}) | {statistics.median(ages):.1f} s | {percentile(ages, 0.95):.1f} s "
              f"| {max(ages):.1f} s |")
    if shown_after:
        print(f"| usage series: a scrape's age when first shown ({len(shown_after)} scrapes) "
              f"| {statistics.median(shown_after):.1f} s | {percentile(shown_after, 0.95):.1f} s | {max(shown_after):.1f} s |")
    print(f"| today: {TODAY} | ≈ 3600 s (an hour's average) | — | — |")


if __name__ == "__main__":
    main()
