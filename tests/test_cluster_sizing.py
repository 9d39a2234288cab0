"""Cluster right-sizing (bin packing) and spot readiness: pure cores, no servers.

Hand-computed packings use two node types in the exporter's price shape:

    small: 2 cores,  8 GiB at 0.03 USD/core-h and 0.005 USD/GiB-h → 0.06 + 0.04 = 0.10 USD/h
    large: 4 cores, 16 GiB at 0.025 USD/core-h and 0.005 USD/GiB-h → 0.10 + 0.08 = 0.18 USD/h

so at u = 0.8 a small node holds 1.6 cores, a large 3.2; at 0.65: 1.3 / 2.6; at 0.5: 1.0 / 2.0.
Random small clusters are checked against the exhaustive optimum and the contract of
``devstack.sizing_oracle`` (written from the module docstring, not from its code).
"""

from __future__ import annotations

import random

import pytest

from devstack.sizing_oracle import lower_bound, optimum, random_cluster, violations
from k8scost.cluster_sizing import (
    DEVELOPMENT,
    HIGH_AVAILABILITY,
    PRODUCTION,
    PROFILES,
    Container,
    Node,
    NodeType,
    Pod,
    Profile,
    size_all,
    size_cluster,
)
from k8scost.rightsizing import GIB, HOURS_PER_MONTH
from k8scost.spot_readiness import Rule, SpotParams, WorkloadKey, assess

SMALL = NodeType("small", 2.0, 8 * GIB, 0.03, 0.005)
LARGE = NodeType("large", 4.0, 16 * GIB, 0.025, 0.005)
TYPES = [SMALL, LARGE]


def pod(name: str, cpu: float, memory_gib: float = 1.0, node: str = "n1", kind: str = "deployment",
        controller: str = "web", namespace: str = "apps", **fields: object) -> Pod:
    return Pod(namespace, name, node, kind, controller, (Container("c", cpu, memory_gib * GIB),), **fields)  # type: ignore[arg-type]


def checked(pods: list[Pod], nodes: list[Node], profile: Profile, types: list[NodeType] = TYPES):
    plan = size_cluster(pods, nodes, profile, types)
    assert violations(plan, pods, nodes, types) == []
    return plan


def test_node_prices_as_documented() -> None:
    assert SMALL.hourly_price == pytest.approx(0.10)
    assert LARGE.hourly_price == pytest.approx(0.18)


def test_five_one_core_pods_take_two_large_nodes() -> None:
    # u = 0.8: a small node holds 1 such pod, a large 3. 2 large = 0.36 < 1 large + 2 small = 0.38 < 5 small = 0.50.
    pods = [pod(f"p{i}", 1.0) for i in range(5)]
    nodes = [Node(f"n{i}", LARGE) for i in (1, 2, 3)]
    plan = checked(pods, nodes, DEVELOPMENT)
    assert plan.node_counts == {"large": 2}
    assert plan.hourly_cost == pytest.approx(0.36)
    assert plan.current_monthly_cost == pytest.approx(0.54 * 730)
    assert plan.monthly_saving == pytest.approx((0.54 - 0.36) * 730)  # 131.40 USD
    assert HOURS_PER_MONTH == 730


def test_the_remainder_goes_to_a_smaller_node() -> None:
    # 4 pods: FFD on large nodes leaves one pod alone, downsized to small: 0.28 < 2 large 0.36 < 4 small 0.40.
    plan = checked([pod(f"p{i}", 1.0) for i in range(4)], [Node("n1", LARGE)], DEVELOPMENT)
    assert plan.node_counts == {"large": 1, "small": 1}
    assert sorted(len(n.pods) for n in plan.nodes) == [1, 3]
    assert plan.monthly_cost == pytest.approx(0.28 * 730)


def test_daemonsets_take_their_largest_pod_on_every_node() -> None:
    # DaemonSet agent: 0.3 core / 0.5 GiB (its largest pod). u = 0.65: small room 1.3 − 0.3 = 1.0 core
    # (one 1-core pod, an exact fit), large 2.6 − 0.3 = 2.3 (two). 3 pods: large + small = 0.28, 2 nodes = min 2.
    pods = [pod(f"p{i}", 1.0) for i in range(3)] + [
        pod(f"agent-{n}", cpu, 0.5, node=n, kind="daemonset", controller="agent", namespace="kube-system")
        for n, cpu in (("n1", 0.3), ("n2", 0.2))
    ]
    plan = checked(pods, [Node("n1", LARGE), Node("n2", LARGE)], PRODUCTION)
    assert (plan.daemonset_cpu, plan.daemonset_memory) == (pytest.approx(0.3), pytest.approx(0.5 * GIB))
    assert plan.node_counts == {"large": 1, "small": 1}
    assert plan.hourly_cost == pytest.approx(0.28)
    assert sorted((round(n.cpu, 9), len(n.pods)) for n in plan.nodes) == [(1.3, 1), (2.3, 2)]
    assert not any("agent" in k for n in plan.nodes for k in n.pods)


def test_recommendations_replace_requests_where_present() -> None:
    # Requests of 2 cores fit only a large node each (3 × 0.18); the recommended 0.5 core all fit one small
    # node (1.5 ≤ 1.6 cores; memory keeps its 1 GiB request, having no recommendation).
    pods = [Pod("apps", f"p{i}", "n1", "deployment", "web", (Container("c", 2.0, GIB, cpu_recommended=0.5),))
            for i in range(3)]
    assert (pods[0].cpu, pods[0].memory) == (0.5, GIB)
    plan = checked(pods, [Node("n1", LARGE)], DEVELOPMENT)
    assert plan.node_counts == {"small": 1}
    assert plan.nodes[0].memory == 3 * GIB
    without = [pod(f"p{i}", 2.0) for i in range(3)]
    assert checked(without, [Node("n1", LARGE)], DEVELOPMENT).hourly_cost == pytest.approx(0.54)


def test_pinned_pods_keep_their_nodes() -> None:
    # HA, u = 0.5. debug (no controller) pins n1 (large, room 2.0: 0.5 used), cache (emptyDir) pins n2
    # (small, room 1.0: 0.5 used). Two 1-core pods: one joins n1 (1.5), the other fits neither and gets a
    # new small node (1.0, exact). 3 nodes = min 3: 0.18 + 0.10 + 0.10 = 0.38; current n3 is large: 0.46.
    pods = [
        pod("debug", 0.5, node="n1", kind="", controller=""),
        pod("cache", 0.5, node="n2", local_storage=True),
        pod("a", 1.0, node="n3"),
        pod("b", 1.0, node="n3"),
    ]
    plan = checked(pods, [Node("n1", LARGE), Node("n2", SMALL), Node("n3", LARGE)], HIGH_AVAILABILITY)
    by_node = {n.kept: n for n in plan.nodes}
    assert set(by_node) == {"n1", "n2", None}
    assert by_node["n1"].node_type == LARGE and "apps/debug" in by_node["n1"].pods and len(by_node["n1"].pods) == 2
    assert by_node["n2"].pods == ("apps/cache",)
    assert by_node[None].node_type == SMALL
    assert plan.monthly_saving == pytest.approx((0.46 - 0.38) * 730)


def test_a_kept_node_over_the_target_takes_nothing_more() -> None:
    # u = 0.5: a small node holds 1 core; the pinned 1.5-core pod exceeds it alone.
    pods = [pod("legacy", 1.5, node="n1", kind="", controller=""), pod("a", 0.4)]
    plan = checked(pods, [Node("n1", SMALL)], Profile("tight", 0.5, 1))
    kept = [n for n in plan.nodes if n.kept == "n1"]
    assert kept[0].over_target and kept[0].pods == ("apps/legacy",)
    assert plan.node_counts == {"small": 2} and plan.hourly_cost == pytest.approx(0.20)


def test_minimum_node_count_spreads_the_pods() -> None:
    # HA: three 0.3-core pods fit one small node, but 3 nodes are required: 3 small (0.30), one pod each.
    plan = checked([pod(f"p{i}", 0.3, 0.5) for i in range(3)], [Node("n1", LARGE)], HIGH_AVAILABILITY)
    assert plan.node_counts == {"small": 3}
    assert [len(n.pods) for n in plan.nodes] == [1, 1, 1]
    assert plan.monthly_saving == pytest.approx((0.18 - 0.30) * 730)  # negative: HA costs 87.60 USD more


def test_a_pod_no_type_holds_makes_the_plan_infeasible() -> None:
    pods = [pod("huge", 4.0), pod("a", 1.0)]  # 4 cores > 3.2, the large node's room at u = 0.8
    plan = checked(pods, [Node("n1", LARGE)], DEVELOPMENT)
    assert plan.unplaceable == ("apps/huge",)
    assert plan.hourly_cost is None and plan.monthly_saving is None
    assert [n.pods for n in plan.nodes] == [("apps/a",)]


def test_profiles_and_defaults() -> None:
    assert [(p.name, p.target_utilization, p.min_nodes) for p in PROFILES] == [
        ("development", 0.8, 1), ("production", 0.65, 2), ("high-availability", 0.5, 3)]
    pods = [pod(f"p{i}", 1.0) for i in range(4)]
    plans = size_all(pods, [Node("n1", LARGE), Node("n2", SMALL)])  # candidates: the current types
    assert [p.profile for p in plans] == list(PROFILES)
    # u = 0.65: a large node holds 2, a small 1 → 2 large 0.36 (< 1 large + 2 small 0.38 < 4 small 0.40).
    # u = 0.5: the same capacities, but min 3: 1 large + 2 small 0.38, found by spreading over 3 nodes
    # (FFD's 2 large + a padding small node would be 0.46).
    assert [p.hourly_cost for p in plans] == [pytest.approx(0.28), pytest.approx(0.36), pytest.approx(0.38)]
    assert plans[2].node_counts == {"large": 1, "small": 2}


@pytest.mark.parametrize("bad", [
    lambda: Profile("x", 0.0, 1), lambda: Profile("x", 1.5, 1), lambda: Profile("x", 0.5, -1),
    lambda: NodeType("x", -1.0, GIB, 0.1, 0.1), lambda: Container("c", float("nan"), 0.0),
    lambda: size_cluster([pod("a", 1.0, node="gone")], [Node("n1", SMALL)], DEVELOPMENT),
    lambda: size_cluster([pod("a", 1.0), pod("a", 1.0)], [Node("n1", SMALL)], DEVELOPMENT),
    lambda: size_cluster([], [Node("n1", SMALL), Node("n1", LARGE)], DEVELOPMENT),
])
def test_inconsistent_input_is_refused(bad) -> None:
    with pytest.raises(ValueError):
        bad()


def test_random_small_clusters_against_the_exhaustive_optimum() -> None:
    """Every plan keeps the contract; its cost is between the optimum and 1.5 × the optimum, and the mean gap small."""
    gaps = []
    for sample in range(300):
        pods, nodes, types, profile = random_cluster(random.Random(f"test-{sample}"))
        plan = size_cluster(pods, nodes, profile, types)
        assert violations(plan, pods, nodes, types) == [], sample
        best = optimum(pods, nodes, profile, types)
        assert (best is None) == (plan.hourly_cost is None), sample
        if best is None:
            continue
        assert lower_bound(pods, nodes, profile, types) <= best + 1e-9, sample
        assert best - 1e-9 <= plan.hourly_cost <= 1.5 * best, sample
        gaps.append(plan.hourly_cost / best - 1)
    assert len(gaps) > 250
    assert sum(gaps) / len(gaps) < 0.02
    assert sum(g < 1e-9 for g in gaps) > 0.9 * len(gaps)


def test_the_oracle_against_hand_counts() -> None:
    """The exhaustive search itself, on counts checkable by hand: u = 0.5, small nodes only (1.0 core each).

    Pods 0.6, 0.5, 0.5, 0.4 core: {0.6, 0.4} and {0.5, 0.5} → 2 nodes, 0.20 USD/h; a 0.1 more (2.1 cores
    > 2 nodes' 2.0) → 3 nodes, 0.30; at minimum 4 nodes → 0.40. Its lower bound: 2.0 cores / 1.0 × 0.10.
    """
    pods = [pod(f"p{i}", cpu) for i, cpu in enumerate((0.6, 0.5, 0.5, 0.4))]
    nodes = [Node("n1", SMALL)]
    assert optimum(pods, nodes, Profile("x", 0.5, 0), [SMALL]) == pytest.approx(0.20)
    assert optimum(pods + [pod("p9", 0.1)], nodes, Profile("x", 0.5, 0), [SMALL]) == pytest.approx(0.30)
    assert optimum(pods, nodes, Profile("x", 0.5, 4), [SMALL]) == pytest.approx(0.40)
    assert lower_bound(pods, nodes, Profile("x", 0.5, 0), [SMALL]) == pytest.approx(0.20)


# --- spot readiness ---------------------------------------------------------------------------------


def spot_pods() -> list[Pod]:
    return [
        pod("web-1", 1.0, 2.0, node="n1"), pod("web-2", 1.0, 2.0, node="n2"),  # ready: 2 replicas
        pod("dns-1", 0.1, node="n1", namespace="kube-system", controller="coredns"),
        pod("dns-2", 0.1, node="n2", namespace="kube-system", controller="coredns"),
        pod("debug", 0.1, node="n1", kind="", controller=""),
        pod("logs-1", 0.1, node="n1", kind="daemonset", controller="logs"),
        pod("logs-2", 0.1, node="n2", kind="daemonset", controller="logs"),
        pod("db-0", 0.5, node="n1", kind="statefulset", controller="db", persistent_volume=True),
        pod("db-1", 0.5, node="n2", kind="statefulset", controller="db", persistent_volume=True),
        pod("tmp-1", 0.2, node="n1", controller="tmp", local_storage=True),
        pod("tmp-2", 0.2, node="n2", controller="tmp", local_storage=True),
        pod("pv-1", 0.2, node="n1", controller="uploads", persistent_volume=True),
        pod("pv-2", 0.2, node="n2", controller="uploads", persistent_volume=True),
        pod("solo", 0.2, node="n1", controller="solo"),
    ]


def test_spot_verdict_names_the_deciding_rule() -> None:
    verdicts = {v.key: v for v in assess(spot_pods(), [Node("n1", SMALL), Node("n2", LARGE)])}
    expected = {
        WorkloadKey("apps", "deployment", "web", ""): (Rule.READY, ()),
        WorkloadKey("kube-system", "deployment", "coredns", ""): (Rule.KUBE_SYSTEM, (Rule.KUBE_SYSTEM,)),
        WorkloadKey("apps", "", "", "debug"): (Rule.NO_CONTROLLER, (Rule.NO_CONTROLLER, Rule.SINGLE_REPLICA)),
        WorkloadKey("apps", "daemonset", "logs", ""): (Rule.DAEMONSET, (Rule.DAEMONSET,)),
        WorkloadKey("apps", "statefulset", "db", ""): (Rule.STATEFULSET, (Rule.STATEFULSET, Rule.PERSISTENT_VOLUME)),
        WorkloadKey("apps", "deployment", "tmp", ""): (Rule.LOCAL_VOLUME, (Rule.LOCAL_VOLUME,)),
        WorkloadKey("apps", "deployment", "uploads", ""): (Rule.PERSISTENT_VOLUME, (Rule.PERSISTENT_VOLUME,)),
        WorkloadKey("apps", "deployment", "solo", ""): (Rule.SINGLE_REPLICA, (Rule.SINGLE_REPLICA,)),
    }
    assert {k: (v.rule, v.failed) for k, v in verdicts.items()} == expected
    assert [k for k, v in verdicts.items() if v.ready] == [WorkloadKey("apps", "deployment", "web", "")]
    assert verdicts[WorkloadKey("apps", "deployment", "web", "")].replicas == 2


def test_spot_saving_at_each_node_types_discount() -> None:
    # web-1 on small: 1 core × 0.03 + 2 GiB × 0.005 = 0.04 USD/h at 50 %; web-2 on large: 0.025 + 0.01 = 0.035 at 70 %.
    params = SpotParams(default_discount=0.7, discounts={"small": 0.5})
    verdicts = assess(spot_pods(), [Node("n1", SMALL), Node("n2", LARGE)], params)
    web = verdicts[0]  # the largest saving first
    assert web.key.controller == "web"
    assert web.monthly_cost == pytest.approx((0.04 + 0.035) * 730)
    assert web.monthly_saving == pytest.approx((0.04 * 0.5 + 0.035 * 0.7) * 730)  # 32.485 USD
    assert all(v.monthly_saving == 0 for v in verdicts[1:])
    assert all(v.monthly_cost > 0 for v in verdicts)


@pytest.mark.parametrize("bad", [
    lambda: SpotParams(default_discount=1.0), lambda: SpotParams(discounts={"small": -0.1}),
    lambda: SpotParams(discounts={"small": float("nan")}),
    lambda: assess([pod("a", 1.0, node="gone")], [Node("n1", SMALL)]),
])
def test_spot_input_is_checked(bad) -> None:
    with pytest.raises(ValueError):
        bad()
