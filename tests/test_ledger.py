"""Simulated history → TSDB → Metroculus → tenants on tenant hosts → MongoDB + ClickHouse, on real servers.

The history is what the exporter would have exported over whole past days (replayed as
TSDB blocks, see devstack/simulator/history.py), so every day can be checked against the
simulator's exact ground truth. The live path into the TSDB is tested in
test_ingestion_pipeline.py.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from datetime import datetime, timedelta
from typing import NamedTuple

import httpx
import pytest
import ray

from actors.tenant import CRASH_POINTS, TenantConfig
from devstack import stack
from devstack.simulator.history import write_blocks
from devstack.simulator.model import cluster_management_cost, ground_truth
from devstack.simulator.spec import PV, Cluster, Container, Estate, LoadBalancer, Namespace, Node, Pod
from k8scost import ledger, promql, raylocal
from k8scost.api_errors import error_body
from k8scost.metroculus_client import MetroculusClient
from k8scost.settings import DAY, LedgerSettings, StoreSettings, from_env
from k8scost.stores.accounts import Account, Credentials
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.stores.late_samples import LateSampleStore
from k8scost.stores.mongo import connect
from k8scost.stores.placements import COLLECTION as PLACEMENTS
from k8scost.stores.resources import Kind, Resource, ResourceStore
from serve_apps.ingress.remote_write import encode
from tests import helpers
from tests.test_ingress import post

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


def config(**ledger_settings) -> TenantConfig:
    # Long cycles: the tests drive the cycles themselves (the actor's loop runs one at start).
    return TenantConfig(from_env(LedgerSettings, cycle_seconds=3600.0, **ledger_settings), from_env(StoreSettings), SECRET)


@pytest.fixture(scope="module")
def actor_a(history, ray_driver):
    _, tenant_a, _, _ = history
    return helpers.HostedTenant(tenant_a.id, tenant_a.organization_id, config())


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
    ray.get(actor_a.cycle([day]))
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
    ray.get(actor_a.cycle([days[-1]]))
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
    ray.get(actor_a.cycle([days[-1]]))
    before = ledger_costs(tenant_a.id, days[-1])
    for _ in range(20):
        assert ray.get(actor_a.cycle([days[-1]])).rows_written == 0
    assert ledger_costs(tenant_a.id, days[-1]) == before
    assert before == pytest.approx(expected_costs(tenant_a.id, days[-1]), rel=1e-9)


@pytest.mark.parametrize("day_index, crash_at", [(0, "after_query"), (0, "after_resources"), (1, "before_insert"),
                                                 (1, "after_insert"), (2, "after_insert")])
def test_killed_mid_cycle_loses_and_duplicates_nothing(history, actor_a, day_index: int, crash_at: str) -> None:
    _, tenant_a, _, days = history
    day = days[day_index]
    ray.get(actor_a.arm_crash(crash_at))
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor_a.cycle([day]))
    # Ray restarts the actor; it rebuilds what it wrote from ClickHouse.
    report = helpers.wait_for("the restarted actor", lambda: ray.get(actor_a.cycle([day])), timeout=60, interval=1)
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
            ray.get(actor_a.cycle([day]))
        assert "StoreUnavailable" in str(failed.value)
        assert ray.get(actor_a.status())["last_error"].startswith("StoreUnavailable")
    finally:
        helpers.services("start", "clickhouse")
    ray.get(actor_a.cycle([day]))
    assert ray.get(actor_a.status())["last_error"] is None
    assert ledger_costs(tenant_a.id, day) == pytest.approx(expected_costs(tenant_a.id, day), rel=1e-9)


def test_tenants_see_only_their_own(history, actor_a, ray_driver) -> None:
    estate, tenant_a, tenant_b, days = history
    day = days[-1]
    ray.get(actor_a.cycle([day]))
    actor_b = helpers.HostedTenant(tenant_b.id, tenant_b.organization_id, config())
    ray.get(actor_b.cycle([day]))
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
    ray.kill(actor_b.host)


# --- the incremental cycle: a day is its hours; late samples, crashes and outages ---------------

def test_a_hosts_crash_restarts_its_placed_tenants_and_each_stays_exact(history, actor_a) -> None:
    """Tenant B placed on A's host, as a placer writes it: the host runs B from the first call
    naming it; a crash in A's cycle kills both; Ray restarts the host, which reads B's
    placement again; both ledgers stay exact."""
    _, tenant_a, tenant_b, days = history
    day = days[-1]  # not days[0..2]: test_a_new_day_of_known_resources_writes_no_document writes B's first rows of those
    host = ray.get(actor_a.status())["host"]
    actor_b = helpers.HostedTenant(tenant_b.id, tenant_b.organization_id, config(), host=actor_a.host)
    with pytest.raises(ray.exceptions.RayTaskError, match="does not run on"):
        ray.get(actor_b.cycle([day]))
    placements = connect(from_env(StoreSettings))[PLACEMENTS]

    async def place_b() -> None:  # motor calls must start on the loop they are awaited on
        await placements.insert_one({"_id": tenant_b.id, "host": host, "organization_id": tenant_b.organization_id})

    async def unplace_b() -> None:
        await placements.delete_one({"_id": tenant_b.id})

    run(place_b())
    try:
        ray.get(actor_b.cycle([day]))
        pid = ray.get(actor_a.status())["pid"]
        assert ray.get(actor_b.status())["pid"] == pid
        ray.get(actor_a.arm_crash("before_insert"))
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor_a.cycle([day]))
        helpers.wait_for("the restarted host", lambda: ray.get(actor_a.cycle([day])), timeout=60, interval=1)
        # B runs again before any call names it: the host read its placement when it started.
        # (Its rows were read back by its own first cycle or by this one: the day may be open.)
        assert set(ray.get(actor_a.host.report.remote())) == {tenant_a.id, tenant_b.id}
        ray.get(actor_b.cycle([day]))
        assert ray.get(actor_b.status())["pid"] != pid
        store = ExpenseStore(from_env(StoreSettings))
        for tenant in (tenant_a, tenant_b):
            assert {entry.copies for entry in run(store.ledger(tenant.id, [day])).values()} == {1}
            assert ledger_costs(tenant.id, day) == pytest.approx(expected_costs(tenant.id, day), rel=1e-9)
    finally:
        run(unplace_b())
        assert set(ray.get(actor_a.host.reconcile.remote())) == {tenant_a.id}  # B stopped: one writer of B after this


def kubecost_metrics(account_id: str, start: int, end: int, step: int) -> dict:
    async def fetch():
        async with MetroculusClient(f"{helpers.SERVE_URL}/metroculus", SECRET) as client:
            return await client.kubecost_metrics(account_id, ledger.LEDGER_METRICS, start, end, step=step,
                                                 lag=config().ledger.rate_lag_seconds)

    return run(fetch())


def test_a_day_costs_the_sum_of_its_hours_in_the_tsdb(history) -> None:
    _, tenant_a, _, days = history
    start = int(days[-1].timestamp())
    whole = kubecost_metrics(tenant_a.id, start, start + DAY, DAY)["metrics"]
    hourly = kubecost_metrics(tenant_a.id, start, start + DAY, HOUR)["metrics"]
    checked = 0
    for metric in ledger.LEDGER_METRICS:
        day = {tuple(sorted(s["metric"].items())): float(s["values"][0][1]) for s in whole[metric]["data"]["result"]}
        hours = {tuple(sorted(s["metric"].items())): [float(v) for _, v in s["values"]]
                 for s in hourly[metric]["data"]["result"]}
        assert set(hours) == set(day), metric
        for labels, cost in day.items():
            assert sum(hours[labels]) == pytest.approx(cost, rel=1e-9), (metric, labels)
            checked += 1
    assert checked >= 15  # pods, namespaces, idle, nodes and cluster components of both clusters


LIVE_PODS = {"p1": 0.4, "p2": 0.8}  # USD per hour


def live_series(scale: float) -> list[tuple[dict[str, str], float]]:
    """A small cluster's gauges (labels, rate): two pods, their namespace and node, idle, fee."""
    cluster = {"cluster": "live"}
    pods = [({"__name__": promql.POD_METRIC, **cluster, "namespace": "ns", "pod": pod, "node": "n1",
              "controller_kind": "deployment", "controller": pod}, rate * scale) for pod, rate in LIVE_PODS.items()]
    allocated = sum(rate for _, rate in pods)
    return [*pods, ({"__name__": promql.NAMESPACE_METRIC, **cluster, "namespace": "ns"}, allocated),
            ({"__name__": promql.NODE_METRIC, **cluster, "node": "n1"}, allocated),
            ({"__name__": promql.IDLE_METRIC, **cluster}, 0.3),
            ({"__name__": promql.CLUSTER_COST_COMPONENTS["cpu_cost"], **cluster}, allocated + 0.3),
            ({"__name__": promql.CLUSTER_COST_COMPONENTS["management_cost"], **cluster}, 0.1)]


def send(credentials, start: float, end: float, scale: float) -> None:
    """The live cluster's samples every minute of [start, end), through the ingress as a sender sends them."""
    post_samples(credentials, [1000 * at for at in range(int(start), int(end), 60)], scale)


def scrape(credentials, scale: float) -> None:
    """One sample of each series now, at rates no earlier sample had: the open hour's costs change."""
    post_samples(credentials, [int(time.time() * 1000)], scale)


def post_samples(credentials, times_ms: list[int], scale: float) -> None:
    answer = post(encode((labels, [(at, rate) for at in times_ms]) for labels, rate in live_series(scale)), credentials)
    assert answer.status_code == 204, answer.text


class LiveTenant(NamedTuple):
    account: Account
    credentials: Credentials
    hole: tuple[float, float]  # the minutes without samples, Unix seconds


@pytest.fixture(scope="module")
def live(serve_apps: str, accounts) -> LiveTenant:
    """A tenant whose cluster has sent samples for the last 4 hours: open days with open hours.

    Its first hour has a hole of 36 minutes, wider than the lookback, for samples sent late.
    Inside its span, not before it: Receive advertises a tenant's range from its first
    in-order sample, so Query never asks it for a day that ends before that sample, and
    older samples sent later are not answered for such a day (CI lost the part of a late
    half hour that fell on the day before).
    """
    account, credentials = accounts.create("org-live")
    since = time.time() - 4 * HOUR
    hole = (since + 0.5 * HOUR, since + 1.1 * HOUR)
    send(credentials, since, hole[0], 1.0)
    send(credentials, hole[1], since + 4 * HOUR, 1.0)
    helpers.wait_until_queryable(account.id, int(since) * 1000)
    return LiveTenant(account, credentials, hole)


def assert_ledger_is_metroculus(account_id: str) -> None:
    """Every open day: one live row per resource-day, and the costs a whole-day read gives."""
    days = ledger.open_days(time.time(), config().ledger.open_days)
    entries = run(ExpenseStore(from_env(StoreSettings)).ledger(account_id, days))
    assert entries and {entry.copies for entry in entries.values()} == {1}
    for day in days:
        assert ledger_costs(account_id, day) == pytest.approx(expected_costs(account_id, day), rel=1e-9), day


def first_cycle(actor, after_pid: int | None = None) -> dict:
    """The status once the actor's own first cycle (its loop runs one at start) is done."""
    return helpers.wait_for("the actor's first cycle", lambda: (s := ray.get(actor.status(), timeout=30))["cycles"] >= 1
                            and s["pid"] != after_pid and s, timeout=120, interval=0.5)


def test_late_samples_through_the_ingress_make_the_next_cycle_settle(live: LiveTenant, ray_driver) -> None:
    account, credentials, _ = live
    # No scheduled settle within the test, however slow the machine: the settle below is
    # the ingress's record's. When a schedule fires is test_ledger_hours' (``settle_reason``).
    actor = helpers.HostedTenant(account.id, account.organization_id, config(settle_seconds=86400.0))
    late_samples = LateSampleStore(connect(from_env(StoreSettings)))
    try:
        assert first_cycle(actor)["last_report"]["read"] == "settle (no hours kept)"
        assert_ledger_is_metroculus(account.id)
        scrape(credentials, 1.05)  # on time: no record, and the hours kept stay trusted
        recorded = run(late_samples.landed_at(account.id))
        report = ray.get(actor.cycle())
        assert report.read == "new hours" and report.hours_read <= 3, report
        assert run(late_samples.landed_at(account.id)) == recorded
        # Half an hour of samples that came late, long after their hour closed (a sender
        # catching up), at twice the rate: the day costs more, and no hour a new-hours cycle
        # reads holds them. They fill the fixture's hole: interleaved with its samples they
        # would win only the resolution points they are the newest sample for, a share that
        # hangs on the seconds between the two sends (a quarter to all at 15 s points).
        before = time.time()
        days = ledger.open_days(before, config().ledger.open_days)
        p1 = rid(account.id, Kind.POD, "live", "ns", "p1")
        billed = sum(ledger_costs(account.id, day).get(p1, 0.0) for day in days)
        send(credentials, live.hole[0] + 180, live.hole[1] - 180, 2.0)
        assert run(late_samples.landed_at(account.id)) >= before  # on record before the sender heard 204
        report = ray.get(actor.cycle())
        assert report.read == "settle (late samples)" and report.rows_written > 0, report
        assert_ledger_is_metroculus(account.id)
        # Half an hour of p1 at 0.8 per hour more, and its lookback until the fixture's
        # samples resume: ≈ 0.44, all of which the settle billed.
        assert sum(ledger_costs(account.id, day).get(p1, 0.0) for day in days) - billed > 0.3
        # The record the settle read is settled: the next cycle reads new hours again.
        assert ray.get(actor.cycle()).read == "new hours"
    finally:
        ray.kill(actor.host)


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_killed_mid_incremental_cycle_loses_and_duplicates_nothing(live: LiveTenant, ray_driver, crash_at: str) -> None:
    account, credentials, _ = live
    actor = helpers.HostedTenant(account.id, account.organization_id, config())
    try:
        pid = first_cycle(actor)["pid"]
        scrape(credentials, 1.1 + CRASH_POINTS.index(crash_at))
        report = ray.get(actor.cycle())
        assert report.read == "new hours" and report.rows_written > 0
        # The cycle that dies has hours kept and new costs to write.
        scrape(credentials, 1.6 + CRASH_POINTS.index(crash_at))
        ray.get(actor.arm_crash(crash_at))
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.cycle())
        # Ray restarts it; its first cycle settles and rebuilds what it wrote from ClickHouse.
        restarted = first_cycle(actor, after_pid=pid)["last_report"]
        assert restarted["read"] == "settle (no hours kept)" and restarted["rebuilt"]
        # Its rows read back tell it every document exists: none is written again.
        assert restarted["resources_upserted"] == 0
        assert ray.get(actor.cycle()).read == "new hours"
        assert_ledger_is_metroculus(account.id)
    finally:
        ray.kill(actor.host)


class FlakyMetroculus:
    """Metroculus behind a proxy that answers 503 while ``failing``: Metroculus down, nothing else."""

    def __init__(self) -> None:
        self.failing = False
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if proxy.failing:
                    status, body = 503, json.dumps(error_body(503, "Metroculus down for the test")).encode()
                else:
                    answer = httpx.get(f"{helpers.SERVE_URL}{self.path}", headers={"Secret": self.headers["Secret"]}, timeout=60)
                    status, body = answer.status_code, answer.content
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", helpers.free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metroculus"


def test_a_failed_metroculus_call_fails_the_cycle_and_the_next_settles(live: LiveTenant, ray_driver) -> None:
    account, credentials, _ = live
    metroculus = FlakyMetroculus()
    actor = helpers.HostedTenant(account.id, account.organization_id, config(metroculus_url=metroculus.url))
    try:
        first_cycle(actor)
        assert ray.get(actor.cycle()).read == "new hours"
        scrape(credentials, 7.0)
        metroculus.failing = True
        with pytest.raises(ray.exceptions.RayTaskError) as failed:
            ray.get(actor.cycle())
        assert "Metroculus answered 503" in str(failed.value)
        assert ray.get(actor.status())["last_error"].startswith("MetroculusError")
        metroculus.failing = False
        report = ray.get(actor.cycle())
        assert report.read == "settle (no hours kept)" and report.rows_written > 0
        assert ray.get(actor.status())["last_error"] is None
        assert_ledger_is_metroculus(account.id)
    finally:
        ray.kill(actor.host)
        metroculus.server.shutdown()


def test_a_new_day_of_known_resources_writes_no_document(history, ray_driver) -> None:
    _, _, tenant_b, days = history
    actor = helpers.HostedTenant(tenant_b.id, tenant_b.organization_id, config())
    store = ResourceStore(connect(from_env(StoreSettings)))

    def last_seen() -> dict[str, int]:
        return {doc["_id"]: doc["last_seen"] for doc in run(store.find(tenant_b.id))}

    try:
        ray.get(actor.cycle([days[0]]))
        before = last_seen()
        # A day more of the same resources, by the same actor, then by a restarted one: the
        # first knows the documents from its own writes, the second from the rows it reads back.
        report = ray.get(actor.cycle([days[0], days[1]]))
        assert report.rows_written > 0 and report.resources_upserted == 0
        ray.kill(actor.host, no_restart=False)
        report = helpers.wait_for("the restarted actor", lambda: ray.get(actor.cycle([days[1], days[2]])),
                                  timeout=60, interval=1)
        assert report.rebuilt and report.rows_written > 0 and report.resources_upserted == 0
        assert last_seen() == before  # no document was written
        for day in days[:3]:
            assert ledger_costs(tenant_b.id, day) == pytest.approx(expected_costs(tenant_b.id, day), rel=1e-9)
    finally:
        ray.kill(actor.host)
