"""The pooled client stays usable after calls cancelled or timed out in numbers (encode/httpcore#1093)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import httpx

from k8scost.httpclient import async_client

CONNECTIONS = 4


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 keep-alive, each answer after up to 50 ms."""
    with contextlib.suppress(Exception):
        while True:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                head += chunk
            await asyncio.sleep(random.uniform(0, 0.05))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()


async def _after_churn(client: httpx.AsyncClient, seconds: float) -> list[str]:
    """Calls cancelled at random points of their life for ``seconds``, then 5 calls: their outcomes."""

    async def cancelled_call() -> None:
        with contextlib.suppress(Exception, TimeoutError):
            await asyncio.wait_for(client.get("/"), random.uniform(0.0005, 0.05))

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.gather(*(cancelled_call() for _ in range(5 * CONNECTIONS)))
    outcomes = []
    for _ in range(5):
        try:
            outcomes.append(str((await client.get("/")).status_code))
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


async def test_cancelled_calls_leave_the_pool_usable_where_httpx_own_loses_it() -> None:
    random.seed(1093)
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    timeout = httpx.Timeout(2.0, pool=1.0)
    ours = async_client(base_url=base_url, timeout=timeout, connections=CONNECTIONS)
    httpx_own = httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=httpx.Limits(
        max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS))
    try:
        assert await _after_churn(ours, 8.0) == ["200"] * 5
        # The anchor: the same churn breaks httpx's own pool for good. When it no longer
        # does, httpcore fixed the bug and k8scost.httpclient can go.
        assert "PoolTimeout" in await _after_churn(httpx_own, 8.0)
    finally:
        await ours.aclose()
        await httpx_own.aclose()
        server.close()
