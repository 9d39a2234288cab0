"""The dashboard app's file serving, without Ray: which paths answer what, and the page's own files."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from serve_apps.dashboard import app as dashboard


class _Counted:
    def __init__(self) -> None:
        self.tags: list[dict[str, str]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.tags.append(tags or {})


def _client(counted: _Counted, monkeypatch: pytest.MonkeyPatch) -> httpx.AsyncClient:
    """A replica (the deployment's class, without Ray), called as Serve's proxy calls it."""
    monkeypatch.setattr(dashboard.metrics, "REQUESTS", counted)
    replica = dashboard.Dashboard.func_or_class()

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        response = await replica(Request(scope, receive))
        await response(scope, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://dashboard.test")


def test_every_file_of_the_page_is_there() -> None:
    loaded, missing = dashboard.load_files(dashboard.FILES)
    assert missing == {}, "run scripts/setup.sh (npm ci in serve_apps/dashboard)"
    page = loaded["/"].body.decode()
    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', page)) - {"data:,"}
    assert {f"/{path}" for path in referenced} <= set(dashboard.FILES)


async def test_paths_answer_files_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    counted = _Counted()
    http = _client(counted, monkeypatch)
    page = await http.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert (await http.get("/vendor/chart.js")).headers["content-type"].startswith("text/javascript")
    cached = await http.get("/style.css", headers={"If-None-Match": (await http.get("/style.css")).headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    head = await http.head("/app.js")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 1000
    for path in ("/static/app.js", "/node_modules/chart.js/package.json", "/restapi/v2/organizations", "/%2e%2e/README.md"):
        assert (await http.get(path)).status_code == 404, path
    assert (await http.post("/", content=b"x")).status_code == 405
    assert {"file": "unknown", "code": "404"} in counted.tags and {"file": "/", "code": "200"} in counted.tags


async def test_a_missing_chart_library_is_503_naming_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(dashboard, "FILES", {**dashboard.FILES, "/vendor/chart.js": (tmp_path / "absent.js", "text/javascript")})
    http = _client(_Counted(), monkeypatch)
    answer = await http.get("/vendor/chart.js")
    assert answer.status_code == 503 and "scripts/setup.sh" in answer.text
    assert (await http.get("/")).status_code == 200  # the page still comes, and shows its figures without charts


@pytest.mark.skipif(shutil.which("node") is None, reason="node is installed by scripts/setup.sh (npm)")
def test_the_page_script_parses() -> None:
    subprocess.run(["node", "--check", str(dashboard.STATIC / "app.js")], check=True)
