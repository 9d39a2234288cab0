"""Query parameters of the Metroculus endpoints, checked before anything reaches the TSDB.

Each problem raises ``BadRequest`` with a message that names the parameter, so callers
can fix their request without reading our code.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable

from k8scost.promql import COST_METRICS, LIVE_FILTERS, LIVE_QUERIES
from k8scost.settings import DAY, MetroculusSettings

ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_ACCOUNT_ID = re.compile(ACCOUNT_ID_PATTERN)
_UNSIGNED = re.compile(r"[0-9]{1,12}")
# The longest trail of an exporter's rates (its allocation window) worth correcting.
MAX_LAG_SECONDS = DAY
# Prometheus refuses range queries of more points per series than this.
MAX_BUCKETS = 11_000

SPAN_PARAMS = frozenset({"cloud_account_id", "start_date", "end_date", "lag"})
METRICS_PARAMS = SPAN_PARAMS | {"metrics", "step"}


class BadRequest(ValueError):
    """The request cannot be answered as asked; the message says which parameter and why."""


@dataclasses.dataclass(frozen=True)
class Span:
    """One account's costs over (start, end], Unix seconds aligned to the resolution."""

    cloud_account_id: str
    start: int
    end: int
    # Seconds the rates trail the costs they measure: the exporter's rate at t is the
    # average over the window before t, so the cost of (start, end] is read over
    # (start + lag, end + lag]. Half the exporter's window makes day costs exact around
    # midnight whatever changed during the day.
    lag: int = 0

    @property
    def seconds(self) -> int:
        return self.end - self.start


@dataclasses.dataclass(frozen=True)
class MetricsRequest:
    """A ``kubecost_metrics`` request: which metrics, and buckets of ``step`` seconds or one total."""

    span: Span
    metrics: tuple[str, ...]
    step: int | None


def parse_span(items: Iterable[tuple[str, str]], settings: MetroculusSettings) -> Span:
    """The span of a ``kubecost_cluster_costs`` request (its only parameters)."""
    return _span(_single_values(items, SPAN_PARAMS), settings)


def parse_metrics_request(items: Iterable[tuple[str, str]], settings: MetroculusSettings) -> MetricsRequest:
    """A ``kubecost_metrics`` request: span, metric list and optional step."""
    values = _single_values(items, METRICS_PARAMS)
    span = _span(values, settings)
    step = values.get("step")
    metrics = _metric_list(values.get("metrics"))
    return MetricsRequest(span, metrics, None if step is None else _step(step, span, settings))


def _single_values(items: Iterable[tuple[str, str]], allowed: frozenset[str]) -> dict[str, str]:
    """The parameters as a dict, refusing unknown and repeated names."""
    pairs = list(items)
    counts = Counter(name for name, _ in pairs)
    unknown = sorted(set(counts) - allowed)
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise BadRequest(f"query parameter(s) given more than once: {', '.join(repeated)}")
    return dict(pairs)


def _span(values: dict[str, str], settings: MetroculusSettings) -> Span:
    account = _account_id(values)
    start, end = _range(values, settings)
    resolution = settings.resolution_seconds
    lag = _timestamp(values, "lag") if "lag" in values else 0
    if lag > MAX_LAG_SECONDS:
        raise BadRequest(f"lag: {lag} s is more than the maximum of {MAX_LAG_SECONDS} s")
    for name, value in (("start_date", start), ("end_date", end), ("lag", lag)):
        if value % resolution:
            raise BadRequest(f"{name}: {value} is not a multiple of the resolution, {resolution} s")
    return Span(account, start, end, lag)


def _account_id(values: dict[str, str]) -> str:
    account = _required(values, "cloud_account_id")
    if not _ACCOUNT_ID.fullmatch(account):  # fullmatch: "$" alone would let a trailing newline pass
        raise BadRequest(f"cloud_account_id: must match {ACCOUNT_ID_PATTERN}")
    return account


def _range(values: dict[str, str], settings: MetroculusSettings) -> tuple[int, int]:
    """start_date and end_date, in order and at most ``max_range_days`` apart."""
    start = _timestamp(values, "start_date")
    end = _timestamp(values, "end_date")
    if start >= end:
        raise BadRequest(f"start_date ({start}) must be before end_date ({end})")
    limit = settings.max_range_days * DAY
    if end - start > limit:
        raise BadRequest(
            f"end_date - start_date: {end - start} s is longer than the maximum of {settings.max_range_days} days"
        )
    return start, end


def _required(values: dict[str, str], name: str) -> str:
    value = values.get(name)
    if not value:
        raise BadRequest(f"{name}: missing")
    return value


def _timestamp(values: dict[str, str], name: str) -> int:
    raw = _required(values, name)
    if not _UNSIGNED.fullmatch(raw):
        raise BadRequest(f"{name}: {raw[:64]!r} is not a Unix timestamp in whole seconds")
    return int(raw)


def _metric_list(raw: str | None) -> tuple[str, ...]:
    if not raw:
        raise BadRequest("metrics: missing; give a comma-separated list of metric names")
    names = raw.split(",")
    if any(not name for name in names):
        raise BadRequest(f"metrics: malformed list {raw[:256]!r}: names must be separated by single commas")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise BadRequest(f"metrics: listed more than once: {', '.join(repeated)}")
    unknown = [name for name in names if name not in COST_METRICS]
    if unknown:
        shown = ", ".join(repr(name[:128]) for name in unknown)
        raise BadRequest(f"metrics: unknown metric(s) {shown}; allowed: {', '.join(COST_METRICS)}")
    return tuple(names)


def _step(raw: str, span: Span, settings: MetroculusSettings) -> int:
    resolution = settings.resolution_seconds
    if not _UNSIGNED.fullmatch(raw):
        raise BadRequest(f"step: {raw[:64]!r} is not a whole number of seconds")
    step = int(raw)
    if step == 0 or step % resolution:
        raise BadRequest(f"step: {step} is not a positive multiple of the resolution, {resolution} s")
    if span.seconds % step:
        raise BadRequest(f"step: {step} does not divide end_date - start_date ({span.seconds} s)")
    if span.seconds // step > MAX_BUCKETS:
        raise BadRequest(f"step: {span.seconds // step} buckets, over the limit of {MAX_BUCKETS}; use a larger step")
    return step


# --- k8s_live -----------------------------------------------------------------------------

LIVE_PARAMS = frozenset({"cloud_account_id", "query", "start_date", "end_date", "step", *LIVE_FILTERS})
# Longest filter value: Kubernetes names are far shorter; this only bounds the query text.
MAX_FILTER_LENGTH = 1024


@dataclasses.dataclass(frozen=True)
class LiveRequest:
    """A ``k8s_live`` request: one allow-listed query over [start, end], a point every ``step`` s."""

    cloud_account_id: str
    query: str
    start: int
    end: int
    step: int
    filters: dict[str, str]  # label → value (equality), among the query's filters


def parse_live_request(items: Iterable[tuple[str, str]], settings: MetroculusSettings) -> LiveRequest:
    """A ``k8s_live`` request. Unlike the cost endpoints, nothing is integrated: dates and
    step need not be multiples of the resolution, only give at most MAX_BUCKETS points."""
    values = _single_values(items, LIVE_PARAMS)
    account = _account_id(values)
    name = values.get("query", "")
    if name not in LIVE_QUERIES:
        shown = "missing" if not name else f"unknown query {name[:128]!r}"
        raise BadRequest(f"query: {shown}; allowed: {', '.join(LIVE_QUERIES)}")
    start, end = _range(values, settings)
    raw = _required(values, "step")
    if not _UNSIGNED.fullmatch(raw) or int(raw) == 0:
        raise BadRequest(f"step: {raw[:64]!r} is not a whole number of seconds, at least 1")
    step = int(raw)
    points = (end - start) // step + 1
    if points > MAX_BUCKETS:
        raise BadRequest(f"step: {points} points per series, over the limit of {MAX_BUCKETS}; use a larger step")
    filters = {label: values[label] for label in LIVE_FILTERS if label in values}
    allowed = LIVE_QUERIES[name].filters
    for label, value in filters.items():
        if label not in allowed:
            raise BadRequest(f"{label}: {name} does not filter on {label}; its filters: {', '.join(allowed)}")
        if not 0 < len(value) <= MAX_FILTER_LENGTH:
            raise BadRequest(f"{label}: must be 1 to {MAX_FILTER_LENGTH} characters")
    return LiveRequest(account, name, start, end, step, filters)
