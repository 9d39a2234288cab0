"""Spot readiness per workload, and what moving a ready one to spot nodes saves. Pure: no I/O.

A workload is a controller's pods in one namespace (namespace, controller kind, controller),
or a pod without controller on its own. It reads the same ``Pod`` and ``Node`` inputs as
``k8scost.cluster_sizing`` (one cluster's running pods and current nodes), so a job reads
them once for both.

Rules, checked in this order; the first that fails decides the verdict (``Verdict.rule``),
and every failing rule is listed (``Verdict.failed``):

1. ``kube-system``: the workload is in namespace kube-system (cluster components);
2. ``no-controller``: its pod has no controller, so nothing recreates it after a spot interruption;
3. ``daemonset``: it is a DaemonSet (it runs wherever nodes run, spot or not);
4. ``statefulset``: it is a StatefulSet (stable identity, ordered restarts);
5. ``local-volume``: a pod mounts node-local storage (emptyDir, hostPath, local PV), lost with the node;
6. ``persistent-volume``: a pod mounts a persistent volume (zone-bound, slow to re-attach);
7. ``single-replica``: fewer than 2 running pods, so an interruption is an outage.

A workload passing all seven is ready (``rule`` = ``ready``). Its monthly saving, at the
spot discount ``d(t)`` of each pod's node type t (``SpotParams``: per type name, else the default):

    monthly_saving = Σ over its pods p of (cpu(p) × cpu_price_per_core_hour(t) + memory_GiB(p) × ram_price_per_gib_hour(t)) × d(t) × 730

with cpu(p), memory(p) the pod's sized demand of ``k8scost.cluster_sizing`` (each container's
recommendation where one exists, else its request): the cost of what the pod needs, so the
saving does not count twice what rightsizing already saves. A workload that is not ready
saves 0.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

from k8scost.cluster_sizing import Node, Pod
from k8scost.rightsizing import GIB, HOURS_PER_MONTH

DEFAULT_SPOT_DISCOUNT = 0.6  # a conservative typical discount; cloud providers advertise up to 90 %
MIN_REPLICAS = 2


class Rule(enum.StrEnum):
    KUBE_SYSTEM = "kube-system"
    NO_CONTROLLER = "no-controller"
    DAEMONSET = "daemonset"
    STATEFULSET = "statefulset"
    LOCAL_VOLUME = "local-volume"
    PERSISTENT_VOLUME = "persistent-volume"
    SINGLE_REPLICA = "single-replica"
    READY = "ready"


@dataclasses.dataclass(frozen=True)
class SpotParams:
    """Spot discounts, fractions of the on-demand price in [0, 1), per node type name and by default."""

    default_discount: float = DEFAULT_SPOT_DISCOUNT
    discounts: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in (("default", self.default_discount), *self.discounts.items()):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ValueError(f"spot discount of {name!r}: {value!r} is not a number in [0, 1)")

    def discount(self, node_type: str) -> float:
        return self.discounts.get(node_type, self.default_discount)


@dataclasses.dataclass(frozen=True, order=True)
class WorkloadKey:
    namespace: str
    controller_kind: str
    controller: str
    pod: str  # only for a pod without controller


@dataclasses.dataclass(frozen=True)
class Verdict:
    key: WorkloadKey
    replicas: int
    rule: Rule  # the rule that decided: the first failing one, or READY
    failed: tuple[Rule, ...]
    monthly_cost: float  # on demand, its pods' sized demand at their nodes' prices
    monthly_saving: float  # 0 unless ready

    @property
    def ready(self) -> bool:
        return self.rule is Rule.READY


def workload_key(pod: Pod) -> WorkloadKey:
    if pod.controller:
        return WorkloadKey(pod.namespace, pod.controller_kind.lower(), pod.controller, "")
    return WorkloadKey(pod.namespace, "", "", pod.name)


def _failed(key: WorkloadKey, pods: Sequence[Pod]) -> tuple[Rule, ...]:
    checks = (
        (Rule.KUBE_SYSTEM, key.namespace == "kube-system"),
        (Rule.NO_CONTROLLER, not key.controller),
        (Rule.DAEMONSET, key.controller_kind == "daemonset"),
        (Rule.STATEFULSET, key.controller_kind == "statefulset"),
        (Rule.LOCAL_VOLUME, any(p.local_storage for p in pods)),
        (Rule.PERSISTENT_VOLUME, any(p.persistent_volume for p in pods)),
        (Rule.SINGLE_REPLICA, len(pods) < MIN_REPLICAS),
    )
    return tuple(rule for rule, failing in checks if failing)


def assess(pods: Sequence[Pod], nodes: Sequence[Node], params: SpotParams = SpotParams()) -> list[Verdict]:
    """One verdict per workload of one cluster, the largest saving first, then by key.

    ValueError when a pod runs on a node not in ``nodes``.
    """
    by_name = {n.name: n for n in nodes}
    workloads: dict[WorkloadKey, list[Pod]] = {}
    for pod in pods:
        if pod.node not in by_name:
            raise ValueError(f"pod {pod.key!r} runs on unknown node {pod.node!r}")
        workloads.setdefault(workload_key(pod), []).append(pod)
    verdicts = []
    for key, members in workloads.items():
        failed = _failed(key, members)
        cost = saving = 0.0
        for pod in members:
            t = by_name[pod.node].node_type
            hourly = pod.cpu * t.cpu_price_per_core_hour + pod.memory / GIB * t.ram_price_per_gib_hour
            cost += hourly * HOURS_PER_MONTH
            saving += hourly * params.discount(t.name) * HOURS_PER_MONTH
        rule = failed[0] if failed else Rule.READY
        verdicts.append(Verdict(key, len(members), rule, failed, cost, saving if not failed else 0.0))
    return sorted(verdicts, key=lambda v: (-v.monthly_saving, v.key))

