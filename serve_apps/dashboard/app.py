"""``/``: the cost dashboard, a single page that reads the REST API (``/restapi/v2``) in the browser.

The page is four static files (``static/``: plain ES modules, no build step) and the
chart library, which ``scripts/setup.sh`` installs from npm (``package.json``,
``package-lock.json``) into ``node_modules/`` next to this file and which is served at
``/vendor/chart.js``: nothing is fetched from outside, so the page works offline. The
files are read once when the replica starts; every answer carries an ETag.

The dashboard holds no data and no secret: the browser signs in against the REST API and
sends its bearer token there itself. Answers here: 200/304 for a file, 404 for any other
path, 405 for a method other than GET/HEAD, 503 for the chart library when setup has not
installed it (the page then shows the numbers without the charts).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import NamedTuple

from ray import serve
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from serve_apps.dashboard import metrics

log = logging.getLogger("ray.serve")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
NODE_MODULES = HERE / "node_modules"
# URL path → (file, media type). The only files ever read: a request never names a path.
FILES: dict[str, tuple[Path, str]] = {
    "/": (STATIC / "index.html", "text/html; charset=utf-8"),
    "/index.html": (STATIC / "index.html", "text/html; charset=utf-8"),
    "/app.js": (STATIC / "app.js", "text/javascript; charset=utf-8"),
    "/recommendations.js": (STATIC / "recommendations.js", "text/javascript; charset=utf-8"),
    "/style.css": (STATIC / "style.css", "text/css; charset=utf-8"),
    "/vendor/chart.js": (NODE_MODULES / "chart.js" / "dist" / "chart.umd.js", "text/javascript; charset=utf-8"),
}
# Same origin only: the page talks to /restapi on the host that served it and loads
# nothing from elsewhere. Chart.js sets canvas sizes through inline styles.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every time (cheap: 304 on the ETag), so a new deploy is seen at once.
    "Cache-Control": "no-cache",
}


class _File(NamedTuple):
    body: bytes
    media_type: str
    etag: str


def load_files(files: dict[str, tuple[Path, str]]) -> tuple[dict[str, _File], dict[str, str]]:
    """The files that exist, by URL path, and for the missing ones why."""
    loaded: dict[str, _File] = {}
    missing: dict[str, str] = {}
    for path, (source, media_type) in files.items():
        try:
            body = source.read_bytes()
        except FileNotFoundError:
            missing[path] = f"{source} is missing; run scripts/setup.sh (npm ci in serve_apps/dashboard/)"
            continue
        loaded[path] = _File(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return loaded, missing


@serve.deployment(
    name="Dashboard",
    # Static files from memory: little CPU per request, many may overlap.
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.1},
)
class Dashboard:
    def __init__(self) -> None:
        self.files, self.missing = load_files(FILES)
        for path, why in self.missing.items():
            log.warning("dashboard: %s not served: %s", path, why)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.removeprefix(request.scope.get("root_path", "").rstrip("/")) or "/"
        file = self.files.get(path)
        if request.method not in ("GET", "HEAD"):
            response: Response = PlainTextResponse(
                f"method {request.method} not allowed; use GET\n", status_code=405, headers={"Allow": "GET, HEAD"}
            )
        elif file is not None:
            response = self._file(request, file)
        elif path in self.missing:
            response = PlainTextResponse(self.missing[path] + "\n", status_code=503)
        else:
            response = PlainTextResponse(f"not found: {path}\n", status_code=404)
        response.headers.update(SECURITY_HEADERS)
        name = path if path in FILES else "unknown"
        metrics.REQUESTS.inc(tags={"file": name, "code": str(response.status_code)})
        return response

    @staticmethod
    def _file(request: Request, file: _File) -> Response:
        headers = {"ETag": file.etag}
        if file.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        body = b"" if request.method == "HEAD" else file.body
        headers["Content-Length"] = str(len(file.body))
        return Response(body, media_type=file.media_type, headers=headers)


app = Dashboard.bind()
