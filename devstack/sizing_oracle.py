"""The exhaustive optimum of cluster sizing on small clusters, a plan checker, and random small clusters.

Tooling for ``tests/test_cluster_sizing.py`` and ``scripts/bench_cluster_sizing.py``. Written
from the contract in ``k8scost.cluster_sizing``'s docstring, not from its code: demands,
the DaemonSet overhead, pinning and fits are recomputed here from the raw inputs.

``optimum`` tries every assignment of the movable pods to the kept nodes and to new nodes
(new nodes unlabelled: a pod opens at most one new node, so each partition is seen once),
each new node of the cheapest type holding its load, padded to the minimum node count with
the cheapest type holding the overhead; a partial assignment that already costs the best
found is cut (adding pods never makes a node cheaper). Exponential: keep to ~8 movable pods.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from k8scost.cluster_sizing import Container, Node, NodeType, Pod, Profile, SizingPlan
from k8scost.rightsizing import GIB, HOURS_PER_MONTH

SLACK = 1e-9  # the contract's relative slack


def demand(pod: Pod) -> tuple[float, float]:
    cpu = sum(c.cpu_request if c.cpu_recommended is None else c.cpu_recommended for c in pod.containers)
    memory = sum(c.memory_request if c.memory_recommended is None else c.memory_recommended for c in pod.containers)
    return cpu, memory


def overhead(pods: Sequence[Pod]) -> tuple[float, float]:
    """Σ over DaemonSets of the largest demand of its pods, per resource."""
    per_ds: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for pod in pods:
        if pod.controller_kind.lower() == "daemonset":
            per_ds.setdefault((pod.namespace, pod.controller), []).append(demand(pod))
    return (sum(max(d[0] for d in ds) for ds in per_ds.values()),
            sum(max(d[1] for d in ds) for ds in per_ds.values()))


def is_pinned(pod: Pod) -> bool:
    return pod.controller_kind.lower() != "daemonset" and (pod.controller == "" or pod.local_storage)


def pinned_loads(pods: Sequence[Pod], ds: tuple[float, float]) -> dict[str, list[float]]:
    """Per node that keeps pinned pods: its CPU and memory load, the DaemonSets' ``ds`` included."""
    kept: dict[str, list[float]] = {}
    for pod in pods:
        if is_pinned(pod):
            load = kept.setdefault(pod.node, [ds[0], ds[1]])
            cpu, memory = demand(pod)
            load[0] += cpu
            load[1] += memory
    return kept


def fits(t: NodeType, u: float, cpu: float, memory: float) -> bool:
    """(cpu, memory), the overhead included, within the target on a node of type ``t``."""
    return cpu <= u * t.cpu_cores * (1 + SLACK) and memory <= u * t.memory_bytes * (1 + SLACK)


def price(t: NodeType) -> float:
    return t.cpu_cores * t.cpu_price_per_core_hour + t.memory_bytes / GIB * t.ram_price_per_gib_hour


def optimum(pods: Sequence[Pod], nodes: Sequence[Node], profile: Profile,
            candidate_types: Sequence[NodeType]) -> float | None:
    """The least hourly cost of any plan (None: some movable pod fits no type)."""
    u = profile.target_utilization
    ds = overhead(pods)
    types = sorted(candidate_types, key=price)
    node_type = {n.name: n.node_type for n in nodes}
    kept = pinned_loads(pods, ds)
    kept_names = sorted(kept)
    kept_cost = sum(price(node_type[name]) for name in kept_names)
    movable = [demand(p) for p in pods if p.controller_kind.lower() != "daemonset" and not is_pinned(p)]
    movable.sort(reverse=True)  # big pods first: earlier cuts

    def cheapest(cpu: float, memory: float) -> NodeType | None:
        return next((t for t in types if fits(t, u, cpu, memory)), None)

    if any(cheapest(ds[0] + c, ds[1] + m) is None for c, m in movable):
        return None
    padding = cheapest(*ds)
    best = [float("inf")]
    kept_loads = [kept[name] for name in kept_names]
    new_loads: list[list[float]] = []

    def cost_of_new() -> float:
        return sum(price(cheapest(c, m)) for c, m in new_loads)  # type: ignore[arg-type]

    def visit(i: int) -> None:
        partial = kept_cost + cost_of_new()
        if partial >= best[0]:
            return
        if i == len(movable):
            count = len(kept_loads) + len(new_loads)
            if count < profile.min_nodes:
                if padding is None:
                    return
                partial += (profile.min_nodes - count) * price(padding)
            best[0] = min(best[0], partial)
            return
        cpu, memory = movable[i]
        for j, load in enumerate(kept_loads):
            if fits(node_type[kept_names[j]], u, load[0] + cpu, load[1] + memory):
                load[0] += cpu
                load[1] += memory
                visit(i + 1)
                load[0] -= cpu
                load[1] -= memory
        for load in new_loads:
            if cheapest(load[0] + cpu, load[1] + memory) is not None:
                load[0] += cpu
                load[1] += memory
                visit(i + 1)
                load[0] -= cpu
                load[1] -= memory
        new_loads.append([ds[0] + cpu, ds[1] + memory])
        visit(i + 1)
        new_loads.pop()

    visit(0)
    return best[0] if best[0] < float("inf") else None


def violations(plan: SizingPlan, pods: Sequence[Pod], nodes: Sequence[Node],
               candidate_types: Sequence[NodeType]) -> list[str]:
    """What is wrong with ``plan``; empty when it keeps the contract."""
    u = plan.profile.target_utilization
    ds = overhead(pods)
    by_key = {p.key: p for p in pods}
    current = {n.name: n.node_type for n in nodes}
    problems = []
    placed: list[str] = []
    for node in plan.nodes:
        placed += node.pods
        members = [by_key[k] for k in node.pods]
        cpu = ds[0] + sum(demand(p)[0] for p in members)
        memory = ds[1] + sum(demand(p)[1] for p in members)
        where = node.kept or f"new {node.node_type.name}"
        if abs(cpu - node.cpu) > 1e-9 * max(1.0, cpu) or abs(memory - node.memory) > 1e-9 * max(1.0, memory):
            problems.append(f"{where}: load {node.cpu, node.memory} is not its pods plus every DaemonSet {cpu, memory}")
        if any(p.controller_kind.lower() == "daemonset" for p in members):
            problems.append(f"{where}: a DaemonSet pod placed as a pod")
        if node.kept is None:
            if node.node_type not in candidate_types:
                problems.append(f"{where}: not a candidate type")
            if any(is_pinned(p) for p in members):
                problems.append(f"{where}: holds a pinned pod")
        else:
            if current.get(node.kept) != node.node_type:
                problems.append(f"{where}: kept with another type")
            if any(is_pinned(p) and p.node != node.kept for p in members):
                problems.append(f"{where}: holds a pod pinned elsewhere")
        within = fits(node.node_type, u, cpu, memory)
        if not within and not (node.kept is not None and all(is_pinned(p) for p in members)):
            problems.append(f"{where}: over the target {u} with {cpu, memory}")
        if node.over_target == within:
            problems.append(f"{where}: over_target says {node.over_target}")
    expected = sorted(p.key for p in pods if p.controller_kind.lower() != "daemonset")
    if sorted(placed + list(plan.unplaceable)) != expected:
        problems.append("pods placed + unplaceable are not every non-DaemonSet pod exactly once")
    if not plan.unplaceable:
        if len(plan.nodes) < plan.profile.min_nodes:
            problems.append(f"{len(plan.nodes)} nodes, fewer than {plan.profile.min_nodes}")
        cost = sum(price(n.node_type) for n in plan.nodes)
        current_cost = sum(price(n.node_type) for n in nodes)
        if plan.hourly_cost is None or abs(plan.hourly_cost - cost) > 1e-9:
            problems.append(f"hourly cost {plan.hourly_cost} is not its nodes' {cost}")
        saving = (current_cost - cost) * HOURS_PER_MONTH
        if plan.monthly_saving is None or abs(plan.monthly_saving - saving) > 1e-6:
            problems.append(f"monthly saving {plan.monthly_saving} is not {saving}")
    return problems


# A small catalogue in the exporter's shape: AWS us-east-1 on-demand list prices (m5, c5, r5)
# split into per-core and per-GiB prices with the simulator's ratio (devstack/simulator/spec.py).
_CPU_PRICE, _RAM_PRICE = 0.031611, 0.004237


def catalogue_type(name: str, cores: float, gib: float, hourly: float) -> NodeType:
    """A node type priced ``hourly`` in total, split per resource as the simulator does."""
    factor = hourly / (cores * _CPU_PRICE + gib * _RAM_PRICE)
    return NodeType(name, float(cores), float(gib * GIB), _CPU_PRICE * factor, _RAM_PRICE * factor)


CATALOGUE = tuple(catalogue_type(*row) for row in (
    ("m5.large", 2, 8, 0.096), ("m5.xlarge", 4, 16, 0.192), ("m5.2xlarge", 8, 32, 0.384),
    ("m5.4xlarge", 16, 64, 0.768), ("m5.8xlarge", 32, 128, 1.536),
    ("c5.xlarge", 4, 8, 0.17), ("c5.2xlarge", 8, 16, 0.34), ("c5.4xlarge", 16, 32, 0.68),
    ("r5.large", 2, 16, 0.126), ("r5.xlarge", 4, 32, 0.252), ("r5.2xlarge", 8, 64, 0.504),
    ("r5.4xlarge", 16, 128, 1.008),
))


def random_cluster(rng: random.Random, max_movable: int = 7) -> tuple[list[Pod], list[Node], list[NodeType], Profile]:
    """A small cluster: 2–3 candidate types, 0–2 DaemonSets, 2–``max_movable`` movable pods, maybe a pinned one.

    Pod sizes are drawn against the smallest candidate, so that packings are tight and mixes matter.
    """
    types = rng.sample(CATALOGUE[:2] + CATALOGUE[5:7] + CATALOGUE[8:10], rng.randint(2, 3))
    small = min(types, key=lambda t: t.cpu_cores)
    profile = Profile("random", rng.choice((0.5, 0.65, 0.8)), rng.randint(0, 3))
    nodes = [Node(f"n{i}", rng.choice(types)) for i in range(rng.randint(1, 3))]
    pods = []
    for d in range(rng.randint(0, 2)):
        for node in nodes:
            pods.append(Pod("kube-system", f"ds{d}-{node.name}", node.name, "daemonset", f"ds{d}",
                            (Container("c", 0.05 * rng.randint(1, 3), 0.05 * GIB * rng.randint(1, 4)),)))
    for i in range(rng.randint(2, max_movable)):
        cpu = round(small.cpu_cores * rng.uniform(0.05, 0.55), 3)
        memory = round(small.memory_bytes * rng.uniform(0.02, 0.5))
        recommended = rng.random() < 0.4
        container = Container("c", cpu, memory, cpu * 0.6 if recommended else None, memory * 0.8 if recommended else None)
        pods.append(Pod("apps", f"p{i}", rng.choice(nodes).name, "deployment", f"d{i % 3}", (container,),
                        local_storage=rng.random() < 0.05))
    if rng.random() < 0.4:
        pods.append(Pod("apps", "pinned", nodes[0].name, "", "", (Container("c", 0.3, 0.5 * GIB),)))
    return pods, nodes, types, profile


def lower_bound(pods: Sequence[Pod], nodes: Sequence[Node], profile: Profile,
                candidate_types: Sequence[NodeType]) -> float:
    """A lower bound of any plan's hourly cost, for clusters too large for ``optimum``.

    The kept nodes, plus the cheapest fractional cover of the movable demand (C, M) their
    spare under the target cannot take: x_t ≥ 0 nodes of type t with Σ x_t room_cpu(t) ≥ C
    and Σ x_t room_memory(t) ≥ M (room: u × allocatable − overhead). A linear programme of
    two constraints has an optimal vertex using at most two types: each type alone and each
    pair with both constraints tight are tried. At least the kept nodes plus the cheapest
    type up to the minimum node count, too.
    """
    u = profile.target_utilization
    ds = overhead(pods)
    node_type = {n.name: n.node_type for n in nodes}
    kept = pinned_loads(pods, ds)
    kept_cost = sum(price(node_type[name]) for name in kept)
    spare_cpu = sum(max(0.0, u * node_type[name].cpu_cores - load[0]) for name, load in kept.items())
    spare_memory = sum(max(0.0, u * node_type[name].memory_bytes - load[1]) for name, load in kept.items())
    movable = [demand(p) for p in pods if p.controller_kind.lower() != "daemonset" and not is_pinned(p)]
    need_cpu = max(0.0, sum(c for c, _ in movable) - spare_cpu)
    need_memory = max(0.0, sum(m for _, m in movable) - spare_memory)
    rooms = [(price(t), u * t.cpu_cores - ds[0], u * t.memory_bytes - ds[1]) for t in candidate_types]
    rooms = [r for r in rooms if r[1] > 0 and r[2] > 0]
    cover = 0.0
    if need_cpu or need_memory:
        cover = min(p * max(need_cpu / rc, need_memory / rm) for p, rc, rm in rooms)
        for (p1, c1, m1), (p2, c2, m2) in ((a, b) for i, a in enumerate(rooms) for b in rooms[i + 1:]):
            det = c1 * m2 - c2 * m1
            if det:
                x1 = (need_cpu * m2 - c2 * need_memory) / det
                x2 = (c1 * need_memory - need_cpu * m1) / det
                if x1 >= 0 and x2 >= 0:
                    cover = min(cover, p1 * x1 + p2 * x2)
    floor = kept_cost + max(0, profile.min_nodes - len(kept)) * min(p for p, _, _ in rooms) if rooms else kept_cost
    return max(kept_cost + cover, floor)
