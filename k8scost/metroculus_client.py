"""An async client of Metroculus for the SaaS's own callers (tenant actors, workers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from k8scost.api_errors import error_message
from k8scost.httpclient import async_client

# The header carrying the cluster secret, which Metroculus and the REST API both take.
SECRET_HEADER = "Secret"
_ERROR_TEXT_LIMIT = 1024


class MetroculusError(Exception):
    """Metroculus answered a non-2xx status; ``message`` is its error's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)  # both in args, so it unpickles: Ray ships it from the tenant actors
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"Metroculus answered {self.status}: {self.message}"


class MetroculusClient:
    """Calls ``base_url`` (e.g. ``http://127.0.0.1:8000/metroculus``) with the cluster secret."""

    def __init__(
        self, base_url: str, secret: str, timeout: float = 60.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        """``transport``: httpx's, e.g. an ``httpx.ASGITransport`` to call a Metroculus in-process.

        An https ``base_url`` is verified against httpx's CA bundle; a plain-http one loads
        none: the bundle is ≈ 1 MB in every process, and a tenant actor is one process per tenant.
        """
        options: dict[str, Any] = {"base_url": base_url.rstrip("/"), "headers": {SECRET_HEADER: secret}, "timeout": timeout}
        # Never follows redirects: an http client never speaks TLS.
        verify = base_url.startswith("https://")
        self._http = httpx.AsyncClient(transport=transport, **options) if transport else async_client(verify=verify, **options)

    async def kubecost_metrics(
        self, cloud_account_id: str, metrics: Sequence[str], start: int, end: int, step: int | None = None,
        lag: int = 0,
    ) -> dict[str, Any]:
        """Per-series costs of ``metrics`` over (start, end], or per bucket of ``step`` seconds.

        ``lag``: seconds the exporter's rates trail the costs (half its allocation window).
        """
        params: dict[str, Any] = {
            "cloud_account_id": cloud_account_id,
            "metrics": ",".join(metrics),
            "start_date": start,
            "end_date": end,
            "lag": lag,
        }
        if step is not None:
            params["step"] = step
        return await self._get("/v2/kubecost_metrics", params)

    async def cluster_costs(self, cloud_account_id: str, start: int, end: int) -> dict[str, Any]:
        """Cluster-level costs over (start, end], in total and per cluster."""
        return await self._get(
            "/v2/kubecost_cluster_costs", {"cloud_account_id": cloud_account_id, "start_date": start, "end_date": end}
        )

    async def k8s_live(
        self, cloud_account_id: str, query: str, start: int | str, end: int | str, step: int | str, *,
        timeout: float | None = None, **filters: str,
    ) -> dict[str, Any]:
        """Live query ``query`` (a name of ``k8scost.promql.LIVE_QUERIES``) over [start, end],
        a point every ``step`` seconds; ``filters``: cluster, namespace (equality).

        Numbers may come as the strings a user gave: Metroculus checks every value.
        ``timeout``: seconds for this call, instead of the client's.
        """
        params: dict[str, Any] = {
            "cloud_account_id": cloud_account_id,
            "query": query,
            "start_date": start,
            "end_date": end,
            "step": step,
            **filters,
        }
        return await self._get("/v2/k8s_live", params, timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> MetroculusClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _get(self, path: str, params: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        answer = await self._http.get(
            path, params=params, timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
        )
        if not answer.is_success:
            raise MetroculusError(answer.status_code, _error_text(answer))
        return answer.json()


def _error_text(answer: httpx.Response) -> str:
    """Metroculus's error message, or the start of the body (a proxy's error page)."""
    try:
        message = error_message(answer.json())
    except ValueError:
        message = None
    return answer.text[:_ERROR_TEXT_LIMIT].strip() if message is None else message
