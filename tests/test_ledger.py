"""Simulated history → TSDB → Metroculus → tenant actors → MongoDB + ClickHouse, on real servers.

The history is what the exporter would have exported over whole past days (replayed as
TSDB blocks, see devstack/simulator/history.py), so every day can be checked against the
simulator's exact ground truth. The live path into the TSDB is tested in
test_ingestion_pipeline.py.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import pytest
import ray

from actors.tenant import TenantActor, TenantConfig
from devstack import stack
from devstack.simulator.history import write_blocks
from devstack.simulator.model import cluster_management_cost, ground_truth
from devstack.simulator.spec import PV, Cluster, Container, Estate, LoadBalancer, Namespace, Node, Pod
from k8scost import raylocal
from k8scost import ledger
from k8scost.metroculus_client import MetroculusClient
from k8scost.settings import DAY, LedgerSettings, StoreSettings, from_env
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.stores.mongo import connect
from k8scost.stores.resources import Kind, Resource, ResourceStore
from tests import helpers

pytestmark = pytest.mark.services

GIB = 2**30
HOUR = 3600
DAYS_OF_HISTORY = 4
SECRET = "test-secret"  # as the test Serve deployment has it (conftest.TEST_SERVE_ENV)


def ledger_estate(day: float) -> Estate:
    """Two clusters, a namespace and a pod name in both; costs that change mid-day.

    No pod starts, ends or changes within an hour of midnight: the exporter's rate is a
    1-hour trailing average, so an event there would spill into the next day. The ledger
    reads rates half a window late (LEDGER_RATE_LAG_SECONDS), which makes the days exact
    around midnight however rates changed during the day.
    """

    def node(name: str) -> Node:
        return Node(name, 16, 64 * GIB, 0.031611, 0.004237, f"aws:///eu-west-1a/i-{name}")

    def container(name: str, cpu: float, ram_gib: float, changes=()) -> Container:
        return Container(name, cpu, ram_gib * GIB, cpu * 0.4, ram_gib * GIB * 0.6, list(changes))

    always = day - 30 * DAY
    web_eu = Pod("web-1", "n1", "deployment", "web", always, None,
                 [container("web", 2, 4, [(day + 12 * HOUR, 4, 8, 3.5, 5 * GIB)])])
    batch = Pod("batch-1", "n2", "job", "batch", day + 9 * HOUR, day + 15 * HOUR, [container("batch", 3, 6)])
    api = Pod("api-1", "n2", "deployment", "api", always, None, [container("api", 1.5, 3)],
              pvs=[PV("pvc-api", 50 * GIB, 0.000137)])
    eu = Cluster("prod-eu", 0.10, [node("n1"), node("n2")],
                 [Namespace("default", {}, [web_eu, batch]), Namespace("shop", {}, [api], network_cost_per_hour=0.02)],
                 [LoadBalancer("lb-shop", "shop", 0.025)])
    us = Cluster("prod-us", 0.0, [node("m1")],  # no management fee
                 [Namespace("default", {}, [Pod("web-1", "m1", "deployment", "web", always, None, [container("web", 1, 2)])])])
    return Estate(seed=1, clusters=[eu, us])


_LOOP = asyncio.new_event_loop()  # one loop: motor binds its client to the first loop it runs on


def run(coroutine):
    return _LOOP.run_until_complete(coroutine)


@pytest.fixture(scope="module")
def history(serve_apps: str, accounts, tmp_path_factory: pytest.TempPathFactory):
    """Tenant A owns both clusters, tenant B a copy of prod-eu; whole past days in the TSDB."""
    last_day = ledger.day_start(time.time() - 32 * HOUR)  # ended ≥ 8 h ago: history stays out of the TSDB head
    first_day = last_day - timedelta(days=DAYS_OF_HISTORY - 1)
    estate = ledger_estate(last_day.timestamp())
    tenant_a, tenant_b = accounts.create("org-a")[0], accounts.create("org-b")[0]
    blocks = tmp_path_factory.mktemp("blocks")
    # An hour of margin each side: the exporter averages an hour back, the ledger reads half an hour late.
    start, end = first_day.timestamp() - 2 * HOUR, (last_day + timedelta(days=1)).timestamp() + 2 * HOUR
    write_blocks(estate, {c.name: tenant_a.id for c in estate.clusters}, start, end, blocks)
    write_blocks(estate, {"prod-eu": tenant_b.id}, start, end, blocks)
    stack.load_blocks(blocks)
    days = [first_day + timedelta(days=k) for k in range(DAYS_OF_HISTORY)]
    return estate, tenant_a, tenant_b, days


@pytest.fixture(scope="module")
def ray_driver():
    raylocal.connect(helpers.RAY_ADDRESS, "cloudtuner-tests")
    yield
    ray.shutdown()


def config() -> TenantConfig:
    # Long cycles: the tests drive the cycles themselves.
    return TenantConfig(from_env(LedgerSettings, cycle_seconds=3600.0), from_env(StoreSettings), SECRET)


@pytest.fixture(scope="module")
def actor_a(history, ray_driver):
    _, tenant_a, _, _ = history
    return TenantActor.remote(tenant_a.id, tenant_a.organization_id, config())


def ledger_costs(account_id: str, day: datetime, by: str = "resource_id") -> dict:
    store = ExpenseStore(from_env(StoreSettings))
    return {key: cost for (key, _), cost in run(store.daily_costs(account_id, day, day + timedelta(days=1), by=by)).items()}


def expected_costs(account_id: str, day: datetime) -> dict[str, float]:
    """What the ledger must hold for the day: Metroculus' answer, independently fetched."""

    async def fetch():
        async with MetroculusClient(f"{helpers.SERVE_URL}/metroculus", SECRET) as client:
            start = int(day.timestamp())
            return await client.kubecost_metrics(account_id, ledger.LEDGER_METRICS, start, start + DAY,
                                                 step=DAY, lag=config().ledger.rate_lag_seconds)

    daily = ledger.daily_costs(account_id, [run(fetch())], [day])
    return {rid: cost for (rid, _), cost in daily.costs.items() if cost}


def rid(account_id: str, kind: Kind, cluster: str, namespace: str | None, name: str) -> str:
    return Resource(kind, cluster, namespace, name).id(account_id)


def test_day_costs_match_the_ground_truth(history, actor_a) -> None:
    estate, tenant_a, _, days = history
    day = days[-1]
    ray.get(actor_a.cycle.remote([day]))
    got = ledger_costs(tenant_a.id, day)
    start, end = day.timestamp(), day.timestamp() + DAY
    a = tenant_a.id

    def truth(**where) -> float:
        return ground_truth(estate, start, end, **where).total

    # Pods, the same name in two clusters kept apart; web-1 in prod-eu doubles at noon.
    for cluster, namespace, pod in [("prod-eu", "default", "web-1"), ("prod-eu", "default", "batch-1"),
                                    ("prod-eu", "shop", "api-1"), ("prod-us", "default", "web-1")]:
        expected = truth(cluster=cluster, namespace=namespace, pod=pod)
        assert got[rid(a, Kind.POD, cluster, namespace, pod)] == pytest.approx(expected, rel=0.005), (cluster, pod)
    web = truth(cluster="prod-eu", namespace="default", pod="web-1")
    half_day_before = ground_truth(estate, start, start + 12 * HOUR, cluster="prod-eu", pod="web-1").total
    assert web > 2.5 * half_day_before  # the afternoon costs about twice the morning
    # Namespaces (load balancer, network and volume included) and idle add up to the cluster.
    for cluster in ("prod-eu", "prod-us"):
        namespaces = {ns.name for c in estate.clusters if c.name == cluster for ns in c.namespaces}
        for namespace in namespaces:
            expected = truth(cluster=cluster, namespace=namespace)
            assert got[rid(a, Kind.NAMESPACE, cluster, namespace, namespace)] == pytest.approx(expected, rel=0.005)
        idle = ground_truth(estate, start, end, cluster=cluster, include_idle=True).idle
        assert got[rid(a, Kind.NAMESPACE, cluster, "__idle__", "__idle__")] == pytest.approx(idle, rel=0.005)
        allocated = sum(got[rid(a, Kind.NAMESPACE, cluster, ns, ns)] for ns in namespaces | {"__idle__"})
        management = cluster_management_cost(estate, cluster, start, end)
        cluster_cost = got[rid(a, Kind.CLUSTER, cluster, None, cluster)]
        assert cluster_cost == pytest.approx(allocated + management, rel=0.005)
        assert allocated == pytest.approx(truth(cluster=cluster, include_idle=True), rel=0.005)
        # The fee is a namespace line of its own, and what no namespace carries (here only the
        # allocation API's rounding, well under a cent) is __unallocated__: the namespaces add
        # up to the cluster; so do the cluster's components.
        line = {name: got.get(rid(a, Kind.NAMESPACE, cluster, name, name), 0.0)
                for name in ("__management__", "__unallocated__")}
        assert line["__management__"] == pytest.approx(management, rel=0.005)
        assert abs(line["__unallocated__"]) < 0.001
        assert abs(allocated + sum(line.values()) - cluster_cost) < ledger.UNALLOCATED_MIN_COST
        components = [got.get(rid(a, Kind.CLUSTER_COST, cluster, None, name), 0.0)
                      for name in ("management_cost", "cpu_cost", "ram_cost", "pv_cost", "network_cost", "load_balancer_cost")]
        assert sum(components) == pytest.approx(cluster_cost, rel=1e-9)
    for node in ("n1", "n2"):
        assert got[rid(a, Kind.NODE, "prod-eu", None, node)] == pytest.approx(truth(cluster="prod-eu", node=node), rel=0.005)


def test_resources_carry_the_filter_fields(history, actor_a) -> None:
    _, tenant_a, _, days = history
    ray.get(actor_a.cycle.remote([days[-1]]))
    store = ResourceStore(connect(from_env(StoreSettings)))
    pods = run(store.find(tenant_a.id, resource_type="K8s Pod"))
    by_id = {p["cloud_resource_id"]: p for p in pods}
    eu, us = by_id["k8s-pod/prod-eu/default/web-1"], by_id["k8s-pod/prod-us/default/web-1"]
    assert eu["_id"] != us["_id"]
    assert (eu["k8s_cluster"], eu["k8s_namespace"], eu["k8s_node"], eu["k8s_service"]) == ("prod-eu", "default", "n1", "web")
    assert eu["organization_id"] == tenant_a.organization_id
    assert eu["first_seen"] <= days[-1].timestamp() < eu["last_seen"]
    namespaces = {d["k8s_namespace"] for d in run(store.find(tenant_a.id, resource_type="K8s Namespace"))}
    # prod-eu's management fee, and prod-us's rounding residue (test_day_costs_match_the_ground_truth)
    assert namespaces == {"default", "shop", "__idle__", "__management__", "__unallocated__"}
    # The expense rows name their resource and its type as the documents do.
    live = run(ExpenseStore(from_env(StoreSettings)).ledger(tenant_a.id, [days[-1]]))
    for doc in [eu, us, *run(store.find(tenant_a.id, resource_type="K8s Cluster"))]:
        row = live[(doc["_id"], days[-1])].row
        assert (row.resource_type, row.resource_name) == (doc["resource_type"], doc["name"])


def test_more_cycles_write_nothing(history, actor_a) -> None:
    _, tenant_a, _, days = history
    ray.get(actor_a.cycle.remote([days[-1]]))
    before = ledger_costs(tenant_a.id, days[-1])
    for _ in range(20):
        assert ray.get(actor_a.cycle.remote([days[-1]])).rows_written == 0
    assert ledger_costs(tenant_a.id, days[-1]) == before
    assert before == pytest.approx(expected_costs(tenant_a.id, days[-1]), rel=1e-9)


@pytest.mark.parametrize("day_index, crash_at", [(0, "after_query"), (0, "after_resources"), (1, "before_insert"),
                                                 (1, "after_insert"), (2, "after_insert")])
def test_killed_mid_cycle_loses_and_duplicates_nothing(history, actor_a, day_index: int, crash_at: str) -> None:
    _, tenant_a, _, days = history
    day = days[day_index]
    ray.get(actor_a.arm_crash.remote(crash_at))
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor_a.cycle.remote([day]))
    # Ray restarts the actor; it rebuilds what it wrote from ClickHouse.
    report = helpers.wait_for("the restarted actor", lambda: ray.get(actor_a.cycle.remote([day])), timeout=60, interval=1)
    assert report.rebuilt
    store = ExpenseStore(from_env(StoreSettings))
    entries = run(store.ledger(tenant_a.id, [day]))
    assert {entry.copies for entry in entries.values()} == {1}  # no duplicated row
    assert ledger_costs(tenant_a.id, day) == pytest.approx(expected_costs(tenant_a.id, day), rel=1e-9)


def test_clickhouse_down_fails_the_cycle_and_the_next_catches_up(history, actor_a) -> None:
    _, tenant_a, _, days = history
    day = days[0]  # not in the restarted actor's memory: the cycle must read ClickHouse
    helpers.services("stop", "clickhouse")
    try:
        with pytest.raises(ray.exceptions.RayTaskError) as failed:
            ray.get(actor_a.cycle.remote([day]))
        assert "StoreUnavailable" in str(failed.value)
        assert ray.get(actor_a.status.remote())["last_error"].startswith("StoreUnavailable")
    finally:
        helpers.services("start", "clickhouse")
    ray.get(actor_a.cycle.remote([day]))
    assert ray.get(actor_a.status.remote())["last_error"] is None
    assert ledger_costs(tenant_a.id, day) == pytest.approx(expected_costs(tenant_a.id, day), rel=1e-9)


def test_tenants_see_only_their_own(history, actor_a, ray_driver) -> None:
    estate, tenant_a, tenant_b, days = history
    day = days[-1]
    ray.get(actor_a.cycle.remote([day]))
    actor_b = TenantActor.remote(tenant_b.id, tenant_b.organization_id, config())
    ray.get(actor_b.cycle.remote([day]))
    start, end = day.timestamp(), day.timestamp() + DAY
    # B's copy of prod-eu costs what prod-eu costs, A's prod-eu too: nothing leaked across.
    b_clusters = ledger_costs(tenant_b.id, day, by="k8s_cluster")
    a_clusters = ledger_costs(tenant_a.id, day, by="k8s_cluster")
    assert set(b_clusters) == {"prod-eu"}
    assert b_clusters["prod-eu"] == pytest.approx(a_clusters["prod-eu"], rel=1e-9)
    b_pods = ledger_costs(tenant_b.id, day)
    web = rid(tenant_b.id, Kind.POD, "prod-eu", "default", "web-1")
    assert b_pods[web] == pytest.approx(ground_truth(estate, start, end, cluster="prod-eu", pod="web-1").total, rel=0.005)
    assert not set(b_pods) & set(ledger_costs(tenant_a.id, day))
    store = ResourceStore(connect(from_env(StoreSettings)))
    assert {d["k8s_cluster"] for d in run(store.find(tenant_b.id))} == {"prod-eu"}
    ray.kill(actor_b)
