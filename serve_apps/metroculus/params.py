"""Query parameters of the Metroculus endpoints, checked before anything reaches the TSDB.

Each problem raises ``k8scost.query_params.BadParameter`` with a message that names the
parameter, so callers can fix their request without reading our code.

The cost endpoints (``kubecost_metrics``, ``kubecost_cluster_costs``) take start_date and
end_date together or not at all. Without them (the design's troubleshooting Issue 3 calls
``kubecost_metrics`` so) the span is the last hour: end_date is now rounded down to the
resolution, start_date an hour (rounded up to a whole number of resolutions) before. The
cost of that hour is the design's "current hourly rate" where the rate was steady, and
still an integral, so it never bills a rate the cluster did not run at for the hour.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from collections.abc import Iterable

from k8scost.promql import COST_METRICS, LIVE_FILTERS, LIVE_QUERIES
from k8scost.query_params import BadParameter, QueryParams
from k8scost.settings import DAY, MetroculusSettings

ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_ACCOUNT_ID = re.compile(ACCOUNT_ID_PATTERN)
# The longest trail of an exporter's rates (its allocation window) worth correcting.
MAX_LAG_SECONDS = DAY
# Prometheus refuses range queries of more points per series than this.
MAX_BUCKETS = 11_000

# The span of a cost request without dates (see the module docstring).
DEFAULT_SPAN_SECONDS = 3600

SPAN_PARAMS = frozenset({"cloud_account_id", "start_date", "end_date", "lag"})
METRICS_PARAMS = SPAN_PARAMS | {"metrics", "step"}


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


def parse_span(items: Iterable[tuple[str, str]], settings: MetroculusSettings, now: float | None = None) -> Span:
    """The span of a ``kubecost_cluster_costs`` request (its only parameters); ``now``: the
    clock the default span ends at (the time of the call when None)."""
    return _span(QueryParams(items, SPAN_PARAMS), settings, now)


def parse_metrics_request(
    items: Iterable[tuple[str, str]], settings: MetroculusSettings, now: float | None = None
) -> MetricsRequest:
    """A ``kubecost_metrics`` request: span, metric list and optional step."""
    query = QueryParams(items, METRICS_PARAMS)
    span = _span(query, settings, now)
    metrics = _metric_list(query.get("metrics"))
    step = None if query.get("step") is None else _step(query, span, settings)
    return MetricsRequest(span, metrics, step)


def default_span(resolution: int, now: float) -> tuple[int, int]:
    """The span of a request without dates: the last hour, in whole resolutions, ending at ``now``."""
    end = int(now) // resolution * resolution
    return end - -(-DEFAULT_SPAN_SECONDS // resolution) * resolution, end


def _span(query: QueryParams, settings: MetroculusSettings, now: float | None) -> Span:
    account = _account_id(query)
    resolution = settings.resolution_seconds
    default = default_span(resolution, time.time() if now is None else now)
    start, end = query.date_range(settings.max_range_days, default)
    lag = query.timestamp("lag", default=0)
    if lag > MAX_LAG_SECONDS:
        raise BadParameter("lag", f"lag: {lag} s is more than the maximum of {MAX_LAG_SECONDS} s")
    for name, value in (("start_date", start), ("end_date", end), ("lag", lag)):
        if value % resolution:
            raise BadParameter(name, f"{name}: {value} is not a multiple of the resolution, {resolution} s")
    return Span(account, start, end, lag)


def _account_id(query: QueryParams) -> str:
    account = query.required("cloud_account_id")
    if not _ACCOUNT_ID.fullmatch(account):  # fullmatch: "$" alone would let a trailing newline pass
        raise BadParameter("cloud_account_id", f"cloud_account_id: must match {ACCOUNT_ID_PATTERN}")
    return account


def _metric_list(raw: str | None) -> tuple[str, ...]:
    if not raw:
        raise BadParameter("metrics", "metrics: missing; give a comma-separated list of metric names")
    names = raw.split(",")
    if any(not name for name in names):
        raise BadParameter("metrics", f"metrics: malformed list {raw[:256]!r}: names must be separated by single commas")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise BadParameter("metrics", f"metrics: listed more than once: {', '.join(repeated)}")
    unknown = [name for name in names if name not in COST_METRICS]
    if unknown:
        shown = ", ".join(repr(name[:128]) for name in unknown)
        raise BadParameter("metrics", f"metrics: unknown metric(s) {shown}; allowed: {', '.join(COST_METRICS)}")
    return tuple(names)


def _step(query: QueryParams, span: Span, settings: MetroculusSettings) -> int:
    resolution = settings.resolution_seconds
    step = query.unsigned("step", "a whole number of seconds")
    if step == 0 or step % resolution:
        raise BadParameter("step", f"step: {step} is not a positive multiple of the resolution, {resolution} s")
    if span.seconds % step:
        raise BadParameter("step", f"step: {step} does not divide end_date - start_date ({span.seconds} s)")
    if span.seconds // step > MAX_BUCKETS:
        message = f"step: {span.seconds // step} buckets, over the limit of {MAX_BUCKETS}; use a larger step"
        raise BadParameter("step", message)
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
    query = QueryParams(items, LIVE_PARAMS)
    account = _account_id(query)
    name = query.get("query") or ""
    if name not in LIVE_QUERIES:
        shown = "missing" if not name else f"unknown query {name[:128]!r}"
        raise BadParameter("query", f"query: {shown}; allowed: {', '.join(LIVE_QUERIES)}")
    start, end = query.date_range(settings.max_range_days)
    step = query.unsigned("step", "a whole number of seconds, at least 1", lowest=1)
    points = (end - start) // step + 1
    if points > MAX_BUCKETS:
        raise BadParameter("step", f"step: {points} points per series, over the limit of {MAX_BUCKETS}; use a larger step")
    filters = {label: value for label in LIVE_FILTERS if (value := query.get(label)) is not None}
    allowed = LIVE_QUERIES[name].filters
    for label, value in filters.items():
        if label not in allowed:
            raise BadParameter(label, f"{label}: {name} does not filter on {label}; its filters: {', '.join(allowed)}")
        if not 0 < len(value) <= MAX_FILTER_LENGTH:
            raise BadParameter(label, f"{label}: must be 1 to {MAX_FILTER_LENGTH} characters")
    return LiveRequest(account, name, start, end, step, filters)
