"""The demo's recommendation step, without its servers: which jobs it submits, in which order,
and the summary it prints from the REST API's answers (the HTTP calls answered here)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from k8scost.stores.accounts import Credentials
from scripts import demo

CREDENTIALS = {"c1": Credentials("acc-1", "pw"), "c2": Credentials("acc-2", "pw")}


class _Done:
    def __init__(self, returncode: int) -> None:
        self.returncode = returncode


def test_every_recommendation_job_is_submitted_rightsizing_first(monkeypatch: pytest.MonkeyPatch) -> None:
    submitted: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> _Done:
        submitted.append(command)
        # The anomalies module fails: named, and the others still run.
        return _Done(1 if "k8s_cost_anomalies" in command else 0)

    monkeypatch.setattr(demo.subprocess, "run", run)
    monkeypatch.setenv("MONGODB_DATABASE", "demo_db")
    failed = demo.recommendation_jobs(CREDENTIALS)
    assert failed == ["jobs.optimizations --module k8s_cost_anomalies (exit 1)"]
    entrypoints = [command[command.index("--") + 1:] for command in submitted]
    accounts = ["--cloud-account-id", "acc-1", "--cloud-account-id", "acc-2"]
    assert entrypoints == [
        ["python", "-m", "jobs.rightsizing", *accounts],
        *(["python", "-m", "jobs.optimizations", "--module", module, *accounts]
          for module in ("k8s_rightsizing", "k8s_cluster_rightsizing", "k8s_spot_instances", "k8s_cost_anomalies")),
    ]
    for command in submitted:
        assert command[0].endswith("/ray") and command[1:3] == ["job", "submit"]
        assert command[command.index("--address") + 1] == demo.stack.RAY_DASHBOARD
        assert command[command.index("--working-dir") + 1] == "."
        env = json.loads(command[command.index("--runtime-env-json") + 1])["env_vars"]
        assert env["MONGODB_DATABASE"] == "demo_db" and env["CLICKHOUSE_URL"].startswith("clickhouse://")


def _optimizations(saving: dict[str, list[float]], insufficient: str) -> dict[str, Any]:
    modules = {}
    for module, savings in saving.items():
        items = [{"id": f"{module}-{i}", "saving": s} for i, s in enumerate(savings)]
        if module == "k8s_cost_anomalies":
            items.append({"id": "short", "saving": 0.0, "insufficient": insufficient})
        modules[module] = {"count": len(items), "saving": sum(savings), "items": items,
                           "runs": [{"status": "completed", "error": None}] if module != "k8s_spot_instances" else []}
    return {"total_saving": sum(o["saving"] for o in modules.values()), "optimizations": modules,
            "dismissed_optimizations": {m: {"count": 1, "saving": 2.5} if m == "k8s_rightsizing" else {"count": 0, "saving": 0}
                                        for m in saving},
            "excluded_optimizations": {m: {"count": 0, "saving": 0} for m in saving}}


def test_the_summary_prints_each_organizations_total_and_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        "alice@acme.example": _optimizations({"k8s_rightsizing": [10.25, 4.5], "k8s_cluster_rightsizing": [],
                                              "k8s_spot_instances": [], "k8s_cost_anomalies": []},
                                             "insufficient history: 30 days"),
        "bob@globex.example": _optimizations({"k8s_rightsizing": [1.0], "k8s_cluster_rightsizing": [],
                                              "k8s_spot_instances": [], "k8s_cost_anomalies": []}, "insufficient history: 29 days"),
    }
    signed_out: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/tokens") and request.method == "POST":
            email = json.loads(request.content)["email"]
            return httpx.Response(201, json={"token": email, "organization_id": f"org-{email}"})
        if request.method == "DELETE":
            signed_out.append(request.headers["authorization"])
            return httpx.Response(204)
        email = request.headers["authorization"].removeprefix("Bearer ")
        assert request.url.path.startswith(f"/restapi/v2/organizations/org-{email}/")
        if request.url.path.endswith("/k8s_rightsizing"):
            return httpx.Response(200, json={"total_count": 7, "monthly_savings": 14.75, "extra_monthly_cost": 3.0})
        return httpx.Response(200, json=answers[email])

    client = httpx.Client(transport=httpx.MockTransport(handler))
    for method in ("post", "get", "delete"):
        monkeypatch.setattr(demo.httpx, method, getattr(client, method))
    lines = demo.recommendations_summary().splitlines()
    assert lines[0] == "Acme (alice@acme.example): total saving 14.75 a month"
    assert lines[1].split() == ["k8s_rightsizing", "2", "items", "14.75"]
    assert lines[3].split() == ["k8s_spot_instances", "0", "items", "0.00", "not", "run"]
    assert lines[4].split()[:4] == ["k8s_cost_anomalies", "1", "items", "0.00"]
    assert lines[4].endswith("   insufficient history: 30 days")
    assert lines[5].split() == ["dismissed", "or", "excluded", "1", "items", "2.50"]
    assert lines[6] == "  rightsizing tab: 7 containers, 14.75 to save, 3.00 more for the under-provisioned"
    assert lines[7] == "Globex (bob@globex.example): total saving 1.00 a month"
    assert len(lines) == 14 and signed_out == ["Bearer alice@acme.example", "Bearer bob@globex.example"]
