"""Optimizations: the REST route in OptScale's shape, dismiss/restore, scoping, and the job's modules.

In-process (httpx over ASGI) against the real ClickHouse and MongoDB wire, on fresh
databases. Organizations alpha (accounts east, west) and beta (one account) get items
written through the store, and every count and saving the route answers is checked against
sums computed here from what was written. Organization gamma gets a ledger (a 50-day
history with a known spike, and a 3-day one), pods and rightsizing results, and the job's
per-tenant function runs on them; its items are checked against values computed by hand.
Its third account's customer also sends kube-state-metrics' node types and pod volumes and
the exporter's node prices (written to the shared TSDB under that fresh tenant), so its
cluster rightsizing and spot items are recommendations, checked against packings and prices
worked out by hand.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio

from devstack import stack
from jobs.optimizations import MISSING_CAPACITY, MISSING_VOLUMES, Options, optimize_tenant
from k8scost.promql import NODE_PRICE_METRICS
from k8scost.rightsizing import GIB
from k8scost.rightsizing import HOURS_PER_MONTH as MONTH
from k8scost.rightsizing import GroupKey, Recommendation, ResourceRecommendation
from k8scost.settings import RestApiSettings, StoreSettings, from_env
from k8scost.stores import StoreUnavailable
from k8scost.stores.accounts import Account
from k8scost.stores.clickhouse import ExpenseRow, ExpenseStore
from k8scost.stores.expense_queries import ExpenseQueries
from k8scost.stores.mongo import connect
from k8scost.stores.optimizations import Module, OptimizationStore, item
from k8scost.stores.resources import RESOURCE_TYPES, Kind, Resource, ResourceStore
from k8scost.stores.rightsizing import RightsizingStore, document
from k8scost.tsdb import TsdbClient
from serve_apps.restapi.api import RestApiConfig, create_api
from tests import helpers
from tests.test_restapi import JWT_KEY, SECRET, Org, _account, _clickhouse, _dsn, _signup

pytestmark = [pytest.mark.services, pytest.mark.asyncio(loop_scope="session")]

DAY = 86_400
MODULES = [str(m) for m in Module]


@dataclasses.dataclass
class World:
    client: httpx.AsyncClient
    a: Org
    b: Org
    c: Org
    store: OptimizationStore
    expenses: ExpenseStore
    stores: StoreSettings
    seeded: dict[str, dict[str, Any]]  # item id → the stored item, of alpha and beta


def acc(org: Org, index: int = 0) -> str:
    return org.accounts[index]["id"]


def account_of(org: Org, index: int) -> Account:
    a = org.accounts[index]
    return Account(a["id"], org.id, a["name"], "kubernetes_cnr", 0, 0)


# Savings written for alpha's and beta's accounts: (account index, module, saving), by org.
SEEDED = {
    "a": [(0, Module.RIGHTSIZING, 12.5), (0, Module.RIGHTSIZING, 7.25), (0, Module.RIGHTSIZING, 0.125),
          (1, Module.RIGHTSIZING, 3.0), (0, Module.CLUSTER_RIGHTSIZING, 150.0), (1, Module.SPOT_INSTANCES, 40.5),
          (1, Module.SPOT_INSTANCES, 0.0), (0, Module.COST_ANOMALIES, 0.0)],
    "b": [(0, Module.RIGHTSIZING, 999.0), (0, Module.SPOT_INSTANCES, 555.0)],
}


async def _seed(store: OptimizationStore, org: Org, rows: list[tuple[int, Module, float]], now: int) -> dict[str, Any]:
    seeded: dict[str, dict[str, Any]] = {}
    per_run: dict[tuple[int, Module], list[dict[str, Any]]] = {}
    for n, (index, module, saving) in enumerate(rows):
        account = acc(org, index)
        doc = item(module, account, org.id, (f"key-{n}",), resource_id=f"rid-{n}",
                   cloud_resource_id=f"k8s-namespace/east/ns-{n}", resource_name=f"ns-{n}", saving=saving,
                   fields={"k8s_cluster": "east", "evidence": {"n": n}})
        per_run.setdefault((index, module), []).append(doc)
        seeded[doc["_id"]] = doc
    for (index, module), docs in per_run.items():
        await store.start_run(module, acc(org, index), org.id, now - 60 * (index + 1), now + 3600 * (index + 1),
                              {"seeded": index})
        await store.complete_run(module, acc(org, index), docs, completed=now - 30 * (index + 1))
    return seeded


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(real_services: None) -> AsyncIterator[World]:
    ch_db, mongo_db = f"test_{uuid.uuid4().hex}", f"test_optimizations_{uuid.uuid4().hex[:12]}"
    await _clickhouse(f"CREATE DATABASE {ch_db}")
    stores = from_env(StoreSettings, clickhouse_url=_dsn(ch_db), mongodb_database=mongo_db)
    expenses = ExpenseStore(stores)
    await expenses.migrate()
    config = RestApiConfig(from_env(RestApiSettings, {}, jwt_secret=JWT_KEY), stores, SECRET, "http://127.0.0.1:1/unused")
    api = create_api(config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://restapi.test")
    try:
        a, b, c = await _signup(client, "alpha"), await _signup(client, "beta"), await _signup(client, "gamma")
        for org, names in ((a, ("alpha east", "alpha west")), (b, ("beta east",)), (c, ("gamma long", "gamma new", "gamma typed"))):
            for name in names:
                await _account(client, org, name)
        store = OptimizationStore(connect(stores))
        await store.ensure_indexes()
        now = int(time.time())
        seeded = {**await _seed(store, a, SEEDED["a"], now), **await _seed(store, b, SEEDED["b"], now)}
        yield World(client, a, b, c, store, expenses, stores, seeded)
    finally:
        await client.aclose()
        await api.state.stores.close()
        await expenses.close()
        await _clickhouse(f"DROP DATABASE IF EXISTS {ch_db}")
        await connect(stores).client.drop_database(mongo_db)


async def get(world: World, org: Org, params: Any = None, organization: str | None = None) -> httpx.Response:
    return await world.client.get(f"/v2/organizations/{organization or org.id}/optimizations", params=params,
                                  headers=org.headers)


async def patch(world: World, org: Org, item_id: str, body: Any, organization: str | None = None) -> httpx.Response:
    return await world.client.patch(f"/v2/organizations/{organization or org.id}/optimizations/{item_id}",
                                     json=body, headers=org.headers)


def expected(world: World, org: Org, marks: dict[str, str] | None = None, status: str = "active",
             accounts: list[str] | None = None, modules: list[str] | None = None) -> dict[str, tuple[int, float]]:
    """Module → (count, saving) of the seeded items of ``org`` with ``status``, summed here."""
    marks = marks or {}
    ids = accounts or [a["id"] for a in org.accounts]
    sums = {m: (0, 0.0) for m in modules or MODULES}
    for doc in world.seeded.values():
        if doc["cloud_account_id"] in ids and doc["module"] in sums and marks.get(doc["_id"], "active") == status:
            count, saving = sums[doc["module"]]
            sums[doc["module"]] = (count + 1, saving + doc["saving"])
    return sums


def assert_sums(body: dict[str, Any], sums: dict[str, tuple[int, float]]) -> None:
    """The answer's counts and savings are the independent sums, and its own items add up to them."""
    assert set(body["optimizations"]) == set(sums)
    for module, (count, saving) in sums.items():
        got = body["optimizations"][module]
        assert (got["count"], got["saving"]) == (count, pytest.approx(saving)), module
        assert sum(i["saving"] for i in got["items"]) == pytest.approx(got["saving"])
        assert len(got["items"]) == count
    assert body["total_saving"] == pytest.approx(sum(s for _, s in sums.values()))
    assert body["total_saving"] == pytest.approx(sum(o["saving"] for o in body["optimizations"].values()))


# --- the route ---------------------------------------------------------------------------------


async def test_the_answer_is_optscales_shape_with_every_module(world: World) -> None:
    answer = await get(world, world.a)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"total_saving", "last_run", "last_completed", "next_run", "status", "optimizations",
                         "dismissed_optimizations", "excluded_optimizations"}
    assert_sums(body, expected(world, world.a))
    assert body["total_saving"] == pytest.approx(12.5 + 7.25 + 0.125 + 3.0 + 150.0 + 40.5)
    names = {a["id"]: a["name"] for a in world.a.accounts}
    for module, got in body["optimizations"].items():
        assert {"count", "saving", "items", "options", "last_run", "last_completed", "next_run"} <= set(got)
        savings = [i["saving"] for i in got["items"]]
        assert savings == sorted(savings, reverse=True)  # the largest saving first
        for listed in got["items"]:
            stored = world.seeded[listed["id"]]
            assert listed["module"] == module == stored["module"]
            assert {k: listed[k] for k in ("resource_id", "cloud_resource_id", "resource_name", "cloud_account_id",
                                           "saving")} == {k: stored[k] for k in ("resource_id", "cloud_resource_id",
                                                                                 "resource_name", "cloud_account_id",
                                                                                 "saving")}
            assert listed["cloud_account_name"] == names[listed["cloud_account_id"]]
            assert listed["evidence"] == stored["fields"]["evidence"] and listed["status"] == "active"
    # Run times: east ran 60 s ago (done 30 s ago, next in 1 h), west 120 s ago (60 s, 2 h).
    runs = await world.store.runs([acc(world.a, 0), acc(world.a, 1)], MODULES)
    assert body["last_run"] == max(r["last_run"] for r in runs)
    assert body["last_completed"] == max(r["last_completed"] for r in runs)
    assert body["next_run"] == min(r["next_run"] for r in runs)
    spot = body["optimizations"]["k8s_spot_instances"]  # west only
    west = [r for r in runs if r["module"] == "k8s_spot_instances"]
    assert (spot["last_run"], spot["next_run"], spot["options"]) == (west[0]["last_run"], west[0]["next_run"], {"seeded": 1})
    assert body["dismissed_optimizations"] == {m: {"count": 0, "saving": 0} for m in MODULES}


@pytest.mark.parametrize("params, accounts, modules", [
    ({"type": "k8s_rightsizing"}, None, ["k8s_rightsizing"]),
    ([("type", "k8s_rightsizing"), ("type", "k8s_spot_instances")], None, ["k8s_rightsizing", "k8s_spot_instances"]),
    ({"cloud_account_id": "west"}, ["west"], None),
    ([("cloud_account_id", "east"), ("cloud_account_id", "west"), ("type", "k8s_cluster_rightsizing")], ["east", "west"],
     ["k8s_cluster_rightsizing"]),
])
async def test_type_and_account_filters(world: World, params: Any, accounts: list[str] | None,
                                        modules: list[str] | None) -> None:
    ids = {"east": acc(world.a, 0), "west": acc(world.a, 1)}
    params = [(k, ids.get(v, v)) for k, v in (params.items() if isinstance(params, dict) else params)]
    answer = await get(world, world.a, params)
    assert answer.status_code == 200, answer.text
    assert_sums(answer.json(), expected(world, world.a, accounts=[ids[a] for a in accounts] if accounts else None,
                                        modules=modules))


async def test_limit_shortens_items_not_counts_or_savings(world: World) -> None:
    body = (await get(world, world.a, {"type": "k8s_rightsizing", "limit": 2})).json()
    got = body["optimizations"]["k8s_rightsizing"]
    assert (got["count"], got["saving"]) == (4, pytest.approx(12.5 + 7.25 + 0.125 + 3.0))
    assert [i["saving"] for i in got["items"]] == [12.5, 7.25]
    assert body["total_saving"] == pytest.approx(got["saving"])


async def test_dismiss_exclude_and_restore(world: World) -> None:
    a = world.a
    by_saving = {doc["saving"]: key for key, doc in world.seeded.items() if doc["organization_id"] == a.id}
    dismissed, excluded = by_saving[7.25], by_saving[40.5]
    answer = await patch(world, a, dismissed, {"status": "dismissed"})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["id"], answer.json()["status"], answer.json()["saving"]) == (dismissed, "dismissed", 7.25)
    assert (await patch(world, a, excluded, {"status": "excluded"})).status_code == 200
    marks = {dismissed: "dismissed", excluded: "excluded"}
    try:
        for status in ("active", "dismissed", "excluded"):
            body = (await get(world, a, {"status": status})).json()
            assert body["status"] == status
            assert_sums(body, expected(world, a, marks, status))
            assert all(i["status"] == status for o in body["optimizations"].values() for i in o["items"])
            for mark in ("dismissed", "excluded"):
                summary = {m: {"count": n, "saving": pytest.approx(s)} for m, (n, s) in expected(world, a, marks, mark).items()}
                assert body[f"{mark}_optimizations"] == summary
        active = (await get(world, a)).json()
        assert active["total_saving"] == pytest.approx(12.5 + 0.125 + 3.0 + 150.0)
        assert [i["id"] for i in (await get(world, a, {"status": "dismissed"})).json()["optimizations"]["k8s_rightsizing"]["items"]] == [dismissed]
        # Dismissing again, or dismissing what is excluded, sets the one mark it has.
        assert (await patch(world, a, dismissed, {"status": "dismissed"})).status_code == 200
    finally:
        for item_id in (dismissed, excluded):
            restored = await patch(world, a, item_id, {"status": "active"})
            assert restored.status_code == 200 and restored.json()["status"] == "active"
    assert_sums((await get(world, a)).json(), expected(world, a))


async def test_marks_survive_a_rerun_that_replaces_the_items(world: World) -> None:
    a, account = world.a, acc(world.a, 1)
    spot = next(k for k, d in world.seeded.items() if d["saving"] == 40.5)
    assert (await patch(world, a, spot, {"status": "dismissed"})).status_code == 200
    try:
        again = [dict(d, saving=d["saving"]) for d in world.seeded.values()
                 if d["cloud_account_id"] == account and d["module"] == "k8s_spot_instances"]
        await world.store.start_run(Module.SPOT_INSTANCES, account, a.id, int(time.time()), 0, {"seeded": 1})
        await world.store.complete_run(Module.SPOT_INSTANCES, account, again)
        body = (await get(world, a, {"type": "k8s_spot_instances", "status": "dismissed"})).json()
        assert [i["id"] for i in body["optimizations"]["k8s_spot_instances"]["items"]] == [spot]
    finally:
        assert (await patch(world, a, spot, {"status": "active"})).status_code == 200


async def test_another_organizations_ids_are_404_and_never_touched(world: World) -> None:
    a, b = world.a, world.b
    b_item = next(k for k, d in world.seeded.items() if d["organization_id"] == b.id)
    a_item = next(k for k, d in world.seeded.items() if d["organization_id"] == a.id)
    for answer in (
        await get(world, a, organization=b.id),
        await get(world, a, {"cloud_account_id": acc(b)}),
        await get(world, a, [("cloud_account_id", acc(a)), ("cloud_account_id", acc(b))]),
        await patch(world, a, b_item, {"status": "dismissed"}),
        await patch(world, a, b_item, {"status": "dismissed"}, organization=b.id),
        await patch(world, b, a_item, {"status": "excluded"}),
        await patch(world, a, str(uuid.uuid4()), {"status": "dismissed"}),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["reason"] == "not_found"
        # The refusal echoes only the id sent, as for an id that does not exist.
        assert "999" not in answer.text and "555" not in answer.text and acc(b, 0) not in answer.text.replace(
            f"cloud_account_id {acc(b)!r}", "")
    # Neither organization's marks moved; A's answer holds nothing of B, B's nothing of A.
    assert_sums((await get(world, b)).json(), expected(world, b))
    assert_sums((await get(world, a)).json(), expected(world, a))
    a_text = (await get(world, a)).text
    assert acc(b) not in a_text and b.id not in a_text


@pytest.mark.parametrize("params, named", [
    ({"type": "k8s_bogus"}, "type"),
    ({"status": "archived"}, "status"),
    ([("status", "active"), ("status", "dismissed")], "status"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"limit": "50001"}, "limit"),
    ({"typo": "1"}, "typo"),
    ({"cloud_account_id": ""}, "cloud_account_id"),
])
async def test_bad_parameters_are_400_naming_them(world: World, params: Any, named: str) -> None:
    answer = await get(world, world.a, params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"].startswith(f"{named}") or named in answer.json()["error"]["message"]


@pytest.mark.parametrize("body, named", [
    ({"status": "archived"}, "status"),
    ({}, "status"),
    ({"status": "dismissed", "extra": 1}, "extra"),
    ([], "body"),
])
async def test_bad_bodies_are_400_naming_the_field(world: World, body: Any, named: str) -> None:
    a_item = next(k for k, d in world.seeded.items() if d["organization_id"] == world.a.id)
    answer = await patch(world, world.a, a_item, body)
    assert answer.status_code == 400, answer.text
    assert named in answer.json()["error"]["message"]


async def test_the_route_is_in_the_openapi_document(world: World) -> None:
    spec = (await world.client.get("/openapi.json")).json()
    listed = spec["paths"]["/v2/organizations/{organization_id}/optimizations"]["get"]
    assert {p["name"] for p in listed["parameters"] if p["in"] == "query"} == {"type", "cloud_account_id", "limit", "status"}
    assert "patch" in spec["paths"]["/v2/organizations/{organization_id}/optimizations/{item_id}"]


# --- the job -----------------------------------------------------------------------------------

LAST = (int(time.time()) // DAY - 1) * DAY  # the last complete day, as the job sees it at the fixture's time
SPIKE = LAST - 2 * DAY  # web-1 costs 25 instead of 5 that day
LONG, SHORT = 50, 3  # days of history of gamma's two accounts


def ledger_rows(account: str, days: int) -> list[ExpenseRow]:
    """Cluster "east": shop (web-1, web-2 of deployment web, 5 a day each, web-1 25 on SPIKE day),
    db (pg-0 of statefulset pg, 20), tools (job-x without controller, 1); the namespaces and the cluster their sums."""
    rows = []
    for n in range(days):
        day = LAST - n * DAY
        pods = {("shop", "web-1", "web", "n1"): 25.0 if day == SPIKE else 5.0, ("shop", "web-2", "web", "n2"): 5.0,
                ("db", "pg-0", "pg", "n2"): 20.0, ("tools", "job-x", None, "n1"): 1.0}
        namespaces: dict[str, float] = {}
        for (ns, pod, service, node), cost in pods.items():
            rows.append(_row(account, Resource(Kind.POD, "east", ns, pod, node, service), day, cost))
            namespaces[ns] = namespaces.get(ns, 0.0) + cost
        for ns, cost in namespaces.items():
            rows.append(_row(account, Resource(Kind.NAMESPACE, "east", ns, ns), day, cost))
        rows.append(_row(account, Resource(Kind.CLUSTER, "east", None, "east"), day, sum(namespaces.values())))
    return rows


def _row(account: str, r: Resource, day: int, cost: float) -> ExpenseRow:
    return ExpenseRow(account, r.id(account), datetime.fromtimestamp(day, UTC), cost, 1, r.cluster, r.namespace,
                      r.node, r.service, RESOURCE_TYPES[r.kind], r.name)


def recommendation(controller_kind: str, controller: str, pod: str, cpu: tuple[float, float],
                   memory: tuple[float, float], price: float) -> Recommendation:
    """A rightsizing result: current and recommended requests (cores, bytes), savings at ``price``
    per core-month and per GiB-month."""
    def part(now: float, rec: float, unit: float) -> ResourceRecommendation:
        return ResourceRecommendation(now, rec, 0.5, (now - rec) / unit * price)
    ns = {"web": "shop", "pg": "db"}.get(controller, "tools")
    return Recommendation(GroupKey("east", ns, controller_kind, controller, pod, "main"), 2, 2,
                          part(*cpu, 1.0), part(*memory, GIB), 0.5)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def job_world(world: World) -> World:
    c = world.c
    db = connect(world.stores)
    resources, rightsizing = ResourceStore(db), RightsizingStore(db)
    await resources.ensure_indexes()
    for index, days in ((0, LONG), (1, SHORT), (2, LONG)):
        account = acc(c, index)
        await world.expenses.insert(ledger_rows(account, days))
        pods = [Resource(Kind.POD, "east", "shop", p, n, "web", {"controller_kind": "deployment"})
                for p, n in (("web-1", "n1"), ("web-2", "n2"))]
        pods += [Resource(Kind.POD, "east", "db", "pg-0", "n2", "pg", {"controller_kind": "statefulset"}),
                 Resource(Kind.POD, "east", "tools", "job-x", "n1")]
        await resources.upsert(account, c.id, pods, LAST - days * DAY, LAST)
        run = {"window_days": 7, "algorithm": "max", "window_end": LAST}
        docs = [document(account, c.id, r, run) for r in (
            recommendation("deployment", "web", "", (1.0, 0.25), (2 * GIB, GIB), 30.0),  # over: saves 22.5 + 30
            recommendation("statefulset", "pg", "", (0.5, 0.75), (GIB, 2 * GIB), 30.0),  # under: not an item
            recommendation("", "", "job-x", (0.1, 0.05), (GIB, GIB), 30.0),  # over: saves 1.5
        )]
        await rightsizing.replace(account, docs)
    return world


async def run_job(world: World, index: int, options: Options = Options()) -> Any:
    db = connect(world.stores)
    tsdb = TsdbClient(world.stores.tsdb_url, timeout=30)
    try:
        return await optimize_tenant(account_of(world.c, index), LAST + DAY + 3600, options, world.store,
                                     ExpenseQueries(world.expenses), ResourceStore(db), RightsizingStore(db), tsdb)
    finally:
        await tsdb.aclose()


async def items_of(world: World, index: int) -> dict[str, list[dict[str, Any]]]:
    found = await world.store.items([acc(world.c, index)], MODULES)
    return {m: [d for d in found if d["module"] == m] for m in MODULES}


async def test_the_job_over_a_long_history(job_world: World) -> None:
    world = job_world
    report = await run_job(world, 0)
    found = await items_of(world, 0)
    # Rightsizing: the over-provisioned groups, at their savings; the under-provisioned one is no saving.
    rs = {d["fields"]["controller"] or d["fields"]["pod"]: d for d in found["k8s_rightsizing"]}
    assert set(rs) == {"web", "job-x"}
    assert rs["web"]["saving"] == pytest.approx((1.0 - 0.25) * 30 + (2 - 1) * 30)
    assert rs["job-x"]["saving"] == pytest.approx(0.05 * 30)
    assert rs["web"]["fields"]["evidence"]["window_days"] == 7
    # Cluster sizing: no node capacities or volumes exist: said, not invented.
    [cluster] = found["k8s_cluster_rightsizing"]
    assert cluster["saving"] == 0 and MISSING_CAPACITY in cluster["fields"]["insufficient"]
    assert MISSING_VOLUMES in cluster["fields"]["insufficient"]
    assert cluster["cloud_resource_id"] == "k8s-cluster/east"
    # Spot: only deployment web would be ready (pg a StatefulSet, job-x without controller), pending its volumes.
    [spot] = found["k8s_spot_instances"]
    assert (spot["fields"]["controller"], spot["fields"]["replicas"], spot["saving"]) == ("web", 2, 0.0)
    assert MISSING_VOLUMES in spot["fields"]["insufficient"]
    # Anomalies: the spike, on the cluster (explained by shop) and on shop (explained by web-1); saving 0.
    anomalies = {d["fields"]["k8s_namespace"]: d for d in found["k8s_cost_anomalies"]}
    assert set(anomalies) == {None, "shop"}
    for namespace, part in ((None, "shop"), ("shop", "web-1")):
        fields = anomalies[namespace]["fields"]
        assert anomalies[namespace]["saving"] == 0.0
        assert (fields["direction"], fields["start"], fields["end"]) == ("increase", SPIKE, SPIKE)
        # shop: 10 a day, 30 that day; the cluster: 31 a day (5 + 5 + 20 + 1), 51 that day.
        assert fields["excess_cost"] == pytest.approx(20.0)
        cost, baseline = (30.0, 10.0) if namespace else (51.0, 31.0)
        assert (fields["evidence"]["cost"], fields["evidence"]["baseline"]) == (pytest.approx(cost), pytest.approx(baseline))
        [explained] = fields["evidence"]["explained_by"]
        assert (explained["name"], explained["share"]) == (part, pytest.approx(1.0))
    assert report.items == {m: len(found[m]) for m in MODULES}
    runs = {r["module"]: r for r in await world.store.runs([acc(world.c, 0)], MODULES)}
    for run in runs.values():
        assert run["status"] == "completed" and run["last_completed"] >= run["last_run"]
        assert run["next_run"] == run["last_run"] + 24 * 3600
        assert run["progress"]["done"] == run["progress"]["total"]
    # Through the route: the items' savings add up to each module's, the modules to the total.
    body = (await get(world, world.c, {"cloud_account_id": acc(world.c, 0)})).json()
    for module, docs in found.items():
        got = body["optimizations"][module]
        assert (got["count"], got["saving"]) == (len(docs), pytest.approx(sum(d["saving"] for d in docs)))
        assert sum(i["saving"] for i in got["items"]) == pytest.approx(got["saving"])
    assert body["total_saving"] == pytest.approx(52.5 + 1.5)


async def test_the_job_over_too_short_a_history_says_so_per_item(job_world: World) -> None:
    world = job_world
    await run_job(world, 1)
    found = await items_of(world, 1)
    for module in MODULES:
        [only] = found[module]  # one per cluster, never a recommendation
        assert only["saving"] == 0.0
        assert only["fields"]["insufficient"] == f"insufficient history: {SHORT} days", module
    body = (await get(world, world.c, {"cloud_account_id": acc(world.c, 1)})).json()
    assert body["total_saving"] == 0 and all(o["count"] == 1 for o in body["optimizations"].values())


async def test_a_rerun_replaces_and_keeps_the_item_ids(job_world: World) -> None:
    world = job_world
    before = await items_of(world, 0)
    await run_job(world, 0, Options(modules=(Module.RIGHTSIZING, Module.COST_ANOMALIES)))
    after = await items_of(world, 0)
    assert {m: sorted(d["_id"] for d in docs) for m, docs in after.items()} == {
        m: sorted(d["_id"] for d in docs) for m, docs in before.items()}


async def test_a_failed_run_is_recorded_and_keeps_the_previous_items(job_world: World) -> None:
    world = job_world
    await run_job(world, 0)
    before = await items_of(world, 0)
    [completed] = await world.store.runs([acc(world.c, 0)], ["k8s_spot_instances"])
    db = connect(world.stores)
    unreachable = TsdbClient("http://127.0.0.1:1", timeout=2)  # nothing listens on port 1
    with pytest.raises(StoreUnavailable):
        await optimize_tenant(account_of(world.c, 0), LAST + DAY + 3600, Options(modules=(Module.SPOT_INSTANCES,)),
                              world.store, ExpenseQueries(world.expenses), ResourceStore(db), RightsizingStore(db),
                              unreachable)
    await unreachable.aclose()
    [run] = await world.store.runs([acc(world.c, 0)], ["k8s_spot_instances"])
    assert run["status"] == "failed" and "TSDB" in run["error"]
    assert run["last_completed"] == completed["last_completed"] and run["last_run"] >= completed["last_run"]
    assert await items_of(world, 0) == before
    body = (await get(world, world.c, {"cloud_account_id": acc(world.c, 0), "type": "k8s_spot_instances"})).json()
    assert body["optimizations"]["k8s_spot_instances"]["runs"][0]["status"] == "failed"


# The third account's nodes, all m5.large (2 cores, 8 GiB allocatable) at 0.03 USD a core-hour
# and 0.004 a GiB-hour: 0.092 USD an hour each. pg-0's claim is bound to a local volume;
# web-2 is annotated safe to evict ("true": no effect), job-x has no controller.
NODE_HOURLY = 2 * 0.03 + 8 * 0.004


def kube_series(tenant: str, at_ms: int) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    """What the customer's Prometheus sends, as the shipped relabelling leaves it (no cluster label)."""
    def one(name: str, **labels: str) -> tuple[dict[str, str], list[tuple[int, float]]]:
        return {"__name__": name, "tenant_id": tenant, "job": "kube-state-metrics", **labels}, [(at_ms, 1.0)]

    series = []
    for node in ("n1", "n2", "n3"):
        series.append(one("kube_node_labels", node=node, label_node_kubernetes_io_instance_type="m5.large"))
        for resource, unit, value in (("cpu", "core", 2.0), ("memory", "byte", 8.0 * GIB)):
            labels, _ = one("kube_node_status_allocatable", node=node, resource=resource, unit=unit)
            series.append((labels, [(at_ms, value)]))
        for metric, price in zip(NODE_PRICE_METRICS.values(), (0.03, 0.004)):
            series.append(({"__name__": metric, "tenant_id": tenant, "cluster": "east", "node": node}, [(at_ms, price)]))
    series += [one("kube_pod_annotations", namespace="shop", pod="web-1"),
               one("kube_pod_annotations", namespace="shop", pod="web-2",
                   annotation_cluster_autoscaler_kubernetes_io_safe_to_evict="true"),
               one("kube_pod_annotations", namespace="db", pod="pg-0"),
               one("kube_pod_annotations", namespace="tools", pod="job-x"),
               one("kube_pod_spec_volumes_persistentvolumeclaims_info", namespace="db", pod="pg-0", volume="data",
                   persistentvolumeclaim="data-pg-0"),
               one("kube_persistentvolumeclaim_info", namespace="db", persistentvolumeclaim="data-pg-0",
                   storageclass="local-storage", volumename="local-pv-1"),
               one("kube_persistentvolume_info", persistentvolume="local-pv-1", storageclass="local-storage",
                   local_path="/mnt/disks/ssd0")]
    return series


async def test_the_job_on_a_customer_sending_node_types_and_volumes(job_world: World) -> None:
    world = job_world
    tenant = acc(world.c, 2)
    # As the ingress forwards a customer's write: the tenant in Receive's header.
    stack.write_samples(kube_series(tenant, (LAST + DAY // 2) * 1000))
    report = await run_job(world, 2)
    found = await items_of(world, 2)
    # Sized demand: web-1, web-2 0.25 core and 1 GiB each (movable), pg-0 0.75 and 2 GiB (its
    # local volume pins n2), job-x 0.05 and 1 GiB (no controller: pins n1). Production (65 %,
    # at least 2 nodes): n1 takes job-x and both web pods, 0.55 ≤ 1.3 cores and 3 ≤ 5.2 GiB;
    # n1 and n2 are kept, n3 goes: one node's price a month.
    [cluster] = found["k8s_cluster_rightsizing"]
    assert "insufficient" not in cluster["fields"]
    assert cluster["saving"] == pytest.approx(NODE_HOURLY * MONTH)
    assert (cluster["fields"]["current_nodes"], cluster["fields"]["planned_nodes"]) == (3, 2)
    [production] = [p for p in cluster["fields"]["evidence"]["plans"] if p["profile"] == "production"]
    assert production["kept_nodes"] == ["n1", "n2"] and production["node_counts"] == [{"node_type": "m5.large", "count": 2}]
    # Spot: web is ready (its "true" annotation pins nothing), at 60 % off its sized demand;
    # pg-0 (a StatefulSet with a local volume) and job-x are not items.
    [spot] = found["k8s_spot_instances"]
    assert (spot["fields"]["controller"], spot["fields"]["rule"], "insufficient" in spot["fields"]) == ("web", "ready", False)
    assert spot["saving"] == pytest.approx(2 * (0.25 * 0.03 + 1 * 0.004) * 0.6 * MONTH)
    # Through the route: items → module → total, against the sums of what the job wrote.
    body = (await get(world, world.c, {"cloud_account_id": tenant})).json()
    for module, docs in found.items():
        got = body["optimizations"][module]
        assert (got["count"], got["saving"]) == (len(docs), pytest.approx(sum(d["saving"] for d in docs)))
    assert body["total_saving"] == pytest.approx(52.5 + 1.5 + NODE_HOURLY * MONTH + 2 * 0.0115 * 0.6 * MONTH)
    assert report.savings["k8s_cluster_rightsizing"] == pytest.approx(NODE_HOURLY * MONTH)
