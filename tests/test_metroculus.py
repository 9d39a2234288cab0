"""Metroculus on real servers (Ray Serve, Prometheus as TSDB), and its PromQL building.

Cost samples are written straight into the TSDB for fresh random tenants, then asked back
through the API. The test deployment integrates at 15 s (``TEST_SERVE_ENV``) and samples
come every 15 s, so every point of the integral is a sample and costs are exact sums.
Convention (see ``k8scost.promql.integral``): a sample at t costs its rate over (t − 15, t].
"""

from __future__ import annotations

import dataclasses
import os
import signal
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from devstack import stack
from devstack.simulator.history import write_blocks
from devstack.simulator.spec import generate_estate
from k8scost.metroculus_client import MetroculusClient, MetroculusError
from k8scost.promql import COST_METRICS, costs_selector, escape_label_value, integral, selector
from serve_apps.ingress.remote_write import STALE_NAN_BITS
from tests import helpers
from tests.conftest import TEST_SERVE_ENV

services = pytest.mark.services

RES = int(TEST_SERVE_ENV["METROCULUS_RESOLUTION_SECONDS"])
SECRET = TEST_SERVE_ENV["CLUSTER_SECRET"]
METROCULUS = f"{helpers.SERVE_URL}/metroculus"
WINDOW = 2400  # 40 minutes: Prometheus takes samples from about the last hour only
HOUR = 3600
DAY = 86_400
STALE = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
NS = "cloudtuner_kubecost_namespace_total_cost"
POD = "cloudtuner_kubecost_pod_total_cost"
# Hourly rates of tenant A's cluster-level gauges, per cluster.
CLUSTER_RATES = {
    "c1": {"management": 0.1, "cpu": 1.0, "memory": 0.5, "storage": 0.2, "network": 0.05, "load_balancer": 0.025},
    "c2": {"management": 0.1, "cpu": 2.0, "memory": 0.75, "storage": 0.3, "network": 0.0, "load_balancer": 0.5},
}
BREAKDOWN_KEYS = {
    "management": "management_cost",
    "cpu": "cpu_cost",
    "memory": "ram_cost",
    "storage": "pv_cost",
    "network": "network_cost",
    "load_balancer": "load_balancer_cost",
}

Series = tuple[dict[str, str], list[tuple[int, float]]]


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-12)


def cost(rate: float, seconds: int) -> float:
    return rate * seconds / HOUR


def write(series: Iterable[Series]) -> None:
    stack.write_samples(series)


def gauge(metric: str, tenant: str, rate: Callable[[int], float | None], times: Iterable[int], **labels: str) -> Series:
    """A series sampled at ``times`` (Unix seconds), skipping times where ``rate`` is None."""
    samples = [(t * 1000, value) for t in times if (value := rate(t)) is not None]
    return {"__name__": metric, "tenant_id": tenant, **labels}, samples


@dataclasses.dataclass(frozen=True)
class Written:
    """Two tenants' samples over (start, end]; ``other`` looks like ``tenant`` to a regex matcher."""

    tenant: str
    other: str
    start: int
    end: int


@pytest.fixture()
def written(serve_apps: str) -> Written:
    """Fresh tenants with the samples every test of the data reads.

    Tenant A (ids with a dot, which a regex matcher would take for any character):
    - namespace "steady": 2.0 $/h throughout;
    - namespace "change": 1.0 $/h up to mid-window, then 4.0;
    - pod "gone": 1.2 $/h for 15 minutes, then a staleness marker and nothing;
    - pod "gappy": 0.6 $/h with no sample for 10 minutes. Its samples sit 5 s after the
      15 s grid, so the 5-minute lookback that bills the start of the gap ends between
      two points whatever the engine's boundary rule: 5 of the 10 minutes are billed;
    - kubecost_cluster_*_cost of clusters c1 and c2 at CLUSTER_RATES.
    Tenant B: the same names with other rates, and a namespace of its own.
    """
    end = int(time.time()) // RES * RES - RES
    start = end - WINDOW
    grid = range(start, end + 1, RES)
    middle = start + WINDOW // 2
    tag = uuid.uuid4().hex[:10]
    tenant, other = f"acct-{tag}.a", f"acct-{tag}Xa"
    series = [
        gauge(NS, tenant, lambda t: 2.0, grid, cluster="c1", namespace="steady"),
        gauge(NS, tenant, lambda t: 1.0 if t <= middle else 4.0, grid, cluster="c1", namespace="change"),
        gauge(POD, tenant, lambda t: 1.2 if t <= start + 900 else STALE if t == start + 915 else None, grid,
              cluster="c1", namespace="steady", pod="gone", node="n1"),
        gauge(POD, tenant, lambda t: None if start + 605 < t < start + 1205 else 0.6, range(start + 5, end, RES),
              cluster="c1", namespace="steady", pod="gappy", node="n1"),
        gauge(NS, other, lambda t: 100.0, grid, cluster="c1", namespace="steady"),
        gauge(NS, other, lambda t: 50.0, grid, cluster="c1", namespace="only-b"),
        gauge(POD, other, lambda t: 30.0, grid, cluster="c1", namespace="steady", pod="gone", node="n1"),
        gauge("kubecost_cluster_cpu_cost", other, lambda t: 1000.0, grid, cluster="c1"),
        gauge("kubecost_cluster_cpu_cost", other, lambda t: 1000.0, grid, cluster="c3"),
    ]
    for cluster, rates in CLUSTER_RATES.items():
        for component, rate in rates.items():
            metric = f"kubecost_cluster_{component}_cost"
            series.append(gauge(metric, tenant, lambda t, r=rate: r, grid, cluster=cluster))
    write(series)
    return Written(tenant, other, start, end)


@pytest_asyncio.fixture(loop_scope="function")
async def client(serve_apps: str):
    async with MetroculusClient(METROCULUS, SECRET) as metroculus:
        yield metroculus


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, dict[str, Any]]:
    return {series["metric"][label]: series for series in result}


# --- the costs ------------------------------------------------------------------------


@services
async def test_costs_over_the_range_per_series(written: Written, client: MetroculusClient) -> None:
    answer = await client.kubecost_metrics(written.tenant, [NS, POD], written.start, written.end)
    assert (answer["cloud_account_id"], answer["start_date"], answer["end_date"], answer["step"]) == (
        written.tenant, written.start, written.end, None
    )
    namespaces = answer["metrics"][NS]
    assert namespaces["status"] == "success" and namespaces["data"]["resultType"] == "vector"
    by_namespace = by_label(namespaces["data"]["result"], "namespace")
    assert set(by_namespace) == {"steady", "change"}  # not tenant B's "only-b"
    assert by_namespace["steady"]["metric"] == {"tenant_id": written.tenant, "cluster": "c1", "namespace": "steady"}
    assert by_namespace["steady"]["value"] == [written.end, by_namespace["steady"]["value"][1]]
    assert float(by_namespace["steady"]["value"][1]) == approx(cost(2.0, 2400))
    assert float(by_namespace["change"]["value"][1]) == approx(cost(1.0, 1200) + cost(4.0, 1200))

    pods = by_label(answer["metrics"][POD]["data"]["result"], "pod")
    assert set(pods) == {"gone", "gappy"}
    assert float(pods["gone"]["value"][1]) == approx(cost(1.2, 900))  # nothing after the staleness marker
    assert float(pods["gappy"]["value"][1]) == approx(cost(0.6, 2400 - 600 + 300))  # gap billed for the lookback only
    for series in [*by_namespace.values(), *pods.values()]:
        assert series["metric"]["tenant_id"] == written.tenant


@services
async def test_costs_per_bucket_with_step(written: Written, client: MetroculusClient) -> None:
    answer = await client.kubecost_metrics(written.tenant, [NS, POD], written.start, written.end, step=600)
    assert answer["step"] == 600
    ends = [written.start + 600 * k for k in (1, 2, 3, 4)]

    def buckets(series: dict[str, Any]) -> dict[int, float]:
        return {int(at): float(value) for at, value in series["values"]}

    namespaces = answer["metrics"][NS]["data"]
    assert namespaces["resultType"] == "matrix"
    by_namespace = by_label(namespaces["result"], "namespace")
    assert set(by_namespace) == {"steady", "change"}
    assert buckets(by_namespace["steady"]) == {at: approx(cost(2.0, 600)) for at in ends}
    assert buckets(by_namespace["change"]) == dict(zip(ends, map(approx, [cost(1.0, 600)] * 2 + [cost(4.0, 600)] * 2)))
    pods = by_label(answer["metrics"][POD]["data"]["result"], "pod")
    # Buckets without a sample are absent: they cost nothing.
    assert buckets(pods["gone"]) == {ends[0]: approx(cost(1.2, 600)), ends[1]: approx(cost(1.2, 300))}
    gappy = [cost(0.6, 600), cost(0.6, 300), cost(0.6, 600), cost(0.6, 600)]  # the lookback bills 5 of the gap's 10 minutes
    assert buckets(pods["gappy"]) == dict(zip(ends, map(approx, gappy)))


@services
async def test_coverage_reports_the_hours_without_samples(written: Written, client: MetroculusClient) -> None:
    answer = await client.kubecost_metrics(written.tenant, [NS], written.start, written.end)
    assert answer["coverage"] == {"c1": {"hours": 1, "missing_hours": []}, "c2": {"hours": 1, "missing_hours": []}}

    start = written.end - 3 * HOUR  # the tenant has no sample before the last 40 minutes
    answer = await client.kubecost_metrics(written.tenant, [NS], start, written.end)
    missing = {"hours": 3, "missing_hours": [start, start + HOUR]}
    assert answer["coverage"] == {"c1": missing, "c2": missing}
    steady = by_label(answer["metrics"][NS]["data"]["result"], "namespace")["steady"]
    # Now the first sample, at written.start, falls in the range too: it costs (start − 15, start].
    assert float(steady["value"][1]) == approx(cost(2.0, WINDOW + RES))


@services
async def test_cluster_costs_sum_the_components_per_cluster(written: Written, client: MetroculusClient) -> None:
    answer = await client.cluster_costs(written.tenant, written.start, written.end)
    clusters = {
        cluster: {BREAKDOWN_KEYS[c]: cost(rate, WINDOW) for c, rate in rates.items()}
        for cluster, rates in CLUSTER_RATES.items()
    }
    total = {key: sum(breakdown[key] for breakdown in clusters.values()) for key in BREAKDOWN_KEYS.values()}
    assert answer == {
        "cloud_account_id": written.tenant,
        "start_date": written.start,
        "end_date": written.end,
        "lag": 0,
        "total_cost": approx(sum(total.values())),
        "breakdown": {key: approx(value) for key, value in total.items()},
        "clusters": {
            cluster: {"total_cost": approx(sum(b.values())), "breakdown": {k: approx(v) for k, v in b.items()}}
            for cluster, b in clusters.items()
        },
    }


@services
async def test_the_other_tenant_sees_only_its_own_series(written: Written, client: MetroculusClient) -> None:
    answer = await client.kubecost_metrics(written.other, [NS], written.start, written.end)
    by_namespace = by_label(answer["metrics"][NS]["data"]["result"], "namespace")
    assert set(by_namespace) == {"steady", "only-b"}
    assert float(by_namespace["steady"]["value"][1]) == approx(cost(100.0, 2400))
    assert set(answer["coverage"]) == {"c1", "c3"}
    costs = await client.cluster_costs(written.other, written.start, written.end)
    assert costs["total_cost"] == approx(2 * cost(1000.0, 2400))


@services
async def test_unknown_tenant_has_no_costs(written: Written, client: MetroculusClient) -> None:
    answer = await client.kubecost_metrics(f"nobody-{uuid.uuid4().hex}", [NS], written.start, written.end)
    assert answer["metrics"][NS]["data"]["result"] == [] and answer["coverage"] == {}
    costs = await client.cluster_costs(f"nobody-{uuid.uuid4().hex}", written.start, written.end)
    assert costs["total_cost"] == 0 and costs["clusters"] == {}


# --- refusals -------------------------------------------------------------------------


def get(path: str, params: dict[str, Any], secret: str | None = SECRET) -> httpx.Response:
    headers = {} if secret is None else {"Secret": secret}
    return httpx.get(f"{METROCULUS}{path}", params=params, headers=headers, timeout=30)


END = int(time.time()) // HOUR * HOUR


def valid_params(**changes: Any) -> dict[str, Any]:
    """A valid kubecost_metrics query with ``changes``; a change to None drops the parameter."""
    params = {"cloud_account_id": "acct-1", "metrics": NS, "start_date": END - HOUR, "end_date": END, **changes}
    return {name: value for name, value in params.items() if value is not None}
BAD_REQUESTS = [
    ({"start_date": None}, "start_date: missing"),
    ({"end_date": ""}, "end_date: missing"),
    ({"start_date": "abc"}, "start_date: 'abc' is not a Unix timestamp in whole seconds"),
    ({"end_date": "1.5"}, "end_date: '1.5' is not a Unix timestamp in whole seconds"),
    ({"start_date": "-60"}, "start_date: '-60' is not a Unix timestamp in whole seconds"),
    ({"start_date": END, "end_date": END}, f"start_date ({END}) must be before end_date ({END})"),
    ({"start_date": END - 93 * 86_400}, f"end_date - start_date: {93 * 86_400} s is longer than the maximum of 92 days"),
    ({"start_date": END - HOUR + 1}, f"start_date: {END - HOUR + 1} is not a multiple of the resolution, {RES} s"),
    ({"end_date": END + 7}, f"end_date: {END + 7} is not a multiple of the resolution, {RES} s"),
    ({"metrics": None}, "metrics: missing"),
    ({"metrics": f"{NS},,{POD}"}, "metrics: malformed list"),
    ({"metrics": f"{NS},"}, "metrics: malformed list"),
    ({"metrics": f"{NS},{NS}"}, f"metrics: listed more than once: {NS}"),
    ({"metrics": f"{NS},node_cpu_seconds_total"}, "metrics: unknown metric(s) 'node_cpu_seconds_total'"),
    ({"metrics": 'up{tenant_id=~".*"}'}, "metrics: unknown metric(s)"),
    ({"cloud_account_id": None}, "cloud_account_id: missing"),
    ({"cloud_account_id": 'x"}or{tenant_id=~".*'}, "cloud_account_id: must match ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"),
    ({"cloud_account_id": "acct\n"}, "cloud_account_id: must match"),
    ({"cloud_account_id": "-acct"}, "cloud_account_id: must match"),
    ({"cloud_account_id": "a" * 129}, "cloud_account_id: must match"),
    ({"step": "abc"}, "step: 'abc' is not a whole number of seconds"),
    ({"step": "0"}, f"step: 0 is not a positive multiple of the resolution, {RES} s"),
    ({"step": "10"}, f"step: 10 is not a positive multiple of the resolution, {RES} s"),
    ({"step": "2400"}, f"step: 2400 does not divide end_date - start_date ({HOUR} s)"),
    ({"start_date": END - 92 * 86_400, "step": str(RES)}, "step: 529920 buckets, over the limit of 11000"),
    ({"tenant_id": "acct-2", "limit": "1"}, "unknown query parameter(s): limit, tenant_id"),
    ({"lag": "-60"}, "lag: '-60' is not a Unix timestamp in whole seconds"),
    ({"lag": "7"}, f"lag: 7 is not a multiple of the resolution, {RES} s"),
    ({"lag": str(86_400 + RES)}, f"lag: {86_400 + RES} s is more than the maximum of 86400 s"),
]


@services
@pytest.mark.parametrize(("changes", "message"), BAD_REQUESTS)
def test_bad_requests_are_refused_naming_the_parameter(serve_apps: str, changes: dict[str, Any], message: str) -> None:
    answer = get("/v2/kubecost_metrics", valid_params(**changes))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["reason"] == "bad_request"
    assert message in answer.json()["error"]["message"]


@services
def test_cluster_costs_refuse_parameters_of_the_other_endpoint(serve_apps: str) -> None:
    answer = get("/v2/kubecost_cluster_costs", valid_params())
    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith("unknown query parameter(s): metrics")


@services
def test_repeated_parameter_is_refused(serve_apps: str) -> None:
    params = [*valid_params().items(), ("start_date", END - 2 * HOUR)]
    answer = httpx.get(f"{METROCULUS}/v2/kubecost_metrics", params=params, headers={"Secret": SECRET}, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "reason": "bad_request", "message": "query parameter(s) given more than once: start_date"}


@services
def test_the_secret_is_required(serve_apps: str) -> None:
    missing = get("/v2/kubecost_metrics", valid_params(), secret=None)
    assert (missing.status_code, missing.json()["error"]) == (
        401, {"reason": "unauthorized", "message": "missing Secret header"})
    wrong = get("/v2/kubecost_metrics", valid_params(), secret="not-the-secret")
    assert (wrong.status_code, wrong.json()["error"]) == (403, {"reason": "forbidden", "message": "wrong Secret header"})
    assert get("/nowhere", {}, secret=None).status_code == 401  # no probing of paths without it


@services
def test_unknown_path_and_method(serve_apps: str) -> None:
    answer = get("/v2/nowhere", {})
    assert answer.status_code == 404 and answer.json()["error"]["reason"] == "not_found"
    assert "not found: /v2/nowhere" in answer.json()["error"]["message"]
    posted = httpx.post(f"{METROCULUS}/v2/kubecost_metrics", headers={"Secret": SECRET}, timeout=30)
    assert (posted.status_code, posted.json()["error"]["reason"]) == (405, "method_not_allowed")


@services
async def test_client_raises_with_status_and_error(client: MetroculusClient) -> None:
    with pytest.raises(MetroculusError) as refused:
        await client.kubecost_metrics("acct-1", ["nope"], END - HOUR, END)
    assert refused.value.status == 400 and refused.value.message.startswith("metrics: unknown metric(s) 'nope'")


@services
def test_escaped_label_values_reach_exactly_their_series(real_services: None) -> None:
    """What ``selector`` escapes, Prometheus reads back as the very value written."""
    tenant = f"acct-{uuid.uuid4().hex[:10]}"
    weird = 'a"}or{x=~".*\\\n'
    now = int(time.time())
    write([
        gauge(NS, tenant, lambda t: 1.0, [now], namespace=weird),
        gauge(NS, tenant, lambda t: 2.0, [now], namespace="a"),
    ])
    [series] = helpers.tsdb_query(selector(NS, tenant, namespace=weird), at=now)
    assert series["metric"]["namespace"] == weird


def stop_thanos(component: str) -> None:
    """Stop one process of the TSDB (scripts/services.sh's ``tsdb`` starts what is missing)."""
    pid = int((stack.DATA / "run" / f"thanos-{component}.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    helpers.wait_for(f"thanos {component} to stop", lambda: not Path(f"/proc/{pid}").exists(), timeout=60)


@services
@pytest.mark.parametrize("down", ["the whole TSDB", "Query", "Receive"])
def test_tsdb_down_is_503(serve_apps: str, down: str) -> None:
    """Whichever part of Thanos is down, a 503 (which callers retry), never a partial answer.

    The tenant asked has samples in Receive: Query asks only the stores holding a tenant."""
    tenant = f"acct-{uuid.uuid4().hex[:10]}"
    write([gauge(NS, tenant, lambda t: 1.0, range(END - HOUR, END + 1, RES), cluster="c1", namespace="ns")])
    if down == "the whole TSDB":
        helpers.services("stop", "tsdb")
    else:
        stop_thanos({"Query": "query", "Receive": "receive"}[down])
    try:
        answer = get("/v2/kubecost_metrics", valid_params(cloud_account_id=tenant))
    finally:
        helpers.services("start", "tsdb")
    assert (answer.status_code, answer.json()) == (
        503, {"error": {"reason": "unavailable", "message": "TSDB unavailable, retry later"}}), down


@services
def test_the_store_gateway_down_is_503_for_the_days_it_holds(serve_apps: str, tmp_path: Path) -> None:
    """Days older than Receive keeps are the Store Gateway's: with it down, Query fails (its
    store is strict) and Metroculus answers 503, never the days without their samples."""
    start = (int(time.time()) // DAY - 40) * DAY
    estate = generate_estate(7, clusters=1, namespaces_per_cluster=1, pods_per_namespace=1,
                             start=start - DAY, span_seconds=3 * DAY)
    tenant = f"acct-{uuid.uuid4().hex[:10]}"
    write_blocks(estate, {estate.clusters[0].name: tenant}, start - HOUR, start + HOUR, tmp_path)
    stack.load_blocks(tmp_path)
    params = valid_params(cloud_account_id=tenant, start_date=start - HOUR // 2, end_date=start + HOUR // 2)
    served = get("/v2/kubecost_metrics", params)
    assert served.status_code == 200 and served.json()["metrics"][NS]["data"]["result"], served.text
    stop_thanos("store")
    try:
        answer = get("/v2/kubecost_metrics", params)
    finally:
        helpers.services("start", "tsdb")
    assert (answer.status_code, answer.json()) == (
        503, {"error": {"reason": "unavailable", "message": "TSDB unavailable, retry later"}})


# --- PromQL building, no servers ------------------------------------------------------


def test_escape_label_value() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label_value("plain-value.1") == "plain-value.1"


def test_selector_always_carries_the_escaped_tenant() -> None:
    assert selector(NS, "acct-1") == f'{NS}{{tenant_id="acct-1"}}'
    assert selector(NS, 'x"}or{tenant_id=~".*', cluster='c"1') == (
        f'{NS}{{tenant_id="x\\"}}or{{tenant_id=~\\".*", cluster="c\\"1"}}'
    )


@pytest.mark.parametrize("metric", ["up", "", f"{NS}{{}}", NS + " or up"])
def test_selector_refuses_unknown_metrics(metric: str) -> None:
    with pytest.raises(ValueError, match="unknown cost metric"):
        selector(metric, "acct-1")


@pytest.mark.parametrize("label", ["1a", "a-b", "a b", "__name__", "", 'a"'])
def test_selector_refuses_bad_label_names(label: str) -> None:
    with pytest.raises(ValueError, match="invalid label name"):
        selector(NS, "acct-1", **{label: "x"})


def test_selector_refuses_an_empty_tenant() -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        selector(NS, "")


@pytest.mark.parametrize("metrics", [(), ("up",), (NS, f"{NS}|up"), (NS, ".*")])
def test_costs_selector_refuses_unknown_metrics_and_none(metrics: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="unknown cost metric"):
        costs_selector(metrics, "acct-1")


def test_costs_selector_carries_the_escaped_tenant() -> None:
    assert 'tenant_id="x\\"}or{tenant_id=~\\".*"' in costs_selector((NS, POD), 'x"}or{tenant_id=~".*')
    with pytest.raises(ValueError, match="tenant_id"):
        costs_selector((NS,), "")


def test_every_cost_metric_is_accepted() -> None:
    assert all(selector(metric, "t").startswith(metric + "{") for metric in COST_METRICS)


def test_integral() -> None:
    assert integral("m", 3600, 60) == "sum_over_time((m)[3599999ms:60s]) * 60 / 3600"
    with pytest.raises(ValueError):
        integral("m", 3601, 60)
