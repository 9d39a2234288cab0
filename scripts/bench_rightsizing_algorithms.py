"""Rightsizing algorithms judged on simulated containers whose true usage is known: one row per algorithm.

    .venv/bin/python scripts/bench_rightsizing_algorithms.py [--groups-per-kind 20] [--replicas 2] \\
        [--history-days 7] [--eval-days 1] [--seed 1]

Workloads of five kinds (``devstack/workloads.py``: steady, bursty, diurnal, growing
memory, OOM-prone), GROUPS_PER_KIND groups of REPLICAS containers each, are simulated
every 15 s. Each algorithm sizes every group on the history (HISTORY_DAYS) and is judged
against the truth of the EVAL_DAYS after it, the days its recommendation would be in force
(the job runs daily):

- ``vpa``: the VPA-style recommender on the 15 s samples (CPU from the counter, working
  set, OOM kills);
- ``request-sizing-v2 max`` and ``… quantile 0.95``: Kubecost's requestSizingV2 on the
  same 15 s samples, target utilization 0.7;
- ``hourly averages, max`` (today's job): requestSizingV2's max on the hourly averages of
  the same samples, what the exporter's 1-hour gauges carry.

Per algorithm: the share of containers whose recommended memory is below their true
memory peak (OOM risk), whose CPU is below their true 99th percentile (throttling risk),
and the over-provisioned cost: Σ over containers of max(0, recommended − true need)
priced at the simulator's list prices (USD per core-hour and per GiB-hour, 730 h a month),
the need being the CPU 99th percentile and the memory peak; beside it the need's own cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.simulator.spec import _CPU_PRICE, _RAM_PRICE  # the simulator's list prices, its nodes' base
from devstack.workloads import KINDS, Workload, generate, hourly_averages
from k8scost.rightsizing import GIB, HOURS_PER_MONTH, Algorithm, Params
from k8scost.settings import RightsizingSettings, from_env
from k8scost.usage_sizing import Recommender, ReplicaUsage, Target, recommend

Sizer = Callable[[Sequence[ReplicaUsage]], Target]


def algorithms() -> dict[str, Sizer]:
    v2_max, v2_quantile = Params(algorithm=Algorithm.MAX), Params(algorithm=Algorithm.QUANTILE, quantile=0.95)

    def hourly(replicas: Sequence[ReplicaUsage]) -> Target:
        averaged = [ReplicaUsage(hourly_averages(r.cpu), hourly_averages(r.memory)) for r in replicas]
        return recommend(Recommender.REQUEST_SIZING_V2, averaged, v2_max)

    return {
        "vpa (15 s samples)": lambda replicas: recommend(Recommender.VPA, replicas),
        "request-sizing-v2 max (15 s samples)": lambda replicas: recommend(Recommender.REQUEST_SIZING_V2, replicas, v2_max),
        "request-sizing-v2 quantile 0.95 (15 s samples)":
            lambda replicas: recommend(Recommender.REQUEST_SIZING_V2, replicas, v2_quantile),
        "hourly averages, request-sizing-v2 max (today's job)": hourly,
    }


class Score:
    """One algorithm's tally over the containers."""

    def __init__(self) -> None:
        self.containers = self.no_recommendation = self.memory_under = self.cpu_under = 0
        self.over_cost = self.need_cost = self.seconds = 0.0
        self.memory_under_by_kind = dict.fromkeys(KINDS, 0)


def monthly(cores: float, memory_bytes: float) -> float:
    return (cores * _CPU_PRICE + memory_bytes / GIB * _RAM_PRICE) * HOURS_PER_MONTH


def judge(workload: Workload, usages: list[ReplicaUsage], sizer: Sizer, score: Score) -> None:
    started = time.perf_counter()
    target = sizer(usages)
    score.seconds += time.perf_counter() - started
    for replica in workload.replicas:
        score.containers += 1
        score.need_cost += monthly(replica.cpu_p99, replica.memory_peak)
        if target.cpu_cores is None or target.memory_bytes is None:
            score.no_recommendation += 1
            continue
        under = target.memory_bytes < replica.memory_peak
        score.memory_under += under
        score.memory_under_by_kind[workload.kind] += under
        score.cpu_under += target.cpu_cores < replica.cpu_p99
        score.over_cost += monthly(max(0.0, target.cpu_cores - replica.cpu_p99),
                                   max(0.0, target.memory_bytes - replica.memory_peak))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups-per-kind", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--history-days", type=float, default=7.0)
    parser.add_argument("--eval-days", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sizers = algorithms()
    scores = {name: Score() for name in sizers}
    started = time.perf_counter()
    for kind in KINDS:
        for index in range(args.groups_per_kind):
            workload = generate(kind, index, args.seed, args.replicas, args.history_days, args.eval_days)
            usages = [r.usage() for r in workload.replicas]
            for name, sizer in sizers.items():
                judge(workload, usages, sizer, scores[name])
    default = Recommender(from_env(RightsizingSettings).recommender)
    print(f"{args.groups_per_kind} groups × {args.replicas} replicas of each kind ({', '.join(KINDS)}), "
          f"{args.history_days:g} days of 15 s samples, judged on the {args.eval_days:g} day(s) after; "
          f"prices {_CPU_PRICE} USD/core-hour, {_RAM_PRICE} USD/GiB-hour; {time.perf_counter() - started:.0f} s in all; "
          f"RIGHTSIZING_RECOMMENDER default: {default}")
    print("| algorithm | containers | memory < true peak (OOM risk) | CPU < true p99 (throttling risk) "
          "| over-provisioned USD/month (true need's cost) | compute s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, s in scores.items():
        judged = s.containers - s.no_recommendation
        print(f"| {name} | {judged} of {s.containers} | {s.memory_under / judged:.1%} | {s.cpu_under / judged:.1%} "
              f"| {s.over_cost:.2f} ({s.need_cost:.2f}) | {s.seconds:.1f} |")
    print()
    print("| algorithm | " + " | ".join(f"OOM risk, {kind}" for kind in KINDS) + " |")
    print("| --- |" + " --- |" * len(KINDS))
    per_kind = args.groups_per_kind * args.replicas
    for name, s in scores.items():
        print(f"| {name} | " + " | ".join(f"{s.memory_under_by_kind[kind]}/{per_kind}" for kind in KINDS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
