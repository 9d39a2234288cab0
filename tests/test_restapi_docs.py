"""The REST API's docs pages work offline: every script, style and icon they load is the app's
own, answered from the installed package; no server, no store (in-process, httpx over ASGI).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest

from serve_apps.restapi.api import RestApiConfig, create_api


class Assets(HTMLParser):
    """Every URL a page loads: scripts, styles, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag in ("script", "img") and named.get("src"):
            self.urls.append(str(named["src"]))
        elif tag == "link" and named.get("href"):
            self.urls.append(str(named["href"]))


def loaded_by(html: str) -> list[str]:
    parser = Assets()
    parser.feed(html)
    return parser.urls


CONTENT_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}


def test_the_parser_finds_what_a_page_loads() -> None:
    """Without it, "every URL is local" would hold of a page whose URLs it missed."""
    page = (
        '<link rel="stylesheet" href="https://cdn.example/x.css"><script src="/a.js"></script>'
        '<link rel="shortcut icon" href="/i.png"><img src="//cdn.example/y.png"><script>inline()</script>'
    )
    assert loaded_by(page) == ["https://cdn.example/x.css", "/a.js", "/i.png", "//cdn.example/y.png"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_only_their_own_assets(page: str) -> None:
    # As Serve mounts the app: at /restapi, which the pages' URLs must carry.
    api = create_api(RestApiConfig.from_env())
    transport = httpx.ASGITransport(app=api, root_path="/restapi")
    async with httpx.AsyncClient(transport=transport, base_url="http://restapi.test") as client:
        answer = await client.get(f"/restapi{page}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        urls = loaded_by(answer.text)
        assert len(urls) >= 2, urls  # a script and a style or icon at least
        assert not re.search(r"https?:|//cdn|jsdelivr|unpkg", answer.text), "the page reaches outside"
        for url in urls:
            assert url.startswith("/restapi/docs-static/"), url
            asset = await client.get(url)
            assert asset.status_code == 200, url
            suffix = url[url.rindex("."):]
            assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], (url, asset.headers)
            assert len(asset.content) > 1000, url
        # The document the page renders, at the URL the page names.
        spec_url = re.search(r"""(?:url|spec-url)\s*[:=]\s*['"]([^'"]+)['"]""", answer.text).group(1)
        assert spec_url == "/restapi/openapi.json"
        spec = (await client.get(spec_url)).json()
        assert "/v2/organizations/{organization_id}/clean_expenses" in spec["paths"]
        if page == "/docs":
            # FastAPI writes OpenAPI 3.1, which Swagger UI renders from version 5 on (a blank page before).
            assert spec["openapi"].startswith("3.1")
            bundle = await client.get(next(url for url in urls if url.endswith("swagger-ui-bundle.js")))
            assert b"isOAS31" in bundle.content
