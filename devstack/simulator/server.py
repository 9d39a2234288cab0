"""HTTP face of the simulator: OpenCost's allocation and assets endpoints, the usage exporters
(cAdvisor, kube-state-metrics, node-exporter: ``usage.PATHS``), and fault injection for tests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.simulator.allocation import QueryError, allocation_response, assets_response, error_body
from devstack.simulator.model import find_cluster
from devstack.simulator.spec import Estate
from devstack.simulator.usage import PATHS, UsageExporters

FAULT_MODES = ("ok", "error", "garbage", "slow")
SLOW_SECONDS = 30.0

Builder = Callable[[Estate, str, dict[str, str], float], dict[str, Any]]


def create_app(estate: Estate, cluster_name: str, clock: Callable[[], float] = time.time) -> Starlette:
    """A Starlette app serving ``cluster_name`` of ``estate`` as its Kubecost would, at the times ``clock`` gives.

    ``POST /_sim/fault`` with ``{"mode": "ok"|"error"|"garbage"|"slow"}`` (and, for slow,
    an optional ``"seconds"``, default 30) makes the data endpoints misbehave until reset.
    """
    find_cluster(estate, cluster_name)  # a wrong name fails now, not on the first request
    fault: dict[str, Any] = {"mode": "ok", "seconds": SLOW_SECONDS}

    def answer(build: Builder, params: dict[str, str]) -> Response:
        try:
            return JSONResponse(build(estate, cluster_name, params, clock()))
        except QueryError as exc:
            return JSONResponse(error_body(str(exc)), status_code=400)

    def data_endpoint(build: Builder) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            mode = fault["mode"]
            if mode == "error":
                return JSONResponse({"code": 500, "status": "error", "message": "simulated failure"}, status_code=500)
            if mode == "garbage":
                return Response("<html><body>upstream connect error</body></html>", media_type="text/html")
            if mode == "slow":
                await asyncio.sleep(fault["seconds"])
            # A large estate takes a fraction of a second: keep the event loop free meanwhile.
            return await run_in_threadpool(answer, build, dict(request.query_params))

        return endpoint

    async def set_fault(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            mode, seconds = body["mode"], float(body.get("seconds", SLOW_SECONDS))
        except (ValueError, KeyError, TypeError, AttributeError):
            return JSONResponse(error_body('expected JSON {"mode": ..., "seconds": optional}'), status_code=400)
        if mode not in FAULT_MODES or seconds < 0:
            return JSONResponse(error_body(f"mode must be one of {', '.join(FAULT_MODES)}"), status_code=400)
        fault.update(mode=mode, seconds=seconds)
        return JSONResponse({"mode": mode})

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "cluster": cluster_name})

    exporters = UsageExporters(estate, cluster_name)
    # Scrapes run in threads and the exporters integrate their counters in place: one at a time.
    exporters_lock = threading.Lock()

    def render(source: str) -> str:
        with exporters_lock:
            return exporters.text(clock(), source)

    def exporter(source: str) -> Callable[[Request], Any]:
        async def endpoint(_: Request) -> Response:
            text = await run_in_threadpool(render, source)
            return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

        return endpoint

    allocation = data_endpoint(allocation_response)
    assets = data_endpoint(assets_response)
    return Starlette(routes=[
        Route("/allocation", allocation),
        Route("/allocation/compute", allocation),
        Route("/model/allocation", allocation),
        Route("/model/assets", assets),
        Route("/assets", assets),
        Route("/healthz", healthz),
        Route("/_sim/fault", set_fault, methods=["POST"]),
        *(Route(path, exporter(source)) for source, path in PATHS.items()),
    ])
