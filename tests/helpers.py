"""Small tools the tests share: TSDB queries, and the stack tools of devstack.stack and devstack.hosted."""

from __future__ import annotations

from typing import Any

import httpx

from devstack.hosted import HostedTenant, start_host  # noqa: F401  (re-exported for tests)
from devstack.stack import (  # noqa: F401  (re-exported for tests)
    RAY_ADDRESS,
    RAY_DASHBOARD,
    ROOT,
    SERVE_URL,
    TSDB_URL,
    WRITE_URL,
    deploy_serve,
    free_port,
    services,
    wait_for,
    wait_until_queryable,
)


def tsdb_query(query: str, at: float | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"query": query}
    if at is not None:
        params["time"] = at
    answer = httpx.get(f"{TSDB_URL}/api/v1/query", params=params, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def tsdb_range(query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{TSDB_URL}/api/v1/query_range",
        params={"query": query, "start": start, "end": end, "step": step},
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json()["data"]["result"]
