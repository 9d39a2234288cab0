"""The dashboard app's file serving, without Ray: which paths answer what, and the page's own files."""

from __future__ import annotations

import json
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


# ---- recommendations.js: the Recommendations tab's and the anomaly marks' pure parts -------

DAY = 86_400
D0 = 1_764_547_200  # 2025-12-01 00:00 UTC


def _node(script: str) -> Any:
    """What ``script`` (an ES module importing recommendations.js as ``r``) prints, as JSON."""
    module = (dashboard.STATIC / "recommendations.js").as_uri()
    done = subprocess.run(["node", "--input-type=module", "-e", f"import * as r from {json.dumps(module)};\n{script}"],
                          capture_output=True, text=True, check=True, timeout=60)
    return json.loads(done.stdout)


def test_the_page_script_imports_only_served_modules_and_their_exports() -> None:
    """app.js's `import {…} from "./x.js"`: x.js is a file the app serves, and exports every name asked."""
    source = (dashboard.STATIC / "app.js").read_text()
    imports = re.findall(r'^import \{([^}]*)\} from "\./([^"]+)";', source, re.M)
    assert imports, "app.js imports recommendations.js"
    for names, path in imports:
        assert f"/{path}" in dashboard.FILES, path
        wanted = {n.split(" as ")[0].strip() for n in names.split(",") if n.strip()}
        if shutil.which("node"):
            exported = set(_node("console.log(JSON.stringify(Object.keys(r)));")) if path == "recommendations.js" else set()
            assert wanted <= exported, wanted - exported


def _anomaly(cluster: str, namespace: str | None, start: int, end: int, **more: Any) -> dict[str, Any]:
    return {"module": "k8s_cost_anomalies", "id": f"{cluster}/{namespace}/{start}", "k8s_cluster": cluster,
            "k8s_namespace": namespace, "start": start, "end": end, **more}


ANOMALY_ITEMS = [
    _anomaly("c1", None, D0 + 2 * DAY, D0 + 4 * DAY),
    _anomaly("c1", "shop", D0 + 3 * DAY, D0 + 3 * DAY),
    _anomaly("c2", None, D0 + 9 * DAY, D0 + 11 * DAY),  # runs past the chart's last day
    _anomaly("c2", None, D0 - 5 * DAY, D0 - 3 * DAY),  # ended before the chart's first day
    {"module": "k8s_cost_anomalies", "id": "short", "k8s_cluster": "c3", "insufficient": "insufficient history: 12 days"},
]
CHART_DAYS = [D0 + k * DAY for k in range(10)]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is installed by scripts/setup.sh (npm)")
@pytest.mark.parametrize(("filters", "expected"), [
    # No namespace chosen: the clusters' anomalies, on each of their days the chart has.
    ({}, {2: ["c1/None/" + str(D0 + 2 * DAY)], 3: ["c1/None/" + str(D0 + 2 * DAY)],
          4: ["c1/None/" + str(D0 + 2 * DAY)], 9: ["c2/None/" + str(D0 + 9 * DAY)]}),
    ({"k8s_cluster": "c2"}, {9: ["c2/None/" + str(D0 + 9 * DAY)]}),
    # A namespace chosen: its own anomalies only (the chart shows its cost, not the cluster's).
    ({"k8s_namespace": "shop"}, {3: ["c1/shop/" + str(D0 + 3 * DAY)]}),
    ({"k8s_cluster": "c2", "k8s_namespace": "shop"}, {}),
])
def test_anomalies_are_marked_on_the_chart_days_they_span(filters: dict[str, str], expected: dict[int, list[str]]) -> None:
    marks = _node(f"""const marks = r.anomalyMarks({json.dumps(ANOMALY_ITEMS)}, {json.dumps(CHART_DAYS)},
                                                   {json.dumps({"k8s_cluster": "", "k8s_namespace": "", **filters})});
                      console.log(JSON.stringify(marks.map((m) => [m.day, m.index, m.items.map((i) => i.id)])));""")
    assert marks == [[D0 + k * DAY, k, ids] for k, ids in sorted(expected.items())]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is installed by scripts/setup.sh (npm)")
def test_the_plugin_draws_a_square_above_each_marked_day_and_records_where() -> None:
    """A chart of 10 bars over x 100..300 (20 px a day) at device pixel ratio 2: the marks of
    days 2 and 9 are squares centred on bars 2 and 9, 5 px below the plot's top."""
    drawn = _node(f"""const rects = [];
        const canvas = {{ dataset: {{}} }};
        const ctx = {{ save() {{}}, restore() {{}}, fillStyle: "", fillRect(x, y, w, h) {{ rects.push([this.fillStyle, x, y, w, h]); }} }};
        const chart = {{ ctx, canvas, chartArea: {{ left: 100, right: 300, top: 40, bottom: 240 }}, currentDevicePixelRatio: 2,
          data: {{ labels: new Array(10).fill("") }}, scales: {{ x: {{ getPixelForValue: (i) => 110 + 20 * i }} }},
          $anomalyMarks: r.anomalyMarks({json.dumps(ANOMALY_ITEMS)}, {json.dumps(CHART_DAYS)}, {{ k8s_cluster: "", k8s_namespace: "" }}) }};
        r.anomalyPlugin.afterDatasetsDraw(chart);
        console.log(JSON.stringify({{ rects, recorded: JSON.parse(canvas.dataset.anomalyMarks), color: r.MARK_COLOR }}));""")
    squares = [rect[1:] for rect in drawn["rects"] if rect[0] == drawn["color"]]
    assert squares == [[110 + 20 * k - 5, 40, 10, 10] for k in (2, 3, 4, 9)]
    bands = [rect[1:] for rect in drawn["rects"] if rect[0] != drawn["color"]]
    assert bands == [[110 + 20 * k - 10, 40, 20, 200] for k in (2, 3, 4, 9)]
    assert drawn["recorded"] == [{"day": D0 + k * DAY, "x": 2 * (110 + 20 * k), "y": 2 * 45} for k in (2, 3, 4, 9)]


FMT = """const fmt = { money: (v) => `$${Number(v).toFixed(2)}`, millicores: (c) => `${Math.round(c * 1000)}m`,
                    mebibytes: (b) => `${Math.ceil(b / 1048576)}Mi`, share: (v) => `${Math.round(v * 100)} %`,
                    day: (t) => `d${(t - D0) / 86400}` };""".replace("D0", str(D0))


@pytest.mark.skipif(shutil.which("node") is None, reason="node is installed by scripts/setup.sh (npm)")
def test_each_module_says_its_evidence() -> None:
    items = [
        {"module": "k8s_rightsizing", "namespace": "shop", "controller_kind": "deployment", "controller": "web", "pod": "web-1",
         "container": "app", "current_cpu_cores": 1.0, "recommended_cpu_cores": 0.25, "current_memory_bytes": 1073741824,
         "recommended_memory_bytes": 300 * 1048576, "total_efficiency": 0.2, "replicas": 3, "evidence": {"window_days": 7}},
        {"module": "k8s_cluster_rightsizing", "profile": "production", "current_nodes": 5, "planned_nodes": 3,
         "evidence": {"pods": 40, "plans": [
             {"profile": "development", "target_utilization": 0.8, "min_nodes": 1, "current_monthly_cost": 900, "monthly_cost": 300},
             {"profile": "production", "target_utilization": 0.65, "min_nodes": 3, "current_monthly_cost": 900, "monthly_cost": 540}]}},
        {"module": "k8s_spot_instances", "controller_kind": "deployment", "controller": "api", "k8s_namespace": "shop",
         "replicas": 4, "rule": "ready", "nodes": ["n1", "n2"], "monthly_cost": 120.5},
        {"module": "k8s_cost_anomalies", "direction": "spike", "start": D0 + 2 * DAY, "end": D0 + 3 * DAY, "days": 2,
         "excess_cost": 45.5, "evidence": {"peak_day": D0 + 3 * DAY, "cost": 80, "baseline": 50, "relative_change": 0.6,
                                           "explained_by": [{"name": "shop-web-a", "cost": 30, "baseline": 10, "share": 0.66}]}},
        {"module": "k8s_spot_instances", "insufficient": "insufficient history: 12 days", "needed_days": 7},
    ]
    lines = _node(f"{FMT}\nconsole.log(JSON.stringify({json.dumps(items)}.map((item) => r.evidence(item, fmt))));")
    assert lines == [
        "shop/deployment/web app: CPU 1000m → 250m, memory 1024Mi → 300Mi, efficiency 20 %, 3 replicas; over 7 days of usage",
        "5 → 3 nodes at the production profile (target 65 %, at least 3): $900.00 → $540.00 a month; 40 pods packed",
        'deployment/api in shop: 4 replicas, verdict "ready", on n1, n2; $120.50 a month on demand',
        "spike on d2 – d3 (2 days), +$45.50 against the baseline; peak d3: $80.00 for $50.00 expected (+60 %); "
        "explained by shop-web-a +$20.00",
        "insufficient history: 12 days (needs 7)",
    ]
