"""``/metroculus/v2/...``: a tenant's Kubernetes costs over a time range, from the TSDB.

The TSDB holds hourly-rate gauges (USD per hour); a cost over a range is their integral
(``k8scost.promql.integral``), computed by the TSDB at the configured resolution. Every
query is built by ``k8scost.promql.selector``, so it reads the asked tenant's series only.
``k8s_live`` (the live view) runs one of the allow-listed range queries of
``k8scost.promql.LIVE_QUERIES`` as is, without integrating: callers name a query, never PromQL.
Answers: 400 for a request that can never succeed, 401/403 for a missing/wrong secret,
503 when the TSDB is unreachable (retry), 502 when it refuses a query; errors are
``{"error": {"reason", "message"}}`` (``k8scost.api_errors``), as the REST API's.
Without start_date and end_date, the cost endpoints answer the last hour
(``serve_apps.metroculus.params``).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ray import serve
from starlette.requests import Request

from k8scost.api_errors import error_body
from k8scost.metroculus_client import SECRET_HEADER
from k8scost.promql import (
    CLUSTER_COST_COMPONENTS,
    LIVE_MAX_SERIES,
    LIVE_QUERIES,
    METRIC_LABEL,
    PART_LABEL,
    costs_selector,
    integral,
    live_promql,
    selector,
    window,
)
from k8scost.query_params import BadParameter
from k8scost.settings import MetroculusSettings, StoreSettings, from_env
from k8scost.stores import StoreUnavailable
from k8scost.tsdb import TsdbClient, TsdbQueryError
from serve_apps.metroculus import metrics
from serve_apps.metroculus.params import Span, parse_live_request, parse_metrics_request, parse_span
from serve_apps.responses import JSONAnswer

log = logging.getLogger("ray.serve")

HOUR = 3600
# The gauge whose samples tell whether a cluster reported in an hour.
COVERAGE_METRIC = CLUSTER_COST_COMPONENTS["cpu_cost"]

QueryItems = list[tuple[str, str]]


class _Refused(Exception):
    """Ends a request early with this status and error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@serve.deployment(
    name="Metroculus",
    # A request is a few concurrent TSDB round trips and little CPU: let many overlap.
    max_ongoing_requests=128,
    ray_actor_options={"num_cpus": 0.25},
)
class Metroculus:
    def __init__(self) -> None:
        self.settings = from_env(MetroculusSettings)
        self.secret = self.settings.cluster_secret.encode()
        self.tsdb = TsdbClient(
            from_env(StoreSettings).tsdb_url, self.settings.tsdb_timeout, self.settings.tsdb_connections
        )
        self.routes: dict[str, Callable[[QueryItems], Awaitable[dict[str, Any]]]] = {
            "/v2/kubecost_cluster_costs": self.cluster_costs,
            "/v2/kubecost_metrics": self.kubecost_metrics,
            "/v2/k8s_live": self.k8s_live,
        }
        # What the process holds once started (Ray, Serve, their modules: ≈ 130,000 objects)
        # lives as long as it does: left out of the cyclic collector's walks, which the
        # parse of a tenant's 20,000 series (6 MB) set off, it parses in 0.09 s, not 0.18 (ad hoc).
        gc.freeze()

    async def __call__(self, request: Request) -> JSONAnswer:
        path = request.url.path.removeprefix(request.scope.get("root_path", ""))
        handler = self.routes.get(path)
        endpoint = path.rsplit("/", 1)[-1] if handler else "unknown"
        try:
            self._authenticate(request)
            if handler is None:
                raise _Refused(404, f"not found: {path}; endpoints: {', '.join(self.routes)}")
            if request.method != "GET":
                raise _Refused(405, f"method {request.method} not allowed; use GET")
            response = JSONAnswer(await handler(request.query_params.multi_items()))
        except _Refused as refused:
            response = _error(refused.status, refused.message)
        except BadParameter as bad:
            response = _error(400, bad.message)
        except StoreUnavailable as exc:
            log.warning("%s", exc)
            response = _error(503, f"{exc.store} unavailable, retry later")
        except TsdbQueryError as exc:
            response = _error(502, f"TSDB refused the query: {exc}")
        metrics.REQUESTS.inc(tags={"endpoint": endpoint, "code": str(response.status_code)})
        return response

    def _authenticate(self, request: Request) -> None:
        given = request.headers.get(SECRET_HEADER)
        if not given:
            raise _Refused(401, f"missing {SECRET_HEADER} header")
        # Starlette decodes headers as latin-1: back to the bytes the caller sent.
        if not hmac.compare_digest(given.encode("latin-1"), self.secret):
            raise _Refused(403, f"wrong {SECRET_HEADER} header")

    async def cluster_costs(self, items: QueryItems) -> dict[str, Any]:
        """Cluster-level costs over (start, end], in total and per cluster, by component."""
        span = parse_span(items, self.settings)
        queries = [
            self._integral(f"sum by (cluster) ({selector(metric, span.cloud_account_id)})", span.seconds)
            for metric in CLUSTER_COST_COMPONENTS.values()
        ]
        answers = await asyncio.gather(*(self._instant(query, span.end + span.lag) for query in queries))
        clusters: dict[str, dict[str, float]] = {}
        for key, answer in zip(CLUSTER_COST_COMPONENTS, answers):
            for series in answer["result"]:
                cluster = series["metric"].get("cluster", "")
                breakdown = clusters.setdefault(cluster, dict.fromkeys(CLUSTER_COST_COMPONENTS, 0.0))
                breakdown[key] = float(series["value"][1])
        total = {key: sum(breakdown[key] for breakdown in clusters.values()) for key in CLUSTER_COST_COMPONENTS}
        return {
            **_span_fields(span),
            "total_cost": sum(total.values()),
            "breakdown": total,
            "clusters": {
                name: {"total_cost": sum(breakdown.values()), "breakdown": breakdown}
                for name, breakdown in sorted(clusters.items())
            },
        }

    async def kubecost_metrics(self, items: QueryItems) -> dict[str, Any]:
        """Per-series costs of the asked metrics over (start, end], or per bucket of ``step``.

        One TSDB query reads every metric asked: the ledger asks for ten, and the TSDB's cost
        of a query is mostly per query and per series, not per point.
        """
        asked = parse_metrics_request(items, self.settings)
        span, step = asked.span, asked.step
        answer, coverage = await asyncio.gather(self._costs(span, asked.metrics, step), self._coverage(span))
        results: dict[str, list[dict[str, Any]]] = {metric: [] for metric in asked.metrics}
        for series in answer["result"]:
            results[series["metric"].pop(METRIC_LABEL)].append(series)
        return {
            **_span_fields(span),
            "step": step,
            "metrics": {
                metric: {"status": "success", "data": {"resultType": answer["resultType"], "result": result}}
                for metric, result in results.items()
            },
            "coverage": coverage,
        }

    async def _costs(self, span: Span, metrics: Sequence[str], step: int | None) -> dict[str, Any]:
        series = costs_selector(metrics, span.cloud_account_id)
        lag = span.lag
        if step is None:
            answer = await self._instant(self._integral(series, span.seconds), span.end + lag)
            for result in answer["result"]:
                result["value"][0] -= lag
            return answer
        # Evaluated at each bucket's end, each point is the cost of the bucket ending there.
        answer = await self._range(self._integral(series, step), span.start + step + lag, span.end + lag, step)
        for result in answer["result"]:
            result["values"] = [[at - lag, value] for at, value in result["values"]]
        return answer

    async def _coverage(self, span: Span) -> dict[str, dict[str, Any]]:
        """Per cluster, the hour starts in [start, end) without a sample of ``COVERAGE_METRIC``.

        Hours count from start_date; when the range is not whole hours, the last hour is
        checked over a full hour all the same. A cluster with no sample in the range is absent.
        """
        series = selector(COVERAGE_METRIC, span.cloud_account_id)
        query = f"count by (cluster) (count_over_time({series}[{window(HOUR)}]))"
        hours = range(span.start, span.end, HOUR)
        answer = await self._range(query, span.start + HOUR, hours[-1] + HOUR, HOUR)
        coverage: dict[str, dict[str, Any]] = {}
        for series in answer["result"]:
            reported = {int(at) - HOUR for at, _ in series["values"]}
            coverage[series["metric"].get("cluster", "")] = {
                "hours": len(hours),
                "missing_hours": [hour for hour in hours if hour not in reported],
            }
        return coverage

    async def k8s_live(self, items: QueryItems) -> dict[str, Any]:
        """One live query's series over [start, end], a point every ``step``: per group, each part.

        At most LIVE_MAX_SERIES groups, those whose largest part sums highest over the
        range (``k8scost.promql.live_promql``); ``series_total`` counts them all, so a capped
        answer says so.
        """
        asked = parse_live_request(items, self.settings)
        query = LIVE_QUERIES[asked.query]
        promql = live_promql(asked.query, asked.cloud_account_id, window(asked.end - asked.start), asked.filters)
        matrix = await self._range(promql.range, asked.start, asked.end, asked.step)
        groups: dict[tuple[str, ...], dict[str, Any]] = {}
        for series in matrix["result"]:
            labels = series["metric"]
            key = tuple(labels.get(name, "") for name in query.group_by)
            group = groups.setdefault(
                key, {"labels": dict(zip(query.group_by, key)), **{part: [] for part in query.part_names}}
            )
            group[labels[PART_LABEL]] = [[at, float(value)] for at, value in series["values"]]
        total = len(groups)
        if total >= LIVE_MAX_SERIES:  # maybe capped: only then count them all, which reads the range again
            counted = (await self._instant(promql.count, asked.end))["result"]
            total = max(total, int(float(counted[0]["value"][1]))) if counted else total
        return {
            "cloud_account_id": asked.cloud_account_id,
            "query": asked.query,
            "start_date": asked.start,
            "end_date": asked.end,
            "step": asked.step,
            "filters": asked.filters,
            "unit": query.unit,
            "description": query.description,
            "group_by": list(query.group_by),
            "parts": list(query.part_names),
            "series_limit": LIVE_MAX_SERIES,
            "series_total": total,
            "series": [groups[key] for key in sorted(groups)],
        }

    def _integral(self, expr: str, range_seconds: int) -> str:
        return integral(expr, range_seconds, self.settings.resolution_seconds)

    async def _instant(self, query: str, at: int) -> dict[str, Any]:
        return await self._timed("instant", self.tsdb.instant(query, at))

    async def _range(self, query: str, start: int, end: int, step: int) -> dict[str, Any]:
        return await self._timed("range", self.tsdb.range(query, start, end, step))

    async def _timed(self, kind: str, pending: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        """``pending``'s answer, its latency and failure recorded in the metrics."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await pending
        except StoreUnavailable:
            outcome = "unavailable"
            raise
        except TsdbQueryError:
            outcome = "refused"
            raise
        finally:
            metrics.TSDB_SECONDS.observe(time.perf_counter() - started, tags={"kind": kind, "outcome": outcome})
            if outcome != "ok":
                metrics.TSDB_ERRORS.inc(tags={"kind": kind, "reason": outcome})


def _error(status: int, message: str) -> JSONAnswer:
    return JSONAnswer(error_body(status, message), status_code=status)


def _span_fields(span: Span) -> dict[str, Any]:
    return {"cloud_account_id": span.cloud_account_id, "start_date": span.start, "end_date": span.end, "lag": span.lag}


app = Metroculus.bind()
