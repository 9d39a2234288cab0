"""Cost anomalies in the ledger's daily costs, and the parts that explain them. Pure: no I/O.

A series is a namespace's or a cluster's daily cost ``c(t)`` (see ``k8scost.forecast`` for
days and missing days). Day ``d`` is scored against the weekday profile of the ``W = 7K``
days before it (origin ``o = d − 1``, ``k8scost.forecast.profile``: weekday factors
``f_w``, level ``ℓ``, noise ``σ``):

    b(d) = ℓ f_wd(d)                         baseline: weekday_median's forecast of day d
    δ(d) = c(d) − b(d)                       departure
    z(d) = δ(d) / (σ f_wd(d))                score (±∞ when its scale is 0 and δ ≠ 0; 0 when δ = 0)
    r(d) = |δ(d)| / |b(d)|                   relative change (∞ when b = 0 and δ ≠ 0)

    flagged ⇔ |z| ≥ threshold  ∧  r ≥ min_relative_change  ∧  max(c(d), b(d)) ≥ min_cost

A day is scored only when the series has ``W`` days of history before it; a series with
no scored day answers ``insufficient history: N days`` (N its days up to the last one
asked), never a verdict. An anomaly is a run of consecutive flagged days departing the
same way (an increase or a decrease); its peak is its day of largest ``|δ|``. The
baseline does not drop flagged days: its medians ignore a few odd days by themselves,
and a lasting step becomes the level within 4 days (the median of the last 7).

Explanation. On the anomaly's peak day ``d``, each part ``p`` of the series (the pods of
a namespace; the namespaces, ``__idle__`` included, of a cluster) gets the same baseline
from its own costs over the same ``W`` days (0 where it has no row: a pod that did not
exist cost nothing), ``δ_p = c_p(d) − b_p(d)``. The parts named are those departing the
way the series did, largest ``|δ_p|`` first, until they explain ``coverage`` of ``|δ(d)|``
or ``max_parts`` are named; ``share_p = δ_p / δ(d)``. Medians are not additive, so the
shares need not add up to 1.

What a job reads from the ClickHouse ``expenses`` ledger (``k8scost.stores.expense_queries``),
over ``[first − W days, last]`` with ``daily_from`` at that start (no summed day 0), the
tenancy lines not shared (``__idle__``, ``__management__``, ``__unallocated__`` are series
of their own):

- namespaces: ``ExpenseQueries.daily`` of a ``Scope`` of one cloud account restricted to
  resource type ``K8s Namespace`` and one ``k8s_cluster``, by ``k8s_namespace`` (a name
  is unique only within its cluster, and a cluster's within its account);
- clusters: resource type ``K8s Cluster`` of one account, by ``k8s_cluster``; their parts
  are the namespaces above;
- the pods of a flagged namespace: resource type ``K8s Pod`` filtered on its cluster and
  namespace, per pod (``resource_name``); ``daily`` offers no breakdown by resource yet,
  so the job adds that query (the ``_DAILY`` shape, keyed by ``resource_name``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping

from k8scost.forecast import daily, insufficient_history, profile
from k8scost.rightsizing import ParamsError
from k8scost.settings import DAY


class Direction(enum.StrEnum):
    INCREASE = "increase"
    DECREASE = "decrease"


@dataclasses.dataclass(frozen=True)
class Params:
    """How days are scored and flagged (module docstring); checked on construction (ParamsError)."""

    weeks: int = 5  # K
    threshold: float = 6.0  # |z| at least
    min_relative_change: float = 0.2
    min_cost: float = 1.0  # USD per day, of the cost or its baseline
    max_parts: int = 5
    coverage: float = 0.8

    def __post_init__(self) -> None:
        for name, low, high in (("weeks", 2, 8), ("max_parts", 1, 100)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ParamsError(name, f"{value!r} is not a whole number from {low} to {high}")
        for name in ("threshold", "min_relative_change", "min_cost", "coverage"):
            value = getattr(self, name)
            # NaN fails the comparison, so it is refused too.
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ParamsError(name, f"{value!r} is not a finite number ≥ 0")
        if self.coverage > 1:
            raise ParamsError("coverage", f"{self.coverage!r} is more than 1")


@dataclasses.dataclass(frozen=True)
class DayScore:
    day: int
    cost: float
    baseline: float
    scale: float  # σ f_wd(day), the day's noise in cost
    flagged: bool

    @property
    def delta(self) -> float:
        return self.cost - self.baseline

    @property
    def score(self) -> float:
        if self.delta == 0:
            return 0.0
        return self.delta / self.scale if self.scale else math.copysign(math.inf, self.delta)

    @property
    def relative_change(self) -> float:
        if self.delta == 0:
            return 0.0
        return abs(self.delta) / abs(self.baseline) if self.baseline else math.inf


@dataclasses.dataclass(frozen=True)
class Anomaly:
    """Consecutive flagged days departing the same way."""

    days: tuple[DayScore, ...]

    @property
    def start(self) -> int:
        return self.days[0].day

    @property
    def end(self) -> int:
        return self.days[-1].day

    @property
    def direction(self) -> Direction:
        return Direction.INCREASE if self.days[0].delta > 0 else Direction.DECREASE

    @property
    def delta(self) -> float:
        """The cost above (or, negative, below) the baseline over the anomaly's days."""
        return sum(d.delta for d in self.days)

    @property
    def peak(self) -> DayScore:
        return max(self.days, key=lambda d: (abs(d.delta), -d.day))


@dataclasses.dataclass(frozen=True)
class Detection:
    """One series' verdicts over the days asked: its scored days and its anomalies."""

    history_days: int  # from its first day to the last day asked
    scores: tuple[DayScore, ...]
    anomalies: tuple[Anomaly, ...]

    @property
    def insufficient(self) -> str | None:
        return None if self.scores else insufficient_history(self.history_days)


@dataclasses.dataclass(frozen=True)
class Contribution:
    """One part's departure on an anomaly's peak day."""

    name: str
    cost: float
    baseline: float
    share: float  # δ_p / δ of the series

    @property
    def delta(self) -> float:
        return self.cost - self.baseline


def score(values: list[float], day: int, params: Params) -> DayScore:
    """Day ``day``'s score; ``values`` are the costs of the ``7 × weeks`` days before it, then its own."""
    fitted = profile(values[:-1], day - DAY, params.weeks)
    cost, baseline = values[-1], fitted.expected(day)
    unflagged = DayScore(day, cost, baseline, fitted.noise(day), False)
    flagged = (
        abs(unflagged.score) >= params.threshold
        and unflagged.relative_change >= params.min_relative_change
        and max(cost, baseline) >= params.min_cost
    )
    return dataclasses.replace(unflagged, flagged=True) if flagged else unflagged


def detect(costs: Mapping[int, float], first: int, last: int, params: Params = Params()) -> Detection:
    """Scores and anomalies of one series over the days ``first … last`` (unix day starts)."""
    span = 7 * params.weeks
    start = min((day for day in costs if day <= last), default=None)
    if start is None:
        return Detection(0, (), ())
    values = daily(costs, start, last)
    scores = tuple(
        score(values[index - span : index + 1], start + index * DAY, params)
        for index in range(max(span, (first - start) // DAY), len(values))
    )
    return Detection(len(values), scores, _runs(scores))


def _runs(scores: tuple[DayScore, ...]) -> tuple[Anomaly, ...]:
    runs: list[list[DayScore]] = []
    for s in scores:
        if not s.flagged:
            continue
        last = runs[-1][-1] if runs else None
        if last is not None and last.day + DAY == s.day and (last.delta > 0) == (s.delta > 0):
            runs[-1].append(s)
        else:
            runs.append([s])
    return tuple(Anomaly(tuple(run)) for run in runs)


def explain(anomaly: Anomaly, parts: Mapping[str, Mapping[int, float]], params: Params = Params()) -> list[Contribution]:
    """The parts that explain the anomaly's peak day, largest departure first (module docstring)."""
    peak = anomaly.peak
    span = 7 * params.weeks
    found = []
    for name, costs in parts.items():
        values = daily(costs, peak.day - span * DAY, peak.day)
        baseline = profile(values[:-1], peak.day - DAY, params.weeks).expected(peak.day)
        delta = values[-1] - baseline
        if delta and (delta > 0) == (peak.delta > 0):
            found.append(Contribution(name, values[-1], baseline, delta / peak.delta))
    found.sort(key=lambda c: (-abs(c.delta), c.name))
    named: list[Contribution] = []
    explained = 0.0
    for contribution in found:
        if len(named) == params.max_parts or explained >= params.coverage * abs(peak.delta):
            break
        named.append(contribution)
        explained += abs(contribution.delta)
    return named
