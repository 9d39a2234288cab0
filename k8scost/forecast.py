"""Month-end cost projections from the ledger's daily costs, and their measured error. Pure: no I/O.

Series. ``c(t)`` is a namespace's or a cluster's cost on the UTC day ``t`` (a unix day start),
as the ledger holds it. A series starts on its first day with a row; a later day without a
row cost 0 (the ledger writes every resource-day that cost something).

Weekday profile at the origin ``o`` (the last known day) over ``K`` weeks, ``W = 7K`` days
``o − W < t ≤ o`` in weeks ``j = 0 … K−1`` (week j: ``o − 7(K−j) < t ≤ o − 7(K−1−j)``),
with ``wd(t)`` the weekday and ``j(t)`` the week of day ``t``:

    M_j  = (1/7) Σ_(t in week j) c(t)                       week j's mean cost
    f'_w = median{c(t) / M_j(t) : wd(t) = w, M_j(t) > 0}    (1 when no week cost anything)
    f_w  = f'_w / ((1/7) Σ_v f'_v)                          weekday factors, mean 1 (all 1 if every f'_w is 0)
    x(t) = c(t) / f_wd(t)                                   the cost without its weekday
    L_j  = median{x(t) : t in week j}                       week j's level
    ℓ    = L_(K−1)                                          the level: the last week's, at day o − 3
    β    = median over i < j of (L_j − L_i) / (7 (j − i))   Theil–Sen slope per day (0 when K = 1)
    σ    = 1.4826 / √2 × median{|x(t) − x(t')|}             day-to-day noise, t' the day before t

Days of a weekday whose factor is 0 have no ``x``: they are left out of ``L_j`` and ``σ``
(``t'`` is then the last day before ``t`` that has one).

Costs rise and fall with the week multiplicatively (a weekend dip is a share of the
level), so the factors are ratios to each week's own mean: a level step moves one week's
ratios, which the median over K weeks ignores, and a week's spike likewise. Medians make
one odd day move nothing, and a level step is one large difference among W − 1 in σ,
where a MAD about the level would count every day after it. 1.4826 / √2 makes σ the
standard deviation of independent Gaussian noise (a difference of two has √2 σ); the
noise of day ``t`` in cost is ``σ f_wd(t)``.

Models, the forecast ``ŷ(t)`` of a day ``t > o``, and the history each needs:

    weekday_median   ŷ(t) = ℓ f_wd(t)                            W days
    weekday_trend    ŷ(t) = (ℓ + β (t − (o − 3))) f_wd(t)        W days  (t in days)
    last_value       ŷ(t) = c(o)                                  1 day   (naive)
    mean_7           ŷ(t) = (1/7) Σ_(o−7 < u ≤ o) c(u)            7 days  (naive)

Projection as of ``o`` (the last complete day) in its month ``[m0, m1]``:

    actual    = Σ_(m0 ≤ t ≤ o) c(t)
    projected = Σ_(o < t ≤ m1) ŷ(t)          (0 on the month's last day)
    total     = actual + projected

Backtest of models on the same history, the same origins for all: every ``o`` whose month
lies inside the series (``m0 ≥`` its first day, ``m1 ≤`` its last), with ``o < m1`` and at
least the history the most demanding model needs:

    APE_month(o)     = |total(o) − Σ_(m0 ≤ t ≤ m1) c(t)| / Σ_(m0 ≤ t ≤ m1) c(t)
    APE_remaining(o) = |projected(o) − Σ_(o < t ≤ m1) c(t)| / Σ_(o < t ≤ m1) c(t)
    MAPE             = 100 % × the mean over the origins

An origin whose remaining or month actual is 0 is left out (its error has no scale).
APE_month is the error a user sees (the actual part is exact); APE_remaining is the
model's alone. Models are judged by these measured errors (``scripts/bench_anomalies.py``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from k8scost.settings import DAY

WEEKS = 4  # K: four of each weekday
# Makes the median absolute day-to-day difference the noise's standard deviation (module docstring).
_SIGMA_OF_DIFFERENCES = 1.4826 / math.sqrt(2)


class Model(enum.StrEnum):
    WEEKDAY_MEDIAN = "weekday_median"
    WEEKDAY_TREND = "weekday_trend"
    LAST_VALUE = "last_value"
    MEAN_7 = "mean_7"


def history_needed(model: Model, weeks: int = WEEKS) -> int:
    """Days of history ``model`` needs up to its origin."""
    return {Model.LAST_VALUE: 1, Model.MEAN_7: 7}.get(model, 7 * weeks)


def insufficient_history(days: int) -> str:
    """What an item says instead of a verdict made from too little history."""
    return f"insufficient history: {days} days"


def weekday(day: int) -> int:
    """0 = Monday … 6 = Sunday, of a unix day start (1970-01-01 was a Thursday)."""
    return (day // DAY + 3) % 7


def daily(costs: Mapping[int, float], first: int, last: int) -> list[float]:
    """``c(t)`` for ``first ≤ t ≤ last``, 0 where ``costs`` has no day. Days are unix day starts."""
    for day in (first, last):
        if day % DAY:
            raise ValueError(f"{day} is not a UTC day start")
    return [costs.get(day, 0.0) for day in range(first, last + 1, DAY)]


def month_of(day: int) -> tuple[int, int]:
    """The first and the last day of ``day``'s UTC month."""
    at = datetime.fromtimestamp(day, UTC)
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    following = datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(following.timestamp()) - DAY


@dataclasses.dataclass(frozen=True)
class Profile:
    """The weekday profile of a series at its origin (module docstring)."""

    origin: int
    factors: tuple[float, ...]  # f_w, Monday first
    level: float  # ℓ, at day origin − 3
    slope: float  # β, per day
    scale: float  # σ, in level units

    def expected(self, day: int, trend: bool = False) -> float:
        """ŷ(day) of weekday_median, or of weekday_trend with ``trend``."""
        level = self.level + (self.slope * ((day - self.origin) / DAY + 3) if trend else 0.0)
        return level * self.factors[weekday(day)]

    def noise(self, day: int) -> float:
        """The standard deviation of day ``day``'s cost: σ f_wd(day)."""
        return self.scale * self.factors[weekday(day)]


def profile(values: Sequence[float], origin: int, weeks: int = WEEKS) -> Profile:
    """The profile of the last ``7 × weeks`` values; ``values[-1]`` is the cost of day ``origin``."""
    span = 7 * weeks
    if weeks < 1 or len(values) < span:
        raise ValueError(f"a profile over {weeks} weeks needs {span} days, not {len(values)}")
    window = values[-span:]
    means = [sum(window[7 * j : 7 * j + 7]) / 7 for j in range(weeks)]
    raw = []
    for i in range(7):  # i: the weekday (first + i) % 7, where first is the window's first day's
        ratios = [window[7 * j + i] / means[j] for j in range(weeks) if means[j] > 0]
        raw.append(statistics.median(ratios) if ratios else 1.0)
    norm = sum(raw) / 7
    ordered = [f / norm for f in raw] if norm > 0 else [1.0] * 7
    first = weekday(origin - (span - 1) * DAY)
    factors = [0.0] * 7
    for i, f in enumerate(ordered):
        factors[(first + i) % 7] = f
    x = [(index, v / ordered[index % 7]) for index, v in enumerate(window) if ordered[index % 7] > 0]
    weekly = [statistics.median(v for index, v in x if index // 7 == j) for j in range(weeks)]
    slopes = [(weekly[j] - weekly[i]) / (7 * (j - i)) for i in range(weeks) for j in range(i + 1, weeks)]
    differences = [abs(b - a) for (_, a), (_, b) in zip(x, x[1:])]
    scale = _SIGMA_OF_DIFFERENCES * statistics.median(differences) if differences else 0.0
    return Profile(origin, tuple(factors), weekly[-1], statistics.median(slopes) if slopes else 0.0, scale)


def forecast(model: Model, values: Sequence[float], origin: int, horizon: int, weeks: int = WEEKS) -> list[float]:
    """ŷ of the ``horizon`` days after ``origin``; ``values[-1]`` is the cost of day ``origin``
    and there are at least ``history_needed(model, weeks)`` values."""
    needed = history_needed(model, weeks)
    if len(values) < needed:
        raise ValueError(f"{model} needs {needed} days of history, not {len(values)}")
    if model is Model.LAST_VALUE:
        return [values[-1]] * horizon
    if model is Model.MEAN_7:
        return [sum(values[-7:]) / 7] * horizon
    fitted = profile(values, origin, weeks)
    trend = model is Model.WEEKDAY_TREND
    return [fitted.expected(origin + h * DAY, trend) for h in range(1, horizon + 1)]


@dataclasses.dataclass(frozen=True)
class Projection:
    """A series' month-end projection as of ``as_of``; ``projected`` is None, and
    ``insufficient`` says why, when the series has too little history for the model."""

    model: Model
    as_of: int
    month_start: int
    month_end: int  # the month's last day
    history_days: int  # days from the series' first day to as_of
    actual: float  # month to date, as_of included
    projected: float | None  # the remaining days

    @property
    def days_remaining(self) -> int:
        return (self.month_end - self.as_of) // DAY

    @property
    def total(self) -> float | None:
        return None if self.projected is None else self.actual + self.projected

    @property
    def insufficient(self) -> str | None:
        return insufficient_history(self.history_days) if self.projected is None else None


def project(costs: Mapping[int, float], as_of: int, model: Model = Model.WEEKDAY_MEDIAN, weeks: int = WEEKS) -> Projection:
    """The month-end projection of one series as of its last complete day ``as_of``."""
    month_start, month_end = month_of(as_of)
    known = [day for day in costs if day <= as_of]
    first = min(known, default=as_of + DAY)
    values = daily(costs, first, as_of) if known else []
    actual = sum(costs.get(day, 0.0) for day in range(month_start, as_of + DAY, DAY))
    projected = None
    if len(values) >= history_needed(model, weeks):
        projected = sum(forecast(model, values, as_of, (month_end - as_of) // DAY, weeks))
    return Projection(model, as_of, month_start, month_end, len(values), actual, projected)


@dataclasses.dataclass(frozen=True)
class Backtest:
    """One model's error over a series' history; the MAPEs are percentages, None without an origin."""

    model: Model
    origins: int
    month_end_mape: float | None
    remaining_mape: float | None


def backtest(costs: Mapping[int, float], models: Iterable[Model] = tuple(Model), weeks: int = WEEKS) -> dict[Model, Backtest]:
    """Each model's MAPEs over the same origins of the series (module docstring)."""
    models = tuple(models)
    errors: dict[Model, tuple[list[float], list[float]]] = {m: ([], []) for m in models}
    if costs and models:
        first, last = min(costs), max(costs)
        values = daily(costs, first, last)
        prefix = [0.0]
        for v in values:
            prefix.append(prefix[-1] + v)
        needed = max(history_needed(m, weeks) for m in models)
        for index in range(needed - 1, len(values)):
            origin = first + index * DAY
            month_start, month_end = month_of(origin)
            if month_start < first or month_end > last or origin == month_end:
                continue
            end = (month_end - first) // DAY + 1
            remaining = prefix[end] - prefix[index + 1]
            month = prefix[end] - prefix[(month_start - first) // DAY]
            if remaining == 0 or month == 0:
                continue
            actual = month - remaining
            for model in models:
                history = values[index + 1 - history_needed(model, weeks) : index + 1]
                projected = sum(forecast(model, history, origin, end - index - 1, weeks))
                errors[model][0].append(abs(actual + projected - month) / abs(month))
                errors[model][1].append(abs(projected - remaining) / abs(remaining))
    return {m: Backtest(m, len(month_errors), _mape(month_errors), _mape(remaining_errors))
            for m, (month_errors, remaining_errors) in errors.items()}


def _mape(errors: Sequence[float]) -> float | None:
    return 100 * sum(errors) / len(errors) if errors else None
