"""The Kubecost/OpenCost allocation simulator: exact ground truth, OpenCost's format and quirks, HTTP and CLI."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.simulator import (
    PV,
    Cluster,
    Container,
    Estate,
    LoadBalancer,
    Namespace,
    Node,
    Pod,
    QueryError,
    allocation_response,
    assets_response,
    cluster_management_cost,
    create_app,
    from_json,
    generate_estate,
    ground_truth,
    to_json,
    usage_stats,
)
from devstack.simulator.allocation import parse_aggregate, parse_window
from devstack.simulator.model import node_cost

FIXTURE = Path(__file__).parent / "fixtures" / "opencost" / "allocation_namespace_7d.json"
# `python -m devstack.simulator` runs from the repository root: devstack is not installed.
REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3
T0 = 1730419200  # 2024-11-01T00:00:00Z
H = 3600


def tiny_estate(usage_variation: float = 0.0) -> Estate:
    """One node; web-0 from T0+30m with a change at T0+2h and a PV; job-1 over [T0+1h, T0+2h); an LB."""
    web = Container("app", 1.0, 2 * GIB, 0.5, 3 * GIB, changes=[(T0 + 2 * H, 2.0, 2 * GIB, 2.5, 1 * GIB)])
    job = Container("main", 0.5, 1 * GIB, 0.1, 0.5 * GIB)
    pods = [
        Pod("web-0", "node-a", "statefulset", "web", T0 + 1800, None, [web], [PV("pvc-data", 10 * GIB, 0.0002)]),
        Pod("job-1", "node-a", "job", "job", T0 + H, T0 + 2 * H, [job]),
    ]
    return Estate(seed=1, usage_variation=usage_variation, clusters=[Cluster(
        "c1", 0.1, [Node("node-a", 4, 16 * GIB, 0.04, 0.005, "i-0123456789abcdef0")],
        [Namespace("shop", {"kubernetes.io/metadata.name": "shop"}, pods, network_cost_per_hour=0.01)],
        [LoadBalancer("shop-lb", "shop", 0.025)])])


# ---------------------------------------------------------------- ground truth, by hand


def test_ground_truth_matches_hand_computed_dollars() -> None:
    estate, end = tiny_estate(), T0 + 4 * H
    # web-0 runs 3.5 h: cpu 1 core × 1.5 h + max(2, 2.5) × 2 h = 6.5 core-h × $0.04;
    # ram max(2, 3) GiB × 1.5 h + max(2, 1) GiB × 2 h = 8.5 GiB-h × $0.005; PV 10 GiB × 3.5 h × $0.0002.
    # LB ($0.025/h) and network ($0.01/h) are split among running pods: web alone 2.5 h, shared 1 h → 3 h of each.
    web = ground_truth(estate, T0, end, cluster="c1", namespace="shop", pod="web-0")
    assert web.cpu == pytest.approx(0.26, rel=1e-12)
    assert web.ram == pytest.approx(0.0425, rel=1e-12)
    assert web.pv == pytest.approx(0.007, rel=1e-12)
    assert web.load_balancer == pytest.approx(0.075, rel=1e-12)
    assert web.network == pytest.approx(0.03, rel=1e-12)
    assert web.total == pytest.approx(0.4145, rel=1e-12)
    # job-1: 0.5 core and 1 GiB for 1 h, half of the LB and network bills for that hour.
    job = ground_truth(estate, T0, end, pod="job-1")
    assert (job.cpu, job.ram, job.load_balancer, job.network) == pytest.approx((0.02, 0.005, 0.0125, 0.005))
    # While no pod runs (the first 30 min) the namespace bills go to __unmounted__.
    unmounted = ground_truth(estate, T0, end, pod="__unmounted__")
    assert (unmounted.load_balancer, unmounted.network, unmounted.cpu) == pytest.approx((0.0125, 0.005, 0.0))
    namespace = ground_truth(estate, T0, end, namespace="shop")
    assert namespace.total == pytest.approx(0.4745, rel=1e-12)
    # Node: 4 cores × $0.04 + 16 GiB × $0.005 = $0.24/h → $0.96; idle is what pods leave of it.
    cluster = ground_truth(estate, T0, end, cluster="c1", include_idle=True)
    assert cluster.idle == pytest.approx(0.96 - 0.28 - 0.0475, rel=1e-12)
    assert cluster.total == pytest.approx(1.107, rel=1e-12)
    # __unmounted__ runs on no node, so the node's share lacks it.
    assert ground_truth(estate, T0, end, node="node-a", include_idle=True).total == pytest.approx(1.107 - 0.0175)
    assert cluster_management_cost(estate, "c1", T0, end) == pytest.approx(0.4, rel=1e-12)
    before = ground_truth(estate, T0 - 2 * H, T0)  # no pod ran: only the unmounted LB and network bills
    assert (before.cpu, before.load_balancer, before.network) == pytest.approx((0.0, 0.05, 0.02))
    with pytest.raises(ValueError):
        ground_truth(estate, T0, end, namespace="shop", include_idle=True)
    with pytest.raises(KeyError):
        ground_truth(estate, T0, end, cluster="nope")


def test_usage_stats_by_hand() -> None:
    stats = usage_stats(tiny_estate(), T0, T0 + 4 * H, cluster="c1")
    web = stats[("c1", "shop", "web-0", "app")]
    assert web.cpu_request_average == pytest.approx((1 * 1.5 + 2 * 2) / 3.5)
    assert web.cpu_usage_average == pytest.approx((0.5 * 1.5 + 2.5 * 2) / 3.5)
    assert web.cpu_usage_max == 2.5
    assert web.ram_request_average == pytest.approx(2 * GIB)
    assert web.ram_usage_average == pytest.approx((3 * 1.5 + 1 * 2) / 3.5 * GIB)
    assert web.ram_usage_max == 3 * GIB
    assert set(stats) == {("c1", "shop", "web-0", "app"), ("c1", "shop", "job-1", "main")}


def test_usage_varies_per_period_and_is_integrated_exactly() -> None:
    # job-1's usage (0.1 core) is below its request, so use a request-free container to see the factors bill.
    estate = tiny_estate(usage_variation=0.5)
    container = estate.clusters[0].namespaces[0].pods[0].containers[0]
    container.cpu_request_cores, container.changes = 0.0, []
    start = T0 + 3 * H  # web-0 runs through these hours
    hourly = [ground_truth(estate, start + k * H, start + (k + 1) * H, pod="web-0").cpu for k in range(6)]
    factors = [cost / (0.5 * 0.04) for cost in hourly]  # base usage 0.5 core at $0.04
    assert all(0.5 <= f <= 1.5 for f in factors)
    assert len({round(f, 9) for f in factors}) == 6  # usage really varies from hour to hour
    assert ground_truth(estate, start, start + 6 * H, pod="web-0").cpu == pytest.approx(sum(hourly), rel=1e-12)
    # Half an hour inside one usage period costs exactly half of that period.
    half = ground_truth(estate, start + 15 * 60, start + 45 * 60, pod="web-0").cpu
    assert half == pytest.approx(hourly[0] / 2, rel=1e-12)
    stats = usage_stats(estate, start, start + 6 * H, pod="web-0")[("c1", "shop", "web-0", "app")]
    assert stats.cpu_usage_max == pytest.approx(0.5 * max(factors))
    assert stats.cpu_usage_average == pytest.approx(0.5 * sum(factors) / 6)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 3), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_ground_truth_is_additive_over_time(seed: int, cut: float, length: float) -> None:
    estate = generate_estate(seed, clusters=2, namespaces_per_cluster=4)
    start = T0 + 3 * H + 17
    end = start + 3 * H + length * 3 * 86400
    middle = start + cut * (end - start)
    for cluster in estate.clusters:
        for namespace in cluster.namespaces:
            whole = ground_truth(estate, start, end, cluster=cluster.name, namespace=namespace.name)
            parts = [ground_truth(estate, a, b, cluster=cluster.name, namespace=namespace.name)
                     for a, b in ((start, middle), (middle, end))]
            assert whole.total == pytest.approx(parts[0].total + parts[1].total, rel=1e-9, abs=1e-12)


def test_namespaces_plus_idle_equal_node_cost() -> None:
    estate = generate_estate(11, clusters=2, namespaces_per_cluster=6, pods_per_namespace=6)
    start, end = T0, T0 + 7 * 86400  # the whole covered time: starts, ends and changes all happen inside
    for cluster in estate.clusters:
        nodes = sum(sum(node_cost(n, start, end)) for n in cluster.nodes)
        namespaces = [ground_truth(estate, start, end, cluster=cluster.name, namespace=ns.name)
                      for ns in cluster.namespaces]
        whole = ground_truth(estate, start, end, cluster=cluster.name, include_idle=True)
        assert whole.idle > 0
        assert sum(c.cpu + c.ram for c in namespaces) + whole.idle == pytest.approx(nodes, rel=1e-9)
        lbs = sum(lb.price_per_hour for lb in cluster.load_balancers) * 7 * 24
        assert sum(c.load_balancer for c in namespaces) == pytest.approx(lbs, rel=1e-9)
        # The same holds in the served answer, to its 5-decimal rounding.
        body = allocation_response(estate, cluster.name, {"window": f"{start},{end}", "aggregate": "namespace",
                                                          "includeIdle": "true"}, now=end + H)
        entries = body["data"][0].values()
        served = sum(e["cpuCost"] + e["ramCost"] for e in entries)
        assert served == pytest.approx(nodes, abs=1e-5 * 2 * len(entries))
        assets = assets_response(estate, cluster.name, {"window": f"{start},{end}"}, now=end + H)["data"][0]
        assert assets["Node"]["totalCost"] == pytest.approx(nodes, abs=1e-5)
        assert assets["LoadBalancer"]["totalCost"] == pytest.approx(lbs, abs=1e-5)
        assert assets["ClusterManagement"]["totalCost"] == pytest.approx(
            cluster_management_cost(estate, cluster.name, start, end), abs=1e-5)


# ---------------------------------------------------------------- OpenCost format and quirks


def _kind(value: object) -> str:
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


NULLABLE = {"pvs": "dict", "cpuEfficiency": "number", "ramEfficiency": "number", "totalEfficiency": "number"}


def test_allocation_has_the_fixture_format() -> None:
    fixture = json.loads(FIXTURE.read_text())
    estate = generate_estate(2, namespaces_per_cluster=5)
    now = T0 + 7 * 86400 + 123
    body = allocation_response(estate, estate.clusters[0].name, {"window": "7d", "aggregate": "namespace"}, now)
    assert {k: v for k, v in body.items() if k != "data"} == {"code": 200, "status": "success"}
    assert len(body["data"]) == 1 and len(body["data"][0]) == 5
    expected = next(iter(fixture["data"][0].values()))
    for name, allocation in body["data"][0].items():
        assert allocation["name"] == name
        for key, value in expected.items():
            assert key in allocation, key
            if key in NULLABLE:
                assert _kind(allocation[key]) in {_kind(value), NULLABLE[key], "NoneType"}, key
            else:
                assert _kind(allocation[key]) == _kind(value), key
        assert {"cluster", "namespace", "namespaceLabels"} <= set(allocation["properties"])
        assert allocation["properties"]["namespaceLabels"]["kubernetes_io_metadata_name"] == name
        assert _kind(allocation["cpuCoreUsageMax"]) == _kind(allocation["ramByteUsageMax"]) == "number"
        for key in ("start", "end"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", allocation[key])
        assert allocation["window"] == {"start": "2024-11-01T00:02:03Z", "end": "2024-11-08T00:02:03Z"}
        for value in allocation.values():
            if isinstance(value, float):
                assert round(value, 5) == value
        assert allocation["totalCost"] == pytest.approx(
            sum(allocation[k] for k in ("cpuCost", "ramCost", "pvCost", "networkCost", "loadBalancerCost")), abs=5e-5)


def test_efficiency_follows_opencost_and_is_null_without_request_or_usage() -> None:
    now = T0 + 4 * H
    body = allocation_response(tiny_estate(), "c1", {"window": "4h", "aggregate": "namespace,pod",
                                                     "includeIdle": "true"}, now)
    entries = body["data"][0]
    job = entries["shop/job-1"]
    assert job["cpuEfficiency"] == pytest.approx(0.2) and job["ramEfficiency"] == pytest.approx(0.5)
    assert job["totalEfficiency"] == pytest.approx((0.2 * 0.02 + 0.5 * 0.005) / 0.025, abs=1e-5)
    assert entries["__idle__"]["cpuEfficiency"] is None  # no request, no usage: NaN → null
    assert entries["__idle__"]["properties"] == {"cluster": "c1"}


def test_hand_estate_served_by_pod_with_pvs_and_unmounted() -> None:
    body = allocation_response(tiny_estate(), "c1", {"window": f"{T0},{T0 + 4 * H}", "aggregate": "namespace,pod",
                                                     "idle": "true"}, now=T0 + 10 * H)
    entries = body["data"][0]
    assert set(entries) == {"shop/web-0", "shop/job-1", "shop/__unmounted__", "__idle__"}
    web = entries["shop/web-0"]
    assert (web["start"], web["end"], web["minutes"]) == ("2024-11-01T00:30:00Z", "2024-11-01T04:00:00Z", 210)
    assert (web["cpuCost"], web["ramCost"], web["totalCost"]) == (0.26, 0.0425, 0.4145)
    assert web["pvs"] == {"cluster=c1:name=pvc-data": {"byteHours": 10 * GIB * 3.5, "cost": 0.007}}
    assert web["cpuCoreUsageMax"] == 2.5 and web["ramByteUsageMax"] == 3 * GIB
    assert web["cpuCoreHours"] == 6.5 and web["cpuCores"] == pytest.approx(6.5 / 3.5, abs=1e-5)
    assert web["properties"]["controllerKind"] == "statefulset" and web["properties"]["pod"] == "web-0"
    assert entries["shop/__unmounted__"]["loadBalancerCost"] == 0.0125
    assert entries["__idle__"]["totalCost"] == 0.6325


@pytest.mark.parametrize(("offset", "minutes", "start", "end"), [
    (7 * 60 + 30, 55, "2024-11-03T23:10:00Z", "2024-11-04T00:05:00Z"),  # opencost#2096
    (5 * 60, 60, "2024-11-03T23:05:00Z", "2024-11-04T00:05:00Z"),  # asked exactly on a 5-minute boundary
])
def test_window_1h_covers_complete_5_minute_steps_only(offset: int, minutes: int, start: str, end: str) -> None:
    estate = generate_estate(4, namespaces_per_cluster=5, pods_per_namespace=5)
    cluster = estate.clusters[0].name
    now = T0 + 3 * 86400 + offset
    entries = allocation_response(estate, cluster, {"window": "1h", "aggregate": "namespace", "includeIdle": "true"},
                                  now)["data"][0]
    idle = entries.pop("__idle__")
    assert (idle["minutes"], idle["start"], idle["end"]) == (minutes, start, end)
    a = math.ceil((now - H) / 300) * 300
    b = math.floor(now / 300) * 300
    assert b - a == minutes * 60
    assert idle["totalCost"] == pytest.approx(ground_truth(estate, a, b, cluster=cluster, include_idle=True).idle,
                                              abs=1e-5)
    for name, entry in entries.items():
        assert entry["minutes"] <= minutes
        truth = ground_truth(estate, a, b, cluster=cluster, namespace=name)
        assert entry["totalCost"] == pytest.approx(truth.total, abs=1e-5)
        assert entry["cpuCost"] == pytest.approx(truth.cpu, abs=1e-5)


def test_step_sets_add_up_to_the_accumulated_set() -> None:
    estate = generate_estate(6, namespaces_per_cluster=4)
    cluster = estate.clusters[0].name
    window = {"window": "2024-11-02T00:00:00Z,2024-11-02T06:00:00Z", "aggregate": "namespace"}
    stepped = allocation_response(estate, cluster, {**window, "accumulate": "false", "step": "1h"}, T0 + 9 * 86400)
    whole = allocation_response(estate, cluster, {**window, "accumulate": "true", "step": "1h"}, T0 + 9 * 86400)
    assert len(stepped["data"]) == 6 and len(whole["data"]) == 1
    assert [s[next(iter(s))]["window"]["start"] for s in stepped["data"]][:2] == [
        "2024-11-02T00:00:00Z", "2024-11-02T01:00:00Z"]
    for name, entry in whole["data"][0].items():
        assert entry["totalCost"] == pytest.approx(
            sum(s[name]["totalCost"] for s in stepped["data"] if name in s), abs=1e-4)


def test_aggregate_keys_follow_opencost() -> None:
    estate = generate_estate(8, namespaces_per_cluster=5, pods_per_namespace=8)
    cluster = estate.clusters[0]
    now = T0 + 2 * 86400

    def keys(aggregate: str) -> set[str]:
        return set(allocation_response(estate, cluster.name, {"window": "1d", "aggregate": aggregate}, now)["data"][0])

    assert keys("cluster") == {cluster.name}
    nodes = keys("node") - {"__unallocated__"}  # __unmounted__ has no node
    assert nodes and nodes <= {n.name for n in cluster.nodes}
    controllers = keys("controller")
    assert all(re.fullmatch(r"(deployment|statefulset|daemonset|job):[a-z0-9-]+|__unallocated__", k)
               for k in controllers)
    assert "__unallocated__" in controllers  # bare pods (and __unmounted__) have no controller
    pods = keys("namespace,pod")
    assert all(k.count("/") == 1 for k in pods)
    assert any(k.startswith("kube-system/") for k in pods)
    assert all(k.count("/") == 4 for k in keys(""))  # no aggregate: cluster/node/namespace/pod/container
    assert keys("cluster,namespace") == {f"{cluster.name}/{k}" for k in keys("namespace")}


def test_window_parsing() -> None:
    now = 1793059650.0  # 2026-10-27T00:07:30Z
    midnight = 1793059200.0
    assert parse_window("1h", now) == (now - 3600, now)
    assert parse_window("30m", now) == (now - 1800, now)
    assert parse_window("7d", now) == (now - 7 * 86400, now)
    assert parse_window("today", now) == (midnight, midnight + 86400)
    assert parse_window("yesterday", now) == (midnight - 86400, midnight)
    assert parse_window("2026-11-01T00:00:00Z,2026-11-02T00:00:00Z", now) == (1793491200.0, 1793577600.0)
    assert parse_window("1730419200,1730505600", now) == (1730419200.0, 1730505600.0)
    for bad in ("", "1x", "0h", "h", "2026-11-02T00:00:00Z,2026-11-01T00:00:00Z", "abc,def",
                "2026-11-01T00:00:00,2026-11-02T00:00:00"):
        with pytest.raises(QueryError):
            parse_window(bad, now)
    assert parse_aggregate("namespace,pod") == ("namespace", "pod")
    assert parse_aggregate("") == ("cluster", "node", "namespace", "pod", "container")
    with pytest.raises(QueryError, match="bogus"):
        parse_aggregate("namespace,bogus")


@pytest.mark.parametrize("params", [
    {}, {"window": "yesterdayish"}, {"window": "1h", "aggregate": "service"}, {"window": "1h", "includeIdle": "yes"},
    {"window": "1h", "accumulate": "false", "step": "0h"}, {"window": "365d", "accumulate": "false", "step": "1m"},
    {"window": "1h", "resolution": "5s"},
])
def test_bad_params_raise_query_error(params: dict[str, str]) -> None:
    with pytest.raises(QueryError):
        allocation_response(tiny_estate(), "c1", params, T0)


def test_today_and_future_windows_stop_at_now() -> None:
    now = T0 + 2 * H + 7 * 60
    entry = allocation_response(tiny_estate(), "c1", {"window": "today", "aggregate": "cluster"}, now)["data"][0]["c1"]
    assert (entry["start"], entry["end"]) == ("2024-11-01T00:00:00Z", "2024-11-01T02:05:00Z")
    assert entry["window"] == {"start": "2024-11-01T00:00:00Z", "end": "2024-11-02T00:00:00Z"}
    future = allocation_response(tiny_estate(), "c1", {"window": f"{T0 + 5 * H},{T0 + 6 * H}"}, now)
    assert future["data"] == [{}]


# ---------------------------------------------------------------- the generator


def test_generation_is_deterministic_and_round_trips() -> None:
    a, b = generate_estate(5, clusters=3), generate_estate(5, clusters=3)
    assert a == b and to_json(a) == to_json(b)
    assert to_json(generate_estate(6, clusters=3)) != to_json(a)
    assert from_json(to_json(a)) == a
    params = {"window": "2024-11-02T00:00:00Z,2024-11-03T00:00:00Z", "aggregate": "namespace,pod"}
    assert allocation_response(a, a.clusters[1].name, params, T0 + 9 * 86400) == allocation_response(
        b, b.clusters[1].name, params, T0 + 9 * 86400)
    with pytest.raises(ValueError):
        from_json('{"seed": 1, "clusters": [{"name": "Bad_Name", "management_cost_per_hour": 0, '
                  '"nodes": [], "namespaces": []}]}')


def test_generated_estates_are_realistic() -> None:
    estate = generate_estate(3, clusters=3, namespaces_per_cluster=6, pods_per_namespace=6)
    span_end = T0 + 7 * 86400
    for cluster in estate.clusters:
        assert {"default", "kube-system"} <= {ns.name for ns in cluster.namespaces}
        assert cluster.load_balancers
    pods = [p for c in estate.clusters for ns in c.namespaces for p in ns.pods]
    containers = [c for p in pods for c in p.containers]
    assert any(T0 < p.start < span_end for p in pods)
    assert any(p.end is not None and T0 < p.end < span_end for p in pods)
    assert any(p.pvs for p in pods)
    assert any(c.changes for c in containers)
    assert any(c.cpu_usage_cores > 1.05 * c.cpu_request_cores > 0 for c in containers)  # under-provisioned
    assert any(0 < c.cpu_usage_cores < 0.5 * c.cpu_request_cores for c in containers)  # over-provisioned
    prices = [n.cpu_price_per_core_hour for c in estate.clusters for n in c.nodes]
    assert all(0.02 < p < 0.05 for p in prices)


# ---------------------------------------------------------------- HTTP and CLI


async def test_http_endpoints_and_faults() -> None:
    estate = generate_estate(9, clusters=2)
    cluster = estate.clusters[1].name
    now = T0 + 86400 + 7 * 60 + 30
    app = create_app(estate, cluster, clock=lambda: now)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim") as client:
        params = {"window": "1h", "aggregate": "namespace", "includeIdle": "true"}
        response = await client.get("/allocation", params=params)
        assert response.status_code == 200
        assert response.json() == allocation_response(estate, cluster, params, now)
        assert response.json()["data"][0]["__idle__"]["minutes"] == 55
        for path in ("/model/allocation", "/allocation/compute"):
            assert (await client.get(path, params=params)).json() == response.json()
        bad = await client.get("/allocation", params={"window": "1x"})
        assert bad.status_code == 400
        assert bad.json()["code"] == 400 and bad.json()["status"] == "error" and "1x" in bad.json()["message"]
        assets = (await client.get("/model/assets", params={"window": "1d", "aggregate": "type",
                                                            "accumulate": "true"})).json()
        assert set(assets["data"][0]) == {"ClusterManagement", "Node", "Disk", "LoadBalancer"}
        assert (await client.get("/assets", params={"window": "1d"})).json() == assets
        assert (await client.get("/healthz")).json() == {"status": "ok", "cluster": cluster}

        assert (await client.post("/_sim/fault", json={"mode": "error"})).status_code == 200
        assert (await client.get("/allocation", params=params)).status_code == 500
        assert (await client.get("/healthz")).status_code == 200  # faults hit the data endpoints only
        await client.post("/_sim/fault", json={"mode": "garbage"})
        garbage = await client.get("/allocation", params=params)
        assert garbage.status_code == 200
        with pytest.raises(ValueError):
            garbage.json()
        await client.post("/_sim/fault", json={"mode": "slow", "seconds": 0.3})
        started = time.monotonic()
        assert (await client.get("/allocation", params=params)).status_code == 200
        assert time.monotonic() - started >= 0.3
        assert (await client.post("/_sim/fault", json={"mode": "explode"})).status_code == 400
        assert (await client.post("/_sim/fault", content=b"not json")).status_code == 400
        await client.post("/_sim/fault", json={"mode": "ok"})
        assert (await client.get("/allocation", params=params)).json() == response.json()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_cli_serves_allocations(tmp_path: Path) -> None:
    port, spec = _free_port(), tmp_path / "estate.json"
    cluster = generate_estate(3, clusters=2).clusters[1].name
    # Another hash seed proves that the estate and its usage factors do not depend on the process.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.simulator", "--cluster", cluster, "--seed", "3",
         "--clusters", "2", "--host", "127.0.0.1", "--port", str(port), "--write-spec", str(spec)],
        stderr=subprocess.PIPE, env=env, text=True, cwd=REPO)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(100):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            params = {"window": "2024-11-02T00:00:00Z,2024-11-02T12:00:00Z", "aggregate": "namespace,pod"}
            response = await client.get("/allocation", params=params)
        assert response.status_code == 200
        estate = from_json(spec.read_text())
        assert estate == generate_estate(3, clusters=2)
        assert response.json() == allocation_response(estate, cluster, params, time.time())
        assert len(response.json()["data"][0]) > 0
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert f"serving cluster {cluster}" in stderr


def test_cli_rejects_bad_input(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "devstack.simulator", *args], capture_output=True, text=True,
                              timeout=30, cwd=REPO)

    unknown = run("--cluster", "nope", "--seed", "3")
    assert unknown.returncode == 2 and "'nope' is not in the estate" in unknown.stderr
    (tmp_path / "bad.json").write_text("{not json")
    broken = run("--cluster", "c1", "--spec", str(tmp_path / "bad.json"))
    assert broken.returncode == 2 and "cannot load --spec" in broken.stderr
    mixed = run("--cluster", "c1", "--spec", str(tmp_path / "bad.json"), "--pods", "3")
    assert mixed.returncode == 2 and "excludes generation options" in mixed.stderr
    assert run("--cluster", "c1", "--port", "70000").returncode == 2
