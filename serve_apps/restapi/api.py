"""The FastAPI application: routes ``/v2/...`` (mounted at ``/restapi`` by Serve), and its
OpenAPI document with Swagger UI (``/docs``) and ReDoc (``/redoc``), whose scripts and styles
it serves itself from the ``fastapi-offline`` package (``/docs-static/...``): the pages work
without reaching any CDN.

``create_api(config)`` builds it without touching any store: they are opened on the first
request, on the event loop that serves it, so the same app runs in a Serve replica, under
uvicorn, or in-process in tests. The routes are ``serve_apps.restapi.routes``' routers, their
checks ``serve_apps.restapi.dependencies``. Answers are JSON; errors are
``serve_apps.restapi.errors``.

Scoping: a user's token names its organization; any other organization id, and any cloud
account or task id of another organization, is answered 404 as if it did not exist. The
design's routes (``routes/seed.py``: ``/v2/clean_expenses?organization_id=…``) take the
organization from the query and check it the same way.
"""

# No `from __future__ import annotations` here nor in the modules of request models and routes:
# Serve ships the FastAPI app to its replicas pickled by value, and FastAPI could not resolve
# the request models from string annotations there.
import time
from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Request, Response
from fastapi_offline import FastAPIOffline

from k8scost.metroculus_client import SECRET_HEADER, MetroculusClient
from serve_apps.restapi import errors, metrics
from serve_apps.restapi.auth import Tokens
from serve_apps.restapi.dependencies import caller
from serve_apps.restapi.routes import (
    cloud_accounts,
    expenses,
    live,
    optimizations,
    organizations,
    rightsizing,
    seed,
    users,
)
from serve_apps.restapi.state import RestApiConfig, Stores

# Where the docs pages' scripts, styles and icon are served (under the app's root path).
DOCS_STATIC = "/docs-static"


def create_api(
    config: RestApiConfig, metroculus: MetroculusClient | None = None, clock: Callable[[], float] = time.time
) -> FastAPI:
    """The app; ``metroculus`` replaces the client of the live view (tests make it fail), ``clock``
    the sign-in throttle's (Unix seconds: every replica's windows are compared in it)."""
    api = FastAPIOffline(
        static_url=DOCS_STATIC,
        title="CloudTuner REST API",
        version="2",
        description="Organizations, users, Kubernetes cloud accounts and their costs. "
        "Authenticate with `Authorization: Bearer <token>` (POST /v2/signup or /v2/tokens; "
        "DELETE /v2/tokens signs out), "
        f"or as a service with the `{SECRET_HEADER}` header.",
    )
    api.state.config = config
    api.state.clock = clock
    api.state.stores = Stores(config, metroculus)
    api.state.tokens = Tokens(config.api.jwt_secret, config.api.token_ttl_seconds, config.cluster_secret)
    errors.install(api)
    _install_metrics(api)
    api.include_router(users.router, prefix="/v2")
    # Every other route authenticates first, whatever it declares: 401 before any other check.
    for routes in (organizations, cloud_accounts, expenses, seed, live, rightsizing, optimizations):
        api.include_router(routes.router, prefix="/v2", dependencies=[Depends(caller)])
    return api


def _install_metrics(api: FastAPI) -> None:
    @api.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # The route template, not the path: ids must not become metric tags.
        route = getattr(request.scope.get("route"), "path", "unknown")
        metrics.REQUESTS.inc(tags={"route": route, "method": request.method, "code": str(response.status_code)})
        metrics.REQUEST_SECONDS.observe(time.perf_counter() - started, tags={"route": route})
        if response.status_code == 503:
            metrics.STORE_ERRORS.inc(tags={"route": route})
        return response
