"""The Kubecost cost model of a simulated estate, and its exact ground truth.

Semantics (Kubecost's): a container is allocated max(request, usage) of CPU and of RAM,
billed at its node's prices for the time its pod runs; a pod's PVs are billed for the
same time; a namespace's load balancers and network bill are split evenly among its pods
running at each instant (``__unmounted__`` carries them while none runs); a node's full
capacity is billed, and what pods are not allocated of it is the cluster's ``__idle__``.
The management fee is an asset outside allocations.

All inputs are piecewise constant, so every integral is computed exactly, segment by
segment (window edges, pod start/end, change instants, usage-period boundaries).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from devstack.simulator.spec import GIB, Cluster, Container, Estate, Namespace, Node, Pod

HOUR = 3600.0
IDLE = "__idle__"
UNMOUNTED = "__unmounted__"
_MASK64 = (1 << 64) - 1


@dataclass(slots=True)
class Allocation:
    """Resources and costs of one container (or of an aggregate of them) over [start, end).

    Integrals are kept in resource-seconds; ``properties`` uses OpenCost's JSON names.
    """

    properties: dict[str, Any]
    start: float
    end: float
    cpu_core_seconds: float = 0.0
    cpu_request_core_seconds: float = 0.0
    cpu_usage_core_seconds: float = 0.0
    cpu_usage_max: float = 0.0
    cpu_cost: float = 0.0
    ram_byte_seconds: float = 0.0
    ram_request_byte_seconds: float = 0.0
    ram_usage_byte_seconds: float = 0.0
    ram_usage_max: float = 0.0
    ram_cost: float = 0.0
    pv_byte_seconds: float = 0.0
    pv_cost: float = 0.0
    pvs: dict[str, tuple[float, float]] = field(default_factory=dict)  # key → (byte-seconds, cost)
    network_cost: float = 0.0
    load_balancer_cost: float = 0.0

    @property
    def total_cost(self) -> float:
        """Every cost of the allocation."""
        return self.cpu_cost + self.ram_cost + self.pv_cost + self.network_cost + self.load_balancer_cost

    def merge(self, other: Allocation) -> None:
        """Add ``other`` into this allocation, keeping only the properties both share (as OpenCost does)."""
        self.properties = {k: v for k, v in self.properties.items() if other.properties.get(k) == v}
        self.start = min(self.start, other.start)
        self.end = max(self.end, other.end)
        self.cpu_core_seconds += other.cpu_core_seconds
        self.cpu_request_core_seconds += other.cpu_request_core_seconds
        self.cpu_usage_core_seconds += other.cpu_usage_core_seconds
        self.cpu_usage_max = max(self.cpu_usage_max, other.cpu_usage_max)
        self.cpu_cost += other.cpu_cost
        self.ram_byte_seconds += other.ram_byte_seconds
        self.ram_request_byte_seconds += other.ram_request_byte_seconds
        self.ram_usage_byte_seconds += other.ram_usage_byte_seconds
        self.ram_usage_max = max(self.ram_usage_max, other.ram_usage_max)
        self.ram_cost += other.ram_cost
        self.pv_byte_seconds += other.pv_byte_seconds
        self.pv_cost += other.pv_cost
        if other.pvs:
            merged = dict(self.pvs)
            for key, (byte_seconds, cost) in other.pvs.items():
                old = merged.get(key, (0.0, 0.0))
                merged[key] = (old[0] + byte_seconds, old[1] + cost)
            self.pvs = merged
        self.network_cost += other.network_cost
        self.load_balancer_cost += other.load_balancer_cost


@dataclass(frozen=True)
class Costs:
    """Dollar costs of a slice of the estate over a time range."""

    cpu: float = 0.0
    ram: float = 0.0
    pv: float = 0.0
    network: float = 0.0
    load_balancer: float = 0.0
    idle: float = 0.0

    @property
    def total(self) -> float:
        """All costs, idle included (it is 0 unless asked for)."""
        return self.cpu + self.ram + self.pv + self.network + self.load_balancer + self.idle


@dataclass(frozen=True)
class UsageStats:
    """Averages over the seconds a container ran inside a window, and the peak usage."""

    cpu_request_average: float
    cpu_usage_average: float
    cpu_usage_max: float
    ram_request_average: float
    ram_usage_average: float
    ram_usage_max: float


@functools.lru_cache(maxsize=1 << 17)  # hashing dominates a large estate's answer; keys are few and stable
def _stream(seed: int, cluster: str, namespace: str, pod: str, container: str) -> int:
    """A stable 64-bit seed of one container's usage factors (Python's hash() varies per process)."""
    key = f"{seed}/{cluster}/{namespace}/{pod}/{container}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _factors(stream: int, period: int, variation: float) -> tuple[float, float]:
    """(cpu, ram) usage factors of a usage period: splitmix64 of the stream and period index."""
    x = (stream ^ (period * 0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return (1 + variation * ((x & 0xFFFFFFFF) / 2**31 - 1), 1 + variation * ((x >> 32) / 2**31 - 1))


def segments(container: Container, start: float, end: float, period: float, variation: float,
             stream: int) -> Iterator[tuple[float, float, float, float, float, float]]:
    """The container's constant stretches over [start, end): (from, to, cpu request, ram
    request, cpu usage, ram usage), usage with its period's factor applied."""
    changes = container.changes
    state = (container.cpu_request_cores, container.ram_request_bytes, container.cpu_usage_cores,
             container.ram_usage_bytes)
    i = 0
    while i < len(changes) and changes[i][0] <= start:
        state = changes[i][1:]
        i += 1
    t = start
    while t < end:
        nxt = end
        fcpu = fram = 1.0
        if variation:
            k = math.floor(t / period)
            if (k + 1) * period <= t:  # t / period rounded down across a boundary
                k += 1
            nxt = min(nxt, (k + 1) * period)
            fcpu, fram = _factors(stream, k, variation)
        if i < len(changes) and changes[i][0] < nxt:
            nxt = changes[i][0]
        yield t, nxt, state[0], state[1], state[2] * fcpu, state[3] * fram
        t = nxt
        while i < len(changes) and changes[i][0] <= t:
            state = changes[i][1:]
            i += 1


def _integrate(container: Container, start: float, end: float, period: float, variation: float,
               stream: int) -> tuple[float, ...]:
    """Exact integrals of the container over [start, end).

    Returns (cpu allocated, cpu request, cpu usage) core-seconds, the cpu usage max, then
    the same four for RAM in byte-seconds and bytes.
    """
    cpu_alloc = cpu_req = cpu_use = cpu_max = ram_alloc = ram_req = ram_use = ram_max = 0.0
    for t, nxt, rc, rr, uc, ur in segments(container, start, end, period, variation, stream):
        dt = nxt - t
        cpu_alloc += max(rc, uc) * dt
        cpu_req += rc * dt
        cpu_use += uc * dt
        cpu_max = max(cpu_max, uc)
        ram_alloc += max(rr, ur) * dt
        ram_req += rr * dt
        ram_use += ur * dt
        ram_max = max(ram_max, ur)
    return cpu_alloc, cpu_req, cpu_use, cpu_max, ram_alloc, ram_req, ram_use, ram_max


def container_stream(estate: Estate, cluster: str, namespace: str, pod: str, container: str) -> int:
    """The seed of a container's usage factors (0 when usage does not vary)."""
    return _stream(estate.seed, cluster, namespace, pod, container) if estate.usage_variation else 0


def _shared_weights(runs: list[tuple[Pod, float, float]], start: float,
                    end: float) -> tuple[list[float], float, float, float]:
    """Seconds of namespace-level cost each running pod carries, split evenly among the pods running at each instant.

    Also returns the seconds no pod runs and the span [first, last) covering them.
    """
    weights = [0.0] * len(runs)
    cuts = sorted({start, end, *(s for _, s, _ in runs), *(e for _, _, e in runs)})
    empty, first, last = 0.0, end, start
    for a, b in zip(cuts, cuts[1:]):
        active = [i for i, (_, s, e) in enumerate(runs) if s <= a and e >= b]
        for i in active:
            weights[i] += (b - a) / len(active)
        if not active:
            empty += b - a
            first, last = min(first, a), max(last, b)
    return weights, empty, first, last


def _labels(namespace: Namespace) -> dict[str, str]:
    """Namespace labels as Prometheus (hence OpenCost) names them."""
    return {re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in namespace.labels.items()}


def _pod_allocations(estate: Estate, cluster: Cluster, node: Node, namespace: Namespace, labels: dict[str, str],
                     pod: Pod, start: float, end: float, network: float, load_balancer: float) -> list[Allocation]:
    """One allocation per container; pod-level costs (PVs, network, LBs) are split evenly among the containers."""
    seconds = end - start
    share = 1 / len(pod.containers)
    pvs = {f"cluster={cluster.name}:name={pv.name}":
           (pv.size_bytes * seconds * share, pv.size_bytes / GIB * pv.price_per_gib_hour * seconds / HOUR * share)
           for pv in pod.pvs} if pod.pvs else {}
    pv_byte_seconds = sum(v[0] for v in pvs.values()) if pvs else 0.0
    pv_cost = sum(v[1] for v in pvs.values()) if pvs else 0.0
    # OpenCost leaves out the controller of a bare pod.
    controller = {"controller": pod.controller, "controllerKind": pod.controller_kind} if pod.controller else {}
    result = []
    for container in pod.containers:
        stream = container_stream(estate, cluster.name, namespace.name, pod.name, container.name)
        ca, cr, cu, cm, ra, rr, ru, rm = _integrate(container, start, end, estate.usage_period_seconds,
                                                    estate.usage_variation, stream)
        properties = {"cluster": cluster.name, "node": node.name, "container": container.name, **controller,
                      "namespace": namespace.name, "pod": pod.name, "providerID": node.provider_id,
                      "namespaceLabels": labels}
        result.append(Allocation(
            properties, start, end,
            cpu_core_seconds=ca, cpu_request_core_seconds=cr, cpu_usage_core_seconds=cu, cpu_usage_max=cm,
            cpu_cost=ca / HOUR * node.cpu_price_per_core_hour,
            ram_byte_seconds=ra, ram_request_byte_seconds=rr, ram_usage_byte_seconds=ru, ram_usage_max=rm,
            ram_cost=ra / HOUR / GIB * node.ram_price_per_gib_hour,
            pv_byte_seconds=pv_byte_seconds, pv_cost=pv_cost, pvs=pvs,
            network_cost=network * share, load_balancer_cost=load_balancer * share))
    return result


def cluster_allocations(estate: Estate, cluster: Cluster, start: float, end: float, *, node: str | None = None,
                        namespace: str | None = None, pod: str | None = None) -> list[Allocation]:
    """Container allocations (and ``__unmounted__`` ones) of ``cluster`` over [start, end), optionally filtered."""
    nodes = {n.name: n for n in cluster.nodes}
    lb_rates: dict[str, float] = defaultdict(float)
    for lb in cluster.load_balancers:
        lb_rates[lb.namespace] += lb.price_per_hour
    result: list[Allocation] = []
    for ns in cluster.namespaces:
        if namespace is not None and ns.name != namespace:
            continue
        runs = [(p, max(start, p.start), end if p.end is None else min(end, p.end)) for p in ns.pods]
        runs = [r for r in runs if r[2] > r[1]]
        network, lb = ns.network_cost_per_hour / HOUR, lb_rates[ns.name] / HOUR
        weights, empty, first, last = _shared_weights(runs, start, end)
        labels = _labels(ns)
        for (p, s, e), weight in zip(runs, weights):
            if (pod is None or p.name == pod) and (node is None or p.node == node):
                result.extend(_pod_allocations(estate, cluster, nodes[p.node], ns, labels, p, s, e,
                                               network * weight, lb * weight))
        if empty > 0 and (network or lb) and pod in (None, UNMOUNTED) and node is None:
            result.append(Allocation({"cluster": cluster.name, "namespace": ns.name, "pod": UNMOUNTED,
                                      "namespaceLabels": labels}, first, last,
                                     network_cost=network * empty, load_balancer_cost=lb * empty))
    return result


def node_cost(node: Node, start: float, end: float) -> tuple[float, float]:
    """(cpu, ram) cost of the node's full capacity over [start, end)."""
    hours = (end - start) / HOUR
    return (node.cpu_cores * node.cpu_price_per_core_hour * hours,
            node.ram_bytes / GIB * node.ram_price_per_gib_hour * hours)


def idle_allocation(cluster: Cluster, start: float, end: float, allocations: list[Allocation],
                    node: str | None = None) -> Allocation:
    """The ``__idle__`` allocation: node capacity (of ``node`` only, if given) not allocated to ``allocations``."""
    nodes = [n for n in cluster.nodes if node is None or n.name == node]
    names = {n.name for n in nodes}
    used = [a for a in allocations if a.properties.get("node") in names]
    properties: dict[str, Any] = {"cluster": cluster.name}
    if node is not None and nodes:
        properties.update(node=node, providerID=nodes[0].provider_id)
    return Allocation(
        properties, start, end,
        cpu_core_seconds=sum(n.cpu_cores for n in nodes) * (end - start) - sum(a.cpu_core_seconds for a in used),
        cpu_cost=sum(node_cost(n, start, end)[0] for n in nodes) - sum(a.cpu_cost for a in used),
        ram_byte_seconds=sum(n.ram_bytes for n in nodes) * (end - start) - sum(a.ram_byte_seconds for a in used),
        ram_cost=sum(node_cost(n, start, end)[1] for n in nodes) - sum(a.ram_cost for a in used))


def load_balancer_cost(cluster: Cluster, start: float, end: float) -> float:
    """Cost of all load balancers of the cluster over [start, end)."""
    return sum(lb.price_per_hour for lb in cluster.load_balancers) * (end - start) / HOUR


def find_cluster(estate: Estate, name: str) -> Cluster:
    """The cluster called ``name``; KeyError if there is none."""
    for cluster in estate.clusters:
        if cluster.name == name:
            return cluster
    raise KeyError(f"no cluster {name!r} in the estate")


def cluster_management_cost(estate: Estate, cluster: str, start: float, end: float) -> float:
    """The cluster's management fee over [start, end) (an asset, not part of any allocation)."""
    return find_cluster(estate, cluster).management_cost_per_hour * (end - start) / HOUR


def ground_truth(estate: Estate, start: float, end: float, *, cluster: str | None = None, node: str | None = None,
                 namespace: str | None = None, pod: str | None = None, include_idle: bool = False) -> Costs:
    """Exact costs over [start, end) of everything matching all the given filters.

    ``include_idle`` adds the idle cost of the matching clusters (or node); it has no
    meaning for a namespace or pod, so combining them is a ValueError.
    """
    if include_idle and (namespace is not None or pod is not None):
        raise ValueError("idle cost belongs to clusters and nodes, not to namespaces or pods")
    clusters = [find_cluster(estate, cluster)] if cluster is not None else estate.clusters
    cpu = ram = pv = network = lb = idle = 0.0
    for c in clusters:
        allocations = cluster_allocations(estate, c, start, end, node=node, namespace=namespace, pod=pod)
        for a in allocations:
            cpu += a.cpu_cost
            ram += a.ram_cost
            pv += a.pv_cost
            network += a.network_cost
            lb += a.load_balancer_cost
        if include_idle:
            idle += idle_allocation(c, start, end, allocations, node).total_cost
    return Costs(cpu=cpu, ram=ram, pv=pv, network=network, load_balancer=lb, idle=idle)


def usage_stats(estate: Estate, start: float, end: float, *, cluster: str | None = None,
                namespace: str | None = None, pod: str | None = None) -> dict[tuple[str, str, str, str], UsageStats]:
    """Per (cluster, namespace, pod, container) running inside [start, end): request and usage averages and peaks."""
    clusters = [find_cluster(estate, cluster)] if cluster is not None else estate.clusters
    result = {}
    for c in clusters:
        for a in cluster_allocations(estate, c, start, end, namespace=namespace, pod=pod):
            if "container" not in a.properties:
                continue  # __unmounted__ has no container
            seconds = a.end - a.start
            key = (c.name, a.properties["namespace"], a.properties["pod"], a.properties["container"])
            result[key] = UsageStats(a.cpu_request_core_seconds / seconds, a.cpu_usage_core_seconds / seconds,
                                     a.cpu_usage_max, a.ram_request_byte_seconds / seconds,
                                     a.ram_usage_byte_seconds / seconds, a.ram_usage_max)
    return result
