"""Declarative description of a simulated Kubernetes estate, its JSON form, and a seeded generator.

An estate is what a customer's Kubecost would observe: clusters of nodes with prices,
namespaces of pods with containers whose requests and usage may change at known instants.
Everything is plain data; the cost model lives in :mod:`devstack.simulator.model`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
MIB = 1024**2

# (unix_ts, cpu_request_cores, ram_request_bytes, cpu_usage_cores, ram_usage_bytes), in force from unix_ts on.
Change = tuple[float, float, float, float, float]
# (unix_ts, reason): the container's process ended there, as kube-state-metrics says why
# (``OOMKilled``, ``Error``, ``Completed``), and started again at once.
Restart = tuple[float, str]

# 2024-11-01T00:00:00Z: a fixed default so that a seed alone reproduces an estate.
DEFAULT_START = 1730419200


@dataclass
class Container:
    """One container; the request and usage fields hold the values in force before the first change.

    A spike is two changes: usage up at its start, back at its end. Limits (0: none) are
    what kube-state-metrics reports and CFS throttling is judged against; ``restarts`` reset
    the container's cAdvisor counters and leave its cost alone (the pod keeps running).
    """

    name: str
    cpu_request_cores: float
    ram_request_bytes: float
    cpu_usage_cores: float
    ram_usage_bytes: float
    changes: list[Change] = field(default_factory=list)
    cpu_limit_cores: float = 0.0
    ram_limit_bytes: float = 0.0
    restarts: list[Restart] = field(default_factory=list)

    def __post_init__(self) -> None:
        # JSON gives lists; the model relies on time-ordered tuples.
        self.changes = sorted(tuple(float(v) for v in c) for c in self.changes)  # type: ignore[misc]
        self.restarts = sorted((float(at), str(reason)) for at, reason in self.restarts)


@dataclass
class PV:
    """A persistent volume mounted by one pod; ``local_path`` set: a local PV, bound to its node."""

    name: str
    size_bytes: float
    price_per_gib_hour: float
    local_path: str = ""


@dataclass
class Pod:
    """A pod on ``node``; it runs over [start, end), ``end=None`` meaning still running."""

    name: str
    node: str
    controller_kind: str
    controller: str
    start: float
    end: float | None
    containers: list[Container]
    pvs: list[PV] = field(default_factory=list)
    # As kube-state-metrics exports them: only cluster-autoscaler's safe-to-evict matters here.
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Namespace:
    """A namespace; ``network_cost_per_hour`` is its egress bill, shared by its running pods."""

    name: str
    labels: dict[str, str]
    pods: list[Pod]
    network_cost_per_hour: float = 0.0


@dataclass
class LoadBalancer:
    """A cloud load balancer whose cost belongs to ``namespace``."""

    name: str
    namespace: str
    price_per_hour: float


@dataclass
class Node:
    """A node, always up; its full capacity is billed. Nodes of one ``instance_type``
    (its ``node.kubernetes.io/instance-type`` label; "" none) have the same capacity and prices."""

    name: str
    cpu_cores: float
    ram_bytes: float
    cpu_price_per_core_hour: float
    ram_price_per_gib_hour: float
    provider_id: str
    instance_type: str = ""


@dataclass
class Cluster:
    """One Kubernetes cluster; the management fee is billed outside allocations (an asset)."""

    name: str
    management_cost_per_hour: float
    nodes: list[Node]
    namespaces: list[Namespace]
    load_balancers: list[LoadBalancer] = field(default_factory=list)


@dataclass
class Estate:
    """All clusters of a customer.

    Usage is piecewise constant over ``usage_period_seconds`` periods (aligned on the Unix
    epoch): within period ``k`` a container uses its base usage times a factor in
    ``[1 - usage_variation, 1 + usage_variation]`` drawn from a hash of (seed, container, k).
    """

    seed: int
    clusters: list[Cluster]
    usage_period_seconds: float = 3600.0
    usage_variation: float = 0.0


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _check_name(kind: str, name: str, *, subdomain: bool = False) -> None:
    pattern, limit = (_DNS_SUBDOMAIN, 253) if subdomain else (_DNS_LABEL, 63)
    if not isinstance(name, str) or len(name) > limit or not pattern.match(name):
        raise ValueError(f"invalid Kubernetes {kind} name: {name!r}")


def _check_unique(kind: str, names: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {kind} {name!r} in {where}")
        seen.add(name)


def validate(estate: Estate) -> None:
    """Raise ValueError unless ``estate`` is consistent (valid unique names, known nodes, sane numbers)."""
    if estate.usage_period_seconds <= 0:
        raise ValueError("usage_period_seconds must be > 0")
    if not 0 <= estate.usage_variation < 1:
        raise ValueError("usage_variation must be in [0, 1)")
    _check_unique("cluster", [c.name for c in estate.clusters], "estate")
    for cluster in estate.clusters:
        _check_name("cluster", cluster.name)
        _check_unique("node", [n.name for n in cluster.nodes], cluster.name)
        _check_unique("namespace", [ns.name for ns in cluster.namespaces], cluster.name)
        _check_unique("load balancer", [lb.name for lb in cluster.load_balancers], cluster.name)
        _check_unique("PV", [pv.name for ns in cluster.namespaces for p in ns.pods for pv in p.pvs], cluster.name)
        nodes = {n.name for n in cluster.nodes}
        namespaces = {ns.name for ns in cluster.namespaces}
        for node in cluster.nodes:
            _check_name("node", node.name, subdomain=True)
            if min(node.cpu_cores, node.ram_bytes, node.cpu_price_per_core_hour, node.ram_price_per_gib_hour) < 0:
                raise ValueError(f"node {node.name!r} has a negative capacity or price")
        for lb in cluster.load_balancers:
            if lb.namespace not in namespaces:
                raise ValueError(f"load balancer {lb.name!r} names unknown namespace {lb.namespace!r}")
        for ns in cluster.namespaces:
            _check_name("namespace", ns.name)
            _check_unique("pod", [p.name for p in ns.pods], f"{cluster.name}/{ns.name}")
            for pod in ns.pods:
                where = f"{cluster.name}/{ns.name}/{pod.name}"
                _check_name("pod", pod.name, subdomain=True)
                if pod.node not in nodes:
                    raise ValueError(f"pod {where} runs on unknown node {pod.node!r}")
                if pod.end is not None and pod.end <= pod.start:
                    raise ValueError(f"pod {where} ends before it starts")
                if not pod.containers:
                    raise ValueError(f"pod {where} has no container")
                _check_unique("container", [c.name for c in pod.containers], where)
                for c in pod.containers:
                    _check_name("container", c.name)
                    values = [c.cpu_request_cores, c.ram_request_bytes, c.cpu_usage_cores, c.ram_usage_bytes,
                              c.cpu_limit_cores, c.ram_limit_bytes]
                    if min(values + [v for change in c.changes for v in change[1:]]) < 0:
                        raise ValueError(f"container {where}/{c.name} has a negative request or usage")
                for pv in pod.pvs:
                    _check_name("PV", pv.name, subdomain=True)


def to_json(estate: Estate) -> str:
    """Serialise ``estate`` to JSON text."""
    return json.dumps(dataclasses.asdict(estate), indent=1)


def _pod(raw: dict[str, Any]) -> Pod:
    containers = [Container(**c) for c in raw["containers"]]
    pvs = [PV(**v) for v in raw.get("pvs", [])]
    return Pod(**{**raw, "containers": containers, "pvs": pvs})


def from_json(text: str) -> Estate:
    """Parse and validate an estate written by :func:`to_json`; ValueError if malformed."""
    try:
        raw: dict[str, Any] = json.loads(text)
        estate = Estate(
            seed=int(raw["seed"]),
            usage_period_seconds=float(raw.get("usage_period_seconds", 3600.0)),
            usage_variation=float(raw.get("usage_variation", 0.0)),
            clusters=[
                Cluster(
                    name=c["name"],
                    management_cost_per_hour=c["management_cost_per_hour"],
                    nodes=[Node(**n) for n in c["nodes"]],
                    load_balancers=[LoadBalancer(**lb) for lb in c.get("load_balancers", [])],
                    namespaces=[
                        Namespace(
                            name=ns["name"],
                            labels=ns.get("labels", {}),
                            network_cost_per_hour=ns.get("network_cost_per_hour", 0.0),
                            pods=[_pod(p) for p in ns["pods"]],
                        )
                        for ns in c["namespaces"]
                    ],
                )
                for c in raw["clusters"]
            ],
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"invalid estate spec: {exc!r}") from None
    validate(estate)
    return estate


# Typical list prices (AWS on-demand split per resource, EBS, ELB, EKS fee).
_CPU_PRICE = 0.031611
_RAM_PRICE = 0.004237
_PV_PRICES = (0.000137, 0.000110)
_LB_PRICES = (0.025, 0.0225)
_MANAGEMENT_FEES = (0.10, 0.10, 0.0)
_NETWORK_RATES = (0.0, 0.0, 0.002, 0.005, 0.012)
_REGIONS = ("eu-west-1", "us-east-1", "ap-southeast-2", "us-west-2")
_ENVIRONMENTS = ("prod", "staging", "dev")
# "default" and "kube-system" come first in every cluster so that namespace names collide across clusters.
_NAMESPACES = ("default", "kube-system", "monitoring", "ingress-nginx", "payments", "checkout", "search",
               "analytics", "batch-jobs", "ml-training", "web", "data-pipeline", "logging", "cert-manager")
_APPS = ("api", "web", "worker", "redis", "postgres", "coredns", "kafka", "nginx", "scheduler", "exporter",
         "frontend", "cart")
_SIDECARS = ("istio-proxy", "metrics", "log-shipper")
_KINDS = ("deployment", "statefulset", "daemonset", "job", "")
_KIND_WEIGHTS = (55, 15, 10, 10, 10)
_CPU_REQUESTS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
_RAM_REQUESTS = tuple(m * MIB for m in (64, 128, 256, 512, 1024, 2048))
_NODE_CORES = (2, 4, 8, 16, 32, 64, 96)
# AWS's size names of those core counts, and instance families by GiB per core, each with its
# price factor (on the list prices above): a type's capacity and prices follow from its name.
_SIZES = {2: "large", 4: "xlarge", 8: "2xlarge", 16: "4xlarge", 32: "8xlarge", 64: "16xlarge", 96: "24xlarge"}
_FAMILIES = {4: (("m6a", 0.9), ("m5", 1.0), ("m6i", 1.05), ("m7i", 1.1), ("m7a", 1.2)),
             8: (("r6a", 0.88), ("r5", 0.98), ("r6i", 1.03), ("r7i", 1.08), ("r7a", 1.18))}
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
_HEADROOM = 0.85  # nodes are sized so peak allocation stays below this share of capacity: idle is never negative


def _suffix(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(length))


def _usage_ratio(rng: random.Random) -> float:
    """Usage ÷ request: over-provisioned, about right, or under-provisioned (usage above request)."""
    low, high = rng.choice(((0.05, 0.4), (0.6, 0.95), (1.1, 1.8)))
    return rng.uniform(low, high)


def _container(rng: random.Random, name: str, sidecar: bool, run_start: float, run_end: float,
               changes: bool) -> Container:
    best_effort = rng.random() < 0.05  # no requests at all: efficiency then rests on usage alone
    sizes = 3 if sidecar else len(_CPU_REQUESTS)  # sidecars ask for little
    cpu = 0.0 if best_effort else rng.choice(_CPU_REQUESTS[:sizes])
    ram = 0.0 if best_effort else float(rng.choice(_RAM_REQUESTS[:sizes]))
    cpu_use = (cpu or 0.1) * _usage_ratio(rng)
    ram_use = (ram or 128 * MIB) * _usage_ratio(rng)
    steps: list[Change] = []
    if changes and run_end - run_start > 2 and rng.random() < 0.3:
        for _ in range(rng.randint(1, 2)):
            scale = rng.choice((0.5, 2.0))
            steps.append((float(rng.randint(int(run_start) + 1, int(run_end) - 1)), cpu * scale, ram * scale,
                          (cpu * scale or 0.1) * _usage_ratio(rng), (ram * scale or 128 * MIB) * _usage_ratio(rng)))
    return Container(name, cpu, ram, cpu_use, ram_use, steps)


def _peak(container: Container, variation: float) -> tuple[float, float]:
    """Highest allocated (cores, bytes) the container can reach, whatever the usage factor."""
    states = [(container.cpu_request_cores, container.ram_request_bytes, container.cpu_usage_cores,
               container.ram_usage_bytes)] + [c[1:] for c in container.changes]
    return (max(max(s[0], s[2] * (1 + variation)) for s in states),
            max(max(s[1], s[3] * (1 + variation)) for s in states))


def _pod_name(rng: random.Random, kind: str, app: str, ordinal: int) -> tuple[str, str]:
    """(controller, pod name) following the naming scheme of each controller kind."""
    if kind == "deployment":
        return app, f"{app}-{_suffix(rng, 10)}-{_suffix(rng, 5)}"
    if kind == "statefulset":
        return app, f"{app}-{ordinal}"
    if kind == "job":
        controller = f"{app}-{rng.randint(10**7, 10**8 - 1)}"
        return controller, f"{controller}-{_suffix(rng, 5)}"
    return (app if kind else ""), f"{app}-{_suffix(rng, 5)}"


def _pods(rng: random.Random, count: int, nodes: int, start: float, span: float,
          changes: bool) -> list[tuple[int, Pod]]:
    """``count`` pods of one namespace, each with the index of the node it runs on."""
    pods: list[tuple[int, Pod]] = []
    names: set[str] = set()
    ordinals: dict[str, int] = {}
    while len(pods) < count:
        kind = rng.choices(_KINDS, _KIND_WEIGHTS)[0]
        app = rng.choice(_APPS)
        controller, name = _pod_name(rng, kind, app, ordinals.get(app, 0))
        if name in names:
            continue
        ordinals[app] = ordinals.get(app, 0) + 1
        names.add(name)
        # Most pods predate the covered time; some start inside it; jobs and a few others end inside it.
        before = rng.random() < 0.7 and kind != "job"
        pod_start = float(start - rng.randint(0, 30 * 86400) if before else start + rng.randint(0, int(span) - 3600))
        end: float | None = None
        if kind == "job":
            end = pod_start + rng.randint(600, 6 * 3600)
        elif rng.random() < 0.1:
            end = float(max(pod_start, start) + rng.randint(600, int(span)))
        run_end = end if end is not None else start + span
        run_start = max(pod_start, start)
        sidecars = _SIDECARS[: rng.choices((0, 1, 2), (6, 3, 1))[0]]
        containers = [_container(rng, c, c in sidecars, run_start, run_end, changes) for c in (app, *sidecars)]
        pvs = []
        if kind == "statefulset":
            pvs.append(PV(f"pvc-{rng.getrandbits(128):032x}", float(rng.choice((8, 20, 50, 100)) * GIB), rng.choice(_PV_PRICES)))
        pods.append((rng.randrange(nodes), Pod(name, "", kind, controller, pod_start, end, containers, pvs)))
    return pods


def _nodes(rng: random.Random, cluster_index: int, region: str, placed: list[list[Pod]],
           variation: float) -> list[Node]:
    """Nodes big enough for the peak allocation of the pods placed on each: the smallest size
    of an instance family (GiB per core, price factor) that holds it."""
    nodes = []
    for j, pods in enumerate(placed):
        peaks = [_peak(c, variation) for p in pods for c in p.containers]
        need_cpu = sum(p[0] for p in peaks) / _HEADROOM
        need_ram = sum(p[1] for p in peaks) / _HEADROOM
        gib_per_core = rng.choice((4, 8))
        families = _FAMILIES[gib_per_core]
        family, price = families[int(rng.random() * len(families))]  # one draw, as the price's was
        cores = next((c for c in _NODE_CORES if c >= need_cpu and c * gib_per_core * GIB >= need_ram), None)
        size = _SIZES.get(cores or 0)
        if cores is None:  # past the largest size: a custom one, named by its cores
            cores = max(int(need_cpu) + 1, math.ceil(need_ram / GIB / gib_per_core))
            size = f"{cores}c"
        name = f"ip-10-{cluster_index % 256}-{j // 256}-{j % 256}.{region}.compute.internal"
        nodes.append(Node(name, float(cores), float(cores * gib_per_core * GIB), round(_CPU_PRICE * price, 6),
                          round(_RAM_PRICE * price, 6), f"i-{rng.getrandbits(68):017x}", f"{family}.{size}"))
    return nodes


def generate_estate(seed: int, clusters: int = 1, namespaces_per_cluster: int = 3, pods_per_namespace: int = 4,
                    start: float = DEFAULT_START, nodes_per_cluster: int = 3, changes: bool = True,
                    span_seconds: float = 7 * 86400, usage_variation: float = 0.25) -> Estate:
    """A varied, realistic estate, identical for identical arguments.

    ``[start, start + span_seconds)`` is the covered time: inside it some pods start or
    end and some containers change requests and usage (when ``changes``).
    """
    if min(clusters, namespaces_per_cluster, pods_per_namespace, nodes_per_cluster) < 1 or span_seconds < 3600:
        raise ValueError("counts must be >= 1 and span_seconds >= 3600")
    rng = random.Random(seed)
    result = []
    for i in range(clusters):
        region = rng.choice(_REGIONS)
        name = f"{_ENVIRONMENTS[i % len(_ENVIRONMENTS)]}-{region}-c{i + 1}"
        extra = [f"team-{k:04d}" for k in range(max(0, namespaces_per_cluster - len(_NAMESPACES)))]
        ns_names = (list(_NAMESPACES[:2]) + rng.sample(_NAMESPACES[2:], len(_NAMESPACES) - 2) + extra)
        placed: list[list[Pod]] = [[] for _ in range(nodes_per_cluster)]
        namespaces = []
        for ns_name in ns_names[:namespaces_per_cluster]:
            pods = []
            for node_index, pod in _pods(rng, pods_per_namespace, nodes_per_cluster, start, span_seconds, changes):
                placed[node_index].append(pod)
                pods.append(pod)
            labels = {"kubernetes.io/metadata.name": ns_name, "team": rng.choice(("platform", "core", "data"))}
            namespaces.append(Namespace(ns_name, labels, pods, rng.choice(_NETWORK_RATES)))
        nodes = _nodes(rng, i, region, placed, usage_variation)
        for node, pods in zip(nodes, placed):
            for pod in pods:
                pod.node = node.name
        names = [ns.name for ns in namespaces]
        lb_namespace = "ingress-nginx" if "ingress-nginx" in names else rng.choice(names)
        lbs = [LoadBalancer(f"{lb_namespace}-lb-{k}", lb_namespace, rng.choice(_LB_PRICES))
               for k in range(rng.randint(1, 2))]
        result.append(Cluster(name, rng.choice(_MANAGEMENT_FEES), nodes, namespaces, lbs))
    _limits_and_restarts(seed, result, start, span_seconds)
    _node_bound_storage(seed, result)
    estate = Estate(seed, result, usage_period_seconds=3600.0, usage_variation=usage_variation)
    validate(estate)
    return estate


def _node_bound_storage(seed: int, clusters: list[Cluster]) -> None:
    """A quarter of the StatefulSets' volumes local PVs; a tenth of the Deployments annotated
    safe-to-evict "false" (a cache on an emptyDir they would lose) and a tenth "true", on every
    replica, as a pod template gives them. Drawn from their own generator, as the limits."""
    rng = random.Random(seed ^ 0x5707A6E)
    for cluster in clusters:
        for namespace in cluster.namespaces:
            verdicts: dict[str, str | None] = {}
            for pod in namespace.pods:
                for pv in pod.pvs:
                    if rng.random() < 0.25:
                        pv.local_path = f"/mnt/disks/{pv.name}"
                if pod.controller_kind == "deployment":
                    if pod.controller not in verdicts:
                        draw = rng.random()
                        verdicts[pod.controller] = "false" if draw < 0.1 else "true" if draw < 0.2 else None
                    if verdicts[pod.controller] is not None:
                        pod.annotations = {SAFE_TO_EVICT: verdicts[pod.controller]}


def _limits_and_restarts(seed: int, clusters: list[Cluster], start: float, span: float) -> None:
    """Limits on half the containers with requests, a restart inside the covered time for one
    in twenty (OOMKilled when it has a memory limit). Drawn from their own generator, so the
    rest of an estate (and its costs) is what the same seed always gave."""
    rng = random.Random(seed ^ 0x11A175)
    for cluster in clusters:
        for namespace in cluster.namespaces:
            for pod in namespace.pods:
                run_end = start + span if pod.end is None else pod.end
                for c in pod.containers:
                    if c.cpu_request_cores and rng.random() < 0.5:
                        c.cpu_limit_cores = c.cpu_request_cores * rng.choice((1.0, 1.5, 2.0))
                        c.ram_limit_bytes = c.ram_request_bytes * rng.choice((1.0, 1.5, 2.0))
                    run_start = max(pod.start, start)
                    if run_end - run_start > 2 and rng.random() < 0.05:
                        reason = "OOMKilled" if c.ram_limit_bytes else "Error"
                        c.restarts = [(float(rng.randint(int(run_start) + 1, int(run_end) - 1)), reason)]
