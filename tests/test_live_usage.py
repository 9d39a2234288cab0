"""The live view on the customer's usage series: the REST API's ``k8s_live`` in-process, over
Metroculus in-process (its Serve class without Ray), over the shared TSDB, checked against
the simulator's ground truth.

A simulated cluster's cAdvisor, kube-state-metrics and node-exporter (devstack/simulator/usage.py)
are scraped every 15 s over the last ten minutes, relabelled by the shipped configuration, and
written into the TSDB under a fresh tenant. Its bad input: container ``app`` restarts (an OOM
kill; its counter resets under the same labels once ``id`` is dropped), pod ``api`` has no
kube-state-metrics series, node ``n2`` no node-exporter. Every value asked back is compared
with the simulator's: CPU as the counter's increase over the scrapes in each rate window (a
restart a reset from 0: the old container's use after its last scrape is missed), working
set, requests and limits as modelled; a missing exporter is a gap (no point), never a value.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from devstack.simulator import Cluster, Container, Estate, Namespace, Node, Pod
from devstack.simulator.customer import write_relabel
from devstack.simulator.usage import UsageExporters
from k8scost.metroculus_client import MetroculusClient
from k8scost.promql import LIVE_RATE_SECONDS, LIVE_USAGE_QUERIES, PART_LABEL, live_promql
from k8scost.settings import RestApiSettings, StoreSettings, from_env
from k8scost.stores.mongo import connect
from k8scost.usage_series import USAGE_FAMILIES, write_relabel_configs
from serve_apps.metroculus import app as metroculus_app
from serve_apps.restapi.api import RestApiConfig, create_api
from tests import helpers
from tests.test_live import GRAFANA
from tests.test_metroculus import write
from tests.test_seed_conformance import asgi

GIB = 1024**3
SCRAPE = 15
SECRET = "test-live-usage-secret"
JWT_KEY = "test-jwt-key-of-at-least-32-bytes!"
CLUSTER = "c1"


def estate(t0: float, restart: float) -> Estate:
    """web-0 (n1): ``app`` restarts after an OOM kill, no limits; ``proxy`` has a CPU limit at
    its mean usage, so it is throttled part of the time. api-0 (n2): one container."""
    n1 = Node("n1", 4.0, 16 * GIB, 0.03, 0.004, "i-1")
    n2 = Node("n2", 2.0, 8 * GIB, 0.03, 0.004, "i-2")
    web = [Container("app", 1.0, 2 * GIB, 0.6, 1 * GIB, restarts=[(restart, "OOMKilled")]),
           Container("proxy", 0.2, 0.25 * GIB, 0.1, 0.1 * GIB, cpu_limit_cores=0.1, ram_limit_bytes=0.5 * GIB)]
    pods = [Pod("web-0", "n1", "statefulset", "web", t0, None, web),
            Pod("api-0", "n2", "statefulset", "api", t0, None, [Container("api", 0.5, GIB, 0.3, 0.5 * GIB)])]
    return Estate(7, [Cluster(CLUSTER, 0.1, [n1, n2], [Namespace("apps", {}, pods)])])


def sent(exporters: UsageExporters, t: int, tenant: str) -> list[tuple[dict[str, str], float]]:
    """What the customer's Prometheus writes of its scrape at t: the shipped relabelling, its
    ``cluster`` external label; no kube-state-metrics series of pod api-0, no node-exporter of n2."""
    out = []
    for labels, value in exporters.series(t):
        family = USAGE_FAMILIES[labels["__name__"]]
        kept = write_relabel({**labels, "job": family.source, "instance": "sim:9003"}, write_relabel_configs())
        if kept is None:
            continue
        if family.source == "kube-state-metrics" and kept.get("pod") == "api-0":
            continue
        if family.source == "node-exporter" and kept["node"] == "n2":
            continue
        out.append(({**kept, "cluster": CLUSTER, "tenant_id": tenant}, value))
    return out


@dataclass
class World:
    client: httpx.AsyncClient
    headers: dict[str, str]
    organization: str
    account: str
    t0: float
    restart: float
    scrapes: list[int]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(real_services: None) -> AsyncIterator[World]:
    database = f"test_live_usage_{uuid.uuid4().hex[:12]}"
    stores = from_env(StoreSettings, mongodb_database=database)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLUSTER_SECRET", SECRET)
        metroculus = metroculus_app.Metroculus.func_or_class()
    client_of_metroculus = MetroculusClient("http://metroculus.test/metroculus", SECRET,
                                            transport=httpx.ASGITransport(app=asgi(metroculus, "/metroculus")))
    config = RestApiConfig(from_env(RestApiSettings, {}, jwt_secret=JWT_KEY), stores, SECRET, "http://127.0.0.1:1/unused")
    api = create_api(config, client_of_metroculus)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://restapi.test")
    try:
        signup = await client.post("/v2/signup", json={
            "organization_name": "live", "email": f"live-{uuid.uuid4().hex[:8]}@example.com",
            "password": "correct horse battery", "display_name": "live"})
        assert signup.status_code == 201, signup.text
        organization, headers = signup.json()["organization_id"], {"Authorization": f"Bearer {signup.json()['token']}"}
        account = await client.post(f"/v2/organizations/{organization}/cloud_accounts",
                                    json={"name": "prod", "type": "kubernetes_cnr"}, headers=headers)
        assert account.status_code == 201, account.text
        tenant = account.json()["id"]
        end = int(time.time()) // SCRAPE * SCRAPE - SCRAPE
        scrapes = list(range(end - 600, end + 1, SCRAPE))
        t0, restart = end - 900.0, end - 300 + 7.0  # the restart between two scrapes, as it happens
        exporters = UsageExporters(estate(t0, restart), CLUSTER)
        series: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
        for t in scrapes:
            for labels, value in sent(exporters, t, tenant):
                series.setdefault(tuple(sorted(labels.items())), []).append((t * 1000, value))
        write([(dict(labels), samples) for labels, samples in series.items()])
        yield World(client, headers, organization, tenant, t0, restart, scrapes)
    finally:
        await client.aclose()
        await client_of_metroculus.aclose()
        await metroculus.tsdb.aclose()
        await api.state.stores.close()
        await connect(stores).client.drop_database(database)


async def live(world: World, query: str, start: int, end: int, **filters: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """The REST answer at a SCRAPE step as group labels → part → {t: value}."""
    answer = await world.client.get(f"/v2/organizations/{world.organization}/k8s_live", headers=world.headers, params={
        "cloud_account_id": world.account, "query": query, "start_date": start, "end_date": end, "step": SCRAPE,
        **filters})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["parts"] == list(LIVE_USAGE_QUERIES[query].part_names)
    return {tuple(s["labels"].values()): {part: {t: v for t, v in s[part]} for part in body["parts"]}
            for s in body["series"]}


def points(world: World) -> list[int]:
    """The points asked: every scrape from a full rate window after the first one."""
    return [t for t in world.scrapes if t >= world.scrapes[0] + LIVE_RATE_SECONDS]


def at(world: World, t: float) -> dict[tuple[str, str], Any]:
    """The simulator's truth at t: (pod, container) → ContainerTruth."""
    exporters = UsageExporters(estate(world.t0, world.restart), CLUSTER)
    [namespace] = exporters.cluster.namespaces
    return {(pod.name, c.name): exporters.container(namespace.name, pod, c, t) for pod in namespace.pods
            for c in pod.containers}


@pytest.mark.services
@pytest.mark.asyncio(loop_scope="session")
async def test_cpu_is_the_counters_increase_over_each_window_and_a_restart_a_reset(world: World) -> None:
    shown = points(world)
    got = await live(world, "cpu_usage_by_container", shown[0], shown[-1])
    assert set(got) == {(CLUSTER, "apps", "web-0", "app"), (CLUSTER, "apps", "web-0", "proxy"),
                        (CLUSTER, "apps", "api-0", "api")}
    # The samples in the window (t − 120 s, t] are t − 105 … t: usage = ΔC / 105 s.
    first = LIVE_RATE_SECONDS - SCRAPE
    checked = resets = 0
    for (pod, container), values in ((("web-0", "app"), got[CLUSTER, "apps", "web-0", "app"]["usage"]),
                                     (("web-0", "proxy"), got[CLUSTER, "apps", "web-0", "proxy"]["usage"]),
                                     (("api-0", "api"), got[CLUSTER, "apps", "api-0", "api"]["usage"])):
        for t in shown:
            if container == "app" and t - first <= world.restart <= t:  # both sides of the restart
                # The old container's increase up to its last scrape, then the new one's from 0.
                scraped = [at(world, s)[pod, container].cpu_seconds for s in range(t - first, t + 1, SCRAPE)]
                increase = sum(b - a if b >= a else b for a, b in zip(scraped, scraped[1:]))
                assert values[t] == pytest.approx(increase / first, rel=1e-9), (t, values.get(t))
                assert values[t] < 0.6  # app's true use: what it used between its last scrape and the restart is missed
                resets += 1
                continue
            if container == "app" and t - LIVE_RATE_SECONDS < world.restart < t - first:
                # The counter started inside the window after its last sample before: Prometheus
                # extrapolates it to zero no further than its start, a value within what was used.
                assert 0 <= values[t] <= at(world, t)[pod, container].cpu_seconds / (t - world.restart)
                continue
            now, before = at(world, t)[pod, container], at(world, t - first)[pod, container]
            assert values[t] == pytest.approx((now.cpu_seconds - before.cpu_seconds) / first, rel=1e-9), (container, t)
            checked += 1
    assert resets == first // SCRAPE and checked > 60
    # Requests and limits as kube-state-metrics reports them: only those set; none for api-0.
    app, proxy, api = (got[CLUSTER, "apps", *key] for key in (("web-0", "app"), ("web-0", "proxy"), ("api-0", "api")))
    assert set(app["request"].values()) == {1.0} and len(app["request"]) == len(shown) and app["limit"] == {}
    assert set(proxy["limit"].values()) == {0.1} and len(proxy["limit"]) == len(shown)
    assert api["request"] == {} and api["limit"] == {}


@pytest.mark.services
@pytest.mark.asyncio(loop_scope="session")
async def test_working_set_throttling_restarts_and_node_memory_are_the_simulators(world: World) -> None:
    shown = points(world)
    memory = await live(world, "memory_working_set_by_container", shown[0], shown[-1], namespace="apps")
    for (pod, container) in (("web-0", "app"), ("web-0", "proxy"), ("api-0", "api")):
        group = memory[CLUSTER, "apps", pod, container]
        assert group["usage"] == {t: at(world, t)[pod, container].ram_bytes for t in shown}
    assert set(memory[CLUSTER, "apps", "web-0", "proxy"]["limit"].values()) == {0.5 * GIB}
    assert memory[CLUSTER, "apps", "api-0", "api"]["request"] == {}

    # Throttled share: Δthrottled ÷ Δperiods over the window; only proxy has a CPU limit.
    throttling = await live(world, "cpu_throttling_by_container", shown[0], shown[-1])
    assert set(throttling) == {(CLUSTER, "apps", "web-0", "proxy")}
    first = LIVE_RATE_SECONDS - SCRAPE
    ratios = throttling[CLUSTER, "apps", "web-0", "proxy"]["throttled"]
    for t in shown:
        now, before = at(world, t)["web-0", "proxy"], at(world, t - first)["web-0", "proxy"]
        throttled = now.cfs_throttled_periods - before.cfs_throttled_periods
        # Prometheus extrapolates each counter to the window's start, the same for both unless
        # that would take one below zero: not so here (the counters are far from zero).
        assert before.cfs_throttled_periods * first >= throttled * SCRAPE
        assert ratios[t] == pytest.approx(throttled / (now.cfs_periods - before.cfs_periods), rel=1e-9, abs=1e-12)
    assert 0 < max(ratios.values()) <= 1

    restarts = await live(world, "restarts_by_container", shown[0], shown[-1])
    app = restarts[CLUSTER, "apps", "web-0", "app"]
    assert app["restarts"] == {t: float(t >= world.restart) for t in shown}
    assert app["oom_killed"] == {t: 1.0 for t in shown if t >= world.restart}  # before: no last termination, a gap
    assert (CLUSTER, "apps", "api-0", "api") not in restarts  # no kube-state-metrics: nothing, not zero

    nodes = await live(world, "node_memory_available", shown[0], shown[-1], cluster=CLUSTER)
    used_on_n1 = {t: sum(c.ram_bytes for (pod, _), c in at(world, t).items() if pod == "web-0") for t in shown}
    assert nodes[CLUSTER, "n1"]["available"] == {t: 16 * GIB - used_on_n1[t] for t in shown}
    assert nodes[CLUSTER, "n1"]["allocatable"] == {t: 16.0 * GIB for t in shown}
    assert nodes[CLUSTER, "n2"]["available"] == {}  # no node-exporter on n2: a gap
    assert nodes[CLUSTER, "n2"]["allocatable"] == {t: 8.0 * GIB for t in shown}


@pytest.mark.services
@pytest.mark.asyncio(loop_scope="session")
async def test_another_tenants_usage_is_never_in_the_answer(world: World) -> None:
    """A second organization's account, with the same cluster, pods and containers written
    under its own id, and a label forged as the first one's: each sees its own values."""
    shown = points(world)
    other = await world.client.post("/v2/signup", json={
        "organization_name": "other", "email": f"other-{uuid.uuid4().hex[:8]}@example.com",
        "password": "correct horse battery", "display_name": "other"})
    headers = {"Authorization": f"Bearer {other.json()['token']}"}
    organization = other.json()["organization_id"]
    account = (await world.client.post(f"/v2/organizations/{organization}/cloud_accounts",
                                       json={"name": "prod", "type": "kubernetes_cnr"}, headers=headers)).json()["id"]
    write([({"__name__": "container_memory_working_set_bytes", "cluster": CLUSTER, "namespace": "apps", "pod": "web-0",
             "container": "app", "tenant_id": account}, [(t * 1000, 12345.0) for t in shown])])
    theirs = World(world.client, headers, organization, account, world.t0, world.restart, world.scrapes)
    got = await live(theirs, "memory_working_set_by_container", shown[0], shown[-1])
    assert got == {(CLUSTER, "apps", "web-0", "app"): {"usage": {t: 12345.0 for t in shown}, "request": {}, "limit": {}}}
    ours = await live(world, "memory_working_set_by_container", shown[0], shown[-1])
    assert 12345.0 not in ours[CLUSTER, "apps", "web-0", "app"]["usage"].values()
    # The first organization cannot ask for the other's account: 404, no data.
    answer = await world.client.get(f"/v2/organizations/{world.organization}/k8s_live", headers=world.headers, params={
        "cloud_account_id": account, "query": "cpu_usage_by_container", "start_date": shown[0],
        "end_date": shown[-1], "step": SCRAPE})
    assert answer.status_code == 404, answer.text


@pytest.mark.services
@pytest.mark.asyncio(loop_scope="session")
async def test_the_grafana_panels_run_on_the_tsdb_and_show_what_the_api_answers(world: World) -> None:
    """Each usage panel of cluster_config/grafana/cloudtuner-live.json, its variables given this
    tenant and the range as Grafana would, is a range query the TSDB runs, with the API's values."""
    shown = points(world)
    panels = [target["expr"] for panel in json.loads(GRAFANA.read_text())["panels"] for target in panel["targets"]]
    for name in LIVE_USAGE_QUERIES:
        [expr] = [expr for expr in panels if expr == live_promql(name, "$tenant_id", "$__range").range]
        concrete = expr.replace("$tenant_id", world.account).replace("$__range", f"{shown[-1] - shown[0]}s")
        got: dict[tuple[str, ...], dict[str, dict[int, float]]] = {}
        for series in helpers.tsdb_range(concrete, shown[0], shown[-1], SCRAPE):
            labels = series["metric"]
            key = tuple(labels.get(label, "") for label in LIVE_USAGE_QUERIES[name].group_by)
            got.setdefault(key, {part: {} for part in LIVE_USAGE_QUERIES[name].part_names})[labels[PART_LABEL]] = {
                int(t): float(v) for t, v in series["values"]}
        assert got and got == await live(world, name, shown[0], shown[-1]), name
