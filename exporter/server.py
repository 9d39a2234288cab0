"""The exporter process: /metrics served, Kubecost polled, until a signal stops it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import httpx
from prometheus_client import start_http_server

from exporter.collector import ExporterMetrics
from exporter.poller import Poller
from k8scost.settings import ExporterSettings


@contextlib.asynccontextmanager
async def running(settings: ExporterSettings) -> AsyncIterator[Poller]:
    """/metrics served and a Poller with its pooled client, for as long as the context lasts."""
    metrics = ExporterMetrics()
    server, _ = start_http_server(settings.listen_port, settings.listen_host, metrics.registry)
    try:
        async with httpx.AsyncClient(timeout=settings.request_timeout) as client:
            yield Poller(settings, client, metrics)
    finally:
        server.shutdown()
        server.server_close()


async def serve(settings: ExporterSettings) -> None:
    """Poll every ``scrape_interval`` seconds until SIGTERM or SIGINT, then return."""
    async with running(settings) as poller:
        polling = asyncio.create_task(poller.run())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, polling.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await polling
