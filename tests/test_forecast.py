"""Month-end projections and their backtest: profiles, models and MAPEs computed by hand. Pure."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import pytest

from k8scost.forecast import (
    Model,
    backtest,
    daily,
    forecast,
    history_needed,
    month_of,
    profile,
    project,
    weekday,
)

DAY = 86_400
SIGMA_PER_DIFFERENCE = 1.4826 / math.sqrt(2)


def unix(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


MONDAY = unix(date(2024, 12, 16))


def series(first: date, values: list[float]) -> dict[int, float]:
    return {unix(first) + i * DAY: v for i, v in enumerate(values)}


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-12)


def test_days_weekdays_and_months() -> None:
    assert weekday(0) == 3  # 1970-01-01, a Thursday
    assert [weekday(MONDAY + i * DAY) for i in range(8)] == [0, 1, 2, 3, 4, 5, 6, 0]
    assert month_of(unix(date(2024, 2, 15))) == (unix(date(2024, 2, 1)), unix(date(2024, 2, 29)))
    assert month_of(unix(date(2024, 12, 31))) == (unix(date(2024, 12, 1)), unix(date(2024, 12, 31)))
    assert daily({MONDAY: 1.0, MONDAY + 2 * DAY: 3.0}, MONDAY, MONDAY + 3 * DAY) == [1.0, 0.0, 3.0, 0.0]
    with pytest.raises(ValueError, match="not a UTC day start"):
        daily({}, MONDAY + 1, MONDAY + DAY)


def test_profile_of_a_weekend_dip_and_a_rising_level() -> None:
    # Two weeks, Monday to Sunday: workdays 10 then 12, weekends 5 then 6. Week means 60/7
    # and 72/7; every week's ratios are 7/6 (workdays) and 7/12 (weekend), whose mean is 1.
    # Without its weekday each day is its week's mean: levels 60/7 and 72/7, one step of
    # 12/7 among 13 differences, so σ = 0, and β = (72/7 − 60/7) / 7.
    values = [10.0] * 5 + [5.0] * 2 + [12.0] * 5 + [6.0] * 2
    fitted = profile([99.0, 99.0] + values, MONDAY + 13 * DAY, weeks=2)  # older days ignored
    assert fitted.factors == tuple(approx(f) for f in [7 / 6] * 5 + [7 / 12] * 2)
    assert (fitted.level, fitted.slope, fitted.scale) == (approx(72 / 7), approx(12 / 49), approx(0.0))
    # Next Monday: the level times Monday's factor; with the trend, 4 days of slope after
    # the last week's middle (Thursday).
    monday = MONDAY + 14 * DAY
    assert fitted.expected(monday) == approx(72 / 7 * 7 / 6) == approx(12.0)
    assert fitted.expected(monday, trend=True) == approx((72 / 7 + 4 * 12 / 49) * 7 / 6)
    assert fitted.expected(monday + 6 * DAY) == approx(6.0)  # Sunday


def test_the_origin_sets_the_weekdays() -> None:
    # The same costs one day later: the factors belong to the next weekdays.
    values = [10.0] * 5 + [5.0] * 2 + [12.0] * 5 + [6.0] * 2
    fitted = profile(values, MONDAY + 14 * DAY, weeks=2)
    assert fitted.factors == tuple(approx(f) for f in [7 / 12] + [7 / 6] * 5 + [7 / 12])


def test_one_spike_moves_neither_factors_nor_level() -> None:
    # Three flat weeks of 10, the last Sunday 24: that week's mean is 12, its ratios 5/6 and
    # 2, but each weekday's median of (1, 1, ·) is 1.
    values = [10.0] * 20 + [24.0]
    fitted = profile(values, MONDAY + 20 * DAY, weeks=3)
    assert fitted.factors == (1.0,) * 7
    assert (fitted.level, fitted.slope, fitted.scale) == (10.0, 0.0, 0.0)


def test_noise_is_the_median_day_to_day_difference() -> None:
    # Three weeks of mean 10 whose weekday medians are all 10, so every factor is 1 and
    # x = c. The 20 differences: eight 0, eight 1, one 2, two 3, one 6: median 1.
    values = [8, 9, 10, 10, 10, 11, 12, 12, 11, 10, 10, 10, 9, 8, 10, 10, 13, 7, 10, 10, 10]
    fitted = profile([float(v) for v in values], MONDAY + 20 * DAY, weeks=3)
    assert fitted.factors == (1.0,) * 7
    assert (fitted.level, fitted.slope) == (10.0, 0.0)
    assert fitted.scale == approx(SIGMA_PER_DIFFERENCE)
    assert fitted.noise(MONDAY) == approx(SIGMA_PER_DIFFERENCE)


def test_a_weekday_without_cost_has_factor_zero_and_no_level() -> None:
    # Workdays only: weekends cost nothing, and are left out of the levels and the noise.
    values = ([7.0] * 5 + [0.0] * 2) * 4
    fitted = profile(values, MONDAY + 27 * DAY)
    assert fitted.factors == (approx(1.4),) * 5 + (0.0, 0.0)
    assert (fitted.level, fitted.scale) == (approx(5.0), approx(0.0))
    assert forecast(Model.WEEKDAY_MEDIAN, values, MONDAY + 27 * DAY, 7) == [approx(7.0)] * 5 + [0.0, 0.0]


def test_naive_models() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert forecast(Model.LAST_VALUE, values, MONDAY, 3) == [8.0, 8.0, 8.0]
    assert forecast(Model.MEAN_7, values, MONDAY, 2) == [5.0, 5.0]  # (2 + … + 8) / 7
    assert [history_needed(m) for m in Model] == [28, 28, 1, 7]
    with pytest.raises(ValueError, match="needs 28 days"):
        forecast(Model.WEEKDAY_MEDIAN, values, MONDAY, 1)


def periodic(first: date, days: int, week: list[float]) -> dict[int, float]:
    return {unix(first) + i * DAY: week[weekday(unix(first) + i * DAY)] for i in range(days)}


WEEK = [30.0, 32.0, 31.0, 29.0, 28.0, 12.0, 9.0]  # Monday first


def test_projection_is_exact_on_a_perfectly_periodic_series() -> None:
    costs = periodic(date(2024, 10, 1), 92, WEEK)  # to 2024-12-31
    as_of = unix(date(2024, 12, 10))
    month = sum(WEEK[weekday(unix(date(2024, 12, d)))] for d in range(1, 32))
    to_date = sum(WEEK[weekday(unix(date(2024, 12, d)))] for d in range(1, 11))
    for model in (Model.WEEKDAY_MEDIAN, Model.WEEKDAY_TREND):
        p = project(costs, as_of, model)
        assert (p.month_start, p.month_end, p.days_remaining) == (unix(date(2024, 12, 1)), unix(date(2024, 12, 31)), 21)
        assert p.actual == approx(to_date)
        assert p.total == approx(month)
        assert p.insufficient is None
    # The naive baselines are not: the last value was a Tuesday's.
    assert project(costs, as_of, Model.LAST_VALUE).total == approx(to_date + 21 * WEEK[1])
    assert backtest(costs)[Model.WEEKDAY_MEDIAN].month_end_mape == approx(0.0)


def test_projection_on_the_months_last_day_is_the_month() -> None:
    costs = periodic(date(2024, 10, 1), 61, WEEK)
    p = project(costs, unix(date(2024, 11, 30)))
    assert (p.days_remaining, p.projected) == (0, 0.0)
    assert p.total == approx(sum(v for d, v in costs.items() if d >= unix(date(2024, 11, 1))))


def test_too_little_history_gives_no_projection() -> None:
    costs = series(date(2024, 12, 1), [5.0] * 10)
    p = project(costs, unix(date(2024, 12, 10)))
    assert (p.history_days, p.actual, p.projected, p.total) == (10, 50.0, None, None)
    assert p.insufficient == "insufficient history: 10 days"
    assert project({}, unix(date(2024, 12, 10))).insufficient == "insufficient history: 0 days"
    assert project(costs, unix(date(2024, 12, 10)), Model.LAST_VALUE).total == 50.0 + 21 * 5.0


def test_backtest_mape_of_the_naive_models_recomputed_by_hand() -> None:
    # 2025-01-01 … 2025-03-31, irregular costs; compared: last value and mean of 7 (7 days
    # of history needed). Origins: every day of February and March but their last, from the
    # 7th day of the series on; January is whole too, from its 7th day.
    first = date(2025, 1, 1)
    values = [float(10 + (i * 7) % 11 + (i // 30) * 3) for i in range(90)]
    costs = series(first, values)
    expected: dict[Model, tuple[list[float], list[float]]] = {Model.LAST_VALUE: ([], []), Model.MEAN_7: ([], [])}
    for i in range(6, 90):
        day = first + timedelta(days=i)
        month = [j for j in range(90) if (first + timedelta(days=j)).month == day.month]
        remaining = [j for j in month if j > i]
        if not remaining:
            continue
        actual_month = sum(values[j] for j in month)
        actual_remaining = sum(values[j] for j in remaining)
        for model, guess in ((Model.LAST_VALUE, values[i]), (Model.MEAN_7, sum(values[i - 6 : i + 1]) / 7)):
            projected = guess * len(remaining)
            total = sum(values[j] for j in month if j <= i) + projected
            expected[model][0].append(abs(total - actual_month) / actual_month)
            expected[model][1].append(abs(projected - actual_remaining) / actual_remaining)
    results = backtest(costs, (Model.LAST_VALUE, Model.MEAN_7))
    for model, (month_errors, remaining_errors) in expected.items():
        assert results[model].origins == len(month_errors) == 24 + 27 + 30
        assert results[model].month_end_mape == approx(100 * sum(month_errors) / len(month_errors))
        assert results[model].remaining_mape == approx(100 * sum(remaining_errors) / len(remaining_errors))


def test_backtest_compares_models_on_the_same_origins() -> None:
    costs = series(date(2025, 1, 1), [float(10 + i % 5) for i in range(90)])
    results = backtest(costs)
    # The weekday models need 28 days: January's origins from the 28th (3 of them), then
    # February's 27 and March's 30.
    assert {r.origins for r in results.values()} == {3 + 27 + 30}
    # A month not whole in the series gives no origin.
    assert backtest(series(date(2025, 1, 15), [1.0] * 40))[Model.LAST_VALUE].origins == 0
    assert backtest({})[Model.MEAN_7].month_end_mape is None
