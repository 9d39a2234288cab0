"""Rightsizing: the algorithm, the job on real servers, its MongoDB documents, the REST endpoint, the CLI.

A simulated cluster (known requests, usage and node prices) is replayed into the TSDB as
the exporter would have exported it over the last day, for two tenants of two
organizations; the job's per-tenant function (what each Ray task runs) reads it back and
writes the recommendations, which must equal the values computed here by hand from the
estate and the formulas of ``k8scost.rightsizing``. The estate:

- deployment ``web``, 2 replicas, over-provisioned (2 cores, 4 GiB each; web-a uses
  0.35 core with one 1-hour peak at 0.56, web-b 0.49; 1 and 1.5 GiB), on two nodes of
  different prices;
- statefulset ``db``, under-provisioned (0.5 core, 1 GiB requested; 0.7 core, 2 GiB used);
- pod ``debug`` without controller, using almost nothing: recommended at the floors;
- job ``batch``, ended inside the window: recommended, but nothing to save now.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from devstack.simulator.history import SCRAPE_LABELS, exported_at
from devstack.simulator.spec import GIB, MIB, Cluster, Container, Estate, Namespace, Node, Pod
from exporter.snapshot import CONTAINER_GAUGES, NODE_PRICE_GAUGES
from jobs.rightsizing import run_tenant, tenant_queries
from k8scost import promql
from k8scost.rightsizing import (
    HOURS_PER_MONTH,
    MIN_CPU_CORES,
    MIN_MEMORY_BYTES,
    Algorithm,
    GroupKey,
    Observed,
    Params,
    ParamsError,
    Replica,
    Status,
    group_key,
    recommend,
    recommend_all,
)
from k8scost.settings import RestApiSettings, RightsizingSettings, StoreSettings, from_env
from k8scost.stores.mongo import connect
from k8scost.stores.rightsizing import COLLECTION, RightsizingStore
from serve_apps.restapi.api import RestApiConfig, create_api
from tests import helpers
from tests.test_dashboard import attribute, browser, severe_console_errors, shown, sign_in, table, wait  # noqa: F401
from tests.test_metroculus import write

HOUR = 3600
DAY = 86_400
STEP = 300  # the exporter's gauges every 5 minutes, as the customer's Prometheus scrapes them
SAMPLES = DAY // STEP  # samples of one replica running through the 1-day window
MONTH = HOURS_PER_MONTH
SECRET = "test-cluster-secret"
JWT_KEY = "test-jwt-key-of-at-least-32-bytes!"
ROOT = helpers.ROOT
# Node prices: USD per core-hour and per GiB-hour.
N1_CPU, N1_RAM, N2_CPU, N2_RAM = 0.04, 0.005, 0.05, 0.004


def on_servers(test: Any) -> Any:
    """A test on the real servers, on the session's loop: the app's and the store's clients belong to it."""
    return pytest.mark.services(pytest.mark.asyncio(loop_scope="session")(test))


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-12)


# --- the algorithm, unit by unit -----------------------------------------------------------------


def obs(statistic: float | None, request: float | None = 1.0, price: float | None = 1.0, usage_sum: float = 0.0,
        request_sum: float = 0.0) -> Observed:
    return Observed(statistic, usage_sum, request_sum, request, price)


def replica(pod: str, cpu: Observed, memory: Observed | None = None, running: bool = True) -> Replica:
    return Replica(pod, "n", running, cpu, memory or obs(GIB, request=2 * GIB))


KEY = GroupKey("c", "ns", "deployment", "web", "", "web")


def test_recommendation_is_the_max_over_replicas_divided_by_the_target() -> None:
    # Kubecost's example: replicas peaking at 120 m / 300 MiB and 800 m / 120 MiB.
    replicas = [replica("a", obs(0.12), obs(300 * MIB, request=GIB)), replica("b", obs(0.8), obs(120 * MIB, request=GIB))]
    r = recommend(KEY, replicas, Params(target_cpu_utilization=0.8, target_memory_utilization=0.5))
    assert r.cpu.recommended_request == approx(0.8 / 0.8)
    assert r.memory.recommended_request == approx(300 * MIB / 0.5)
    assert (r.replicas, r.pods) == (2, 2)


def test_floors_are_10m_cpu_and_20_mib() -> None:
    r = recommend(KEY, [replica("a", obs(0.001), obs(1 * MIB, request=GIB))], Params())
    assert (r.cpu.recommended_request, r.memory.recommended_request) == (MIN_CPU_CORES, MIN_MEMORY_BYTES) == (0.01, 20 * MIB)
    # Just above the floor: usage / target.
    r = recommend(KEY, [replica("a", obs(0.0071), obs(14.7 * MIB, request=GIB))], Params())
    assert r.cpu.recommended_request == approx(0.0071 / 0.7)
    assert r.memory.recommended_request == approx(14.7 * MIB / 0.7)


def test_savings_per_running_replica_at_its_own_node_price() -> None:
    # CPU at 0.04 and 0.05 USD per core-hour, memory at 0.005 and 0.004 per GiB-hour.
    a = replica("a", obs(0.35, request=2, price=0.04), obs(GIB, request=4 * GIB, price=0.005))
    b = replica("b", obs(0.49, request=2, price=0.05), obs(1.5 * GIB, request=4 * GIB, price=0.004))
    gone = replica("c", obs(0.63, request=2, price=None), obs(GIB, request=4 * GIB, price=None), running=False)
    r = recommend(KEY, [a, b, gone], Params())
    cpu = 0.63 / 0.7  # the ended replica's peak still counts
    memory = 1.5 * GIB / 0.7
    assert r.cpu.monthly_savings == approx((2 - cpu) * 0.04 * 730 + (2 - cpu) * 0.05 * 730)
    assert r.memory.monthly_savings == approx((4 * GIB - memory) / GIB * (0.005 + 0.004) * 730)
    assert r.monthly_savings == approx(r.cpu.monthly_savings + r.memory.monthly_savings)
    assert (r.status, r.extra_monthly_cost, r.replicas, r.pods) == (Status.OVER, 0.0, 2, 3)


def test_under_provisioned_savings_are_negative_and_the_extra_cost_positive() -> None:
    r = recommend(KEY, [replica("a", obs(0.7, request=0.5, price=0.04), obs(2 * GIB, request=GIB, price=0.005))],
                  Params())
    cpu = (0.5 - 0.7 / 0.7) * 0.04 * 730
    memory = (1 - 2 / 0.7) * 0.005 * 730
    assert r.cpu.monthly_savings == approx(cpu) == approx(-14.6)
    assert r.memory.monthly_savings == approx(memory)
    assert r.status is Status.UNDER
    assert r.extra_monthly_cost == approx(-(cpu + memory))


def test_efficiency_is_summed_usage_over_summed_requests_and_the_total_is_cost_weighted() -> None:
    a = replica("a", obs(1, price=0.04, usage_sum=10, request_sum=40), obs(GIB, price=0.005, usage_sum=30 * GIB, request_sum=40 * GIB))
    b = replica("b", obs(1, price=0.05, usage_sum=20, request_sum=20), obs(GIB, price=0.004, usage_sum=5 * GIB, request_sum=20 * GIB))
    r = recommend(KEY, [a, b], Params())
    assert r.cpu.efficiency == approx(30 / 60)
    assert r.memory.efficiency == approx(35 / 60)
    usage = 10 * 0.04 + 20 * 0.05 + 30 * 0.005 + 5 * 0.004
    request = 40 * 0.04 + 20 * 0.05 + 40 * 0.005 + 20 * 0.004
    assert r.total_efficiency == approx(usage / request)
    # Nothing requested: no efficiency (OpenCost's 1.0 would call a best-effort pod perfect).
    assert recommend(KEY, [replica("a", obs(1, usage_sum=5))], Params()).cpu.efficiency is None


def test_unknown_prices_requests_or_usage_leave_savings_unknown() -> None:
    no_price = recommend(KEY, [replica("a", obs(0.1, price=None))], Params())
    assert (no_price.cpu.monthly_savings, no_price.monthly_savings, no_price.status) == (None, None, Status.UNKNOWN)
    assert no_price.total_efficiency is None
    no_usage = recommend(KEY, [replica("a", obs(None))], Params())
    assert (no_usage.cpu.recommended_request, no_usage.status) == (None, Status.UNKNOWN)
    # A best-effort container (request 0): sizing it costs money, so it is under-provisioned.
    best_effort = recommend(KEY, [replica("a", obs(0.07, request=0.0, price=0.04), obs(GIB, request=0.0, price=0.005))],
                            Params())
    assert best_effort.monthly_savings == approx(-(0.1 * 0.04 + GIB / 0.7 / GIB * 0.005) * 730)
    assert best_effort.status is Status.UNDER


def test_a_group_without_running_replica_saves_nothing_now() -> None:
    r = recommend(KEY, [replica("a", obs(0.1, request=2, price=None), running=False)], Params())
    assert (r.monthly_savings, r.status, r.replicas, r.pods) == (0.0, Status.NOT_RUNNING, 0, 1)
    assert r.cpu.current_request == 2  # the latest request of the replicas that ran


def test_groups_are_controllers_or_bare_pods_and_sorted_by_savings() -> None:
    assert group_key("c", "ns", "web-1", "web", "deployment", "web") == group_key("c", "ns", "web-2", "web", "deployment", "web")
    assert group_key("c", "ns", "debug", "sh", "", "") == GroupKey("c", "ns", "", "", "debug", "sh")
    assert group_key("c", "ns", "debug", "sh", "", "") != group_key("c", "ns", "debug-2", "sh", "", "")
    big = replica("a", obs(0.1, request=4, price=0.04))
    small = replica("a", obs(0.1, request=1, price=0.04))
    under = replica("a", obs(2, request=1, price=0.04))
    unknown = replica("a", obs(0.1, price=None))
    keys = [GroupKey("c", "ns", "", "", p, "x") for p in ("p1", "p2", "p3", "p4")]
    ranked = recommend_all(dict(zip(keys, [[unknown], [small], [under], [big]])), Params())
    assert [r.key.pod for r in ranked] == ["p4", "p2", "p3", "p1"]


@pytest.mark.parametrize(("values", "param"), [
    ({"window_days": 0}, "window_days"),
    ({"window_days": 31}, "window_days"),
    ({"window_days": 1.5}, "window_days"),
    ({"algorithm": "p95"}, "algorithm"),
    ({"quantile": 0.0}, "quantile"),
    ({"quantile": 1.01}, "quantile"),
    ({"quantile": math.nan}, "quantile"),
    ({"target_cpu_utilization": 0}, "target_cpu_utilization"),
    ({"target_memory_utilization": 1.5}, "target_memory_utilization"),
])
def test_params_are_checked_naming_the_parameter(values: dict[str, Any], param: str) -> None:
    with pytest.raises(ParamsError) as error:
        Params(**values)
    assert error.value.param == param


def test_quantile_and_max_queries_read_their_gauges_of_the_one_tenant() -> None:
    peak = tenant_queries('t"1', Params(window_days=7))
    quantile = tenant_queries('t"1', Params(window_days=7, algorithm=Algorithm.QUANTILE, quantile=0.9))
    assert peak["cpu_statistic"].startswith("max by (cluster, namespace, pod, container, node, controller_kind, controller)")
    assert 'max_over_time(cloudtuner_kubecost_container_cpu_usage_max_cores{tenant_id="t\\"1"}[604799999ms])' in peak["cpu_statistic"]
    assert "quantile_over_time(0.9, cloudtuner_kubecost_container_memory_usage_average_bytes{" in quantile["memory_statistic"]
    assert all('tenant_id="t\\"1"' in q for q in peak.values())
    assert peak["cpu_price"] == ('max by (cluster, node) (last_over_time('
                                 'cloudtuner_kubecost_node_cpu_price_per_core_hour{tenant_id="t\\"1"}[604799999ms]))')


def test_rightsizing_metrics_are_the_exporters_and_apart_from_the_cost_metrics() -> None:
    exported = {m.name for m in (*CONTAINER_GAUGES.values(), *NODE_PRICE_GAUGES.values())}
    assert set(promql.RIGHTSIZING_METRICS) == exported
    assert not set(promql.RIGHTSIZING_METRICS) & set(promql.COST_METRICS)
    with pytest.raises(ValueError, match="unknown rightsizing metric"):
        promql.rightsizing_selector("cloudtuner_kubecost_pod_total_cost", "t")
    with pytest.raises(ValueError, match="unknown cost metric"):
        promql.selector("cloudtuner_kubecost_container_cpu_usage_max_cores", "t")
    with pytest.raises(ValueError):
        promql.rightsizing_selector("cloudtuner_kubecost_container_cpu_request_cores", "")


# --- the simulated cluster, its history in the TSDB ------------------------------------------------


def simulated_estate(end: int, web_b_cpu: float = 0.49) -> Estate:
    """The estate of the module docstring; every usage constant but web-a's one-hour peak."""
    always = end - 30 * DAY
    n1 = Node("n1", 16, 64 * GIB, N1_CPU, N1_RAM, "aws:///eu-west-1a/i-n1")
    n2 = Node("n2", 16, 64 * GIB, N2_CPU, N2_RAM, "aws:///eu-west-1a/i-n2")
    peak = [(end - 10 * HOUR, 2, 4 * GIB, 0.56, GIB), (end - 9 * HOUR, 2, 4 * GIB, 0.35, GIB)]
    pods = [
        Pod("web-a", "n1", "deployment", "web", always, None, [Container("web", 2, 4 * GIB, 0.35, GIB, peak)]),
        Pod("web-b", "n2", "deployment", "web", always, None, [Container("web", 2, 4 * GIB, web_b_cpu, 1.5 * GIB)]),
        Pod("db-0", "n1", "statefulset", "db", always, None, [Container("postgres", 0.5, GIB, 0.7, 2 * GIB)]),
        Pod("debug", "n2", "", "", always, None, [Container("sh", 0.1, 64 * MIB, 0.003, 5 * MIB)]),
        Pod("batch-1", "n2", "job", "batch", end - 20 * HOUR, end - 14 * HOUR,
            [Container("work", 1.2, 768 * MIB, 1.0, 512 * MIB)]),
    ]
    return Estate(1, [Cluster("prod", 0.1, [n1, n2], [Namespace("shop", {}, pods)])])


def write_history(estate: Estate, tenant: str, start: int, end: int) -> None:
    """What the exporter exported every STEP over [start, end], remote-written into the TSDB.

    The TSDB takes samples up to 30 days old (out-of-order writes), so no restart is needed.
    """
    series: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
    for at in range(start, end + 1, STEP):
        for metric, values in exported_at(estate, "prod", tenant, at, "1h").items():
            for label_values, value in values.items():
                labels = {"__name__": metric.name, **{k: v for k, v in zip(metric.labels, label_values) if v},
                          **SCRAPE_LABELS}
                series.setdefault(tuple(sorted(labels.items())), []).append((at * 1000, value))
    write([(dict(labels), samples) for labels, samples in series.items()])


@dataclass
class Org:
    id: str
    token: str
    account: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class World:
    end: int
    client: httpx.AsyncClient
    a: Org
    b: Org
    stores: StoreSettings
    store: RightsizingStore


async def _org(client: httpx.AsyncClient, name: str) -> Org:
    signup = await client.post("/v2/signup", json={"organization_name": name, "email": f"{name}-{uuid.uuid4().hex[:8]}@example.com",
                                                   "password": "correct horse battery", "display_name": name})
    assert signup.status_code == 201, signup.text
    body = signup.json()
    headers = {"Authorization": f"Bearer {body['token']}"}
    account = await client.post(f"/v2/organizations/{body['organization_id']}/cloud_accounts",
                                json={"name": f"{name} prod", "type": "kubernetes_cnr"}, headers=headers)
    assert account.status_code == 201, account.text
    return Org(body["organization_id"], body["token"], account.json()["id"])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(real_services: None) -> AsyncIterator[World]:
    database = f"test_rightsizing_{uuid.uuid4().hex[:12]}"
    stores = from_env(StoreSettings, mongodb_database=database)
    config = RestApiConfig(from_env(RestApiSettings, {}, jwt_secret=JWT_KEY), stores, SECRET, "http://127.0.0.1:1/unused")
    api = create_api(config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://restapi.test")
    end = int(time.time()) // STEP * STEP - STEP  # on the scrape grid: every sample's window is a whole hour
    try:
        a, b = await _org(client, "alpha"), await _org(client, "beta")
        # A day and an hour back: the first sample of the window averages a whole hour too.
        write_history(simulated_estate(end), a.account, end - DAY - HOUR, end)
        # The other tenant: same cluster, namespace and pod names, other usage.
        write_history(simulated_estate(end, web_b_cpu=1.33), b.account, end - DAY - HOUR, end)
        yield World(end, client, a, b, stores, RightsizingStore(connect(stores)))
    finally:
        await client.aclose()
        await api.state.stores.close()
        await connect(stores).client.drop_database(database)


async def run_job(world: World, org: Org, params: Params) -> Any:
    return await run_tenant(org.account, org.id, params, world.end, world.stores, from_env(RightsizingSettings))


async def stored(world: World, org: Org) -> dict[str, dict[str, Any]]:
    """The account's documents by container (bare pods: by pod)."""
    found, _ = await world.store.find([org.account], {}, limit=100)
    return {doc["pod"] or doc["container"]: doc for doc in found}


# The hand-computed values, from the estate above and the formulas.
WEB_CPU_SUM = SAMPLES * 0.35 + 0.21 * 12 + SAMPLES * 0.49  # web-a's peak hour lifts 12 hourly windows' averages
WEB = {
    "recommended_cpu_cores": 0.56 / 0.7,  # web-a's peak, the max over the replicas
    "recommended_memory_bytes": 1.5 * GIB / 0.7,
    "cpu_monthly_savings": (2 - 0.56 / 0.7) * N1_CPU * MONTH + (2 - 0.56 / 0.7) * N2_CPU * MONTH,
    "memory_monthly_savings": (4 - 1.5 / 0.7) * (N1_RAM + N2_RAM) * MONTH,
    "cpu_efficiency": WEB_CPU_SUM / (SAMPLES * 2 * 2),
    "memory_efficiency": (1 + 1.5) / (4 + 4),
    "total_efficiency": ((SAMPLES * 0.35 + 2.52) * N1_CPU + SAMPLES * 0.49 * N2_CPU + SAMPLES * 1 * N1_RAM
                         + SAMPLES * 1.5 * N2_RAM)
    / (SAMPLES * (2 * N1_CPU + 2 * N2_CPU + 4 * N1_RAM + 4 * N2_RAM)),
    "current_cpu_cores": 2.0, "current_memory_bytes": 4 * GIB, "replicas": 2, "pods": 2,
    "status": "over-provisioned", "extra_monthly_cost": 0.0,
}
DB = {
    "recommended_cpu_cores": 0.7 / 0.7, "recommended_memory_bytes": 2 * GIB / 0.7,
    "cpu_monthly_savings": (0.5 - 1.0) * N1_CPU * MONTH,  # -14.60
    "memory_monthly_savings": (1 - 2 / 0.7) * N1_RAM * MONTH,
    "cpu_efficiency": 0.7 / 0.5, "memory_efficiency": 2.0,
    "total_efficiency": (0.7 * N1_CPU + 2 * N1_RAM) / (0.5 * N1_CPU + 1 * N1_RAM),
    "current_cpu_cores": 0.5, "current_memory_bytes": GIB, "replicas": 1, "pods": 1, "status": "under-provisioned",
}
DEBUG = {
    "recommended_cpu_cores": 0.01, "recommended_memory_bytes": 20 * MIB,  # the floors
    "cpu_monthly_savings": (0.1 - 0.01) * N2_CPU * MONTH,
    "memory_monthly_savings": (64 - 20) / 1024 * N2_RAM * MONTH,
    "cpu_efficiency": 0.003 / 0.1, "memory_efficiency": 5 / 64,
    "total_efficiency": (0.003 * N2_CPU + 5 / 1024 * N2_RAM) / (0.1 * N2_CPU + 64 / 1024 * N2_RAM),
    "controller_kind": None, "controller": None, "pod": "debug", "replicas": 1, "status": "over-provisioned",
}
BATCH = {
    "recommended_cpu_cores": 1.0 / 0.7, "recommended_memory_bytes": 512 * MIB / 0.7,
    "cpu_monthly_savings": 0.0, "memory_monthly_savings": 0.0, "monthly_savings": 0.0,
    "cpu_efficiency": 1.0 / 1.2, "memory_efficiency": 512 / 768,
    "total_efficiency": (1.0 * N2_CPU + 0.5 * N2_RAM) / (1.2 * N2_CPU + 0.75 * N2_RAM),
    "current_cpu_cores": 1.2, "replicas": 0, "pods": 1, "status": "not-running",
}
for expected in (WEB, DB, DEBUG):
    expected["monthly_savings"] = expected["cpu_monthly_savings"] + expected["memory_monthly_savings"]
DB["extra_monthly_cost"] = -DB["monthly_savings"]


def assert_matches(doc: dict[str, Any], expected: dict[str, Any]) -> None:
    for field, value in expected.items():
        if isinstance(value, float):
            assert doc[field] == approx(value), field
        else:
            assert doc[field] == value, field


@on_servers
async def test_the_job_recommends_what_the_formulas_give_by_hand(world: World) -> None:
    report = await run_job(world, world.a, Params(window_days=1))
    await run_job(world, world.b, Params(window_days=1))
    docs = await stored(world, world.a)
    assert set(docs) == {"web", "postgres", "debug", "work"}
    assert_matches(docs["web"], WEB)
    assert_matches(docs["postgres"], DB)
    assert_matches(docs["debug"], DEBUG)
    assert_matches(docs["work"], BATCH)
    assert (docs["web"]["cluster"], docs["web"]["namespace"], docs["web"]["controller_kind"], docs["web"]["pod"]) == (
        "prod", "shop", "deployment", None)
    # No usage series in this estate: every group is sized on the exporter's hourly averages, and says so.
    assert {doc["sized_on"] for doc in docs.values()} == {"hourly averages: no usage series"}
    assert docs["web"]["run"] == {"window_days": 1, "algorithm": "max", "quantile": 0.95, "target_cpu_utilization": 0.7,
                                  "target_memory_utilization": 0.7, "recommender": "vpa", "window_start": world.end - DAY,
                                  "window_end": world.end, "computed_at": docs["web"]["run"]["computed_at"]}
    assert time.time() - 120 < docs["web"]["run"]["computed_at"] <= time.time()
    assert (report.groups, report.replicas, report.over_provisioned, report.under_provisioned) == (4, 5, 2, 1)
    assert report.monthly_savings == approx(WEB["monthly_savings"] + DEBUG["monthly_savings"])
    assert report.extra_monthly_cost == approx(-DB["monthly_savings"])
    # The other tenant, same names: its own usage (web-b at 1.33 cores is now the peak).
    other = await stored(world, world.b)
    assert other["web"]["recommended_cpu_cores"] == approx(1.33 / 0.7)
    assert other["web"]["cloud_account_id"] == world.b.account and docs["web"]["_id"] != other["web"]["_id"]


@on_servers
async def test_a_quantile_rerun_replaces_the_documents(world: World) -> None:
    await run_job(world, world.a, Params(window_days=1))
    before = await stored(world, world.a)
    await run_job(world, world.a, Params(window_days=1, algorithm=Algorithm.QUANTILE, quantile=0.5))
    after = await stored(world, world.a)
    assert {k: d["_id"] for k, d in after.items()} == {k: d["_id"] for k, d in before.items()}  # same ids, no copies
    assert await connect(world.stores)[COLLECTION].count_documents({"cloud_account_id": world.a.account}) == 4
    # The median of web-a's hourly averages is its usage without the peak: web-b's 0.49 is the max.
    assert after["web"]["recommended_cpu_cores"] == approx(0.49 / 0.7)
    assert after["web"]["cpu_monthly_savings"] == approx((2 - 0.7) * (N1_CPU + N2_CPU) * MONTH)
    assert (after["web"]["run"]["algorithm"], after["web"]["run"]["quantile"]) == ("quantile", 0.5)
    assert_matches(after["postgres"], DB)  # constant usage: every quantile is the usage
    await run_job(world, world.a, Params(window_days=1))  # as the other tests expect it
    assert_matches((await stored(world, world.a))["web"], WEB)


@on_servers
async def test_replace_drops_groups_gone_from_the_run(world: World) -> None:
    store, account = world.store, f"acct-{uuid.uuid4()}"
    docs = [{"_id": f"{account}-{n}", "cloud_account_id": account, "monthly_savings": float(n), "status": "right-sized"}
            for n in range(3)]
    await store.replace(account, docs)
    await store.replace(account, docs[:1])
    found, summary = await store.find([account], {})
    assert [d["_id"] for d in found] == [docs[0]["_id"]]
    assert summary["right-sized"] == {"count": 1, "monthly_savings": 0.0}
    await store.replace(account, [])
    assert (await store.find([account], {}))[0] == []


# --- the REST endpoint ----------------------------------------------------------------------------


async def get(world: World, org: Org, params: Any = None, organization: str | None = None, **kwargs: Any) -> httpx.Response:
    return await world.client.get(f"/v2/organizations/{organization or org.id}/k8s_rightsizing", params=params,
                                  headers=kwargs.pop("headers", org.headers), **kwargs)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def recommended(world: World) -> World:
    """Both tenants' max run written; tests that run the job otherwise put it back when done."""
    await run_job(world, world.a, Params(window_days=1))
    await run_job(world, world.b, Params(window_days=1))
    return world


@on_servers
async def test_the_endpoint_lists_the_recommendations_by_savings(recommended: World) -> None:
    world = recommended
    answer = await get(world, world.a)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    items = body["k8s_rightsizing"]
    assert [i["container"] for i in items] == ["web", "sh", "work", "postgres"]  # savings, largest first
    by_container = {i["container"]: i for i in items}
    assert_matches(by_container["web"], WEB)
    assert_matches(by_container["postgres"], DB)
    assert_matches(by_container["sh"], DEBUG)
    assert_matches(by_container["work"], BATCH)
    assert all(i["cloud_account_id"] == world.a.account and i["cloud_account_name"] == "alpha prod" for i in items)
    assert "_id" not in items[0] and len(items[0]["id"]) == 36
    assert body["total_count"] == 4
    assert body["monthly_savings"] == approx(WEB["monthly_savings"] + DEBUG["monthly_savings"])
    assert body["extra_monthly_cost"] == approx(-DB["monthly_savings"])
    assert {s: v["count"] for s, v in body["statuses"].items()} == {
        "over-provisioned": 2, "under-provisioned": 1, "right-sized": 0, "not-running": 1, "unknown": 0}
    # The service secret reads any organization, the same answer.
    service = await get(world, world.a, headers={"Secret": SECRET})
    assert [i["id"] for i in service.json()["k8s_rightsizing"]] == [i["id"] for i in items]


@on_servers
@pytest.mark.parametrize(("params", "containers", "count"), [
    ({"status": "under-provisioned"}, ["postgres"], 1),
    ({"status": ["under-provisioned", "not-running"]}, ["work", "postgres"], 2),
    ({"k8s_cluster": "prod", "k8s_namespace": "shop", "limit": 2}, ["web", "sh"], 4),  # counts cover all that match
    ({"k8s_namespace": "other"}, [], 0),
    ({"sort_by": "total_efficiency", "order": "asc"}, ["sh", "web", "work", "postgres"], 4),
    ({"sort_by": "memory_efficiency"}, ["postgres", "work", "web", "sh"], 4),
    ({"sort_by": "extra_monthly_cost", "limit": 1}, ["postgres"], 4),
])
async def test_the_endpoint_filters_sorts_and_limits(recommended: World, params: dict[str, Any], containers: list[str],
                                                     count: int) -> None:
    world = recommended
    answer = await get(world, world.a, {**params, "cloud_account_id": world.a.account})
    assert answer.status_code == 200, answer.text
    assert [i["container"] for i in answer.json()["k8s_rightsizing"]] == containers
    assert answer.json()["total_count"] == count


@on_servers
async def test_another_organizations_ids_are_404_and_never_its_data(recommended: World) -> None:
    world = recommended
    a, b = world.a, world.b
    for params, organization in [({}, b.id), ({"cloud_account_id": b.account}, None), ({}, str(uuid.uuid4())),
                                 ({"cloud_account_id": str(uuid.uuid4())}, None)]:
        answer = await get(world, a, params, organization)
        assert answer.status_code == 404, (params, organization, answer.text)
        assert answer.json()["error"]["reason"] == "not_found"
    own = (await get(world, b)).json()["k8s_rightsizing"]
    assert own and {i["cloud_account_id"] for i in own} == {b.account}
    assert b.account not in (await get(world, a)).text
    unauthenticated = await world.client.get(f"/v2/organizations/{a.id}/k8s_rightsizing")
    assert unauthenticated.status_code == 401


@on_servers
@pytest.mark.parametrize(("params", "named"), [
    ({"sort": "monthly_savings"}, "sort"),
    ({"sort_by": "cost"}, "sort_by"),
    ({"sort_by": ["monthly_savings", "total_efficiency"]}, "sort_by"),
    ({"order": "up"}, "order"),
    ({"limit": 0}, "limit"),
    ({"limit": 50_001}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"status": "wasteful"}, "status"),
    ({"k8s_namespace": ""}, "k8s_namespace"),
])
async def test_bad_parameters_are_400_naming_them(world: World, params: dict[str, Any], named: str) -> None:
    answer = await get(world, world.a, params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["reason"] == "bad_request"
    assert named in answer.json()["error"]["message"]


# --- the command line ---------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobs.rightsizing", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(env or {})})


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--window-days", "0"], {}, "--window-days / RIGHTSIZING_WINDOW_DAYS: 0 is not a whole number of days from 1 to 30"),
    (["--window-days", "seven"], {}, "argument --window-days: invalid int value: 'seven'"),
    (["--algorithm", "p95"], {}, "argument --algorithm: invalid choice: 'p95'"),
    ([], {"RIGHTSIZING_ALGORITHM": "p95"}, "--algorithm / RIGHTSIZING_ALGORITHM: 'p95' is not one of max, quantile"),
    (["--quantile", "1.5"], {}, "--quantile / RIGHTSIZING_QUANTILE: 1.5 is not a number in (0, 1]"),
    (["--quantile", "nan"], {}, "--quantile / RIGHTSIZING_QUANTILE: nan is not a number in (0, 1]"),
    (["--target-cpu-utilization", "0"], {}, "--target-cpu-utilization / RIGHTSIZING_TARGET_CPU_UTILIZATION: 0.0 is not"),
    (["--target-memory-utilization", "-1"], {}, "--target-memory-utilization / RIGHTSIZING_TARGET_MEMORY_UTILIZATION"),
    (["--organization-id", "o", "--cloud-account-id", "a"], {}, "not allowed with argument"),
    (["--end", str(int(time.time()) + 3600)], {}, "future usage is not known yet"),
    ([], {"RIGHTSIZING_WINDOW_DAYS": "week"}, "RIGHTSIZING_WINDOW_DAYS='week' is not a valid int"),
])
def test_bad_arguments_exit_2_naming_the_flag(args: list[str], env: dict[str, str], message: str) -> None:
    done = cli(*args, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr


@pytest.mark.services
def test_unknown_accounts_and_empty_organizations_exit_2(real_services: None) -> None:
    missing = cli("--cloud-account-id", "no-such-account")
    assert missing.returncode == 2 and "cloud account 'no-such-account' does not exist or was deleted" in missing.stderr
    empty = cli("--organization-id", f"org-{uuid.uuid4()}")
    assert empty.returncode == 2 and "no live Kubernetes cloud account" in empty.stderr


@on_servers
async def test_ray_job_submit_runs_the_job_as_the_readme_says(world: World) -> None:
    """`ray job submit` on the local Ray (run it under the serve lock, see the rules in README)."""
    helpers.services("start", "ray")
    env = {"MONGODB_DATABASE": world.stores.mongodb_database, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    submitted = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ray"), "job", "submit", "--address", helpers.RAY_DASHBOARD, "--working-dir", ".",
         "--runtime-env-json", json.dumps({"env_vars": env}), "--",
         "python", "-m", "jobs.rightsizing", "--cloud-account-id", world.a.account, "--cloud-account-id", world.b.account,
         "--window-days", "1", "--algorithm", "quantile", "--quantile", "0.5", "--end", str(world.end)],
        cwd=ROOT, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, capture_output=True, text=True,
        timeout=600,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "rightsizing: 2/2 tenants in" in submitted.stdout
    assert (f"rightsizing: tenant {world.a.account}: 4 groups (5 replicas; 0 sized on usage series, the others on "
            "hourly averages), 2 over- and 1 under-provisioned") in submitted.stdout
    summary = json.loads(next(line for line in submitted.stdout.splitlines() if line.startswith('{"accounts"')))
    assert (summary["accounts"], summary["done"], summary["failed"], summary["groups"]) == (2, 2, [], 8)
    docs = await stored(world, world.a)
    assert docs["web"]["recommended_cpu_cores"] == approx(0.49 / 0.7)  # the quantile the task computed
    assert docs["web"]["run"]["algorithm"] == "quantile"
    assert_matches(docs["postgres"], DB)
    await run_job(world, world.a, Params(window_days=1))  # back to the max run the other tests expect


# --- the dashboard tab ----------------------------------------------------------------------------


@pytest.mark.services
def test_the_dashboard_tab_shows_the_recommendations_the_api_answers(serve_apps: str, browser: Any) -> None:
    """Through Serve (run under the serve lock): the job's documents for a new organization, on the page."""
    api = f"{serve_apps}/restapi/v2"
    email, password = f"rightsizing-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
    signed = httpx.post(f"{api}/signup", json={"organization_name": "Rightsizing Co", "email": email,
                                              "password": password, "display_name": "Ri"}, timeout=30).json()
    headers = {"Authorization": f"Bearer {signed['token']}"}
    account = httpx.post(f"{api}/organizations/{signed['organization_id']}/cloud_accounts", headers=headers,
                         json={"name": "shop prod", "type": "kubernetes_cnr"}, timeout=30).json()["id"]
    end = int(time.time()) // STEP * STEP - STEP
    write_history(simulated_estate(end), account, end - DAY - HOUR, end)
    # The tests' database, which the test Serve deployment reads (conftest.TEST_SERVE_ENV).
    asyncio.run(run_tenant(account, signed["organization_id"], Params(window_days=1), end, from_env(StoreSettings),
                           from_env(RightsizingSettings)))
    answer = httpx.get(f"{api}/organizations/{signed['organization_id']}/k8s_rightsizing", headers=headers, timeout=30).json()

    sign_in(browser, email, password)
    assert browser.find_element("id", "rightsizing").is_displayed() is False
    browser.find_element("id", "tab-rightsizing").click()
    wait(browser, "the rightsizing tab", lambda d: attribute(d, "rightsizing", "data-state") == "ready")
    assert not browser.find_element("id", "trend").is_displayed() and browser.find_element("id", "filters").is_displayed()
    rows = table(browser, "rightsizing-table")
    assert [row["cells"]["container"] for row in rows] == ["web", "sh", "work", "postgres"]  # savings, largest first
    assert [row["id"] for row in rows] == [item["id"] for item in answer["k8s_rightsizing"]]
    web, sh, _, postgres = (row["cells"] for row in rows)
    assert (web["workload"], web["cluster"], web["replicas"]) == ("shop/deployment/web", "prod", "2")
    # 2 cores → 0.56 / 0.7; 4 GiB → 1.5 GiB / 0.7 = 2194.3 MiB, rounded up.
    assert (web["cpu"], web["memory"]) == ("2000m → 800m", "4096Mi → 2195Mi")
    assert (sh["workload"], sh["cpu"], sh["memory"]) == ("shop/pod/debug", "100m → 10m", "64Mi → 20Mi")
    assert (postgres["status"], postgres["monthly_savings"]) == ("under-provisioned", f"-${-DB['monthly_savings']:,.2f}")
    assert web["monthly_savings"] == f"${WEB['monthly_savings']:,.2f}"
    text, value = shown(browser, "rightsizing-savings")
    assert value == answer["monthly_savings"] == approx(WEB["monthly_savings"] + DEBUG["monthly_savings"])
    assert text == f"${value:,.2f}"
    assert shown(browser, "rightsizing-extra")[1] == approx(-DB["monthly_savings"])
    assert "over 1 days of usage: peak ÷ target utilization (CPU 70 %, memory 70 %)" in browser.find_element(
        "id", "rightsizing-run").text
    browser.find_element("id", "tab-rightsizing").click()  # back to the costs
    assert browser.find_element("id", "trend").is_displayed() and not browser.find_element("id", "rightsizing").is_displayed()
    assert severe_console_errors(browser) == []
