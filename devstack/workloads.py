"""Simulated containers whose true usage is known every 15 s, to judge rightsizing algorithms (tooling).

Each workload is a group of replicas (one container each) of one kind:

- ``steady``: CPU and memory near their base (±5 %, ±2 % noise);
- ``bursty``: CPU at 30 % of its base with spikes of 15–60 s at 2–6 × base (one an hour on
  average), memory with allocation spikes of 30 s–2 min at +30–80 % (two a day);
- ``diurnal``: a daily sine, CPU 10–100 % and memory 50–100 % of base, each group its phase;
- ``growing``: memory leaking 6 % of its base a day, never freed;
- ``oom-prone``: request = limit = 1.5 × base memory; twice a day a job ramps its memory
  up by 20–120 % of base over 10–40 minutes. Where the demand reaches the limit the
  container is OOM-killed: no scrape at that step, its CPU counter restarts from 0, and the
  job's memory is gone until the job ends. The truth is the demand (what it needed).

What the customer's Prometheus would scrape every ``step`` seconds over the history is
kept: the CPU counter (``container_cpu_usage_seconds_total``), the working set and the OOM
kills. Of the evaluation period after it, only the truth the algorithms are judged on: each
replica's CPU 99th percentile and memory peak.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

from k8scost.rightsizing import MIB
from k8scost.usage_sizing import Oom, ReplicaUsage, cpu_usage

KINDS = ("steady", "bursty", "diurnal", "growing", "oom-prone")
STEP = 15.0
DAY = 86_400.0
HOUR = 3600.0
START = 1_730_419_200.0  # 2024-11-01T00:00:00Z, the simulator's default start
_CPU_BASES = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)  # cores
_MEMORY_BASES = tuple(m * MIB for m in (64, 128, 256, 512, 1024, 2048))
OOM_LIMIT = 1.5  # the oom-prone kind's request and limit, × base memory


@dataclasses.dataclass(frozen=True)
class Replica:
    """One container: what was scraped over the history, and the truth after it."""

    counter: list[tuple[float, float]]  # (t, CPU core-seconds since the container started)
    memory: list[tuple[float, float]]  # (t, working-set bytes)
    ooms: list[Oom]
    cpu_p99: float  # cores, over the evaluation period
    memory_peak: float  # bytes, over the evaluation period (the demand, killed or not)

    def usage(self) -> ReplicaUsage:
        """The history as a recommender takes it: CPU usage from the counter, memory, OOM kills."""
        return ReplicaUsage(cpu_usage(self.counter), self.memory, self.ooms)


@dataclasses.dataclass(frozen=True)
class Workload:
    kind: str
    name: str
    replicas: list[Replica]


def _percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1)]


class _Spikes:
    """Episodes starting with probability ``rate`` per step, each lasting a random number of steps."""

    def __init__(self, rng: random.Random, rate: float, steps: tuple[int, int], height: tuple[float, float]) -> None:
        self.rng, self.rate, self.steps, self.height = rng, rate, steps, height
        self.left = self.length = 0
        self.top = 0.0

    def next(self) -> tuple[float, float]:
        """This step's (height, share of the episode done); (0, 0) outside episodes."""
        if not self.left and self.rng.random() < self.rate:
            self.left = self.length = self.rng.randint(*self.steps)
            self.top = self.rng.uniform(*self.height)
        if not self.left:
            return 0.0, 0.0
        self.left -= 1
        return self.top, (self.length - self.left) / self.length


def _replica(kind: str, rng: random.Random, cpu_base: float, memory_base: float, phase: float, steps: int,
             history_steps: int) -> Replica:
    cpu_spikes = _Spikes(rng, 1 / 240, (1, 4), (2.0, 6.0))
    memory_spikes = _Spikes(rng, 1 / 2880, (2, 8), (0.3, 0.8))
    jobs = _Spikes(rng, 2 / 5760, (40, 160), (0.2, 1.2))
    counter: list[tuple[float, float]] = []
    memory: list[tuple[float, float]] = []
    ooms: list[Oom] = []
    cores_used = 0.0
    killed_job = False  # the running job was OOM-killed: its memory is gone until it ends
    eval_cpu: list[float] = []
    eval_peak = 0.0
    for i in range(steps):
        t = START + i * STEP
        days = i * STEP / DAY
        if kind == "bursty":
            cpu = 0.3 * cpu_base * (1 + 0.1 * rng.gauss(0, 1)) + cpu_spikes.next()[0] * cpu_base
            demand = memory_base * (1 + 0.02 * rng.gauss(0, 1) + memory_spikes.next()[0])
        elif kind == "diurnal":
            wave = math.sin(2 * math.pi * (days - phase))
            cpu = cpu_base * (0.55 + 0.45 * wave) * (1 + 0.05 * rng.gauss(0, 1))
            demand = memory_base * (0.75 + 0.25 * wave) * (1 + 0.02 * rng.gauss(0, 1))
        elif kind == "growing":
            cpu = cpu_base * (1 + 0.05 * rng.gauss(0, 1))
            demand = memory_base * (1 + 0.06 * days) * (1 + 0.01 * rng.gauss(0, 1))
        else:  # steady, oom-prone
            cpu = cpu_base * (1 + 0.05 * rng.gauss(0, 1))
            demand = memory_base * (1 + 0.02 * rng.gauss(0, 1))
        cpu = max(0.0, cpu)
        job = 0.0
        if kind == "oom-prone":
            top, done = jobs.next()
            job = top * done * memory_base
            if not top:
                killed_job = False
        if i >= history_steps:
            eval_cpu.append(cpu)
            eval_peak = max(eval_peak, demand + job)
            continue
        working_set = demand + (0.0 if killed_job else job)
        if working_set >= OOM_LIMIT * memory_base:
            # Killed at this step: restarting, so nothing is scraped; the counter starts again.
            ooms.append(Oom(t, OOM_LIMIT * memory_base))
            killed_job = True
            cores_used = cpu * STEP
            continue
        counter.append((t, cores_used))
        memory.append((t, working_set))
        cores_used += cpu * STEP
    return Replica(counter, memory, ooms, _percentile(eval_cpu, 0.99), eval_peak)


def generate(kind: str, index: int, seed: int, replicas: int, history_days: float, eval_days: float) -> Workload:
    """Workload ``index`` of ``kind``: its replicas over the history and the evaluation period, reproducible by seed."""
    if kind not in KINDS:
        raise ValueError(f"unknown workload kind {kind!r}: one of {', '.join(KINDS)}")
    rng = random.Random(f"{seed}:{kind}:{index}")
    cpu_base, memory_base, phase = rng.choice(_CPU_BASES), rng.choice(_MEMORY_BASES), rng.random()
    history_steps = int(history_days * DAY / STEP)
    steps = history_steps + int(eval_days * DAY / STEP)
    return Workload(kind, f"{kind}-{index}", [
        _replica(kind, rng, cpu_base, memory_base, phase, steps, history_steps) for _ in range(replicas)
    ])


def hourly_averages(samples: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(hour start, mean of the samples in the hour) for every hour with samples: what the exporter's 1 h gauges carry."""
    sums: dict[float, list[float]] = {}
    for t, value in samples:
        hour = t - t % HOUR
        acc = sums.setdefault(hour, [0.0, 0.0])
        acc[0] += value
        acc[1] += 1
    return [(hour, total / count) for hour, (total, count) in sorted(sums.items())]
