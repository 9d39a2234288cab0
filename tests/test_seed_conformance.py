"""The design document's own checks, executable: its "Verification and Testing" Tests 1–9
and its "Troubleshooting" Issues 1–6, each the same request with the design's expected
fields, the host and ids adapted to the local stack.

Everything but the last test runs in-process on the real servers: the exporter against a
fake Kubecost over HTTP, the ingress's and Metroculus's Serve classes called as Serve's proxy
calls them (``func_or_class``, no Ray), a tenant's ledger writer (no Ray) writing the ledger,
and the REST API over ASGI, on fresh ClickHouse and MongoDB databases and the shared TSDB
(a fresh tenant). The ``stack`` fixture sends one cluster's gauges through the ingress —
the design's rates (``default`` 0.2573 $/h, ``kube-system`` 0.1741, ``kubecost-dev`` 0.0652)
over two whole past UTC days — and runs one ledger cycle over those days; expected costs
are the rates × 24 h, computed here.

Where the project deliberately deviates, the test asserts the project's documented
behaviour and says why; README.md "Differences from the design" has one row per deviation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from asynch import Connection
from starlette.requests import Request

from actors.tenant import CycleReport, Tenant, TenantClients
from exporter.server import running
from k8scost import ledger
from k8scost.metroculus_client import MetroculusClient
from k8scost.promql import CLUSTER_COST_COMPONENTS, IDLE_METRIC, NAMESPACE_METRIC, NODE_METRIC, POD_METRIC
from k8scost.query_params import BadParameter
from k8scost.settings import (
    DAY, ExporterSettings, LedgerSettings, MetroculusSettings, RestApiSettings, StoreSettings, from_env,
)
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.stores.late_samples import LateSampleStore
from k8scost.stores.mongo import connect
from k8scost.stores.resources import ResourceStore
from serve_apps.ingress import app as ingress_app
from serve_apps.ingress.remote_write import STALE_NAN_BITS, encode
from serve_apps.metroculus import app as metroculus_app
from serve_apps.metroculus.params import parse_metrics_request, parse_span
from serve_apps.restapi import params as rest_params
from serve_apps.restapi.api import RestApiConfig, create_api
from tests import helpers
from tests.test_exporter import FakeKubecost, _scrape_text, _settings
from tests.test_restapi import JWT_KEY, SECRET, Org, _account, _clickhouse, _dsn, _signup

pytestmark = pytest.mark.services
# The stack's store clients belong to the loop they first ran on: every async test runs on it.
on_stack_loop = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[1]
HOUR = 3600
RES = 60  # Metroculus's default resolution; the gauges are sampled on its grid
NS, POD = NAMESPACE_METRIC, POD_METRIC
CLUSTER = "minikube"
LAG = from_env(LedgerSettings, {}).rate_lag_seconds
TODAY = int(time.time()) // DAY * DAY
D1, D2 = TODAY - 3 * DAY, TODAY - 2 * DAY  # the ledger's days, whole and past
# The design's namespace rates ($/h). ``default`` rises to 0.3 from D2 on: with the ledger's
# lag, day D1 reads (D1 + LAG, D2 + LAG] and D2 what follows, so each day has one rate.
RATES = {"default": 0.2573, "kube-system": 0.1741, "kubecost-dev": 0.0652}
DEFAULT_D2 = 0.3
IDLE = 0.05
COMPONENTS = {"management_cost": 0.1, "cpu_cost": 0.4, "ram_cost": 0.15, "pv_cost": 0.05,
              "network_cost": 0.01, "load_balancer_cost": 0.02}
PODS = {("default", "nginx-xxx", "nginx"): 0.05, ("kube-system", "coredns-abc", None): 0.03}
NODE_RATE = 0.4
STALE = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
# The shared remote-write credentials the design gives every cluster.
DESIGN_USER, DESIGN_PASSWORD = "kubecost", "kubecost@123"


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-12)


def namespace_rate(namespace: str, t: int) -> float:
    return DEFAULT_D2 if namespace == "default" and t > D2 + LAG else RATES[namespace]


def day_costs(day: int) -> dict[str, float]:
    """The ledger's namespaces of ``day`` (the cost lines included), from the rates."""
    rates = {name: (DEFAULT_D2 if name == "default" and day == D2 else rate) for name, rate in RATES.items()}
    cluster = sum(COMPONENTS.values())
    named = sum(rates.values()) + IDLE + COMPONENTS["management_cost"]
    return {**{k: v * 24 for k, v in rates.items()}, "__idle__": IDLE * 24,
            "__management__": COMPONENTS["management_cost"] * 24, "__unallocated__": (cluster - named) * 24}


def iso(day: int) -> str:
    return datetime.fromtimestamp(day, UTC).date().isoformat()


# --- the stack ------------------------------------------------------------------------------


def asgi(replica: Any, route_prefix: str = "") -> Callable[..., Any]:
    """A Serve deployment's replica as an ASGI app, called as Serve's proxy calls it (which
    gives the application's route prefix as the root path)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        response = await replica(Request({**scope, "root_path": route_prefix}, receive))
        await response(scope, receive, send)

    return app


@dataclasses.dataclass
class Stack:
    rest: httpx.AsyncClient
    ingress: httpx.AsyncClient
    metroculus: httpx.AsyncClient
    org: Org
    other: Org
    account: dict[str, Any]  # the REST API's answer creating it: id, credentials
    other_account: dict[str, Any]
    stores: StoreSettings
    report: CycleReport
    recent: tuple[int, int, int]  # the recent samples of "default": first, last, count

    @property
    def account_id(self) -> str:
        return str(self.account["id"])

    def write_auth(self, account: dict[str, Any] | None = None) -> tuple[str, str]:
        credentials = (account or self.account)["credentials"]
        return credentials["account_id"], credentials["password"]


def remote_write(client: httpx.AsyncClient, body: bytes, auth: tuple[str, str], account_header: str | None) -> Any:
    headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
               "X-Prometheus-Remote-Write-Version": "0.1.0"}
    if account_header is not None:
        headers["Cloud-Account-Id"] = account_header
    return client.post("/storage/api/v2/write", content=body, headers=headers, auth=auth)


def the_gauges(tenant: str) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    """Every series of the cluster over [D1 − 1 h, D2 + DAY + 1 h], a sample every RES s."""
    grid = range(D1 - HOUR, D2 + DAY + HOUR + 1, RES)
    base = {"cluster": CLUSTER, "tenant_id": tenant}
    series = [({"__name__": NS, **base, "namespace": ns}, [(t * 1000, namespace_rate(ns, t)) for t in grid])
              for ns in RATES]
    series.append(({"__name__": IDLE_METRIC, **base}, [(t * 1000, IDLE) for t in grid]))
    series.append(({"__name__": NODE_METRIC, **base, "node": CLUSTER}, [(t * 1000, NODE_RATE) for t in grid]))
    for (ns, pod, controller), rate in PODS.items():
        labels = {"__name__": POD, **base, "namespace": ns, "pod": pod, "node": CLUSTER,
                  **({"controller": controller} if controller else {})}
        series.append((labels, [(t * 1000, rate) for t in grid]))
    for component, rate in COMPONENTS.items():
        series.append(({"__name__": CLUSTER_COST_COMPONENTS[component], **base}, [(t * 1000, rate) for t in grid]))
    return series


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(real_services: None) -> AsyncIterator[Stack]:
    ch_db, mongo_db = f"test_{uuid.uuid4().hex}", f"test_seed_{uuid.uuid4().hex[:12]}"
    await _clickhouse(f"CREATE DATABASE {ch_db}")
    stores = from_env(StoreSettings, clickhouse_url=_dsn(ch_db), mongodb_database=mongo_db)
    config = RestApiConfig(from_env(RestApiSettings, {}, jwt_secret=JWT_KEY), stores, SECRET, "http://127.0.0.1:1/unused")
    api = create_api(config)
    rest = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://restapi.test")
    # The Serve classes read their settings when built: these databases and secret.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MONGODB_DATABASE", mongo_db)
        env.setenv("CLUSTER_SECRET", SECRET)
        env.setenv("METROCULUS_RESOLUTION_SECONDS", str(RES))
        ingress = ingress_app.RemoteWriteIngress.func_or_class()
        metroculus = metroculus_app.Metroculus.func_or_class()
    ingress_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi(ingress)), base_url="http://ingress.test")
    metroculus_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi(metroculus, "/metroculus")),
                                        base_url="http://metroculus.test/metroculus")
    actor = None
    try:
        org, other = await _signup(rest, "seed"), await _signup(rest, "other")
        account, other_account = await _account(rest, org, CLUSTER), await _account(rest, other, "other cluster")
        tenant = account["id"]
        auth = (account["credentials"]["account_id"], account["credentials"]["password"])
        for series in the_gauges(tenant):
            answer = await remote_write(ingress_http, encode([series]), auth, tenant)
            assert answer.status_code == 204, answer.text
        # The last 40 minutes of "default" at its current rate, ended by a staleness marker
        # five minutes ago, so the last hour's cost does not depend on when it is asked.
        now = int(time.time()) // RES * RES
        recent = list(range(now - 2400, now - 300 + 1, RES))
        samples = [(t * 1000, DEFAULT_D2) for t in recent] + [((recent[-1] + RES) * 1000, STALE)]
        body = encode([({"__name__": NS, "cluster": CLUSTER, "namespace": "default"}, samples)])
        assert (await remote_write(ingress_http, body, auth, tenant)).status_code == 204
        helpers.wait_until_queryable(tenant, (D1 - HOUR) * 1000)

        # One ledger cycle over the two days, by the tenant's own code (without Ray and
        # without its loop: this test runs the one cycle it checks), reading this Metroculus.
        actor = Tenant(tenant, org.id, from_env(LedgerSettings, {}), TenantClients(
            ExpenseStore(stores), ResourceStore(connect(stores)), LateSampleStore(connect(stores)),
            MetroculusClient("http://metroculus.test/metroculus", SECRET,
                             transport=httpx.ASGITransport(app=asgi(metroculus, "/metroculus")))))
        report = await actor.cycle([datetime.fromtimestamp(d, UTC) for d in (D1, D2)])
        yield Stack(rest, ingress_http, metroculus_http, org, other, account, other_account, stores, report,
                    (recent[0], recent[-1], len(recent)))
    finally:
        if actor is not None:
            await actor.expenses.close()
        for client in (rest, ingress_http, metroculus_http):
            await client.aclose()
        await ingress.tsdb.aclose()
        await metroculus.tsdb.aclose()
        await api.state.stores.close()
        await _clickhouse(f"DROP DATABASE IF EXISTS {ch_db}")
        await connect(stores).client.drop_database(mongo_db)


async def tsdb_query(query: str, at: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(f"{helpers.TSDB_URL}/api/v1/query", params={"query": query, "time": at})
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]["result"]  # type: ignore[no-any-return]


# --- Test 1: metric export from the customer cluster ------------------------------------------


@on_stack_loop
async def test_1_the_exporter_exports_the_designs_gauges() -> None:
    """``curl :19090/metrics | grep cloudtuner_kubecost``: namespace and pod gauges labelled
    tenant_id, namespace (pod) and cluster, valued in $/h."""
    kubecost = FakeKubecost()
    kubecost.start()
    try:
        settings = _settings(kubecost)
        async with running(settings) as poller:
            await poller.poll()
            text = _scrape_text(settings)
    finally:
        kubecost.stop()
    lines = [line for line in text.splitlines() if line.startswith("cloudtuner_kubecost")]
    namespace = [line for line in lines if line.startswith("cloudtuner_kubecost_namespace_total_cost{")]
    pod = [line for line in lines if line.startswith("cloudtuner_kubecost_pod_total_cost{")]
    assert namespace and pod
    for line in namespace + pod:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        assert labels["tenant_id"] == settings.tenant_id and labels["cluster"] == settings.cluster_name
        assert labels["namespace"]
        assert float(line.rsplit(" ", 1)[1]) >= 0
    assert all("pod" in dict(re.findall(r'(\w+)="([^"]*)"', line)) for line in pod)
    assert any('namespace="kube-system"' in line for line in namespace)


# --- Test 2: remote write -----------------------------------------------------------------------


@on_stack_loop
async def test_2_remote_write_lands_in_the_tsdb_under_the_account(stack: Stack) -> None:
    """The ingress answered every write of the fixture 204 (the design's "200 OK": any 2xx is
    success to Prometheus, and 204 is what Prometheus' own receiver answers). Querying the TSDB
    directly finds the namespace gauge, labelled with the account as tenant_id."""
    result = await tsdb_query(f'{NS}{{tenant_id="{stack.account_id}"}}', D1 + DAY // 2)
    by_namespace = {series["metric"]["namespace"]: series for series in result}
    assert set(by_namespace) == set(RATES)
    for name, series in by_namespace.items():
        assert series["metric"]["tenant_id"] == stack.account_id and series["metric"]["cluster"] == CLUSTER
        assert float(series["value"][1]) == approx(RATES[name])


@on_stack_loop
async def test_2_deviation_the_shared_kubecost_credentials_are_refused(stack: Stack) -> None:
    """Deviation: the design gives every cluster the basic auth ``kubecost``/``kubecost@123``.
    Here each cloud account has its own password (a salted hash stored), because with one
    shared secret any customer could write as any other by changing Cloud-Account-Id."""
    body = encode([({"__name__": NS, "cluster": CLUSTER, "namespace": "default"}, [(int(time.time()) * 1000, 1.0)])])
    for header in (stack.account_id, None):
        answer = await remote_write(stack.ingress, body, (DESIGN_USER, DESIGN_PASSWORD), header)
        assert answer.status_code == 401, answer.text


# --- Test 3: Metroculus ---------------------------------------------------------------------------


@on_stack_loop
async def test_3_kubecost_metrics_answers_in_the_designs_shape(stack: Stack) -> None:
    """The design's request (one day, Secret header). Same shape: cloud_account_id,
    metrics.<name>.status "success", data.result[].metric.namespace and .value [time, "cost"].

    Deviation: a value is the cost integrated over (start_date, end_date] (here a day: the
    rate × 24), stamped end_date, not the design's instant rate at start_date over a
    "synthetic range": an instant value would bill a whole range at whatever rate the cluster
    ran at when asked, so a pod that ran an hour would be billed a day.
    """
    params = {"cloud_account_id": stack.account_id, "metrics": NS, "start_date": D1, "end_date": D1 + DAY}
    answer = await stack.metroculus.get("/v2/kubecost_metrics", params=params, headers={"Secret": SECRET})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["cloud_account_id"] == stack.account_id
    metric = body["metrics"][NS]
    assert metric["status"] == "success" and metric["data"]["resultType"] == "vector"
    result = {series["metric"]["namespace"]: series for series in metric["data"]["result"]}
    assert set(result) == set(RATES)
    for name, series in result.items():
        at, value = series["value"]
        assert at == D1 + DAY and isinstance(value, str)
        assert float(value) == approx(RATES[name] * 24)  # D1's samples all carry the D1 rate
        assert series["metric"]["tenant_id"] == stack.account_id


# --- Test 4: the worker (here a tenant's ledger writer) ------------------------------------------


@on_stack_loop
async def test_4_one_ledger_cycle_writes_resources_and_expenses(stack: Stack) -> None:
    """The design's kubecost_worker logs "Creating 5 namespace cloud_resource records … Wrote 5
    expenses". Deviation: a ledger writer per account (on a Ray tenant host) writes it every CYCLE_SECONDS
    instead of a CronJob over all accounts; its cycle report says the same things. Per day: 6
    namespaces (3, __idle__, __management__, __unallocated__), 2 pods, the node, the cluster and
    its 6 cost components; the 10 resources are documents, the components ledger rows only."""
    report = stack.report
    assert report.days == [iso(D1), iso(D2)]
    assert report.rows_written == 2 * (6 + 2 + 1 + 1 + 6)
    assert report.resources_upserted == 6 + 2 + 1 + 1


# --- Test 5: MongoDB resources ----------------------------------------------------------------------


@on_stack_loop
async def test_5_cloud_resource_documents(stack: Stack) -> None:
    """``db.cloud_resource.find({k8s_namespace: {$ne: null}})``: documents with
    cloud_resource_id, name, resource_type "K8s Namespace", k8s_namespace, cloud_account_id.

    Deviations (documented values): ``cloud_resource_id`` is ``k8s-namespace/<cluster>/<name>``,
    not ``k8s-ns-<hash>`` — readable, and a namespace of one name in two clusters of an account
    is two resources; ``name`` is the Kubernetes name (``default``), not ``Namespace: default``
    — the ledger's resource_name is the same string, so both stores agree, and the type is
    its own field; ``meta`` has no ``namespace`` (it is ``k8s_namespace``; pods' meta holds
    their controller kind). Pods carry k8s_namespace too, so the query finds them as well.
    """
    found = await connect(stack.stores)["cloud_resource"].find(
        {"cloud_account_id": stack.account_id, "k8s_namespace": {"$ne": None}}
    ).to_list(None)
    by_type: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in found:
        by_type.setdefault(doc["resource_type"], {})[doc["name"]] = doc
    assert set(by_type) == {"K8s Namespace", "K8s Pod"}
    assert set(by_type["K8s Namespace"]) == {*RATES, "__idle__", "__management__", "__unallocated__"}
    assert set(by_type["K8s Pod"]) == {pod for _, pod, _ in PODS}
    default = by_type["K8s Namespace"]["default"]
    assert (default["cloud_account_id"], default["k8s_namespace"]) == (stack.account_id, "default")
    assert default["cloud_resource_id"] == f"k8s-namespace/{CLUSTER}/default"
    assert default["name"] == "default" and "namespace" not in default["meta"]
    assert (default["service_name"], default["deleted_at"], default["first_seen"]) == ("Kubernetes", 0, D1)
    nginx = by_type["K8s Pod"]["nginx-xxx"]
    assert (nginx["k8s_namespace"], nginx["k8s_node"], nginx["k8s_service"]) == ("default", CLUSTER, "nginx")


# --- Test 6: ClickHouse expenses ----------------------------------------------------------------------


@on_stack_loop
async def test_6_the_designs_clickhouse_query(stack: Stack) -> None:
    """The design's SQL, verbatim but for the account id. Its namespace rows (no node, no
    service) hold each namespace's day cost, once per day (``records`` 1: nothing corrected).

    Deviation: the ledger also holds pods (with k8s_namespace, node and service) and the
    cluster, nodes and components (k8s_namespace NULL) in the same table, told apart by
    ``resource_type``; the query's k8s_node/k8s_service grouping keeps pods apart from their
    namespaces, as long as a pod has a node."""
    sql = f"""
  SELECT
    k8s_namespace,
    k8s_node,
    k8s_service,
    date,
    SUM(cost * sign) as total_cost,
    COUNT() as records
  FROM expenses
  WHERE cloud_account_id = '{stack.account_id}'
    AND k8s_namespace IS NOT NULL
  GROUP BY k8s_namespace, k8s_node, k8s_service, date
  ORDER BY date DESC, total_cost DESC
  LIMIT 20;
"""
    async with Connection(dsn=stack.stores.clickhouse_url) as conn:
        async with conn.cursor() as cursor:
            await cursor.execute(sql.strip().rstrip(";"))
            rows = await cursor.fetchall()
    namespaces: dict[tuple[str, int], float] = {}
    pods: dict[tuple[str, str, str | None, int], float] = {}
    for namespace, node, service, date, total, records in rows:
        day = int(date.replace(tzinfo=UTC).timestamp())  # the server's zone is UTC here
        assert records == 1
        if node is None and service is None:
            namespaces[namespace, day] = total
        else:
            pods[namespace, node, service, day] = total
    expected = {(name, day): cost for day in (D1, D2) for name, cost in day_costs(day).items()}
    assert namespaces.keys() == expected.keys()
    for key, cost in expected.items():
        assert namespaces[key] == approx(cost), key
    assert pods[("default", CLUSTER, "nginx", D1)] == approx(0.05 * 24)
    assert [row[3] for row in rows] == sorted((row[3] for row in rows), reverse=True)  # date DESC


# --- Test 7: available_filters ---------------------------------------------------------------------------


@on_stack_loop
async def test_7_available_filters_of_the_organization(stack: Stack) -> None:
    """``GET /restapi/v2/available_filters?organization_id=…`` (no dates), ``jq .k8s_namespace``.

    Deviation: the namespaces include Kubecost's ``__idle__`` and the ledger's
    ``__management__`` and ``__unallocated__``, so a cluster's namespaces add up to its bill.
    The answer is the OptScale-shaped twin's ``filter_values`` over the default range (the
    longest a request may ask, ending now)."""
    answer = await stack.rest.get("/v2/available_filters", params={"organization_id": stack.org.id},
                                  headers=stack.org.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["k8s_namespace"] == sorted({*RATES, "__idle__", "__management__", "__unallocated__"})
    assert (body["k8s_cluster"], body["k8s_node"], body["k8s_service"]) == ([CLUSTER], [CLUSTER], ["nginx"])
    assert body["cloud_account"] == [{"id": stack.account_id, "name": CLUSTER, "type": "kubernetes_cnr"}]
    # Without organization_id: the token's own organization, the same answer.
    assert (await stack.rest.get("/v2/available_filters", headers=stack.org.headers)).json() == body
    days = from_env(RestApiSettings, {}).max_range_days
    now = int(time.time())
    twin = await stack.rest.get(f"/v2/organizations/{stack.org.id}/available_filters",
                                params={"start_date": now - days * DAY, "end_date": now}, headers=stack.org.headers)
    assert twin.json()["filter_values"] == body


# --- Test 8: clean_expenses with a namespace filter ---------------------------------------------------------


@on_stack_loop
async def test_8_clean_expenses_with_the_namespace_filter(stack: Stack) -> None:
    """The design's request: one day, ``k8s_namespace=default``. Rows carry cloud_account_id,
    date, cost and k8s_namespace; total_cost is the namespace's; ``k8s_costs`` has
    k8s_total_cost and k8s_cost_breakdown[] with ``cost``.

    Deviation: ``k8s_costs`` is each account's whole cluster cost (only the cluster and
    account filters narrow it), as OptScale's twin answers: it says what the clusters cost,
    beside what the filtered resources cost."""
    params = {"organization_id": stack.org.id, "start_date": D1, "end_date": D1 + DAY, "k8s_namespace": "default"}
    answer = await stack.rest.get("/v2/clean_expenses", params=params, headers=stack.org.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["start_date"], body["end_date"]) == (D1, D1 + DAY)
    assert body["total_cost"] == approx(RATES["default"] * 24)
    [row] = body["clean_expenses"]
    assert (row["cloud_account_id"], row["date"], row["k8s_namespace"]) == (stack.account_id, iso(D1), "default")
    assert row["cost"] == approx(RATES["default"] * 24)
    cluster_day = sum(COMPONENTS.values()) * 24
    assert body["k8s_costs"]["k8s_total_cost"] == approx(cluster_day)
    [breakdown] = body["k8s_costs"]["k8s_cost_breakdown"]
    assert breakdown["cost"] == approx(cluster_day) and breakdown["cloud_account_id"] == stack.account_id
    assert breakdown["breakdown"]["cpu_cost"] == approx(COMPONENTS["cpu_cost"] * 24)


@on_stack_loop
async def test_8_clean_expenses_has_a_row_per_resource_and_day(stack: Stack) -> None:
    """Over both days every namespace has a row per day; the totals are the twin's."""
    params = {"organization_id": stack.org.id, "start_date": D1, "end_date": D2 + DAY}
    body = (await stack.rest.get("/v2/clean_expenses", params=params, headers=stack.org.headers)).json()
    got = {(row["k8s_namespace"], row["date"]): row["cost"] for row in body["clean_expenses"]}
    expected = {(name, iso(day)): cost for day in (D1, D2) for name, cost in day_costs(day).items()}
    assert got.keys() == expected.keys() and body["total_count"] == len(expected)
    for key, cost in expected.items():
        assert got[key] == approx(cost), key
    costs = [row["cost"] for row in body["clean_expenses"]]
    assert costs == sorted(costs, reverse=True)  # costliest first, as the twin
    twin = (await stack.rest.get(f"/v2/organizations/{stack.org.id}/clean_expenses",
                                 params={"start_date": D1, "end_date": D2 + DAY}, headers=stack.org.headers)).json()
    assert body["total_cost"] == approx(twin["total_cost"]) and body["k8s_costs"]["k8s_total_cost"] == approx(
        twin["k8s_costs"]["k8s_total_cost"])
    assert {r["k8s_namespace"] for r in twin["clean_expenses"]} == {name for name, _ in got}
    limited = (await stack.rest.get("/v2/clean_expenses", params={**params, "limit": 2},
                                    headers=stack.org.headers)).json()
    assert limited["clean_expenses"] == body["clean_expenses"][:2] and limited["total_count"] == len(expected)


@on_stack_loop
async def test_ngui_expenses_async_with_the_filter_body(stack: Stack) -> None:
    """NGUI's ``POST /restapi/v2/expenses_async`` with ``{"start_date", "end_date", "filter":
    {"k8s_namespace": "default"}}``: 202 and a task id; the task's result is the design's
    clean_expenses for the same range and filter."""
    body = {"start_date": D1, "end_date": D2 + DAY, "filter": {"k8s_namespace": "default"}}
    started = await stack.rest.post("/v2/expenses_async", json=body, headers=stack.org.headers)
    assert started.status_code == 202, started.text
    task_id = started.json()["task_id"]
    deadline = time.monotonic() + 30
    while True:
        polled = await stack.rest.get(f"/v2/expenses_async/{task_id}", headers=stack.org.headers)
        assert polled.status_code == 200, polled.text
        if polled.json()["status"] != "pending" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert polled.json()["status"] == "done", polled.text
    direct = await stack.rest.get("/v2/clean_expenses", headers=stack.org.headers, params={
        "organization_id": stack.org.id, "start_date": D1, "end_date": D2 + DAY, "k8s_namespace": "default"})
    assert polled.json()["result"] == direct.json()
    assert [(r["date"], r["cost"]) for r in direct.json()["clean_expenses"]] == [
        (iso(D2), approx(DEFAULT_D2 * 24)), (iso(D1), approx(RATES["default"] * 24))]
    # The same task, read at the OptScale-shaped path; the other organization cannot see it.
    assert (await stack.rest.get(f"/v2/organizations/{stack.org.id}/expenses_async/{task_id}",
                                 headers=stack.org.headers)).json() == polled.json()
    assert (await stack.rest.get(f"/v2/expenses_async/{task_id}", headers=stack.other.headers)).status_code == 404


# --- Test 9: the front end's filters --------------------------------------------------------------------------


@on_stack_loop
async def test_9_the_front_ends_filter_flow(stack: Stack) -> None:
    """NGUI's steps as requests: the filter values populate the namespace dropdown; applying
    ``k8s_namespace=default`` gives the charts' daily costs of that namespace alone. (The
    project's own dashboard does the same in a browser: tests/test_dashboard.py, on Serve.)"""
    filters = (await stack.rest.get("/v2/available_filters", headers=stack.org.headers)).json()
    assert "default" in filters["k8s_namespace"]
    chart = await stack.rest.get(f"/v2/organizations/{stack.org.id}/breakdown_expenses", headers=stack.org.headers,
                                 params={"start_date": D1, "end_date": D2 + DAY, "breakdown_by": "k8s_namespace",
                                         "k8s_namespace": "default"})
    assert chart.status_code == 200, chart.text
    days = chart.json()["breakdown"]
    assert {day: set(keys) for day, keys in days.items()} == {str(D1): {"default"}, str(D2): {"default"}}
    assert days[str(D1)]["default"]["cost"] == approx(RATES["default"] * 24)
    assert days[str(D2)]["default"]["cost"] == approx(DEFAULT_D2 * 24)


# --- the design's routes: tenant scoping and bad parameters, as their twins -----------------------------------


@pytest.mark.parametrize("route", ["available_filters", "clean_expenses"])
@on_stack_loop
async def test_design_routes_scope_and_refuse_as_their_twins(stack: Stack, route: str) -> None:
    span = {"start_date": D1, "end_date": D2 + DAY}
    other = stack.other.id
    # Another organization's id: the twin's 404, word for word.
    seed = await stack.rest.get(f"/v2/{route}", params={"organization_id": other, **span}, headers=stack.org.headers)
    twin = await stack.rest.get(f"/v2/organizations/{other}/{route}", params=span, headers=stack.org.headers)
    assert (seed.status_code, seed.json()) == (twin.status_code, twin.json()) == (404, twin.json())
    # An account of another organization as a filter: 404, as the twin.
    foreign = {"organization_id": stack.org.id, **span, "cloud_account_id": stack.other_account["id"]}
    assert (await stack.rest.get(f"/v2/{route}", params=foreign, headers=stack.org.headers)).status_code == 404
    assert (await stack.rest.get(f"/v2/{route}", params={"organization_id": stack.org.id, **span})).status_code == 401
    cases = [
        ({"start_date": "abc", "end_date": D2}, "start_date: 'abc' is not a Unix timestamp"),
        ({"start_date": D1}, "end_date: missing"),
        ({**span, "color": "red"}, "unknown query parameter(s): color"),
        ({**span, "resource_type": "K8s Volume"}, "resource_type: 'K8s Volume' is not one of"),
        ([("organization_id", stack.org.id), ("organization_id", stack.org.id), *span.items()],
         "query parameter(s) given more than once: organization_id"),
    ]
    for params, message in cases:
        if isinstance(params, dict):
            params = {"organization_id": stack.org.id, **params}
        answer = await stack.rest.get(f"/v2/{route}", params=params, headers=stack.org.headers)
        assert answer.status_code == 400, (params, answer.text)
        assert answer.json()["error"]["reason"] == "bad_request"
        assert answer.json()["error"]["message"].startswith(message), answer.text
    # A service (the cluster secret) names the organization; without one, 400 naming it.
    service = {"Secret": SECRET}
    missing = await stack.rest.get(f"/v2/{route}", params=span, headers=service)
    assert missing.status_code == 400 and missing.json()["error"]["message"] == "organization_id: missing"
    named = await stack.rest.get(f"/v2/{route}", params={"organization_id": stack.org.id, **span}, headers=service)
    mine = await stack.rest.get(f"/v2/{route}", params={"organization_id": stack.org.id, **span}, headers=stack.org.headers)
    assert named.status_code == 200 and named.json() == mine.json()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"start_date": D1, "end_date": D2, "filter": {"namespace": "default"}}, 400, "filter.namespace: not a filter"),
        ({"start_date": D1, "end_date": D2, "filter": ["default"]}, 400, "filter: must be a JSON object"),
        ({"start_date": D1, "filter": {"k8s_namespace": "default"}}, 400, "end_date: missing"),
        ({"start_date": D1, "end_date": D2, "filter": {"k8s_namespace": {"$ne": None}}}, 400, "k8s_namespace: values"),
        ({"start_date": D1, "end_date": D2, "filter": {"resource_type": ["K8s Pod", "K8s Namespace"]}}, 400,
         "resource_type: give one type"),
        ({"start_date": D1, "end_date": D2, "colour": 1}, 400, "unknown query parameter(s): colour"),
        ([1, 2], 400, "body: must be a JSON object"),
    ],
)
@on_stack_loop
async def test_design_expenses_async_refuses_bad_bodies_naming_the_field(
    stack: Stack, body: Any, status: int, message: str
) -> None:
    answer = await stack.rest.post("/v2/expenses_async", json=body, headers=stack.org.headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["message"].startswith(message), answer.text


@on_stack_loop
async def test_design_expenses_async_is_scoped_as_its_twin(stack: Stack) -> None:
    span = {"start_date": D1, "end_date": D2 + DAY}
    other = await stack.rest.post("/v2/expenses_async", params={"organization_id": stack.other.id}, json=span,
                                  headers=stack.org.headers)
    assert other.status_code == 404 and other.json()["error"]["message"] == f"organization {stack.other.id!r} not found"
    foreign = {**span, "filter": {"cloud_account_id": [stack.other_account["id"]]}}
    answer = await stack.rest.post("/v2/expenses_async", json=foreign, headers=stack.org.headers)
    assert answer.status_code == 404 and stack.other_account["id"] in answer.json()["error"]["message"]
    assert (await stack.rest.post("/v2/expenses_async", json=span)).status_code == 401


# --- Troubleshooting Issue 1: allocation metrics not exported ---------------------------------------------------


@on_stack_loop
async def test_issue_1_kubecost_unreachable_withdraws_the_gauges_and_says_why(
    real_services: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Symptom: ``grep cloudtuner_kubecost`` finds nothing; diagnosis: the exporter's log names
    Kubecost's failure. Here cost series are withdrawn after EXPORTER_STALE_AFTER_FAILURES (2)
    failed polls, so no stale rate is billed, and ``cloudtuner_exporter_up`` says 0."""
    kubecost = FakeKubecost()
    kubecost.start()
    try:
        settings = _settings(kubecost)
        async with running(settings) as poller:
            await poller.poll()
            assert "cloudtuner_kubecost_namespace_total_cost{" in _scrape_text(settings)
            kubecost.mode = "500"
            caplog.set_level(logging.WARNING)
            for _ in range(from_env(ExporterSettings, {}).stale_after_failures):
                await poller.poll()
            text = _scrape_text(settings)
    finally:
        kubecost.stop()
    assert not [line for line in text.splitlines() if line.startswith("cloudtuner_kubecost")]
    assert re.search(r"^cloudtuner_exporter_up 0(\.0)?$", text, re.M)
    assert any("poll of Kubecost failed" in record.getMessage() for record in caplog.records)


def test_issue_1_fix_3_the_exporters_configuration_names_the_designs_variables() -> None:
    """Fix 3 checks KUBECOST_URL, TENANT_ID and CLUSTER_NAME in the exporter's Deployment.
    Deviation: the allocation API's path is its own setting (KUBECOST_ALLOCATION_PATH,
    ``/model/allocation``, the cost-model's; the design's ``:9090/allocation`` is the
    frontend's proxy of it), so either service can be pointed at."""
    docs = [doc for doc in yaml.safe_load_all((ROOT / "cluster_config/customer/exporter-deployment.yaml").read_text())
            if doc]
    [deployment] = [doc for doc in docs if doc["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    names = {env["name"] for env in container["env"]}
    assert {"KUBECOST_URL", "TENANT_ID", "CLUSTER_NAME"} <= names
    assert from_env(ExporterSettings, {}).allocation_path == "/model/allocation"


# --- Troubleshooting Issue 2: remote write not reaching CloudTuner ----------------------------------------------


@on_stack_loop
async def test_issue_2_fix_1_a_plain_get_of_the_write_endpoint_is_400(stack: Stack) -> None:
    """``curl -v …/storage/api/v2/write``: "Should get 400 (expected, means endpoint is reachable)"."""
    answer = await stack.ingress.get("/storage/api/v2/write")
    assert answer.status_code == 400
    assert "method GET" in answer.text and "POST /api/v2/write" in answer.text
    assert (await stack.ingress.get("/storage/api/v2/other")).status_code == 404


@on_stack_loop
async def test_issue_2_fix_2_the_cloud_account_id_must_be_the_accounts(stack: Stack) -> None:
    """Cloud-Account-Id "must match K8s cloud account ID in CloudTuner": another account's id
    with this account's credentials is refused, and nothing lands under either."""
    marker = f"ns-{uuid.uuid4().hex[:8]}"
    now = int(time.time())
    body = encode([({"__name__": NS, "cluster": CLUSTER, "namespace": marker}, [(now * 1000, 1.0)])])
    other_id = str(stack.other_account["id"])
    for header, auth in ((other_id, stack.write_auth()),
                         (other_id, (other_id, stack.write_auth()[1]))):
        answer = await remote_write(stack.ingress, body, auth, header)
        assert answer.status_code == 401, answer.text
    assert await tsdb_query(f'{NS}{{namespace="{marker}"}}', now) == []


def test_issue_2_fix_3_the_relabel_keeps_the_designs_metrics() -> None:
    """write_relabel_configs' regex "must include cloudtuner_kubecost_* metrics" (and the
    design's filter keeps kubecost_cluster_* too), beside the curated usage families
    (k8scost/usage_series.py) and nothing else."""
    config = yaml.safe_load((ROOT / "cluster_config/customer/prometheus-remote-write.yaml").read_text())
    keep = config["remote_write"][0]["write_relabel_configs"][0]
    assert keep["action"] == "keep"
    for name in (NS, POD, "cloudtuner_kubecost_namespace_cpu_cost", "kubecost_cluster_cpu_cost", "node_cpu_seconds_total"):
        assert re.fullmatch(keep["regex"], name), name
    assert not re.fullmatch(keep["regex"], "node_network_receive_bytes_total")


# --- Troubleshooting Issue 3: Metroculus returns empty metrics ---------------------------------------------------


@on_stack_loop
async def test_issue_3_fixes_1_and_2_the_tsdb_holds_the_series_under_the_account(stack: Stack) -> None:
    """Query the TSDB directly (fix 1), and its tenant_id must be the cloud_account_id (fix 2)."""
    first, last, _ = stack.recent
    result = await tsdb_query(NS + f'{{tenant_id="{stack.account_id}",namespace="default"}}', last)
    assert [series["metric"]["tenant_id"] for series in result] == [stack.account_id]
    assert float(result[0]["value"][1]) == DEFAULT_D2


@on_stack_loop
async def test_issue_3_fix_3_kubecost_metrics_without_dates_is_the_last_hour(stack: Stack) -> None:
    """The design's symptom request has no dates. Here it answers the last hour (end_date now,
    rounded down to the resolution): the cost of that hour, which is the design's "current
    hourly rate" for a rate that was steady over it. The recent samples stopped 5 minutes
    ago, so the hour holds all of them: rate × their count × RES / 3600."""
    before = int(time.time()) // RES * RES
    params = {"cloud_account_id": stack.account_id, "metrics": NS}
    answer = await stack.metroculus.get("/v2/kubecost_metrics", params=params, headers={"Secret": SECRET})
    after = int(time.time()) // RES * RES
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert before <= body["end_date"] <= after and body["end_date"] - body["start_date"] == HOUR
    [series] = body["metrics"][NS]["data"]["result"]
    _, _, count = stack.recent
    assert series["metric"]["namespace"] == "default"
    assert float(series["value"][1]) == approx(DEFAULT_D2 * count * RES / HOUR)
    # The same as asking for that hour, and as asking kubecost_cluster_costs without dates.
    explicit = await stack.metroculus.get("/v2/kubecost_metrics", headers={"Secret": SECRET}, params={
        **params, "start_date": body["start_date"], "end_date": body["end_date"]})
    assert explicit.json()["metrics"] == body["metrics"]
    cluster = await stack.metroculus.get("/v2/kubecost_cluster_costs", params={"cloud_account_id": stack.account_id},
                                         headers={"Secret": SECRET})
    assert cluster.status_code == 200 and cluster.json()["end_date"] - cluster.json()["start_date"] == HOUR
    # One date alone is still a 400 naming the other.
    alone = await stack.metroculus.get("/v2/kubecost_metrics", params={**params, "start_date": before - HOUR},
                                       headers={"Secret": SECRET})
    assert alone.status_code == 400 and alone.json()["error"]["message"] == "end_date: missing"


# --- Troubleshooting Issue 4: the worker does not process data --------------------------------------------------


@on_stack_loop
async def test_issue_4_fix_1_metroculus_takes_the_cluster_secret(stack: Stack) -> None:
    """"Test Metroculus API manually" with ``-H "Secret: $CLUSTER_SECRET"``: without it 401,
    a wrong one 403, the right one 200."""
    params = {"cloud_account_id": stack.account_id, "metrics": NS}
    for headers, status in (({}, 401), ({"Secret": "wrong"}, 403), ({"Secret": SECRET}, 200)):
        answer = await stack.metroculus.get("/v2/kubecost_metrics", params=params, headers=headers)
        assert answer.status_code == status, answer.text


@on_stack_loop
async def test_issue_4_fix_2_the_cloud_account_exists(stack: Stack) -> None:
    """``db.cloud_account.find({_id, type: 'kubernetes_cnr', deleted_at: 0})``. Deviation: the
    collection is ``cloud_accounts`` (this project's; it holds the remote-write secret's hash,
    which OptScale's collection has no field for)."""
    db = connect(stack.stores)
    query = {"_id": stack.account_id, "type": "kubernetes_cnr", "deleted_at": 0}
    assert await db["cloud_accounts"].count_documents(query) == 1
    assert await db["cloud_account"].count_documents(query) == 0


def test_issue_4_fix_3_series_missing_their_labels_are_skipped_not_fatal() -> None:
    """"Missing metric labels (namespace, pod)": such a series costs no resource; the rest of the
    answer is parsed."""
    assert ledger.resource_of(NS, {"cluster": CLUSTER}) is None
    assert ledger.resource_of(POD, {"cluster": CLUSTER, "namespace": "default"}) is None
    assert ledger.resource_of(NS, {"namespace": "default"}) is None
    assert ledger.resource_of(NS, {"cluster": CLUSTER, "namespace": "default"}) is not None


# --- Troubleshooting Issues 5 and 6 ------------------------------------------------------------------------------


@on_stack_loop
async def test_issue_5_namespaces_have_resource_documents(stack: Stack) -> None:
    """``db.cloud_resource.find({cloud_account_id, k8s_namespace: {$ne: null}}).count()`` > 0.
    Deviation: available_filters reads the ledger (ClickHouse), not these documents, so a
    namespace with cost is offered even if its document were missing (the design's root cause)."""
    count = await connect(stack.stores)["cloud_resource"].count_documents(
        {"cloud_account_id": stack.account_id, "k8s_namespace": {"$ne": None}}
    )
    assert count == len(RATES) + 3 + len(PODS)


@on_stack_loop
async def test_issue_6_cluster_and_allocation_rows_share_one_insert(stack: Stack) -> None:
    """The design's "column count mismatch" came from cluster rows (5 columns) and allocation
    rows (8) written together. Here every row has every column (NULL where a dimension does not
    apply) and one cycle writes them in one INSERT: the cluster's row sits beside the
    namespaces', without a namespace."""
    sql = ("SELECT resource_type, k8s_namespace, sum(cost * sign) FROM expenses WHERE cloud_account_id = %(a)s "
           "AND date = toDateTime(%(d)s) AND resource_type IN ('K8s Cluster', 'K8s Namespace') "
           "GROUP BY resource_type, k8s_namespace")
    async with Connection(dsn=stack.stores.clickhouse_url) as conn:
        async with conn.cursor() as cursor:
            await cursor.execute(sql, {"a": stack.account_id, "d": D1})
            rows = {(kind, namespace): cost for kind, namespace, cost in await cursor.fetchall()}
    cluster = rows.pop(("K8s Cluster", None))
    assert cluster == approx(sum(COMPONENTS.values()) * 24)
    assert sum(rows.values()) == approx(cluster)  # the namespaces add up to the cluster
    assert {namespace for _, namespace in rows} == set(day_costs(D1))


# --- the design's URLs through Serve (the deployed paths) ------------------------------------------------------


def test_the_designs_urls_through_serve(serve_apps: str, accounts) -> None:
    """The design's curl commands against Serve's proxy: /storage, /metroculus and /restapi
    (the serve_apps fixture deploys Serve on the local Ray)."""
    assert httpx.get(f"{serve_apps}/storage/api/v2/write", timeout=30).status_code == 400
    account, _ = accounts.create()
    answer = httpx.get(f"{serve_apps}/metroculus/v2/kubecost_metrics", headers={"Secret": "test-secret"},
                       params={"cloud_account_id": account.id, "metrics": NS}, timeout=30)
    assert answer.status_code == 200 and answer.json()["end_date"] - answer.json()["start_date"] == HOUR
    email = f"seed-{uuid.uuid4().hex[:8]}@example.com"
    signed = httpx.post(f"{serve_apps}/restapi/v2/signup", timeout=30, json={
        "organization_name": "seed", "email": email, "password": "seed-password-1", "display_name": "Seed"}).json()
    headers = {"Authorization": f"Bearer {signed['token']}"}
    filters = httpx.get(f"{serve_apps}/restapi/v2/available_filters", params={"organization_id": signed["organization_id"]},
                        headers=headers, timeout=30)
    assert filters.status_code == 200 and filters.json()["k8s_namespace"] == []
    expenses = httpx.get(f"{serve_apps}/restapi/v2/clean_expenses", headers=headers, timeout=30, params={
        "organization_id": signed["organization_id"], "start_date": D1, "end_date": D1 + DAY, "k8s_namespace": "default"})
    assert expenses.status_code == 200 and expenses.json()["clean_expenses"] == []
    started = httpx.post(f"{serve_apps}/restapi/v2/expenses_async", headers=headers, timeout=30, json={
        "start_date": D1, "end_date": D1 + DAY, "filter": {"k8s_namespace": "default"}})
    assert started.status_code == 202 and started.json()["task_id"]


# --- the defaults, pure -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("resolution", "now", "span"), [
    (60, 1_730_419_259.9, (1_730_415_600, 1_730_419_200)),  # rounded down to the minute, an hour long
    (15, 1_730_419_229, (1_730_415_615, 1_730_419_215)),
    (7, 1_730_419_200, (1_730_415_589, 1_730_419_194)),  # 1,730,419,200 = 6 mod 7; 3,600 s is no whole number of 7 s: 3,605
])
def test_metroculus_default_span_is_the_last_hour_in_whole_resolutions(
    resolution: int, now: float, span: tuple[int, int]
) -> None:
    settings = from_env(MetroculusSettings, {}, resolution_seconds=resolution)
    asked = parse_metrics_request([("cloud_account_id", "acct-1"), ("metrics", NS)], settings, now=now)
    assert (asked.span.start, asked.span.end) == span
    assert asked.span.start % resolution == 0 and asked.span.end % resolution == 0
    assert parse_span([("cloud_account_id", "acct-1")], settings, now=now) == asked.span
    given = parse_metrics_request([("cloud_account_id", "a"), ("metrics", NS), ("start_date", "0"), ("end_date", "3600")],
                                  from_env(MetroculusSettings, {}, resolution_seconds=60), now=now)
    assert (given.span.start, given.span.end) == (0, 3600)  # dates given: the default plays no part


def test_rest_default_range_is_the_longest_allowed_ending_now() -> None:
    settings = from_env(RestApiSettings, {}, jwt_secret=JWT_KEY)
    before = int(time.time())
    asked = rest_params.parse([("organization_id", "o")], rest_params.FILTERS_PARAMS, settings,
                              frozenset({"organization_id"}), default_range=True)
    assert before <= asked.end <= int(time.time()) and asked.end - asked.start == settings.max_range_days * DAY
    with pytest.raises(BadParameter, match="^start_date: missing$"):
        rest_params.parse([], rest_params.FILTERS_PARAMS, settings)  # the twins keep their required dates
    with pytest.raises(BadParameter, match="^unknown query parameter"):
        rest_params.parse([("organization_id", "o")], rest_params.FILTERS_PARAMS, settings)
