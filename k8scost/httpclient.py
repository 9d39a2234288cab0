"""The pooled async HTTP client every SaaS component calls another service with.

httpcore 1.0.9 (httpx's pool) loses a connection slot for good when a request is
cancelled while it waits for a connection (encode/httpcore#1093, open): once
``connections`` slots are lost, every later request fails with ``PoolTimeout`` against a
healthy server, until the process restarts. Cancellation is routine here: Ray Serve
cancels a request past its timeout, and a caller's ``asyncio.wait_for`` or a client that
hangs up cancels its call. Measured: 200 tenants' cycles overloaded Metroculus on this
2-core machine, Serve cancelled the late ones, and Metroculus answered 503 to every call
afterwards, the TSDB idle and answering Query in 24 ms.

httpcore leaves a connection in that state whenever a request stops waiting for one,
cancelled or timed out, and its pool keeps stale requests when a caller is cancelled
while it reads a body. So here the pool never makes a request wait and never sees one
cancelled: a request first waits for one of ``connections`` slots on a semaphore (safe
to cancel; its pool timeout applies), then is sent and its body read whole by a task of
its own, which a cancelled caller leaves to finish (every wait in it bounded by the
client's timeouts). Measured with a reproduction of the issue
(``tests/test_httpclient.py``): after 8 s of calls cancelled at random points, httpx's
own transport failed every later call with ``PoolTimeout``, this one none (after 40 s
too, its pool then holding no stale request: ad hoc). Bodies are read whole: no caller
of ours streams.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


class _SafeTransport(httpx.AsyncBaseTransport):
    """httpx's transport, entered by no more requests than it has connections, and never
    interrupted by a caller's cancellation."""

    def __init__(self, connections: int, **options: Any) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._transport = httpx.AsyncHTTPTransport(limits=limits, **options)
        self._slots = asyncio.Semaphore(connections)
        self._sending: set[asyncio.Task[httpx.Response]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {}).get("pool")
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(f"no connection free within {timeout} s", request=request) from None
        sending = asyncio.get_running_loop().create_task(self._send(request))
        self._sending.add(sending)
        sending.add_done_callback(self._sent)
        return await asyncio.shield(sending)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._transport.handle_async_request(request)
            try:
                body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            finally:
                await response.aclose()
            return httpx.Response(response.status_code, headers=response.headers, content=body,
                                  extensions=response.extensions)
        finally:
            self._slots.release()

    def _sent(self, sending: asyncio.Task[httpx.Response]) -> None:
        self._sending.discard(sending)
        if not sending.cancelled():
            sending.exception()  # retrieved: a cancelled caller's error is nobody's to raise

    async def aclose(self) -> None:
        await self._transport.aclose()


def async_client(*, connections: int = 100, verify: Any = True, **options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` (``options``: base_url, timeout, headers, …) of at most
    ``connections`` pooled connections, safe to cancel (module docstring)."""
    return httpx.AsyncClient(transport=_SafeTransport(connections, verify=verify), **options)
