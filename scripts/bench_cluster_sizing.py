"""Cluster sizing of a 500-node / 20,000-pod cluster (wall time), and its gap to the optimum on small clusters.

    .venv/bin/python scripts/bench_cluster_sizing.py [--nodes 500] [--pods 20000] [--samples 300] [--seed 1]

The large cluster (seeded): NODES current nodes of four AWS types (m5.2xlarge 25 %,
m5.4xlarge 40 %, c5.4xlarge 20 %, r5.2xlarge 15 %), 5 DaemonSets (a pod on every node), and
PODS pods in all: deployments of 2–10 replicas (88 % of the other pods; 1 % of them with
node-local storage), StatefulSets of 1–3 replicas with a PV (6 %), jobs (5 %), pods without
controller (1 %); 1–3 containers each, requests drawn from the simulator's sizes
(devstack/simulator/spec.py, skewed to the small ones; sidecars from the three smallest),
70 % of containers with a rightsizing recommendation (request × the simulator's usage ratio
/ 0.7). The script prints the share of allocatable capacity requested and sized.
Candidates: the 12 types of ``devstack.sizing_oracle.CATALOGUE``. Each profile is sized
once (the job's call, ``k8scost.cluster_sizing.size_cluster``), timed (wall and CPU: the
machine's cores are shared), and again with the dominant order alone; each plan's cost is
set beside a lower bound of the optimum (``devstack.sizing_oracle.lower_bound``, a linear
relaxation), the optimum itself being out of reach at that size. Spot readiness is
assessed once, timed.

The gap: SAMPLES small clusters (``devstack.sizing_oracle.random_cluster``: 2–3 types, 2–7
movable pods, DaemonSets, pinned pods, a random profile), each sized by the heuristic and
by exhaustive search; the gap is (heuristic − optimum) ÷ optimum of the hourly cost, kept
nodes included, for all orders and for the dominant order alone (plain first-fit decreasing
by dominant share, same bases and downsizing: the baseline shown beside, the issue naming no
anchor). Every plan is checked against the contract (``devstack.sizing_oracle.violations``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.sizing_oracle import CATALOGUE, lower_bound, optimum, random_cluster, violations
from k8scost.cluster_sizing import ORDERS, PROFILES, Container, Node, Pod, size_cluster
from k8scost.spot_readiness import assess

MIB = 1024**2
_BY_NAME = {t.name: t for t in CATALOGUE}
_CURRENT_TYPES = (("m5.2xlarge", 25), ("m5.4xlarge", 40), ("c5.4xlarge", 20), ("r5.2xlarge", 15))
_CPU = ((0.05, 45), (0.1, 30), (0.25, 15), (0.5, 7), (1.0, 2), (2.0, 1))  # cores, weight
_MEMORY = ((64, 10), (128, 15), (256, 25), (512, 25), (1024, 15), (2048, 10))  # MiB, weight
_DAEMONSETS = (("log-shipper", 0.1, 200), ("node-exporter", 0.05, 64), ("kube-proxy", 0.1, 128),
               ("cni", 0.1, 256), ("csi-node", 0.05, 128))


def _pick(rng: random.Random, table: tuple[tuple[float, int], ...]) -> float:
    return rng.choices([v for v, _ in table], [w for _, w in table])[0]


def _container(rng: random.Random, name: str, sidecar: bool) -> Container:
    sizes = 3 if sidecar else len(_CPU)  # sidecars ask for little, as in the simulator
    cpu = _pick(rng, _CPU[:sizes])
    memory = _pick(rng, _MEMORY[:sizes]) * MIB
    if rng.random() < 0.7:
        ratio = rng.choice(((0.05, 0.4), (0.6, 0.95), (1.1, 1.8)))  # the simulator's usage ÷ request
        return Container(name, cpu, memory, max(0.01, cpu * rng.uniform(*ratio) / 0.7),
                         max(20 * MIB, memory * rng.uniform(*ratio) / 0.7))
    return Container(name, cpu, memory)


def large_cluster(seed: int, node_count: int, pod_count: int) -> tuple[list[Pod], list[Node]]:
    rng = random.Random(seed)
    names, weights = zip(*_CURRENT_TYPES)
    nodes = [Node(f"node-{i:04d}", _BY_NAME[rng.choices(names, weights)[0]]) for i in range(node_count)]
    node_weights = [n.node_type.cpu_cores for n in nodes]
    pods = [Pod("kube-system", f"{ds}-{node.name}", node.name, "daemonset", ds, (Container(ds, cpu, mib * MIB),))
            for node in nodes for ds, cpu, mib in _DAEMONSETS]
    workload = 0
    while len(pods) < pod_count:
        workload += 1
        draw = rng.random()
        kind, replicas = (("deployment", rng.randint(2, 10)) if draw < 0.88 else
                          ("statefulset", rng.randint(1, 3)) if draw < 0.94 else
                          ("job", 1) if draw < 0.99 else ("", 1))
        namespace = f"team-{rng.randrange(60):02d}"
        controller = f"app-{workload}" if kind else ""
        containers = tuple(_container(rng, f"c{k}", k > 0) for k in range(rng.choices((1, 2, 3), (6, 3, 1))[0]))
        local = kind == "deployment" and rng.random() < 0.01
        for r in range(min(replicas, pod_count - len(pods))):
            node = rng.choices(nodes, node_weights)[0]
            pods.append(Pod(namespace, f"app-{workload}-{r}", node.name, kind, controller, containers,
                            local_storage=local, persistent_volume=kind == "statefulset"))
    return pods, nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--pods", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    pods, nodes = large_cluster(args.seed, args.nodes, args.pods)
    alloc_cpu = sum(n.node_type.cpu_cores for n in nodes)
    alloc_memory = sum(n.node_type.memory_bytes for n in nodes)
    requested_cpu = sum(c.cpu_request for p in pods for c in p.containers)
    requested_memory = sum(c.memory_request for p in pods for c in p.containers)
    print(f"cluster: {len(nodes)} nodes, {len(pods)} pods ({sum(p.is_daemonset for p in pods)} DaemonSet, "
          f"{sum(p.pinned for p in pods)} pinned), {len(CATALOGUE)} candidate types")
    print(f"  requested {requested_cpu / alloc_cpu:.1%} of allocatable CPU, {requested_memory / alloc_memory:.1%} of memory; "
          f"sized (recommendations where present) {sum(p.cpu for p in pods) / alloc_cpu:.1%} / "
          f"{sum(p.memory for p in pods) / alloc_memory:.1%}")
    for profile in PROFILES:
        started, cpu = time.perf_counter(), time.process_time()
        plan = size_cluster(pods, nodes, profile, CATALOGUE)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        started, plain_cpu = time.perf_counter(), time.process_time()
        plain = size_cluster(pods, nodes, profile, CATALOGUE, orders=("dominant",))
        plain_wall, plain_cpu = time.perf_counter() - started, time.process_time() - plain_cpu
        bound = lower_bound(pods, nodes, profile, CATALOGUE)
        problems = len(violations(plan, pods, nodes, CATALOGUE)) + len(violations(plain, pods, nodes, CATALOGUE))
        counts = ", ".join(f"{n} {t}" for t, n in sorted(plan.node_counts.items()))
        new = [n for n in plan.nodes if n.kept is None]
        u = profile.target_utilization
        fill_cpu = sum(n.cpu for n in new) / sum(u * n.node_type.cpu_cores for n in new)
        fill_memory = sum(n.memory for n in new) / sum(u * n.node_type.memory_bytes for n in new)
        print(f"{profile.name} (u={profile.target_utilization}, min {profile.min_nodes}): {wall:.2f} s wall, {cpu:.2f} CPU-s "
              f"(dominant order alone: {plain_wall:.2f} s, {plain_cpu:.2f} CPU-s); {len(plan.nodes)} nodes ({counts}), "
              f"{len(plan.nodes) - len(new)} kept for pinned pods, the new ones filled to {fill_cpu:.1%} CPU / "
              f"{fill_memory:.1%} memory of the target; "
              f"${plan.current_monthly_cost:,.0f} → ${plan.monthly_cost:,.0f} a month (730 h), saving ${plan.monthly_saving:,.0f}; "
              f"cost ÷ LP lower bound {plan.hourly_cost / bound:.4f} (dominant order alone {plain.hourly_cost / bound:.4f}); "
              f"contract violations: {problems}")
    started = time.perf_counter()
    verdicts = assess(pods, nodes)
    wall = time.perf_counter() - started
    ready = [v for v in verdicts if v.ready]
    print(f"spot readiness: {wall:.2f} s wall; {len(ready)} of {len(verdicts)} workloads ready, "
          f"saving ${sum(v.monthly_saving for v in ready):,.0f} a month at the default discount")

    gaps: dict[str, list[float]] = {"all orders": [], "dominant order alone": []}
    seconds = dict.fromkeys([*gaps, "exhaustive"], 0.0)
    infeasible = bad = 0
    for sample in range(args.samples):
        small_pods, small_nodes, types, profile = random_cluster(random.Random(f"{args.seed}-{sample}"))
        started = time.perf_counter()
        best = optimum(small_pods, small_nodes, profile, types)
        seconds["exhaustive"] += time.perf_counter() - started
        for name, orders in (("all orders", ORDERS), ("dominant order alone", ("dominant",))):
            started = time.perf_counter()
            plan = size_cluster(small_pods, small_nodes, profile, types, orders=orders)
            seconds[name] += time.perf_counter() - started
            bad += bool(violations(plan, small_pods, small_nodes, types))
            if best is not None and plan.hourly_cost is not None:
                gaps[name].append((plan.hourly_cost - best) / best * 100)
        infeasible += best is None
    print(f"gap to the exhaustive optimum over {args.samples - infeasible} small clusters "
          f"({infeasible} with a pod no type holds left out); plans violating the contract: {bad}")
    for name, values in gaps.items():
        optimal = sum(g < 1e-9 for g in values)
        print(f"  {name}: mean {statistics.fmean(values):.2f} %, max {max(values):.1f} %, optimal in {optimal} "
              f"({optimal / len(values):.0%}); {seconds[name]:.2f} s in all")
    print(f"  exhaustive search: {seconds['exhaustive']:.2f} s in all")

if __name__ == "__main__":
    main()
