"""The optimizations job's modules on complete inputs (pure, no server): what the job computes
once node capacities and pod volumes exist, against packings and prices worked out by hand;
and its command line."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from jobs.optimizations import (
    ClusterEstate,
    Options,
    TenantEstate,
    cluster_sizing_items,
    parse_args,
    rightsizing_items,
    spot_items,
)
from k8scost.cluster_sizing import GIB, Container, NodeType, Pod
from k8scost.rightsizing import HOURS_PER_MONTH as MONTH
from k8scost.spot_readiness import SpotParams
from k8scost.stores.accounts import Account

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
