"""Synthetic daily cost histories with known anomalies: the truth the anomaly detector and
the forecasts (``k8scost.anomalies``, ``k8scost.forecast``) are measured against.

What the ledger would hold for namespaces of pods and their clusters, day by day. Seeded:
the same arguments give the same history.

A namespace ``n`` has pods; pod ``p`` costs on day ``t`` (``i`` days after the first)

    base_p × week_n[wd(t)] × (1 + g_n)^i × (1 + ε_n(t)) × (1 + ε_p(t))

with a weekday shape ``week_n`` (workdays near 1, a weekend dip, deep for a development
namespace), a daily growth ``g_n`` (a trend, up or down), a namespace-wide noise ``ε_n``
of standard deviation ``noise_n`` and each pod's own ``ε_p`` (``POD_NOISE``), both
Gaussian, floored so no cost is negative. A cluster is its namespaces plus its
``__idle__`` line (a quarter of their mean cost, its own noise).

Events (the truth), each with a size ``m`` relative to the clean cost of its series on
its first day, and the parts (pods; ``__idle__`` for a cluster) that carry it:

- ``spike``: 1–3 days; one pod (an existing one, or a new ``batch-…`` pod) costs
  ``m × clean`` more, m ∈ [0.5, 3];
- ``drop``: 1–3 days; pods chosen at random cost nothing until they carry ``m`` ≥ the
  drawn share of [0.3, 0.8] (``m`` is the share they carry);
- ``step-up``: from its day on, a new pod costing ``m × clean`` of each day, m ∈ [0.3, 1];
- ``step-down``: from its day on, pods stop for good, as a drop, m ∈ [0.3, 0.6];
- a cluster's own: ``spike`` (1–2 days) or ``step-up`` of its ``__idle__`` line (a node
  pool scaled up), ``m × clean cluster cost``, m ∈ [0.3, 1].

Events start on or after ``warmup`` days (the detector's history) and at least
``GAP_DAYS`` apart within a series. A pod or line costs no row on a day it costs 0, as in
the ledger.
"""

from __future__ import annotations

import dataclasses
import math
import random

from k8scost.forecast import weekday
from k8scost.settings import DAY

POD_NOISE = 0.05
GAP_DAYS = 10
IDLE = "__idle__"
# Where a detection may start to be true: a spike's or drop's days, or the week a step
# takes to become the baseline's level.
STEP_EFFECT_DAYS = 7


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str  # spike, drop, step-up, step-down
    start: int  # unix day
    days: int  # days it lasts (a step: to the history's end)
    magnitude: float  # its extra or missing cost ÷ the series' clean cost of its first day
    parts: tuple[str, ...]  # the pods (or the cluster's lines) that carry it

    @property
    def increase(self) -> bool:
        return self.kind in ("spike", "step-up")

    @property
    def onset(self) -> range:
        """Days on which a detection of this event must start: its days, a step's first."""
        return range(self.start, self.start + (1 if self.kind.startswith("step") else self.days) * DAY, DAY)

    @property
    def effect(self) -> range:
        """Days on which a detection starting is explained by this event."""
        days = STEP_EFFECT_DAYS if self.kind.startswith("step") else self.days
        return range(self.start, self.start + days * DAY, DAY)


@dataclasses.dataclass
class Series:
    """A namespace (``cluster/namespace``) or a cluster: its costs, its parts' costs, and its truth.

    ``events``: injected into it. ``related``: its parts' events (a cluster's namespaces'),
    which move its cost too, though not by a size it must be flagged for.
    """

    key: str
    costs: dict[int, float]
    parts: dict[str, dict[int, float]]
    events: list[Event]
    related: list[Event] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class History:
    start: int
    days: int
    namespaces: list[Series]
    clusters: list[Series]


def generate(
    namespaces: int,
    days: int,
    start: int,
    per_cluster: int = 20,
    seed: int = 0,
    warmup: int = 28,
    events: bool = True,
) -> History:
    """``namespaces`` namespaces in clusters of ``per_cluster``, ``days`` days from ``start``
    (a unix day start); ``events=False`` gives clean histories."""
    rng = random.Random(seed)
    found: list[Series] = []
    clusters: list[Series] = []
    for c in range(math.ceil(namespaces / per_cluster)):
        cluster = f"cluster-{c:03d}"
        members = [_namespace(rng, f"{cluster}/ns-{n:04d}", days, start, warmup, events)
                   for n in range(c * per_cluster, min(namespaces, (c + 1) * per_cluster))]
        found.extend(series for series, _ in members)
        clusters.append(_cluster(rng, cluster, members, days, start, warmup, events))
    return History(start, days, found, clusters)


def _namespace(rng: random.Random, key: str, days: int, start: int, warmup: int, events: bool) -> tuple[Series, list[float]]:
    """A namespace, and its clean cost per day."""
    development = rng.random() < 0.4
    weekend = rng.uniform(0.3, 0.7) if development else rng.uniform(0.85, 1.0)
    week = [rng.uniform(0.95, 1.05) for _ in range(5)] + [weekend, weekend * rng.uniform(0.9, 1.1)]
    growth = rng.uniform(-0.004, 0.006)
    noise = rng.uniform(0.02, 0.06)
    total = max(5.0, rng.lognormvariate(math.log(40), 1.2))
    shares = [rng.lognormvariate(0, 1) for _ in range(rng.randint(2, 30))]
    pods = {f"pod-{i:02d}": total * s / sum(shares) for i, s in enumerate(shares)}
    costs = {name: [0.0] * days for name in pods}
    for i in range(days):
        day = start + i * DAY
        level = week[weekday(day)] * (1 + growth) ** i * max(0.0, 1 + rng.gauss(0, noise))
        for name, base in pods.items():
            costs[name][i] = base * level * max(0.0, 1 + rng.gauss(0, POD_NOISE))
    clean = [sum(pod[i] for pod in costs.values()) for i in range(days)]
    truth: list[Event] = []
    if events:
        for at in _event_days(rng, days, warmup):
            kind = rng.choices(("spike", "drop", "step-up", "step-down"), (0.4, 0.3, 0.15, 0.15))[0]
            truth.append(_inject(rng, kind, at, days, start, costs, clean))
    series = Series(key, _rows([sum(c) for c in zip(*costs.values())], start),
                    {name: _rows(c, start) for name, c in costs.items()}, truth)
    return series, clean


def _event_days(rng: random.Random, days: int, warmup: int) -> list[int]:
    """0 to 2 event days after the warmup, GAP_DAYS apart at least."""
    chosen: list[int] = []
    for _ in range(rng.choices((0, 1, 2), (0.4, 0.4, 0.2))[0]):
        candidates = [d for d in range(warmup, days - 3) if all(abs(d - c) >= GAP_DAYS for c in chosen)]
        if candidates:
            chosen.append(rng.choice(candidates))
    return sorted(chosen)


def _inject(rng: random.Random, kind: str, at: int, days: int, start: int, costs: dict[str, list[float]],
            clean: list[float]) -> Event:
    """Changes ``costs`` (pod → cost per day) from day index ``at`` on; the event."""
    if kind in ("spike", "step-up"):
        span = rng.randint(1, 3) if kind == "spike" else days - at
        magnitude = rng.uniform(0.5, 3.0) if kind == "spike" else rng.uniform(0.3, 1.0)
        name = rng.choice(sorted(costs)) if kind == "spike" and rng.random() < 0.5 else f"batch-{at:02d}"
        pod = costs.setdefault(name, [0.0] * days)
        for i in range(at, at + span):
            pod[i] += magnitude * clean[i]
        return Event(kind, start + at * DAY, span, magnitude, (name,))
    span = rng.randint(1, 3) if kind == "drop" else days - at
    target = rng.uniform(0.3, 0.8) if kind == "drop" else rng.uniform(0.3, 0.6)
    running = [name for name in sorted(costs) if costs[name][at] > 0]
    rng.shuffle(running)
    stopped: list[str] = []
    carried = 0.0
    for name in running:
        if carried >= target:
            break
        stopped.append(name)
        carried += costs[name][at] / clean[at]
    for name in stopped:
        for i in range(at, at + span):
            costs[name][i] = 0.0
    return Event(kind, start + at * DAY, span, carried, tuple(sorted(stopped)))


def _cluster(rng: random.Random, key: str, members: list[tuple[Series, list[float]]], days: int, start: int,
             warmup: int, events: bool) -> Series:
    clean = [sum(c[i] for _, c in members) for i in range(days)]
    base = 0.25 * sum(clean) / days
    noise = rng.uniform(0.02, 0.05)
    idle = [base * max(0.0, 1 + rng.gauss(0, noise)) for _ in range(days)]
    truth: list[Event] = []
    if events:
        for at in _event_days(rng, days, warmup):
            kind = rng.choice(("spike", "step-up"))
            span = rng.randint(1, 2) if kind == "spike" else days - at
            magnitude = rng.uniform(0.3, 1.0)
            for i in range(at, at + span):
                idle[i] += magnitude * (clean[i] + base)
            truth.append(Event(kind, start + at * DAY, span, magnitude, (IDLE,)))
    parts = {series.key.split("/", 1)[1]: series.costs for series, _ in members} | {IDLE: _rows(idle, start)}
    totals: dict[int, float] = {}
    for part in parts.values():
        for day, cost in part.items():
            totals[day] = totals.get(day, 0.0) + cost
    related = [event for series, _ in members for event in series.events]
    return Series(key, totals, parts, truth, related)


def _rows(values: list[float], start: int) -> dict[int, float]:
    return {start + i * DAY: v for i, v in enumerate(values) if v > 0}
