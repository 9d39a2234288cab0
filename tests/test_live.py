"""The live view: Metroculus ``k8s_live`` and its REST proxy on real servers, its PromQL, and
the Grafana dashboard built from the same queries.

Gauges are written straight into the TSDB every 15 s for fresh random tenants, and asked
back over 40 minutes at a 300 s step: each point is then the sample at that very instant,
and the values are binary fractions, so every sum is exact and answers are compared with ``==``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from k8scost.metroculus_client import MetroculusClient, MetroculusError
from k8scost.promql import (
    CLUSTER_COST_METRICS,
    LIVE_MAX_SERIES,
    LIVE_QUERIES,
    USAGE_METRICS,
    UsageSource,
    escape_label_value,
    live_promql,
    live_selector,
)
from k8scost.settings import RestApiSettings, StoreSettings, from_env
from k8scost.stores.mongo import connect
from serve_apps.restapi.api import RestApiConfig, create_api
from tests import helpers
from tests.conftest import TEST_SERVE_ENV
from tests.test_manifests import PROMTOOL
from tests.test_metroculus import STALE, Series, gauge, write

services = pytest.mark.services

SECRET = TEST_SERVE_ENV["CLUSTER_SECRET"]
METROCULUS = f"{helpers.SERVE_URL}/metroculus"
RESTAPI = f"{helpers.SERVE_URL}/restapi"
SAMPLE_EVERY = 15
WINDOW = 2400  # 40 minutes, sampled up to now
STEP = 300
MIB = 2**20
ALLOWED = ", ".join(LIVE_QUERIES)
C = "cloudtuner_kubecost_container_"
CPU_USE, CPU_REQ = f"{C}cpu_usage_average_cores", f"{C}cpu_request_cores"
MEM_USE, MEM_REQ = f"{C}memory_usage_average_bytes", f"{C}memory_request_bytes"
NS_COST, NODE_COST, IDLE = (
    "cloudtuner_kubecost_namespace_total_cost", "cloudtuner_kubecost_node_total_cost", "cloudtuner_kubecost_idle_cost"
)
GRAFANA = helpers.ROOT / "cluster_config" / "grafana" / "cloudtuner-live.json"


class Span:
    """[start, end] of one test's samples, and its points every STEP; ``end`` is now, rounded
    down to ``align`` seconds."""

    def __init__(self, align: int = STEP) -> None:
        self.end = int(time.time()) // align * align
        self.start = self.end - WINDOW
        self.middle = self.start + WINDOW // 2
        self.gone = self.start + 600  # the job pod's last sample
        self.grid = range(self.start - STEP, self.end + 1, SAMPLE_EVERY)  # from before start: no point is empty
        self.points = list(range(self.start, self.end + 1, STEP))

    def series(self, value: Any) -> list[list[float]]:
        """``[[t, value(t)], ...]`` at every point where ``value`` is not None."""
        return [[t, v] for t in self.points if (v := value(t) if callable(value) else value) is not None]


def container(metric: str, tenant: str, span: Span, value: Any, cluster: str, namespace: str, pod: str,
              name: str, node: str = "n1") -> Series:
    labels = {"cluster": cluster, "namespace": namespace, "pod": pod, "container": name, "node": node,
              "controller_kind": "deployment", "controller": pod.rsplit("-", 1)[0]}
    return gauge(metric, tenant, value if callable(value) else (lambda t: value), span.grid, **labels)


def tenant_a(tenant: str, span: Span) -> list[Series]:
    """Tenant A. Cluster c1: namespace shop (pods web-1 with two containers, web-2 whose
    usage rises at mid-window, job-1 that ends 600 s in) and db (pg-0, using more than it
    requests); cluster c2: the same web-1. Cost rates per namespace, idle, node (n2 goes at
    mid-window) and cluster components (c2 reports its CPU cost only)."""
    m = span.middle
    job = lambda t: 1.0 if t <= span.gone else STALE if t == span.gone + SAMPLE_EVERY else None  # noqa: E731
    job_mem = lambda t: 64 * MIB if t <= span.gone else STALE if t == span.gone + SAMPLE_EVERY else None  # noqa: E731
    rows: list[tuple[str, str, str, str, Any, Any, Any, Any]] = [
        # cluster, namespace, pod, container, cpu usage, cpu request, memory usage, memory request
        ("c1", "shop", "web-1", "app", 0.5, 1.0, 200 * MIB, 512 * MIB),
        ("c1", "shop", "web-1", "side", 0.25, 0.125, 16 * MIB, 32 * MIB),
        ("c1", "shop", "web-2", "app", lambda t: 0.125 if t <= m else 0.75, 0.5, 100 * MIB, 512 * MIB),
        ("c1", "shop", "job-1", "main", job, job, job_mem, job_mem),
        ("c1", "db", "pg-0", "pg", 2.0, 1.5, 1024 * MIB, 768 * MIB),
        ("c2", "shop", "web-1", "app", 0.0625, 0.25, 50 * MIB, 128 * MIB),
    ]
    series = []
    for cluster, namespace, pod, name, cpu_use, cpu_req, mem_use, mem_req in rows:
        for metric, value in ((CPU_USE, cpu_use), (CPU_REQ, cpu_req), (MEM_USE, mem_use), (MEM_REQ, mem_req)):
            series.append(container(metric, tenant, span, value, cluster, namespace, pod, name))
    rate = lambda r: (lambda t: r)  # noqa: E731
    series += [
        gauge(NS_COST, tenant, rate(2.0), span.grid, cluster="c1", namespace="shop"),
        gauge(NS_COST, tenant, rate(3.0), span.grid, cluster="c1", namespace="db"),
        gauge(NS_COST, tenant, rate(1.0), span.grid, cluster="c2", namespace="shop"),
        gauge(IDLE, tenant, rate(0.5), span.grid, cluster="c1"),
        gauge(IDLE, tenant, rate(0.25), span.grid, cluster="c2"),
        gauge(NODE_COST, tenant, rate(4.0), span.grid, cluster="c1", node="n1"),
        gauge(NODE_COST, tenant, lambda t: 1.5 if t <= m else STALE if t == m + SAMPLE_EVERY else None, span.grid,
              cluster="c1", node="n2"),
        gauge(NODE_COST, tenant, rate(1.0), span.grid, cluster="c2", node="m1"),
        gauge("kubecost_cluster_cpu_cost", tenant, rate(1.0), span.grid, cluster="c1"),
        gauge("kubecost_cluster_memory_cost", tenant, rate(0.5), span.grid, cluster="c1"),
        gauge("kubecost_cluster_management_cost", tenant, rate(0.125), span.grid, cluster="c1"),
        gauge("kubecost_cluster_cpu_cost", tenant, rate(2.0), span.grid, cluster="c2"),
    ]
    return series


def tenant_b(tenant: str, span: Span) -> list[Series]:
    """Tenant B: the same cluster, namespace and pod names as A, other values, a namespace of its own."""
    return [
        container(CPU_USE, tenant, span, 30.0, "c1", "shop", "web-1", "app"),
        container(CPU_REQ, tenant, span, 40.0, "c1", "shop", "web-1", "app"),
        container(CPU_USE, tenant, span, 8.0, "c1", "only-b", "x-1", "x"),
        container(CPU_REQ, tenant, span, 8.0, "c1", "only-b", "x-1", "x"),
        gauge(NS_COST, tenant, lambda t: 100.0, span.grid, cluster="c1", namespace="shop"),
        gauge(IDLE, tenant, lambda t: 50.0, span.grid, cluster="c1"),
        gauge("kubecost_cluster_cpu_cost", tenant, lambda t: 1000.0, span.grid, cluster="c1"),
    ]


class Written:
    def __init__(self, a: str, b: str, span: Span) -> None:
        self.a, self.b, self.span = a, b, span


@pytest.fixture(scope="module")
def written(serve_apps: str) -> Written:
    span = Span()
    tag = uuid.uuid4().hex[:10]
    # Ids with a dot, which a regex matcher would take for any character: B's would match A's.
    a, b = f"live-{tag}.a", f"live-{tag}Xa"
    write([*tenant_a(a, span), *tenant_b(b, span)])
    return Written(a, b, span)


@pytest_asyncio.fixture(loop_scope="function")
async def client(serve_apps: str) -> AsyncIterator[MetroculusClient]:
    async with MetroculusClient(METROCULUS, SECRET) as metroculus:
        yield metroculus


def answer_of(written: Written, name: str, series: list[dict[str, Any]], filters: dict[str, str] | None = None,
              tenant: str | None = None) -> dict[str, Any]:
    """The whole k8s_live answer over the written span (tenant A's unless ``tenant``)."""
    query = LIVE_QUERIES[name]
    return {
        "cloud_account_id": tenant or written.a,
        "query": name,
        "start_date": written.span.start,
        "end_date": written.span.end,
        "step": STEP,
        "filters": filters or {},
        "unit": query.unit,
        "description": query.description,
        "group_by": list(query.group_by),
        "parts": list(query.part_names),
        "series_limit": LIVE_MAX_SERIES,
        "series_total": len(series),
        "series": series,
    }


def usage_request(span: Span, labels: dict[str, str], usage: Any, request: Any) -> dict[str, Any]:
    return {"labels": labels, "usage": span.series(usage), "request": span.series(request)}


def cost_rate(span: Span, labels: dict[str, str], rate: Any) -> dict[str, Any]:
    return {"labels": labels, "cost_rate": span.series(rate)}


async def live(client: MetroculusClient, written: Written, name: str, tenant: str | None = None,
               **filters: str) -> dict[str, Any]:
    span = written.span
    return await client.k8s_live(tenant or written.a, name, span.start, span.end, STEP, **filters)


# --- answers ----------------------------------------------------------------------------


@services
async def test_cpu_usage_vs_requests_by_namespace(written: Written, client: MetroculusClient) -> None:
    span, m, gone = written.span, written.span.middle, written.span.gone
    # shop in c1: web-1 (0.5 + 0.25 | 1 + 0.125), web-2 (0.125 then 0.75 | 0.5), job-1 (1 | 1) until it goes.
    shop_usage = lambda t: 0.75 + (0.125 if t <= m else 0.75) + (1.0 if t <= gone else 0.0)  # noqa: E731
    shop_request = lambda t: 1.625 + (1.0 if t <= gone else 0.0)  # noqa: E731
    assert span.series(shop_usage)[:5] == [[span.start, 1.875], [span.start + 300, 1.875], [span.start + 600, 1.875],
                                           [span.start + 900, 0.875], [span.start + 1200, 0.875]]
    assert await live(client, written, "cpu_usage_vs_requests_by_namespace") == answer_of(
        written, "cpu_usage_vs_requests_by_namespace", [
            usage_request(span, {"cluster": "c1", "namespace": "db"}, 2.0, 1.5),
            usage_request(span, {"cluster": "c1", "namespace": "shop"}, shop_usage, shop_request),
            usage_request(span, {"cluster": "c2", "namespace": "shop"}, 0.0625, 0.25),
        ])


@services
async def test_cpu_usage_vs_requests_by_pod(written: Written, client: MetroculusClient) -> None:
    span, m, gone = written.span, written.span.middle, written.span.gone
    job = lambda t: 1.0 if t <= gone else None  # noqa: E731  (no point after the staleness marker)
    assert await live(client, written, "cpu_usage_vs_requests_by_pod") == answer_of(
        written, "cpu_usage_vs_requests_by_pod", [
            usage_request(span, {"cluster": "c1", "namespace": "db", "pod": "pg-0"}, 2.0, 1.5),
            usage_request(span, {"cluster": "c1", "namespace": "shop", "pod": "job-1"}, job, job),
            usage_request(span, {"cluster": "c1", "namespace": "shop", "pod": "web-1"}, 0.75, 1.125),
            usage_request(span, {"cluster": "c1", "namespace": "shop", "pod": "web-2"},
                          lambda t: 0.125 if t <= m else 0.75, 0.5),
            usage_request(span, {"cluster": "c2", "namespace": "shop", "pod": "web-1"}, 0.0625, 0.25),
        ])


@services
async def test_memory_usage_vs_requests(written: Written, client: MetroculusClient) -> None:
    span, gone = written.span, written.span.gone
    by_namespace = await live(client, written, "memory_usage_vs_requests_by_namespace")
    assert by_namespace == answer_of(written, "memory_usage_vs_requests_by_namespace", [
        usage_request(span, {"cluster": "c1", "namespace": "db"}, 1024 * MIB, 768 * MIB),
        usage_request(span, {"cluster": "c1", "namespace": "shop"},
                      lambda t: (316 + (64 if t <= gone else 0)) * MIB,
                      lambda t: (1056 + (64 if t <= gone else 0)) * MIB),
        usage_request(span, {"cluster": "c2", "namespace": "shop"}, 50 * MIB, 128 * MIB),
    ])
    assert by_namespace["unit"] == "bytes"
    by_pod = await live(client, written, "memory_usage_vs_requests_by_pod", cluster="c1", namespace="shop")
    job = lambda t: 64 * MIB if t <= gone else None  # noqa: E731
    assert by_pod == answer_of(written, "memory_usage_vs_requests_by_pod", [
        usage_request(span, {"cluster": "c1", "namespace": "shop", "pod": "job-1"}, job, job),
        usage_request(span, {"cluster": "c1", "namespace": "shop", "pod": "web-1"}, 216 * MIB, 544 * MIB),
        usage_request(span, {"cluster": "c1", "namespace": "shop", "pod": "web-2"}, 100 * MIB, 512 * MIB),
    ], {"cluster": "c1", "namespace": "shop"})


@services
async def test_cost_rates_by_namespace_node_and_cluster(written: Written, client: MetroculusClient) -> None:
    span, m = written.span, written.span.middle
    assert await live(client, written, "cost_rate_by_namespace") == answer_of(
        written, "cost_rate_by_namespace", [
            cost_rate(span, {"cluster": "c1", "namespace": "__idle__"}, 0.5),  # idle capacity, as the ledger shows it
            cost_rate(span, {"cluster": "c1", "namespace": "db"}, 3.0),
            cost_rate(span, {"cluster": "c1", "namespace": "shop"}, 2.0),
            cost_rate(span, {"cluster": "c2", "namespace": "__idle__"}, 0.25),
            cost_rate(span, {"cluster": "c2", "namespace": "shop"}, 1.0),
        ])
    assert await live(client, written, "cost_rate_by_node") == answer_of(
        written, "cost_rate_by_node", [
            cost_rate(span, {"cluster": "c1", "node": "n1"}, 4.0),
            cost_rate(span, {"cluster": "c1", "node": "n2"}, lambda t: 1.5 if t <= m else None),
            cost_rate(span, {"cluster": "c2", "node": "m1"}, 1.0),
        ])
    # c1: CPU + memory + the management fee; c2 reports its CPU cost alone and is still there.
    assert await live(client, written, "cost_rate_by_cluster") == answer_of(
        written, "cost_rate_by_cluster", [
            cost_rate(span, {"cluster": "c1"}, 1.625),
            cost_rate(span, {"cluster": "c2"}, 2.0),
        ])


@services
async def test_filters_narrow_to_their_series(written: Written, client: MetroculusClient) -> None:
    span = written.span
    assert await live(client, written, "cost_rate_by_namespace", cluster="c2") == answer_of(
        written, "cost_rate_by_namespace", [
            cost_rate(span, {"cluster": "c2", "namespace": "__idle__"}, 0.25),
            cost_rate(span, {"cluster": "c2", "namespace": "shop"}, 1.0),
        ], {"cluster": "c2"})
    assert (await live(client, written, "cost_rate_by_namespace", namespace="shop"))["series"] == [
        cost_rate(span, {"cluster": "c1", "namespace": "shop"}, 2.0),
        cost_rate(span, {"cluster": "c2", "namespace": "shop"}, 1.0),
    ]
    assert (await live(client, written, "cost_rate_by_namespace", namespace="__idle__"))["series"] == [
        cost_rate(span, {"cluster": "c1", "namespace": "__idle__"}, 0.5),
        cost_rate(span, {"cluster": "c2", "namespace": "__idle__"}, 0.25),
    ]
    assert (await live(client, written, "cost_rate_by_node", cluster="c2"))["series"] == [
        cost_rate(span, {"cluster": "c2", "node": "m1"}, 1.0)
    ]
    # A filter value PromQL would read as a regex or as the end of a string matches nothing.
    for value in ('sh.p', 'shop"} or {tenant_id=~".+', ".*"):
        assert (await live(client, written, "cpu_usage_vs_requests_by_pod", namespace=value))["series"] == []


@services
async def test_another_tenants_series_never_appear(written: Written, client: MetroculusClient) -> None:
    span = written.span
    assert await live(client, written, "cpu_usage_vs_requests_by_namespace", tenant=written.b) == answer_of(
        written, "cpu_usage_vs_requests_by_namespace", [
            usage_request(span, {"cluster": "c1", "namespace": "only-b"}, 8.0, 8.0),
            usage_request(span, {"cluster": "c1", "namespace": "shop"}, 30.0, 40.0),
        ], tenant=written.b)
    assert (await live(client, written, "cost_rate_by_namespace", tenant=written.b))["series"] == [
        cost_rate(span, {"cluster": "c1", "namespace": "__idle__"}, 50.0),
        cost_rate(span, {"cluster": "c1", "namespace": "shop"}, 100.0),
    ]
    assert (await live(client, written, "cost_rate_by_cluster", tenant=written.b))["series"] == [
        cost_rate(span, {"cluster": "c1"}, 1000.0)
    ]
    for name in LIVE_QUERIES:
        nobody = await live(client, written, name, tenant=f"nobody-{uuid.uuid4().hex}")
        assert (nobody["series"], nobody["series_total"]) == ([], 0)
        for series in (await live(client, written, name))["series"]:
            values = [v for part in LIVE_QUERIES[name].part_names for _, v in series[part]]
            assert not {30.0, 40.0, 100.0, 50.0, 1000.0, 8.0} & set(values), (name, series)


@services
async def test_by_pod_answers_hold_the_heaviest_pods_only(serve_apps: str, client: MetroculusClient) -> None:
    """60 pods, pod i requesting i/8 cores and using 1/16: the 50 that request most, and the count of all."""
    span = Span()
    tenant = f"live-{uuid.uuid4().hex[:10]}"
    write([
        container(metric, tenant, span, value(i), "big", "batch", f"w-{i:02d}", "w")
        for i in range(1, 61)
        for metric, value in ((CPU_REQ, lambda i: i / 8), (CPU_USE, lambda i: 1 / 16))
    ])
    answer = await client.k8s_live(tenant, "cpu_usage_vs_requests_by_pod", span.start, span.end, STEP)
    assert (answer["series_limit"], answer["series_total"]) == (50, 60)
    assert answer["series"] == [
        usage_request(span, {"cluster": "big", "namespace": "batch", "pod": f"w-{i:02d}"}, 1 / 16, i / 8)
        for i in range(11, 61)
    ]
    namespaces = await client.k8s_live(tenant, "cpu_usage_vs_requests_by_namespace", span.start, span.end, STEP)
    assert namespaces["series_total"] == 1
    assert namespaces["series"] == [
        usage_request(span, {"cluster": "big", "namespace": "batch"}, 60 / 16, sum(range(1, 61)) / 8)
    ]


@services
async def test_any_step_of_at_least_a_second(written: Written, client: MetroculusClient) -> None:
    """No alignment to the integration resolution: 7 s steps from an odd start."""
    start = written.span.start + 1
    answer = await client.k8s_live(written.a, "cost_rate_by_cluster", start, start + 70, 7, cluster="c1")
    points = [[t, 1.625] for t in range(start, start + 71, 7)]
    assert answer["series"] == [{"labels": {"cluster": "c1"}, "cost_rate": points}]


# --- refusals ---------------------------------------------------------------------------


def get(params: Any, secret: str | None = SECRET) -> httpx.Response:
    headers = {} if secret is None else {"Secret": secret}
    return httpx.get(f"{METROCULUS}/v2/k8s_live", params=params, headers=headers, timeout=30)


END = int(time.time()) // 60 * 60


def valid(**changes: Any) -> dict[str, Any]:
    """A valid k8s_live query with ``changes``; a change to None drops the parameter."""
    params = {"cloud_account_id": "acct-1", "query": "cost_rate_by_namespace", "start_date": END - 3600,
              "end_date": END, "step": 60, **changes}
    return {name: value for name, value in params.items() if value is not None}


BAD_REQUESTS = [
    ({"cloud_account_id": None}, "cloud_account_id: missing"),
    ({"cloud_account_id": 'x"}or{tenant_id=~".*'}, "cloud_account_id: must match ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"),
    ({"cloud_account_id": "acct\n"}, "cloud_account_id: must match"),
    ({"query": None}, f"query: missing; allowed: {ALLOWED}"),
    ({"query": "node_cpu_seconds_total"}, f"query: unknown query 'node_cpu_seconds_total'; allowed: {ALLOWED}"),
    ({"query": 'up{tenant_id=~".*"}'}, "query: unknown query 'up{tenant_id=~\".*\"}'; allowed: "),
    ({"query": "cost_rate_by_namespace,cost_rate_by_node"}, "query: unknown query"),
    ({"start_date": None}, "start_date: missing"),
    ({"start_date": "abc"}, "start_date: 'abc' is not a Unix timestamp in whole seconds"),
    ({"end_date": "1.5"}, "end_date: '1.5' is not a Unix timestamp in whole seconds"),
    ({"start_date": END, "end_date": END}, f"start_date ({END}) must be before end_date ({END})"),
    ({"start_date": END - 93 * 86_400}, f"end_date - start_date: {93 * 86_400} s is longer than the maximum of 92 days"),
    ({"step": None}, "step: missing"),
    ({"step": "0"}, "step: '0' is not a whole number of seconds, at least 1"),
    ({"step": "-60"}, "step: '-60' is not a whole number of seconds, at least 1"),
    ({"step": "1.5"}, "step: '1.5' is not a whole number of seconds, at least 1"),
    ({"step": "1m"}, "step: '1m' is not a whole number of seconds, at least 1"),
    ({"step": "1", "start_date": END - 86_400}, "step: 86401 points per series, over the limit of 11000; use a larger step"),
    ({"namespace": "shop", "query": "cost_rate_by_node"},
     "namespace: cost_rate_by_node does not filter on namespace; its filters: cluster"),
    ({"namespace": "shop", "query": "cost_rate_by_cluster"}, "namespace: cost_rate_by_cluster does not filter on namespace"),
    ({"cluster": ""}, "cluster: must be 1 to 1024 characters"),
    ({"namespace": "n" * 1025}, "namespace: must be 1 to 1024 characters"),
    ({"metrics": NS_COST, "lag": "0"}, "unknown query parameter(s): lag, metrics; allowed: "),
    ({"start": END - 3600}, "unknown query parameter(s): start; allowed: "),
]


@services
@pytest.mark.parametrize(("changes", "message"), BAD_REQUESTS)
def test_bad_requests_are_refused_naming_the_parameter(serve_apps: str, changes: dict[str, Any], message: str) -> None:
    answer = get(valid(**changes))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["reason"] == "bad_request"
    assert answer.json()["error"]["message"].startswith(message)


@services
def test_the_boundaries_themselves_are_accepted(serve_apps: str) -> None:
    assert get(valid(start_date=END - 92 * 86_400, step=723)).status_code == 200  # 10,995 points over 92 days
    assert get(valid(start_date=END - 10_999, step=1)).status_code == 200  # 11,000 points
    assert get(valid(start_date=END - 11_000, step=1)).status_code == 400


@services
def test_repeated_parameters_and_the_secret(serve_apps: str) -> None:
    repeated = httpx.get(f"{METROCULUS}/v2/k8s_live", params=[*valid().items(), ("step", 120)],
                         headers={"Secret": SECRET}, timeout=30)
    assert (repeated.status_code, repeated.json()["error"]) == (
        400, {"reason": "bad_request", "message": "query parameter(s) given more than once: step"})
    assert (get(valid(), secret=None).status_code, get(valid(), secret="wrong").status_code) == (401, 403)


@services
async def test_the_client_raises_with_status_and_error(client: MetroculusClient) -> None:
    with pytest.raises(MetroculusError) as refused:
        await client.k8s_live("acct-1", "nope", END - 3600, END, 60)
    assert (refused.value.status, refused.value.message) == (400, f"query: unknown query 'nope'; allowed: {ALLOWED}")


# --- the REST proxy ---------------------------------------------------------------------


def rest(method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{RESTAPI}/v2{path}", headers=headers, timeout=30, **kwargs)


def signed_up(name: str) -> tuple[str, str, str]:
    """A new organization through Serve: its id, a token, and a new cloud account's id."""
    body = {"organization_name": name, "email": f"{name}-{uuid.uuid4().hex[:8]}@example.com",
            "password": "live-password-1", "display_name": name}
    signup = rest("POST", "/signup", json=body)
    assert signup.status_code == 201, signup.text
    org, token = signup.json()["organization_id"], signup.json()["token"]
    account = rest("POST", f"/organizations/{org}/cloud_accounts", token, json={"name": "prod", "type": "kubernetes_cnr"})
    assert account.status_code == 201, account.text
    return org, token, account.json()["id"]


@services
async def test_the_rest_api_gives_the_browser_its_own_accounts_only(serve_apps: str, client: MetroculusClient) -> None:
    span = Span()
    org, token, account = signed_up("live-a")
    other_org, other_token, other_account = signed_up("live-b")
    write([*tenant_a(account, span), *tenant_b(other_account, span)])
    params = {"cloud_account_id": account, "query": "cpu_usage_vs_requests_by_pod", "start_date": span.start,
              "end_date": span.end, "step": STEP, "cluster": "c1", "namespace": "db"}
    answer = rest("GET", f"/organizations/{org}/k8s_live", token, params=params)
    assert answer.status_code == 200, answer.text
    assert answer.json() == await client.k8s_live(account, "cpu_usage_vs_requests_by_pod", span.start, span.end, STEP,
                                                  cluster="c1", namespace="db")
    assert answer.json()["series"] == [usage_request(span, {"cluster": "c1", "namespace": "db", "pod": "pg-0"}, 2.0, 1.5)]

    # The other organization's account: 404 through either organization, as if it did not exist.
    theirs = {**params, "cloud_account_id": other_account}
    for path in (f"/organizations/{org}/k8s_live", f"/organizations/{other_org}/k8s_live"):
        refused = rest("GET", path, token, params=theirs)
        assert refused.status_code == 404, refused.text
    assert rest("GET", f"/organizations/{other_org}/k8s_live", token, params=params).status_code == 404
    assert rest("GET", f"/organizations/{other_org}/k8s_live", other_token, params=theirs).status_code == 200
    assert rest("GET", f"/organizations/{org}/k8s_live", None, params=params).status_code == 401

    # Metroculus's refusals come back as they are: 400 naming the parameter.
    bad = rest("GET", f"/organizations/{org}/k8s_live", token, params={**params, "query": "nope"})
    assert (bad.status_code, bad.json()["error"]) == (
        400, {"reason": "bad_request", "message": f"query: unknown query 'nope'; allowed: {ALLOWED}"})
    bad = rest("GET", f"/organizations/{org}/k8s_live", token, params={**params, "step": "0"})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("step: ")


REST_BAD_REQUESTS = [
    ([("query", "cost_rate_by_node")], "cloud_account_id: missing"),
    ([("cloud_account_id", "a"), ("query", "cost_rate_by_node"), ("start_date", "1"), ("end_date", "2")], "step: missing"),
    ([("cloud_account_id", "a"), ("metrics", "x"), ("tenant_id", "b")],
     "unknown query parameter(s): metrics, tenant_id; allowed: cloud_account_id, cluster, end_date, namespace, query, "
     "start_date, step"),
    ([("cloud_account_id", "a"), ("cloud_account_id", "b")], "query parameter(s) given more than once: cloud_account_id"),
]


# --- the REST proxy's error mapping, in-process ------------------------------------------


class FailingMetroculus:
    """Metroculus failing every live query with ``failure``; it records what it was asked."""

    def __init__(self) -> None:
        self.failure: Exception = MetroculusError(503, "TSDB unavailable, retry later")
        self.asked: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})

    async def k8s_live(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.asked = (args, kwargs)
        raise self.failure


class InProcess:
    def __init__(self, http: httpx.AsyncClient, failing: FailingMetroculus, config: RestApiConfig, org: str,
                 token: str, account: str) -> None:
        self.http, self.failing, self.config, self.org, self.account = http, failing, config, org, account
        self.headers = {"Authorization": f"Bearer {token}"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def inprocess(real_services: None) -> AsyncIterator[InProcess]:
    """The REST API in-process over a failing Metroculus; an organization, its token and account."""
    stores = from_env(StoreSettings, mongodb_database=f"test_live_{uuid.uuid4().hex[:12]}")
    config = RestApiConfig(from_env(RestApiSettings), stores, "unused-secret", "http://127.0.0.1:1/unused")
    failing = FailingMetroculus()
    api = create_api(config, failing)  # type: ignore[arg-type]
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://restapi.test")
    try:
        body = {"organization_name": "o", "email": "o@example.com", "password": "live-password-1", "display_name": "O"}
        signup = (await http.post("/v2/signup", json=body)).json()
        org, token = signup["organization_id"], signup["token"]
        account = await http.post(f"/v2/organizations/{org}/cloud_accounts", json={"name": "n", "type": "kubernetes_cnr"},
                                  headers={"Authorization": f"Bearer {token}"})
        yield InProcess(http, failing, config, org, token, account.json()["id"])
    finally:
        await http.aclose()
        await api.state.stores.close()
        await connect(stores).client.drop_database(stores.mongodb_database)


@pytest.mark.parametrize(("items", "message"), REST_BAD_REQUESTS)
@pytest.mark.asyncio(loop_scope="session")
@services
async def test_rest_refuses_bad_parameters_naming_them(inprocess: InProcess, items: list[tuple[str, str]],
                                                       message: str) -> None:
    answer = await inprocess.http.get(f"/v2/organizations/{inprocess.org}/k8s_live", params=items,
                                      headers=inprocess.headers)
    assert (answer.status_code, answer.json()["error"]["message"]) == (400, message)


@pytest.mark.parametrize(("failure", "status", "message"), [
    (MetroculusError(503, "TSDB unavailable, retry later"), 503,
     "live data unavailable, retry later: TSDB unavailable, retry later"),
    (httpx.ConnectError("refused"), 503, "live data unavailable, retry later: Metroculus unreachable"),
    (httpx.ReadTimeout("slow"), 503, "live data unavailable, retry later: no answer within 30 s"),
    (MetroculusError(502, "TSDB refused the query: bad"), 502, "Metroculus failed: 502 TSDB refused the query: bad"),
    (MetroculusError(403, "wrong Secret header"), 502, "Metroculus failed: 403 wrong Secret header"),
    (MetroculusError(400, "step: missing"), 400, "step: missing"),
])
@pytest.mark.asyncio(loop_scope="session")
@services
async def test_rest_maps_metroculus_failures(inprocess: InProcess, failure: Exception, status: int, message: str) -> None:
    inprocess.failing.failure = failure
    params = {"cloud_account_id": inprocess.account, "query": "cost_rate_by_node", "start_date": "1", "end_date": "2",
              "step": "1", "cluster": "c1"}
    answer = await inprocess.http.get(f"/v2/organizations/{inprocess.org}/k8s_live", params=params,
                                      headers=inprocess.headers)
    assert (answer.status_code, answer.json()["error"]["message"]) == (status, message)
    # What Metroculus was asked: the values as given, and the REST API's own timeout.
    assert inprocess.failing.asked == ((inprocess.account, "cost_rate_by_node", "1", "2", "1"),
                                       {"timeout": inprocess.config.api.live_timeout, "cluster": "c1"})


@pytest.mark.asyncio(loop_scope="session")
@services
async def test_rest_answers_503_when_metroculus_is_unreachable(inprocess: InProcess) -> None:
    api = create_api(inprocess.config)  # the real client, to a port nobody listens on
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://restapi.test") as http:
        params = {"cloud_account_id": inprocess.account, "query": "cost_rate_by_node", "start_date": "1",
                  "end_date": "2", "step": "1"}
        answer = await http.get(f"/v2/organizations/{inprocess.org}/k8s_live", params=params, headers=inprocess.headers)
    await api.state.stores.close()
    assert (answer.status_code, answer.json()["error"]) == (
        503, {"reason": "unavailable", "message": "live data unavailable, retry later: Metroculus unreachable"})


# --- the PromQL, no servers --------------------------------------------------------------


def selectors(expr: str) -> list[str]:
    """The matcher lists of every selector in ``expr`` (the queries use braces for nothing else)."""
    return re.findall(r"\{([^{}]*)\}", expr)


@pytest.mark.parametrize("name", list(LIVE_QUERIES))
def test_every_selector_of_every_query_carries_the_tenant(name: str) -> None:
    built = live_promql(name, "acct-1", "3599999ms", {"cluster": "c1"})
    # A usage source's template names its series as often as its placeholders say.
    sources = sum(len(re.findall(r"\{\d\}", source.template)) if isinstance(source, UsageSource) else 1
                  for _, part in LIVE_QUERIES[name].parts for source in part)
    for expr, copies in ((built.range, 2), (built.count, 1)):  # the range query repeats its series in the ranking
        found = selectors(expr)
        assert len(found) == sources * copies, expr
        assert all('tenant_id="acct-1", cluster="c1"' in s for s in found), expr
    assert f"topk({LIVE_MAX_SERIES}, " in built.range and re.search(r"\[3599999ms:?\] @ end\(\)", built.range)


def test_tenant_and_filter_values_are_escaped() -> None:
    tenant, namespace = 'x"}or{y=~".*', 'n\\"'
    built = live_promql("cpu_usage_vs_requests_by_pod", tenant, "1h", {"namespace": namespace})
    assert built.range.count(f'tenant_id="{escape_label_value(tenant)}", namespace="{escape_label_value(namespace)}"') == 4
    assert f'tenant_id="{tenant}"' not in built.range


def test_live_selector_reads_allow_listed_metrics_only() -> None:
    assert live_selector((CPU_USE,), "t", cluster="c") == f'{CPU_USE}{{tenant_id="t", cluster="c"}}'
    both = live_selector(CLUSTER_COST_METRICS, "t")
    assert both == '{__name__=~"' + "|".join(CLUSTER_COST_METRICS) + '", tenant_id="t"}'
    for metrics in ((), ("up",), (CPU_USE, "up"), (CPU_USE + "|up",)):
        with pytest.raises(ValueError, match="unknown live metric"):
            live_selector(metrics, "t")
    with pytest.raises(ValueError, match="tenant_id"):
        live_selector((CPU_USE,), "")
    with pytest.raises(ValueError, match="invalid label name"):
        live_selector((CPU_USE,), "t", **{"__name__": "x"})


def test_usage_metrics_are_no_cost_metrics() -> None:
    from k8scost.promql import COST_METRICS, selector

    assert not set(USAGE_METRICS) & set(COST_METRICS)
    with pytest.raises(ValueError, match="unknown cost metric"):
        selector(CPU_USE, "t")  # cost integrals cannot read usage gauges


def test_unknown_queries_and_filters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown live query"):
        live_promql("up", "t", "1h")
    with pytest.raises(ValueError, match="cannot filter on 'namespace'"):
        live_promql("cost_rate_by_node", "t", "1h", {"namespace": "x"})
    with pytest.raises(ValueError, match="cannot filter on 'pod'"):
        live_promql("cpu_usage_vs_requests_by_pod", "t", "1h", {"pod": "x"})


# --- the Grafana dashboard -----------------------------------------------------------------


def grafana() -> dict[str, Any]:
    return json.loads(GRAFANA.read_text())


def panel_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def promtool_problems(exprs: list[str], directory: Path) -> str:
    """promtool's complaints about ``exprs`` as recording rules ("" if all parse), Grafana's
    variables given values as Grafana would (the tenant variable stays: it is inside a string)."""
    rules = {"groups": [{"name": "grafana", "rules": [
        {"record": f"cloudtuner:live_panel_{i}", "expr": expr.replace("$__range", "6h")} for i, expr in enumerate(exprs)
    ]}]}
    path = directory / f"grafana-{uuid.uuid4().hex[:6]}.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    return "" if checked.returncode == 0 else checked.stdout + checked.stderr


def test_grafana_dashboard_is_current_and_uses_a_prometheus_datasource_variable() -> None:
    from scripts.grafana_live import render

    assert GRAFANA.read_text() == render(), "stale: run .venv/bin/python scripts/grafana_live.py"
    dashboard = grafana()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert variables["tenant_id"]["type"] == "query"
    assert variables["tenant_id"]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
    # A panel for each query of the API, with its very PromQL.
    assert sorted(panel_exprs(dashboard)) == sorted(
        live_promql(name, "$tenant_id", "$__range").range for name in LIVE_QUERIES
    )


def test_grafana_exprs_are_valid_promql_scoped_to_the_tenant_variable(tmp_path: Path) -> None:
    exprs = panel_exprs(grafana())
    assert len(exprs) == len(LIVE_QUERIES)
    assert promtool_problems(exprs, tmp_path) == ""
    for expr in exprs:
        found = selectors(expr)
        assert found and all('tenant_id="$tenant_id"' in s for s in found), expr
    # The checks see breakage: a syntax error, and a selector without the tenant.
    assert promtool_problems([exprs[0].replace("topk(", "topk((", 1)], tmp_path) != ""
    unscoped = exprs[0].replace('tenant_id="$tenant_id"', 'cluster="c1"', 1)
    assert not all('tenant_id="$tenant_id"' in s for s in selectors(unscoped))
