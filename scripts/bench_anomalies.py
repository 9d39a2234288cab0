"""Cost anomalies and month-end forecasts over 90 days × 1,000 namespaces (and their clusters):
wall time, the detector's precision and recall against injected truth, the forecasts' MAPE.

    .venv/bin/python scripts/bench_anomalies.py [--namespaces 1000] [--days 90] [--per-cluster 20]
                                                [--seed 1] [--weeks 4,5,6] [--thresholds 4,5,6,8]

Pure: no server. ``devstack.cost_history`` generates the daily costs the ledger would hold
(weekly seasonality, trends, noise) with spikes, drops and steps injected at known days
and pods; the same seed with no events gives the clean history the false positives are
counted on. The history ends on 2024-12-31, so it holds two whole months to backtest.

Every detector configuration (the default and the swept ``weeks`` × ``threshold``) is
judged on the same days: those after ``7 × the largest weeks`` days of history, where
events start. Truth, per series: an event is found (recall) when an anomaly of its
direction covers a day of its onset (a spike's or drop's days, a step's first day); an
anomaly is true (precision) when it starts on a day an event of its direction explains:
the event's days, a step's first week, or, for a cluster, any of its namespaces' events.
Cluster recall counts the cluster's own events only (its ``__idle__`` line: a node pool
scaled up): a namespace's event is a few percent of its cluster. Named pods: of the
namespace events found, how often the first pod named on the anomaly's peak carries the
event, and how often every pod named does.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.cost_history import Series, generate
from k8scost import anomalies, forecast
from k8scost.settings import DAY

END = int(datetime(2024, 12, 31, tzinfo=UTC).timestamp())


class Tally:
    """Events found and anomalies true, per series kind."""

    def __init__(self) -> None:
        self.events = Counter[str]()
        self.found = Counter[str]()
        self.anomalies = 0
        self.true = 0
        self.named_first = 0
        self.named_all = 0
        self.explained = 0

    def precision(self) -> str:
        return f"{self.true / self.anomalies:.3f} ({self.true:,}/{self.anomalies:,})" if self.anomalies else "–"

    def recall(self, kind: str | None = None) -> str:
        events = sum(self.events.values()) if kind is None else self.events[kind]
        found = sum(self.found.values()) if kind is None else self.found[kind]
        return f"{found / events:.3f} ({found:,}/{events:,})" if events else "–"


def evaluate(series: Sequence[Series], detections: Sequence[anomalies.Detection], judged: int,
             tally: Tally, parts_named: dict[tuple[str, int], list[anomalies.Contribution]] | None = None) -> None:
    """Adds the series' events found and anomalies true from day ``judged`` on to ``tally`` (module docstring)."""
    for s, detection in zip(series, detections):
        for event in s.events:
            if event.start < judged:
                continue
            tally.events[event.kind] += 1
            match = next((a for a in detection.anomalies if any(a.start <= day <= a.end for day in event.onset)
                          and (a.direction is anomalies.Direction.INCREASE) == event.increase), None)
            if match is None:
                continue
            tally.found[event.kind] += 1
            if parts_named is not None:
                named = [c.name for c in parts_named[(s.key, match.start)]]
                tally.explained += 1
                tally.named_first += bool(named) and named[0] in event.parts
                tally.named_all += bool(named) and set(named) <= set(event.parts)
        for a in detection.anomalies:
            if a.start < judged:
                continue
            tally.anomalies += 1
            tally.true += any(a.start in e.effect and (a.direction is anomalies.Direction.INCREASE) == e.increase
                              for e in (*s.events, *s.related))


def detect_all(series: Sequence[Series], first: int, last: int, params: anomalies.Params) -> list[anomalies.Detection]:
    return [anomalies.detect(s.costs, first, last, params) for s in series]


def pooled(results: Sequence[forecast.Backtest], field: str) -> float:
    """The mean APE over every origin of every series (each series' MAPE weighted by its origins)."""
    origins = sum(r.origins for r in results if getattr(r, field) is not None)
    return sum(getattr(r, field) * r.origins for r in results if getattr(r, field) is not None) / origins


def clean_flagged(series: Sequence[Series], judged: int, params: anomalies.Params) -> tuple[int, int, int]:
    """Days flagged, days scored and anomalies started, from day ``judged`` on, of histories without events."""
    flagged = scored = started = 0
    for s in series:
        detection = anomalies.detect(s.costs, judged, END, params)
        flagged += sum(d.flagged for d in detection.scores)
        scored += len(detection.scores)
        started += sum(a.start >= judged for a in detection.anomalies)
    return flagged, scored, started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--per-cluster", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weeks", default="4,5,6", help="weeks of history to sweep besides the default")
    parser.add_argument("--thresholds", default="4,5,6,8", help="|z| thresholds to sweep besides the default")
    args = parser.parse_args()
    params = anomalies.Params()
    weeks = sorted({int(w) for w in args.weeks.split(",")} | {params.weeks})
    thresholds = sorted({float(t) for t in args.thresholds.split(",")} | {params.threshold})
    warmup = 7 * max(weeks)
    start = END - (args.days - 1) * DAY
    judged = start + warmup * DAY

    began = time.perf_counter()
    history = generate(args.namespaces, args.days, start, args.per_cluster, args.seed, warmup)
    clean = generate(args.namespaces, args.days, start, args.per_cluster, args.seed, warmup, events=False)
    generated = time.perf_counter() - began
    kinds = Counter(e.kind for s in history.namespaces for e in s.events)
    cluster_kinds = Counter(e.kind for s in history.clusters for e in s.events)
    pods = sum(len(s.parts) for s in history.namespaces)
    print(f"history: {len(history.namespaces):,} namespaces ({pods:,} pods) in {len(history.clusters):,} clusters, "
          f"{args.days} days from {datetime.fromtimestamp(start, UTC):%Y-%m-%d}, seed {args.seed}; events: namespaces "
          f"{dict(sorted(kinds.items()))}, clusters {dict(sorted(cluster_kinds.items()))}; generated twice in "
          f"{generated:.1f} s")
    print(f"detector: {params}; judged from {datetime.fromtimestamp(judged, UTC):%Y-%m-%d} "
          f"({args.days - warmup} days per series)\n")

    began = time.perf_counter()
    namespaces = detect_all(history.namespaces, start, END, params)
    clusters = detect_all(history.clusters, start, END, params)
    detected = time.perf_counter() - began
    began = time.perf_counter()
    named = {(s.key, a.start): anomalies.explain(a, s.parts, params)
             for s, d in zip(history.namespaces, namespaces) for a in d.anomalies}
    explained = time.perf_counter() - began
    series = len(history.namespaces) + len(history.clusters)
    scored = sum(len(d.scores) for d in (*namespaces, *clusters))
    print(f"| detection, {series:,} series × {args.days} days ({scored:,} series-days scored) | "
          f"{detected:.2f} s wall ({detected / scored * 1e6:.0f} µs per day scored) |")
    print(f"| pods named for {len(named):,} namespace anomalies | {explained:.2f} s wall |")

    ns, cl = Tally(), Tally()
    evaluate(history.namespaces, namespaces, judged, ns, named)
    evaluate(history.clusters, clusters, judged, cl)
    flagged, clean_scored, started = clean_flagged([*clean.namespaces, *clean.clusters], judged, params)
    print(f"| namespaces: precision / recall | {ns.precision()} / {ns.recall()} |")
    for kind in sorted(ns.events):
        print(f"| namespaces: recall of {kind} | {ns.recall(kind)} |")
    print(f"| clusters: precision / recall (own events) | {cl.precision()} / {cl.recall()} |")
    print(f"| clean history (no event): days flagged | {flagged / clean_scored:.5f} ({flagged:,}/{clean_scored:,}), "
          f"{started:,} anomalies in {series:,} series |")
    print(f"| pods named, namespace events found: first named carries the event / all named do | "
          f"{ns.named_first / ns.explained:.3f} / {ns.named_all / ns.explained:.3f} ({ns.explained:,}) |")

    print("\n| weeks | threshold |z| | namespaces precision | recall | clusters precision | recall | clean days flagged |")
    print("| ---: | ---: | --- | --- | --- | --- | ---: |")
    for k in weeks:
        for threshold in thresholds:
            swept = anomalies.Params(weeks=k, threshold=threshold)
            a, b = Tally(), Tally()
            evaluate(history.namespaces, detect_all(history.namespaces, judged, END, swept), judged, a)
            evaluate(history.clusters, detect_all(history.clusters, judged, END, swept), judged, b)
            flagged, clean_scored, _ = clean_flagged([*clean.namespaces, *clean.clusters], judged, swept)
            mark = " (default)" if swept == params else ""
            print(f"| {k} | {threshold:g}{mark} | {a.precision()} | {a.recall()} | {b.precision()} | {b.recall()} | "
                  f"{flagged / clean_scored:.5f} |")

    print("\n| forecast backtest (month-end projection, every day of Nov and Dec as origin) | series | origins | "
          "MAPE month-end % | MAPE remaining days % | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, group in (("namespaces", history.namespaces), ("clusters", history.clusters),
                         ("namespaces, clean", clean.namespaces)):
        began = time.perf_counter()
        results = [forecast.backtest(s.costs) for s in group]
        took = time.perf_counter() - began
        for model in forecast.Model:
            per_model = [r[model] for r in results]
            print(f"| {label}: {model} | {len(group):,} | {sum(r.origins for r in per_model):,} | "
                  f"{pooled(per_model, 'month_end_mape'):.2f} | {pooled(per_model, 'remaining_mape'):.2f} | "
                  f"{took:.1f} (4 models) |")


if __name__ == "__main__":
    main()
