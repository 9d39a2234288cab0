"""``k8s_live``: Metroculus's live view for the browser, scoped to the caller's organization.

The REST API only checks the parameter names (``k8scost.query_params``) and that the
account is the organization's (404 otherwise); Metroculus checks the values, and its 400
comes back as is (the error shape is the same), naming the parameter. Any other failure of
Metroculus is the gateway's: 503 when it or the TSDB is unreachable (retry), 502 when it
answers something else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

import httpx

from k8scost.metroculus_client import MetroculusError
from k8scost.promql import LIVE_FILTERS, LIVE_QUERIES
from k8scost.query_params import QueryParams
from serve_apps.restapi import metrics
from serve_apps.restapi.errors import ApiError

log = logging.getLogger("ray.serve")

REQUIRED = ("cloud_account_id", "query", "start_date", "end_date", "step")
LIVE_PARAMS = (*REQUIRED, *LIVE_FILTERS)
OPENAPI = {
    "parameters": [
        {"name": name, "in": "query", "required": name in REQUIRED, "description": doc, "schema": schema}
        for name, schema, doc in (
            ("cloud_account_id", {"type": "string"}, "A cloud account of the organization."),
            ("query", {"type": "string", "enum": list(LIVE_QUERIES)}, "The allow-listed query."),
            ("start_date", {"type": "integer"}, "Unix seconds."),
            ("end_date", {"type": "integer"}, "Unix seconds, after start_date."),
            ("step", {"type": "integer"}, "Seconds between two points (at least 1; at most 11,000 points)."),
            ("cluster", {"type": "string"}, "Only this cluster."),
            ("namespace", {"type": "string"}, "Only this namespace (queries grouping by namespace)."),
        )
    ]
}


class LiveSource(Protocol):
    """Where live series come from: ``MetroculusClient`` in production."""

    async def k8s_live(
        self, cloud_account_id: str, query: str, start: int | str, end: int | str, step: int | str, *,
        timeout: float | None = None, **filters: str,
    ) -> dict[str, Any]: ...


def parse(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The parameters, all known, each once and the required ones given; else ``BadParameter`` naming them."""
    query = QueryParams(items, LIVE_PARAMS)
    for name in REQUIRED:
        query.required(name)
    return query.single


async def live(source: LiveSource, values: dict[str, str], timeout: float) -> dict[str, Any]:
    """Metroculus's answer to the checked ``values`` within ``timeout`` seconds, its failures as ApiError."""
    account, query, start, end, step = (values[name] for name in REQUIRED)
    filters = {name: value for name, value in values.items() if name not in REQUIRED}
    try:
        return await source.k8s_live(account, query, start, end, step, timeout=timeout, **filters)
    except MetroculusError as exc:
        if exc.status == 400:  # the request's fault: Metroculus names the parameter
            raise ApiError(400, exc.message) from None
        metrics.METROCULUS_FAILURES.inc()
        log.warning("k8s_live: %s", exc)
        if exc.status == 503:
            raise ApiError(503, f"live data unavailable, retry later: {exc.message}") from None
        raise ApiError(502, f"Metroculus failed: {exc.status} {exc.message}") from None
    except httpx.TimeoutException:
        metrics.METROCULUS_FAILURES.inc()
        log.warning("k8s_live: no answer from Metroculus within %s s", timeout)
        raise ApiError(503, f"live data unavailable, retry later: no answer within {timeout:g} s") from None
    except httpx.TransportError as exc:
        metrics.METROCULUS_FAILURES.inc()
        log.warning("k8s_live: Metroculus unreachable: %r", exc)
        raise ApiError(503, "live data unavailable, retry later: Metroculus unreachable") from None
