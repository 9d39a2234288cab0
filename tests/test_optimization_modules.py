"""The optimizations job's modules on complete inputs (pure, no server): what the job computes
once node capacities and pod volumes exist, against packings and prices worked out by hand;
how it reads them from kube-state-metrics' answers (by hand, and from the simulator's series
through the shipped relabelling against the simulator's truth); the demo estate's savings;
and its command line."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from devstack.simulator import ground_truth
from devstack.simulator.customer import write_relabel
from devstack.simulator.spec import SAFE_TO_EVICT, Estate, generate_estate
from devstack.simulator.usage import UsageExporters
from jobs.optimizations import (
    ClusterEstate,
    KubeFacts,
    Options,
    TenantEstate,
    anomaly_items,
    cluster_sizing_items,
    estate_facts,
    parse_args,
    rightsizing_items,
    spot_items,
)
from k8scost import promql
from k8scost.cluster_sizing import GIB, Container, Node, NodeType, Pod, size_all
from k8scost.rightsizing import HOURS_PER_MONTH as MONTH
from k8scost.spot_readiness import SpotParams
from k8scost.stores.accounts import Account
from k8scost.usage_series import USAGE_FAMILIES, write_relabel_configs

LAST = 1_764_460_800  # a UTC day start


SMALL = NodeType("small", 2.0, 8 * GIB, 0.03, 0.004)  # 0.06 + 0.032 = 0.092 USD an hour


def _tenant(estate: ClusterEstate) -> TenantEstate:
    return TenantEstate(Account("acc", "org", "n", "kubernetes_cnr", 0, 0), LAST, (estate,), (), {}, {})


def _web(n: int, node: str) -> Pod:
    return Pod("shop", f"web-{n}", node, "deployment", "web", (Container("main", 1.0, 2 * GIB, 0.5, GIB),))


def test_cluster_sizing_item_on_complete_inputs_saves_what_a_hand_packing_does() -> None:
    # Two web pods (0.5 core, 1 GiB sized) fit one node at production (0.65 × 2 cores = 1.3),
    # but production keeps 2 nodes: 3 small nodes → 2, one node's 0.092 USD an hour saved.
    estate = ClusterEstate("east", 30, (_web(1, "a"), _web(2, "b")), (), {},
                           {"a": SMALL, "b": SMALL, "c": SMALL}, volumes_known=True)
    [found] = cluster_sizing_items(_tenant(estate), Options())
    assert found["saving"] == pytest.approx(0.092 * MONTH)
    assert (found["fields"]["current_nodes"], found["fields"]["planned_nodes"]) == (3, 2)
    # Development (min 1 node) would keep one: its plan is evidence, not the saving.
    plans = {p["profile"]: p for p in found["fields"]["evidence"]["plans"]}
    assert plans["development"]["monthly_saving"] == pytest.approx(2 * 0.092 * MONTH)
    # A cluster already as small as the profile allows gets no item.
    tight = dataclasses.replace(estate, node_types={"a": SMALL, "b": SMALL})
    assert cluster_sizing_items(_tenant(tight), Options()) == []


def test_spot_item_on_complete_inputs_saves_the_discounted_demand() -> None:
    estate = ClusterEstate("east", 30, (_web(1, "a"), _web(2, "b")), (), {"a": (0.03, 0.004), "b": (0.03, 0.004)},
                           None, volumes_known=True)
    [found] = spot_items(_tenant(estate), Options())
    # Per pod 0.5 core × 0.03 + 1 GiB × 0.004 = 0.019 USD an hour, at 60 % off, for both.
    assert found["saving"] == pytest.approx(2 * 0.019 * 0.6 * MONTH)
    assert found["fields"]["rule"] == "ready" and "insufficient" not in found["fields"]
    # Where node types are known, their prices are the nodes' and a type's own discount applies.
    typed = dataclasses.replace(estate, prices={}, node_types={"a": SMALL, "b": SMALL})
    [discounted] = spot_items(_tenant(typed), Options(spot=SpotParams(0.6, {"small": 0.8})))
    assert discounted["saving"] == pytest.approx(2 * 0.019 * 0.8 * MONTH)
    # A node without price: the saving is not guessed.
    unpriced = dataclasses.replace(estate, prices={"a": (0.03, 0.004)})
    [found] = spot_items(_tenant(unpriced), Options())
    assert found["saving"] == 0.0 and "prices of nodes b" in found["fields"]["insufficient"]


@pytest.mark.parametrize("args, message", [
    (["--module", "k8s_bogus"], "--module"),
    (["--spot-discount", "1.5"], "--spot-discount"),
    (["--node-type-discount", "m5"], "--node-type-discount"),
    (["--min-history-days", "0"], "--min-history-days"),
    (["--profile", "huge"], "--profile"),
])
def test_bad_arguments_exit_2_naming_the_flag(args: list[str], message: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_spot_leaves_out_workloads_a_rule_decides_are_not_ready() -> None:
    single = ClusterEstate("east", 30, (_web(1, "a"),), (), {"a": (0.03, 0.004)}, None, volumes_known=True)
    system = dataclasses.replace(single, pods=tuple(dataclasses.replace(_web(n, "a"), namespace="kube-system")
                                                    for n in (1, 2)))
    assert spot_items(_tenant(single), Options()) == [] and spot_items(_tenant(system), Options()) == []
    # Without volume flags a single replica is still decided (not ready): no item, not "insufficient data".
    assert spot_items(_tenant(dataclasses.replace(single, volumes_known=False)), Options()) == []


def test_rightsizing_of_a_cluster_without_ledger_days_says_insufficient_history() -> None:
    doc = {"_id": "g1", "status": "over-provisioned", "cluster": "gone", "namespace": "shop", "controller": "web",
           "pod": None, "container": "main", "monthly_savings": 10.0}
    tenant = dataclasses.replace(_tenant(ClusterEstate("east", 30)), rightsizing=(doc,))
    [found], notes = rightsizing_items(tenant, Options())
    assert (found["saving"], found["fields"]["insufficient"], notes) == (0.0, "insufficient history: 0 days", [])
    assert found["cloud_resource_id"] == "k8s-cluster/gone"


# --- the estate's node types and pod volumes, from kube-state-metrics' answers ----------------


def _series(value: float = 1.0, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [LAST, repr(value)]}


SAFE = "annotation_cluster_autoscaler_kubernetes_io_safe_to_evict"
TYPE = "label_node_kubernetes_io_instance_type"


def test_estate_queries_ask_only_labels_the_ingress_lets_through() -> None:
    queries = promql.estate_queries("t-1", 2 * 86_400)
    assert set(queries) == set(promql.ESTATE_SOURCES)
    for name, (metric, labels, matchers) in promql.ESTATE_SOURCES.items():
        family = USAGE_FAMILIES[metric]
        assert family.source == "kube-state-metrics"
        assert set(labels) | {k for k, _ in matchers} <= family.allowed_labels, name
        assert queries[name].startswith(f"max by ({', '.join(labels)}) (last_over_time({metric}{{tenant_id=\"t-1\"")
        assert queries[name].endswith("[172799999ms]))")


def test_estate_facts_by_hand() -> None:
    facts = estate_facts({
        "instance_type": [_series(node="a", **{TYPE: "m5.large"}), _series(node="b", **{TYPE: "m5.large"}),
                          _series(node="b", **{TYPE: "m5.xlarge"}),  # replaced under the same name: no type
                          _series(node="c"),  # kube-state-metrics without the label allow-list
                          _series(cluster="east", node="d", **{TYPE: "r5.large"})],
        "cpu_cores": [_series(2.0, node="a"), _series(4.0, node="b"), _series(2.0, node="c"),
                      _series(2.0, cluster="east", node="d")],
        "memory_bytes": [_series(8.0 * GIB, node="a"), _series(8.0 * GIB, node="c"),
                         _series(16.0 * GIB, cluster="east", node="d")],
        "pods": [_series(namespace="shop", pod="web-1"), _series(namespace="shop", pod="cache-1", **{SAFE: "false"}),
                 _series(namespace="db", pod="pg-0"), _series(namespace="db", pod="pg-1", **{SAFE: "true"}),
                 _series(namespace="db", pod="pg-2"), _series(namespace="db", pod="pg-3")],
        "claims": [_series(namespace="db", pod=p, persistentvolumeclaim=f"data-{p}") for p in ("pg-0", "pg-1", "pg-2", "pg-3")]
        + [_series(namespace="shop", pod="nowhere", persistentvolumeclaim="data-nowhere")],
        "volumes": [_series(namespace="db", persistentvolumeclaim="data-pg-0", volumename="pv-ebs"),
                    _series(namespace="db", persistentvolumeclaim="data-pg-1", volumename="pv-local"),
                    _series(namespace="db", persistentvolumeclaim="data-pg-3", volumename="pv-host")],
        "local_volumes": [_series(persistentvolume="pv-ebs", storageclass="gp3"),
                          _series(persistentvolume="pv-local", local_path="/mnt/disks/ssd0"),
                          _series(persistentvolume="pv-host", host_path="/data")],
    })
    price = (0.03, 0.004)
    assert facts.node_type("east", "a", price) == NodeType("m5.large", 2.0, 8 * GIB, 0.03, 0.004)
    assert facts.node_type("east", "d", price) == NodeType("r5.large", 2.0, 16 * GIB, 0.03, 0.004)
    assert facts.node_type("west", "d", price) == "d (no instance type, no allocatable CPU, no allocatable memory)"
    assert facts.node_type("east", "b", price) == "b (no instance type, no allocatable memory)"
    assert facts.node_type("east", "c", price) == "c (no instance type)"
    assert facts.node_type("east", "a", None) == "a (no price)"
    expected = {("shop", "web-1"): (False, False), ("shop", "cache-1"): (True, False),  # safe-to-evict "false"
                ("db", "pg-0"): (False, True),  # an EBS volume: persistent, movable
                ("db", "pg-1"): (True, True),  # a local PV pins it; "true" does not unpin it
                ("db", "pg-2"): (False, True),  # an unbound claim: persistent, not local
                ("db", "pg-3"): (True, True),  # a hostPath PV
                ("shop", "nowhere"): None}  # a claim without kube_pod_annotations: volumes not read
    assert {key: facts.pod_volumes("east", *key) for key in expected} == expected


def _answers(series: list[tuple[dict[str, str], float]]) -> dict[str, list[dict[str, Any]]]:
    """What the TSDB answers ``promql.estate_queries`` with over one scrape: each query's
    series ``max by`` its labels (a label a series lacks is absent)."""
    out = {}
    for name, (metric, keep, matchers) in promql.ESTATE_SOURCES.items():
        groups: dict[tuple[tuple[str, str], ...], float] = {}
        for labels, value in series:
            if labels["__name__"] == metric and all(labels.get(k) == v for k, v in matchers):
                key = tuple((k, labels[k]) for k in keep if k in labels)
                groups[key] = max(groups.get(key, value), value)
        out[name] = [_series(value, **dict(key)) for key, value in groups.items()]
    return out


DEMO_DAYS = 42  # scripts/demo.py's default history


def _demo(cluster_index: int) -> tuple[Estate, Any, int, KubeFacts]:
    """The demo's estate (scripts/demo.py's shape), one cluster's kube-state-metrics series at
    the last complete day's noon as the shipped relabelling sends them, and their facts."""
    start = LAST - DEMO_DAYS * 86_400
    estate = generate_estate(42, clusters=3, namespaces_per_cluster=5, pods_per_namespace=6, start=start,
                             span_seconds=(DEMO_DAYS + 7) * 86_400)
    cluster = estate.clusters[cluster_index]
    at = LAST + 43_200
    sent = [(kept, value) for labels, value in UsageExporters(estate, cluster.name).series(at)
            if (kept := write_relabel({**labels, "job": "kube-state-metrics"}, write_relabel_configs())) is not None]
    return estate, cluster, at, estate_facts(_answers(sent))


def test_the_simulators_relabelled_series_give_its_truth() -> None:
    flags = {}
    for index in range(3):
        _, cluster, at, facts = _demo(index)
        for node in cluster.nodes:
            prices = (node.cpu_price_per_core_hour, node.ram_price_per_gib_hour)
            assert facts.node_type(cluster.name, node.name, prices) == NodeType(
                node.instance_type, node.cpu_cores, node.ram_bytes, *prices)
        for ns in cluster.namespaces:
            for pod in ns.pods:
                running = pod.start <= at and (pod.end is None or at < pod.end)
                truth = (pod.annotations.get(SAFE_TO_EVICT) == "false" or any(pv.local_path for pv in pod.pvs),
                         bool(pod.pvs))
                assert facts.pod_volumes(cluster.name, ns.name, pod.name) == (truth if running else None), pod.name
                if running:
                    flags[cluster.name, ns.name, pod.name] = truth
    # The demo's clusters have running pods of every kind: each flag was read both ways.
    assert set(flags.values()) == {(True, True), (True, False), (False, True), (False, False)}


def test_the_demo_estate_gets_cluster_rightsizing_and_spot_savings() -> None:
    """scripts/demo.py's three clusters, their pods sized at their requests (the rightsizing
    job only lowers over-provisioned ones): each module saves, and its items add up."""
    totals = {"k8s_cluster_rightsizing": 0.0, "k8s_spot_instances": 0.0}
    for index in range(3):
        estate, cluster, at, facts = _demo(index)
        prices = {n.name: (n.cpu_price_per_core_hour, n.ram_price_per_gib_hour) for n in cluster.nodes}
        pods = []
        for ns in cluster.namespaces:
            for pod in ns.pods:
                flags = facts.pod_volumes(cluster.name, ns.name, pod.name)
                if flags is not None:
                    pods.append(Pod(ns.name, pod.name, pod.node, pod.controller_kind, pod.controller,
                                    tuple(Container(c.name, c.cpu_request_cores, c.ram_request_bytes)
                                          for c in pod.containers), *flags))
        types = {n: facts.node_type(cluster.name, n, p) for n, p in prices.items()}
        tenant = _tenant(ClusterEstate(cluster.name, DEMO_DAYS, tuple(pods), (), prices, types, True))
        sized, spot = cluster_sizing_items(tenant, Options()), spot_items(tenant, Options())
        assert all("insufficient" not in i["fields"] for i in sized + spot)
        # The cluster item's saving is the production plan's, packed here from the estate's truth.
        truth = size_all(pods, [Node(n, NodeType(x.instance_type, x.cpu_cores, x.ram_bytes, *prices[n]))
                                for n, x in ((x.name, x) for x in cluster.nodes)])
        plan = {p.profile.name: p for p in truth}["production"]
        assert sum(i["saving"] for i in sized) == pytest.approx(max(plan.monthly_saving or 0.0, 0.0))
        totals["k8s_cluster_rightsizing"] += sum(i["saving"] for i in sized)
        totals["k8s_spot_instances"] += sum(i["saving"] for i in spot)
    assert totals["k8s_cluster_rightsizing"] > 0 and totals["k8s_spot_instances"] > 0


def test_the_demo_history_is_long_enough_for_anomalies_and_has_some() -> None:
    """The demo's default history (scripts/demo.py's HISTORY_DAYS) of its namespaces' daily
    costs (the simulator's ground truth, what the ledger holds): every cluster is scored, none
    says "insufficient history", and the requests and pods that change in the last 7 days
    make anomalies to flag."""
    assert DEMO_DAYS == 7 * Options().anomalies.weeks + Options().anomaly_days
    estate = _demo(0)[0]
    days = [LAST - k * 86_400 for k in range(DEMO_DAYS - 1, -1, -1)]
    namespace_costs = {(c.name, ns.name): {d: ground_truth(estate, d, d + 86_400, cluster=c.name, namespace=ns.name).total
                                           for d in days}
                       for c in estate.clusters for ns in c.namespaces}
    cluster_costs = {c.name: {d: sum(v[d] for (cl, _), v in namespace_costs.items() if cl == c.name) for d in days}
                     for c in estate.clusters}
    tenant = TenantEstate(Account("acc", "org", "n", "kubernetes_cnr", 0, 0), LAST, (), (), cluster_costs, namespace_costs)
    items = anomaly_items(tenant, Options(), {})
    assert not [i for i in items if "insufficient" in i["fields"]]
    assert {i["fields"]["k8s_namespace"] for i in items} - {None}  # some namespace's anomaly
    assert all(LAST - 6 * 86_400 <= i["fields"]["start"] <= LAST and i["saving"] == 0.0 for i in items)
