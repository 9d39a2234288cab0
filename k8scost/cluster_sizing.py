"""Cluster right-sizing by bin packing: the cheapest node mix that holds a cluster's pods. Pure: no I/O.

Inputs, one cluster:

- ``pods``: every running pod, each with its containers' requests (CPU in cores, memory in
  bytes) and, where the rightsizing job made one, the container's recommended request
  (``k8scost.rightsizing.ResourceRecommendation.recommended_request``, per resource);
  its controller (kind and name, empty when none), its node, and whether it mounts node-local
  storage (emptyDir, hostPath, a local PV) or a persistent volume;
- ``nodes``: the current nodes, each with its node type;
- ``candidate_types``: the node types a plan may use (default: the current nodes'), each with its
  allocatable CPU and memory and its prices per core-hour and per GiB-hour, the exporter's
  ``cloudtuner_kubecost_node_{cpu_price_per_core_hour,ram_price_per_gib_hour}``;
- a ``Profile``: a target utilization ``u`` and a minimum node count.

Demand of a pod, per resource (r = CPU or memory, over its containers c):

    demand_r(pod) = Σ_c (recommended_r(c) if there is one else request_r(c))      (no request: 0)

Pods fall in three classes:

- DaemonSet pods run on every node: the per-node overhead is, per resource,
  ``D_r = Σ over DaemonSets of the largest demand_r of its pods``;
- pinned pods (no controller, or node-local storage; not DaemonSet pods) cannot move: the
  node each runs on is kept, with its type, its pinned pods and the overhead;
- every other pod is movable.

A node of type t holds a set S of pods when, for both resources,

    D_r + Σ_{p in S} demand_r(p)  ≤  u × allocatable_r(t)        (1e-9 relative slack for rounding)

and a plan is kept nodes + new nodes holding every movable pod, at least ``min_nodes``
nodes in all. Its cost is Σ over its nodes of the type's hourly price,

    hourly_price(t) = cpu_cores(t) × cpu_price_per_core_hour(t) + memory_GiB(t) × ram_price_per_gib_hour(t)

and ``monthly_saving = (Σ current nodes' hourly prices − plan's hourly cost) × 730`` (hours
per month, Kubecost's month as in ``k8scost.rightsizing``); negative when the profile needs
more than the cluster has. A kept node may exceed the target with its pinned pods alone: the
plan then reports it (``PlannedNode.over_target``) and places no movable pod on it. A movable
pod that fits no candidate type even alone makes the plan infeasible at that profile: it is
named in ``unplaceable`` and the plan has no cost or saving.

Profiles, the presets of Kubecost's cluster sizing as the issue gives them: development
u = 0.8, production 0.65, high availability 0.5; the minimum node counts 1, 2 and 3 are
ours (the HA profile's point is to survive a node's loss).

Algorithm: first-fit decreasing per base type and sort order, each node then downsized,
the best of all. For each candidate type B (one that holds the overhead) and each order of
``ORDERS`` (by the pods' shares s_r = demand_r / (u × allocatable_r(B) − D_r): the dominant
share max_r s_r, the sum Σ_r s_r, the CPU share, the memory share; ties broken by the other):

1. the kept nodes come first; the movable pods, in decreasing order, each go to the first node
   that holds them; when none does, a new node of type B opens (of the cheapest type that
   holds the pod when B cannot);
2. each new node is then given the cheapest type that holds what it got, so a base of large
   nodes ends with a small one for the remainder and a mix of types emerges;
3. below ``min_nodes``, two completions are compared: pad with the cheapest type that holds
   the overhead, or open ``min_nodes`` nodes of B, place each pod (dominant order) on the
   least loaded node that holds it, and downsize again; on a tie the spread one, which
   leaves no node empty for nothing;

and the cheapest plan wins (ties: fewer nodes, then the base's name, then the order).

Why this: first-fit decreasing is the standard bin packing heuristic (for one resource it
uses at most 11/9 OPT + 6/9 bins, Dósa 2007); with two resources and many node types no such
bound holds, so ``scripts/bench_cluster_sizing.py`` measures the gap to an exhaustive optimum
on small clusters instead, and to a linear-programming lower bound on the large one. Trying
every type as the base and downsizing each node is the variable-sized bin packing idea of
iterative FFD (Kang and Park 2003); the four orders matter with two resources (the bench
prints the gap of the dominant order alone beside theirs). It costs 4 × (candidate types)
FFD passes. A pass places a group of equal pods (a controller's replicas, mostly) at once:
equal pods placed one by one by first fit fill, in order, the nodes holding one, each up to
the copies it holds, then open new nodes; so a group costs one numpy pass over the open
nodes, not one per pod. An exact solver (integer programming) would
need a solver dependency and does not scale to 20,000 pods.

What ``jobs/optimizations.py`` reads to call ``size_all`` (per cluster, from the stores): the
pods running on the last complete day (the ledger) and their containers' requests and
recommendations (``k8s_rightsizing``, MongoDB), each node's price (the exporter's node price
gauges), and from the customer's kube-state-metrics (``k8scost.usage_series``) each node's
instance type and allocatable CPU and memory and each pod's volumes (persistent volume
claims, local volumes, cluster-autoscaler's safe-to-evict annotation).
``k8scost.spot_readiness`` reads the same ``Pod`` and ``Node`` inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from k8scost.rightsizing import GIB, HOURS_PER_MONTH

_SLACK = 1e-9  # relative: an exact fit computed by hand is not lost to float rounding


@dataclasses.dataclass(frozen=True)
class NodeType:
    """A node type: allocatable capacity and the exporter's per-resource prices (USD)."""

    name: str
    cpu_cores: float
    memory_bytes: float
    cpu_price_per_core_hour: float
    ram_price_per_gib_hour: float

    def __post_init__(self) -> None:
        values = (self.cpu_cores, self.memory_bytes, self.cpu_price_per_core_hour, self.ram_price_per_gib_hour)
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"node type {self.name!r}: capacities and prices must be finite and >= 0")

    @property
    def hourly_price(self) -> float:
        return self.cpu_cores * self.cpu_price_per_core_hour + self.memory_bytes / GIB * self.ram_price_per_gib_hour


@dataclasses.dataclass(frozen=True)
class Node:
    """A current node of the cluster."""

    name: str
    node_type: NodeType


@dataclasses.dataclass(frozen=True)
class Container:
    """A container's requests and, where one exists, its recommended requests (None: none)."""

    name: str
    cpu_request: float = 0.0
    memory_request: float = 0.0
    cpu_recommended: float | None = None
    memory_recommended: float | None = None

    def __post_init__(self) -> None:
        for value in (self.cpu_request, self.memory_request, self.cpu_recommended, self.memory_recommended):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"container {self.name!r}: requests must be finite and >= 0")

    @property
    def cpu(self) -> float:
        return self.cpu_request if self.cpu_recommended is None else self.cpu_recommended

    @property
    def memory(self) -> float:
        return self.memory_request if self.memory_recommended is None else self.memory_recommended


@dataclasses.dataclass(frozen=True)
class Pod:
    """A running pod; ``controller_kind`` as Kubecost labels it (``deployment``, ``statefulset``, …; "" when none)."""

    namespace: str
    name: str
    node: str
    controller_kind: str
    controller: str
    containers: tuple[Container, ...]
    local_storage: bool = False  # emptyDir, hostPath or a local PV: bound to its node
    persistent_volume: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def cpu(self) -> float:
        """Sized CPU demand in cores: each container's recommendation, else its request."""
        return sum(c.cpu for c in self.containers)

    @property
    def memory(self) -> float:
        """Sized memory demand in bytes."""
        return sum(c.memory for c in self.containers)

    @property
    def is_daemonset(self) -> bool:
        return self.controller_kind.lower() == "daemonset"

    @property
    def pinned(self) -> bool:
        """Cannot move to another node: no controller, or node-local storage (DaemonSet pods are per node instead)."""
        return not self.is_daemonset and (not self.controller or self.local_storage)


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    target_utilization: float
    min_nodes: int

    def __post_init__(self) -> None:
        u = self.target_utilization
        if isinstance(u, bool) or not isinstance(u, int | float) or not 0 < u <= 1:
            raise ValueError(f"profile {self.name!r}: target_utilization {u!r} is not a number in (0, 1]")
        if isinstance(self.min_nodes, bool) or not isinstance(self.min_nodes, int) or self.min_nodes < 0:
            raise ValueError(f"profile {self.name!r}: min_nodes {self.min_nodes!r} is not a whole number >= 0")


DEVELOPMENT = Profile("development", 0.8, 1)
PRODUCTION = Profile("production", 0.65, 2)
HIGH_AVAILABILITY = Profile("high-availability", 0.5, 3)
PROFILES = (DEVELOPMENT, PRODUCTION, HIGH_AVAILABILITY)


@dataclasses.dataclass(frozen=True)
class PlannedNode:
    """One node of a plan: its type, the pods on it (keys) and its load, the DaemonSet overhead included."""

    node_type: NodeType
    kept: str | None  # the current node's name when kept for pinned pods, else None (a new node)
    pods: tuple[str, ...]
    cpu: float
    memory: float
    over_target: bool  # a kept node whose pinned pods and overhead alone exceed the target


@dataclasses.dataclass(frozen=True)
class SizingPlan:
    """The cheapest plan found for one profile; ``hourly_cost`` None when some pod fits no type (``unplaceable``)."""

    profile: Profile
    nodes: tuple[PlannedNode, ...]
    unplaceable: tuple[str, ...]
    daemonset_cpu: float
    daemonset_memory: float
    current_hourly_cost: float
    base_type: str | None  # the base type and the order whose packing won (None: no type holds the overhead)
    order: str | None

    @property
    def hourly_cost(self) -> float | None:
        if self.unplaceable:
            return None
        return sum(n.node_type.hourly_price for n in self.nodes)

    @property
    def current_monthly_cost(self) -> float:
        return self.current_hourly_cost * HOURS_PER_MONTH

    @property
    def monthly_cost(self) -> float | None:
        cost = self.hourly_cost
        return None if cost is None else cost * HOURS_PER_MONTH

    @property
    def monthly_saving(self) -> float | None:
        cost = self.hourly_cost
        return None if cost is None else (self.current_hourly_cost - cost) * HOURS_PER_MONTH

    @property
    def node_counts(self) -> dict[str, int]:
        """Nodes per type name, kept ones included."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.node_type.name] = counts.get(node.node_type.name, 0) + 1
        return counts


# --- packing ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Bin:
    node_type: NodeType
    kept: str | None
    pods: list[Pod]
    cpu: float
    memory: float


@dataclasses.dataclass(frozen=True)
class _Group:
    """Movable pods of one demand (a controller's replicas, mostly), in key order."""

    cpu: float
    memory: float
    pods: tuple[Pod, ...]


# Sort orders of first-fit decreasing, by the shares s_cpu, s_memory of a base type's room.
ORDERS = ("dominant", "sum", "cpu", "memory")


def _order_key(order: str, cpu: float, memory: float) -> tuple[float, float]:
    if order == "dominant":
        return (-max(cpu, memory), -(cpu + memory))
    if order == "sum":
        return (-(cpu + memory), -max(cpu, memory))
    if order == "cpu":
        return (-cpu, -memory)
    return (-memory, -cpu)


class _Packer:
    """The cluster's fixed part (overhead, kept nodes, movable pods) and the packings of one profile."""

    def __init__(self, pods: Sequence[Pod], nodes: Mapping[str, Node], types: Sequence[NodeType], u: float) -> None:
        self.u = u
        daemonsets: dict[tuple[str, str], tuple[float, float]] = {}
        for pod in pods:
            if pod.is_daemonset:
                key = (pod.namespace, pod.controller)
                cpu, memory = daemonsets.get(key, (0.0, 0.0))
                daemonsets[key] = (max(cpu, pod.cpu), max(memory, pod.memory))
        self.ds_cpu = sum(cpu for cpu, _ in daemonsets.values())
        self.ds_memory = sum(memory for _, memory in daemonsets.values())
        # Candidate types, cheapest first: the first that holds a load is the cheapest that does.
        self.types = sorted(
            (t for t in types if self.holds(t, 0.0, 0.0)), key=lambda t: (t.hourly_price, t.name)
        )
        kept: dict[str, list[Pod]] = {}
        for pod in pods:
            if pod.pinned:
                kept.setdefault(pod.node, []).append(pod)
        self.kept = [
            _Bin(nodes[name].node_type, name, members, self.ds_cpu + sum(p.cpu for p in members),
                 self.ds_memory + sum(p.memory for p in members))
            for name, members in sorted(kept.items())
        ]
        groups: dict[tuple[float, float], list[Pod]] = {}
        for pod in pods:
            if not pod.is_daemonset and not pod.pinned:
                groups.setdefault((pod.cpu, pod.memory), []).append(pod)
        placeable = {d: members for d, members in groups.items() if self.cheapest(*d) is not None}
        self.unplaceable = tuple(sorted(p.key for d, members in groups.items() if d not in placeable for p in members))
        self.groups = [_Group(cpu, memory, tuple(sorted(members, key=lambda p: p.key)))
                       for (cpu, memory), members in placeable.items()]
        self.movable_count = sum(len(g.pods) for g in self.groups)

    def limit(self, t: NodeType) -> tuple[float, float]:
        scale = self.u * (1 + _SLACK)
        return t.cpu_cores * scale, t.memory_bytes * scale

    def holds(self, t: NodeType, cpu: float, memory: float) -> bool:
        """Whether a node of type ``t`` holds the overhead plus (cpu, memory) under the target."""
        limit_cpu, limit_memory = self.limit(t)
        return self.ds_cpu + cpu <= limit_cpu and self.ds_memory + memory <= limit_memory

    def cheapest(self, cpu: float, memory: float) -> NodeType | None:
        """The cheapest candidate type holding (cpu, memory) beside the overhead."""
        return next((t for t in self.types if self.holds(t, cpu, memory)), None)

    def _sorted(self, base: NodeType, order: str) -> list[_Group]:
        limit_cpu, limit_memory = self.limit(base)
        room_cpu, room_memory = limit_cpu - self.ds_cpu, limit_memory - self.ds_memory

        def key(g: _Group) -> tuple[float, float, float, float]:
            cpu = g.cpu / room_cpu if room_cpu > 0 else (math.inf if g.cpu else 0.0)
            memory = g.memory / room_memory if room_memory > 0 else (math.inf if g.memory else 0.0)
            return (*_order_key(order, cpu, memory), -g.cpu, -g.memory)

        return sorted(self.groups, key=key)

    def first_fit(self, base: NodeType, order: str) -> list[_Bin]:
        """First-fit decreasing, a group of equal pods at a time (see the module docstring)."""
        capacity = len(self.kept) + self.movable_count
        spare_cpu, spare_memory = np.empty(capacity), np.empty(capacity)
        bins: list[_Bin] = []

        def open_node(b: _Bin) -> None:
            limit_cpu, limit_memory = self.limit(b.node_type)
            spare_cpu[len(bins)], spare_memory[len(bins)] = limit_cpu - b.cpu, limit_memory - b.memory
            bins.append(b)

        for b in self.kept:
            open_node(dataclasses.replace(b, pods=list(b.pods)))
        for g in self._sorted(base, order):
            count, placed = len(g.pods), 0
            n = len(bins)
            holding = np.flatnonzero((spare_cpu[:n] >= g.cpu) & (spare_memory[:n] >= g.memory))
            for i in holding[:count].tolist():  # each takes one copy at least
                k = min(_copies(float(spare_cpu[i]), g.cpu, count - placed),
                        _copies(float(spare_memory[i]), g.memory, count - placed))
                b = bins[i]
                b.pods.extend(g.pods[placed:placed + k])
                b.cpu += k * g.cpu
                b.memory += k * g.memory
                spare_cpu[i] -= k * g.cpu
                spare_memory[i] -= k * g.memory
                placed += k
                if placed == count:
                    break
            while placed < count:
                t = base if self.holds(base, g.cpu, g.memory) else self.cheapest(g.cpu, g.memory)
                assert t is not None  # unplaceable pods were set aside
                limit_cpu, limit_memory = self.limit(t)
                # One at least: ``holds`` said so, whatever the rounding of limit − overhead.
                k = max(1, min(_copies(limit_cpu - self.ds_cpu, g.cpu, count - placed),
                               _copies(limit_memory - self.ds_memory, g.memory, count - placed)))
                open_node(_Bin(t, None, list(g.pods[placed:placed + k]), self.ds_cpu + k * g.cpu,
                               self.ds_memory + k * g.memory))
                placed += k
        return bins

    def spread(self, base: NodeType, count: int) -> list[_Bin]:
        """Pods on the least loaded node holding them, over the kept nodes and ``count`` new ones of ``base``."""
        bins = [dataclasses.replace(b, pods=list(b.pods)) for b in self.kept]
        bins += [_Bin(base, None, [], self.ds_cpu, self.ds_memory) for _ in range(count)]

        def spare(b: _Bin) -> tuple[float, float]:
            limit_cpu, limit_memory = self.limit(b.node_type)
            return limit_cpu - b.cpu, limit_memory - b.memory

        def load(b: _Bin) -> float:
            limit_cpu, limit_memory = self.limit(b.node_type)
            return max(b.cpu / limit_cpu if limit_cpu else math.inf, b.memory / limit_memory if limit_memory else math.inf)

        for g in self._sorted(base, ORDERS[0]):
            for pod in g.pods:
                fitting = [b for b in bins if spare(b)[0] >= g.cpu and spare(b)[1] >= g.memory]
                if fitting:
                    target = min(fitting, key=load)
                else:
                    t = base if self.holds(base, g.cpu, g.memory) else self.cheapest(g.cpu, g.memory)
                    assert t is not None  # unplaceable pods were set aside
                    target = _Bin(t, None, [], self.ds_cpu, self.ds_memory)
                    bins.append(target)
                target.pods.append(pod)
                target.cpu += g.cpu
                target.memory += g.memory
        return bins

    def downsize(self, bins: list[_Bin]) -> list[_Bin]:
        for b in bins:
            if b.kept is None:
                t = self.cheapest(b.cpu - self.ds_cpu, b.memory - self.ds_memory)
                assert t is not None  # its own type holds it
                b.node_type = t
        return bins

    def plan(self, base: NodeType, order: str, min_nodes: int) -> list[_Bin]:
        """The packing of base type ``base`` in ``order``, completed to ``min_nodes`` nodes."""
        bins = self.downsize(self.first_fit(base, order))
        if len(bins) >= min_nodes:
            return bins
        padding = self.types[0]
        padded = bins + [_Bin(padding, None, [], self.ds_cpu, self.ds_memory) for _ in range(min_nodes - len(bins))]
        spread = self.downsize(self.spread(base, min_nodes - len(self.kept)))
        return min((spread, padded), key=_cost)  # spread on a tie: no node left empty for nothing


def _copies(spare: float, demand: float, count: int) -> int:
    """How many pods of ``demand`` fit in ``spare``, 0 to ``count``."""
    return count if demand <= 0 else max(0, min(count, math.floor(spare / demand)))


def _cost(bins: Iterable[_Bin]) -> float:
    return sum(b.node_type.hourly_price for b in bins)


def _check(pods: Sequence[Pod], nodes: Sequence[Node]) -> dict[str, Node]:
    by_name: dict[str, Node] = {}
    for node in nodes:
        if node.name in by_name:
            raise ValueError(f"node {node.name!r} is listed twice")
        by_name[node.name] = node
    keys: set[str] = set()
    for pod in pods:
        if pod.key in keys:
            raise ValueError(f"pod {pod.key!r} is listed twice")
        keys.add(pod.key)
        if pod.node not in by_name:
            raise ValueError(f"pod {pod.key!r} runs on unknown node {pod.node!r}")
    return by_name


def node_types(nodes: Iterable[Node]) -> list[NodeType]:
    """The distinct types of ``nodes``, in order of first appearance."""
    return list(dict.fromkeys(n.node_type for n in nodes))


def size_cluster(
    pods: Sequence[Pod],
    nodes: Sequence[Node],
    profile: Profile,
    candidate_types: Sequence[NodeType] | None = None,
    orders: Sequence[str] = ORDERS,
) -> SizingPlan:
    """The cheapest plan found for one cluster at ``profile`` (see the module docstring).

    ``candidate_types`` defaults to the current nodes' types; ``orders`` (a part of
    ``ORDERS``) trades time for cost. ValueError on inconsistent input: a node or pod listed
    twice, a pod on a node not in ``nodes``, an unknown order.
    """
    if not orders or set(orders) - set(ORDERS):
        raise ValueError(f"orders {list(orders)!r}: not a non-empty part of {list(ORDERS)}")
    by_name = _check(pods, nodes)
    types = node_types(nodes) if candidate_types is None else list(dict.fromkeys(candidate_types))
    packer = _Packer(pods, by_name, types, profile.target_utilization)
    current = sum(n.node_type.hourly_price for n in nodes)
    best: tuple[float, int, str, int] | None = None
    best_bins: list[_Bin] = []
    best_base = best_order = None
    for base in packer.types:
        for order in orders:
            bins = packer.plan(base, order, profile.min_nodes)
            rank = (_cost(bins), len(bins), base.name, ORDERS.index(order))
            if best is None or rank < best:
                best, best_bins, best_base, best_order = rank, bins, base.name, order
    if not packer.types:  # no type holds the overhead: every movable pod is unplaceable
        best_bins = [dataclasses.replace(b, pods=list(b.pods)) for b in packer.kept]
    planned = []
    for b in best_bins:
        limit_cpu, limit_memory = packer.limit(b.node_type)
        planned.append(PlannedNode(
            b.node_type, b.kept, tuple(p.key for p in b.pods), b.cpu, b.memory,
            over_target=b.cpu > limit_cpu or b.memory > limit_memory,
        ))
    planned.sort(key=lambda n: (n.kept is None, n.kept or "", n.node_type.name, n.pods))
    return SizingPlan(profile, tuple(planned), packer.unplaceable, packer.ds_cpu, packer.ds_memory, current,
                      best_base, best_order)


def size_all(
    pods: Sequence[Pod], nodes: Sequence[Node], candidate_types: Sequence[NodeType] | None = None,
    profiles: Sequence[Profile] = PROFILES,
) -> list[SizingPlan]:
    """One plan per profile."""
    return [size_cluster(pods, nodes, p, candidate_types) for p in profiles]
