"""Cost anomalies: scores computed by hand, runs, the pods that explain them, too little
history, and the detector against the injected truth of ``devstack.cost_history``. Pure."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest

from devstack.cost_history import GAP_DAYS, IDLE, generate
from k8scost.anomalies import Direction, Params, detect, explain
from k8scost.rightsizing import ParamsError

DAY = 86_400
MONDAY = int(datetime(2024, 12, 16, tzinfo=UTC).timestamp())
SIGMA_PER_DIFFERENCE = 1.4826 / math.sqrt(2)
# Three weeks of mean 10 whose weekday medians are all 10: every weekday factor is 1, the
# level 10, and the 20 day-to-day differences (eight 0, eight 1, one 2, two 3, one 6)
# have median 1, so σ = 1.4826 / √2 (tests/test_forecast.py has the same profile).
NOISY_WEEKS = [8, 9, 10, 10, 10, 11, 12, 12, 11, 10, 10, 10, 9, 8, 10, 10, 13, 7, 10, 10, 10]
NEXT_MONDAY = MONDAY + 21 * DAY


def series(values: list[float], first: int = MONDAY) -> dict[int, float]:
    return {first + i * DAY: float(v) for i, v in enumerate(values)}


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-12)


def score_of(cost: float, scale: float = 1.0, params: Params = Params(weeks=3)) -> tuple:
    detection = detect(series([v * scale for v in NOISY_WEEKS] + [cost * scale]), NEXT_MONDAY, NEXT_MONDAY, params)
    [day] = detection.scores
    return day, detection


def test_a_day_is_scored_against_its_weekday_baseline_and_the_noise() -> None:
    day, detection = score_of(17.0)
    assert (day.day, day.cost, day.baseline, day.delta) == (NEXT_MONDAY, 17.0, 10.0, 7.0)
    assert day.scale == approx(SIGMA_PER_DIFFERENCE)
    assert day.score == approx(7 / SIGMA_PER_DIFFERENCE)  # 6.68 ≥ 6
    assert day.relative_change == approx(0.7)
    assert day.flagged
    [anomaly] = detection.anomalies
    assert (anomaly.start, anomaly.end, anomaly.direction, anomaly.delta) == (NEXT_MONDAY, NEXT_MONDAY, Direction.INCREASE, 7.0)
    assert detection.insufficient is None
    # 6 above the baseline is 5.72 σ: not flagged; 7 below is.
    assert not score_of(16.0)[0].flagged
    low, detection = score_of(3.0)
    assert low.flagged and low.score == approx(-7 / SIGMA_PER_DIFFERENCE)
    assert detection.anomalies[0].direction is Direction.DECREASE


def test_minimum_cost_and_minimum_relative_change() -> None:
    # The same shape at a tenth: 1.7 vs 1.0, still ≥ the 1 USD minimum; at a twentieth,
    # 0.85 vs 0.5 is below it, however many σ.
    tenth, _ = score_of(17.0, scale=0.1)
    assert tenth.flagged and tenth.score == approx(7 / SIGMA_PER_DIFFERENCE)
    twentieth, _ = score_of(17.0, scale=0.05)
    assert not twentieth.flagged and twentieth.score == approx(7 / SIGMA_PER_DIFFERENCE)
    # +70 % is not enough when 75 % is asked.
    assert not score_of(17.0, params=Params(weeks=3, min_relative_change=0.75))[0].flagged
    assert not score_of(17.0, params=Params(weeks=3, threshold=6.7))[0].flagged


def test_runs_of_flagged_days_make_one_anomaly_per_direction() -> None:
    # Three flat weeks of 10 (σ = 0), then 15, 15, 5, 10, 15. Each later window keeps every
    # weekday's median ratio at 1 and its last week's median at 10: the baseline stays 10.
    detection = detect(series([10] * 21 + [15, 15, 5, 10, 15]), MONDAY, MONDAY + 25 * DAY, Params(weeks=3))
    assert [(s.baseline, s.flagged) for s in detection.scores] == [
        (10.0, True), (10.0, True), (10.0, True), (10.0, False), (10.0, True)
    ]
    assert [s.score for s in detection.scores] == [math.inf, math.inf, -math.inf, 0.0, math.inf]
    first, drop, last = detection.anomalies
    assert (first.start, first.end, first.delta, first.direction) == (NEXT_MONDAY, NEXT_MONDAY + DAY, 10.0, Direction.INCREASE)
    assert first.peak.day == NEXT_MONDAY  # equal departures: the first day
    assert (drop.start, drop.end, drop.delta, drop.direction) == (NEXT_MONDAY + 2 * DAY,) * 2 + (-5.0, Direction.DECREASE)
    assert (last.start, last.delta) == (NEXT_MONDAY + 4 * DAY, 5.0)
    # A change under the relative minimum on a flat series is not flagged, though z is ∞.
    [small] = detect(series([10] * 21 + [11]), NEXT_MONDAY, NEXT_MONDAY, Params(weeks=3)).scores
    assert (small.score, small.relative_change, small.flagged) == (math.inf, approx(0.1), False)


def test_too_little_history_says_so_instead_of_a_verdict() -> None:
    last = MONDAY + 40 * DAY
    for days in (0, 20, 35):  # 5 weeks needed before a day
        detection = detect(series([10.0] * days, first=last - (days - 1) * DAY), MONDAY, last)
        assert (detection.scores, detection.anomalies) == ((), ())
        assert detection.insufficient == f"insufficient history: {days} days"
    detection = detect(series([10.0] * 36, first=last - 35 * DAY), MONDAY, last)
    assert [s.day for s in detection.scores] == [last]
    assert detection.insufficient is None
    # Rows after the last day asked are no history for it.
    assert detect(series([10.0] * 60, first=last + DAY), MONDAY, last).insufficient == "insufficient history: 0 days"


def pods_on(last_day: dict[str, float]) -> dict[str, dict[int, float]]:
    """Pods a, b, c costing 5, 3, 2 for five weeks from MONDAY, then ``last_day``'s costs."""
    pods = {name: series([cost] * 35) for name, cost in (("a", 5.0), ("b", 3.0), ("c", 2.0))}
    for name, cost in last_day.items():
        pods.setdefault(name, {})[MONDAY + 35 * DAY] = cost
    return pods


def namespace_anomaly(pods: dict[str, dict[int, float]]):
    total: dict[int, float] = {}
    for costs in pods.values():
        for day, cost in costs.items():
            total[day] = total.get(day, 0.0) + cost
    [anomaly] = detect(total, MONDAY + 35 * DAY, MONDAY + 35 * DAY).anomalies
    return anomaly


def test_the_pods_named_are_those_that_moved_the_namespace() -> None:
    # The namespace goes from 10 to 19 (δ = 9): b +6, the new pod d +4 (no row before: its
    # baseline is 0), c −1, a 0. To explain 80 % (7.2) it takes b, then d.
    pods = pods_on({"a": 5.0, "b": 9.0, "c": 1.0, "d": 4.0})
    anomaly = namespace_anomaly(pods)
    assert (anomaly.delta, anomaly.direction) == (9.0, Direction.INCREASE)
    named = explain(anomaly, pods)
    assert [(c.name, c.cost, c.baseline, c.delta) for c in named] == [("b", 9.0, 3.0, 6.0), ("d", 4.0, 0.0, 4.0)]
    assert [c.share for c in named] == [approx(6 / 9), approx(4 / 9)]
    assert [c.name for c in explain(anomaly, pods, Params(coverage=0.5))] == ["b"]
    assert [c.name for c in explain(anomaly, pods, Params(max_parts=1))] == ["b"]


def test_a_drop_names_the_pods_that_stopped() -> None:
    # a stops (−5), c rises by 0.5: the namespace is 5.5 instead of 10; a alone explains it.
    pods = pods_on({"b": 3.0, "c": 2.5})
    anomaly = namespace_anomaly(pods)
    assert (anomaly.delta, anomaly.direction) == (-4.5, Direction.DECREASE)
    [named] = explain(anomaly, pods)
    assert (named.name, named.cost, named.baseline, named.share) == ("a", 0.0, 5.0, approx(5 / 4.5))


@pytest.mark.parametrize(("field", "value"), [
    ("weeks", 1), ("weeks", 9), ("weeks", 4.0), ("max_parts", 0), ("threshold", -1.0),
    ("threshold", math.nan), ("min_cost", math.inf), ("coverage", 1.5), ("min_relative_change", True),
])
def test_parameters_out_of_range_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ParamsError) as raised:
        Params(**{field: value})
    assert raised.value.param == field


# --- against the injected truth --------------------------------------------------------------

START = int(datetime(2024, 10, 3, tzinfo=UTC).timestamp())
END = START + 89 * DAY
WARMUP = 35  # the default 5 weeks: every event can be scored


def test_the_synthetic_truth_adds_up() -> None:
    history = generate(60, 90, START, per_cluster=20, seed=5, warmup=WARMUP)
    assert (len(history.namespaces), len(history.clusters)) == (60, 3)
    for ns in history.namespaces:
        for day, cost in ns.costs.items():
            assert cost == pytest.approx(sum(pod.get(day, 0.0) for pod in ns.parts.values()), rel=1e-12)
        starts = sorted(e.start for e in ns.events)
        assert all(s >= START + WARMUP * DAY for s in starts)
        assert all(b - a >= GAP_DAYS * DAY for a, b in zip(starts, starts[1:]))
        assert all(set(e.parts) <= set(ns.parts) for e in ns.events)
    for cluster in history.clusters:
        assert set(cluster.parts) == {ns.key.split("/")[1] for ns in history.namespaces if ns.key.startswith(cluster.key)} | {IDLE}
        for day, cost in cluster.costs.items():
            assert cost == pytest.approx(sum(part.get(day, 0.0) for part in cluster.parts.values()), rel=1e-12)
    assert sum(len(ns.events) for ns in history.namespaces) > 30


def test_injected_anomalies_are_found_and_their_pods_named() -> None:
    """Every namespace event found (a flagged day of its direction on its onset), the first
    pod named carrying it, and at least 90 % of the anomalies starting on an event's days.
    Measured on this history: all 64 events found and named, 64 of 69 anomalies true."""
    history = generate(100, 90, START, per_cluster=20, seed=3, warmup=WARMUP)
    events = found = named_right = anomalies_seen = anomalies_true = 0
    for ns in history.namespaces:
        detection = detect(ns.costs, START, END)
        for event in ns.events:
            events += 1
            covering = [a for a in detection.anomalies if (a.direction is Direction.INCREASE) == event.increase
                        and any(a.start <= day <= a.end for day in event.onset)]
            if covering:
                found += 1
                named = explain(covering[0], ns.parts)
                named_right += named[0].name in event.parts
        for anomaly in detection.anomalies:
            anomalies_seen += 1
            anomalies_true += any(anomaly.start in e.effect for e in ns.events)
    assert events >= 50
    assert found == named_right == events
    assert anomalies_true >= 0.9 * anomalies_seen


def test_clean_seasonal_histories_are_rarely_flagged() -> None:
    """Weekly seasonality, trends and noise but no event: at most 1 day in 500 flagged
    (0.2 %; measured here: 7 of 11,550 days, 0.06 %)."""
    history = generate(200, 90, START, per_cluster=20, seed=4, warmup=WARMUP, events=False)
    scored = flagged = 0
    for s in (*history.namespaces, *history.clusters):
        detection = detect(s.costs, START, END)
        assert not s.events
        scored += len(detection.scores)
        flagged += sum(d.flagged for d in detection.scores)
    assert scored == 210 * (90 - WARMUP)
    assert flagged <= scored / 500
