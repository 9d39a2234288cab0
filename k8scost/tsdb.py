"""An async client of the TSDB's PromQL HTTP API (Prometheus or Thanos Query).

Failures come in two kinds that callers answer differently: ``StoreUnavailable`` (may pass
on retry: unreachable, timed out, 5xx, or Thanos Query's 422 for a store it could not reach),
as every store client raises it, and ``TsdbQueryError`` (the TSDB refused the query itself:
4xx, carrying its error text).
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from k8scost.httpclient import async_client
from k8scost.stores import StoreUnavailable

_ERROR_TEXT_LIMIT = 1024
# Thanos Query with strict stores and no partial answers fails a query whose store does not
# answer with 422, as PromQL fails an execution (e.g. "expanding series: proxy Series():
# fetch series for …: rpc error: code = Unavailable desc = connection error"): the store is
# down, not the query wrong, and a retry passes once it is back.
_STORE_DOWN = re.compile(r"code = (Unavailable|DeadlineExceeded)|connection refused")


class TsdbQueryError(Exception):
    """The TSDB refused the query (4xx); the message is its error text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class TsdbClient:
    """Instant and range PromQL queries over one pooled connection set."""

    def __init__(self, base_url: str, timeout: float = 30.0, connections: int = 32) -> None:
        self._http = async_client(base_url=base_url.rstrip("/"), timeout=timeout, connections=connections)

    async def instant(self, query: str, at: int | float) -> dict[str, Any]:
        """The ``data`` of ``/api/v1/query`` at ``at`` (Unix seconds): resultType and result."""
        return await self._get("/api/v1/query", {"query": query, "time": at})

    async def range(self, query: str, start: int | float, end: int | float, step: int | float) -> dict[str, Any]:
        """The ``data`` of ``/api/v1/query_range``: a matrix evaluated at start, start + step, …, end."""
        return await self._get("/api/v1/query_range", {"query": query, "start": start, "end": end, "step": step})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await self._http.get(path, params=params)
        except httpx.TransportError as exc:
            raise StoreUnavailable("TSDB", f"unreachable: {exc!r}") from exc
        if answer.is_success:
            return answer.json()["data"]
        error = _error_text(answer)
        # The cause ends Thanos' message, after every label set of the store it asked.
        if answer.status_code >= 500 or answer.status_code == 422 and _STORE_DOWN.search(error):
            raise StoreUnavailable("TSDB", f"answered {answer.status_code}: {_shortened(error)}")
        raise TsdbQueryError(answer.status_code, _shortened(error))


def _error_text(answer: httpx.Response) -> str:
    """Prometheus' ``error`` field, or the body when it is not its JSON."""
    try:
        return str(answer.json()["error"])
    except (ValueError, KeyError, TypeError):
        return answer.text.strip()


def _shortened(error: str) -> str:
    """At most _ERROR_TEXT_LIMIT characters of ``error``: its start and its end, where the cause is."""
    if len(error) <= _ERROR_TEXT_LIMIT:
        return error
    half = _ERROR_TEXT_LIMIT // 2
    return f"{error[:half]} … {error[-half:]}"
