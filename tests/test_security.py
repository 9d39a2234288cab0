"""R4 and R5 of the reliability and security suite, on the real servers and Serve.

R4: 10,000 hostile remote-write bodies (tests/hostile_bodies.py) against the ingress of a
real, authenticated account: only 2xx and 4xx answers, each 4xx naming the problem; the
replica never restarts; unfit samples never land; honest traffic lands exact afterwards.

R5: the spoof matrix. Two organizations, A (the attacker) and B (the victim), each with a
ledger, remote-write accounts and samples in the TSDB. Every name of B carries a marker
(``bmark…``) and its ids are known, so any answer to A holding either is a leak. The REST
routes and their parameters come from the API's own OpenAPI document, Metroculus's
endpoints and parameters from its own answers: a new endpoint is probed without editing
this file (a new kind of id or required parameter fails loudly until given a value).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from k8scost import promql
from k8scost.api_errors import error_message
from k8scost.settings import StoreSettings, from_env
from k8scost.stores.accounts import Credentials
from k8scost.stores.mongo import connect
from k8scost.stores.optimizations import Module, OptimizationStore, item
from k8scost.stores.resources import Kind, Resource
from k8scost.usage_series import USAGE_FAMILIES
from serve_apps.ingress.remote_write import encode
from tests import figures, helpers, hostile_bodies
from tests.conftest import TEST_SERVE_ENV
from tests.test_dashboard import call, ok, write_ledger
from tests.test_ingress import post
from tests.test_restapi import D0, END, NS, PodSpec, cluster_facts, row, select

pytestmark = pytest.mark.services

RES = int(TEST_SERVE_ENV["METROCULUS_RESOLUTION_SECONDS"])
CLUSTER_SECRET = TEST_SERVE_ENV["CLUSTER_SECRET"]
REST = f"{helpers.SERVE_URL}/restapi"
METROCULUS = f"{helpers.SERVE_URL}/metroculus"
NS_METRIC = "cloudtuner_kubecost_namespace_total_cost"
CPU_METRIC = "kubecost_cluster_cpu_cost"

# What a caller may try in any parameter: PromQL, SQL and NoSQL injection, format strings
# of our own query templates, control characters, path tricks, sizes and odd numbers.
INJECTIONS = (
    '"} or vector(1) #',
    '"}) or vector(1) #',
    'x"} or {tenant_id=~".+',
    ".*",
    ".+",
    '=~".*"',
    '!=""',
    "a\nb",
    "\n",
    "' OR 1=1 --",
    "' OR '1'='1",
    "'; DROP TABLE expenses; --",
    "\\",
    "\\'",
    "%",
    "%(accounts)s",
    "{where}",
    '{"$ne": null}',
    '{"$gt": ""}',
    "$where",
    '{"$where": "sleep(100)"}',
    "\x00",
    "..",
    "*",
    "-1",
    "1e309",
    "99999999999999999999",
    "NaN",
    "",
    " ",
    "é漢字🙂",
    "a" * 5000,
)


# --- R4 ---------------------------------------------------------------------------------

R4_BODIES = 10_000
R4_CONCURRENCY = 16
# Words a refusal uses to name what is wrong (the ingress's messages, serve_apps.ingress.remote_write).
PROBLEM = re.compile(r"snappy|protobuf|UTF-8|label|series|in the (past|future)|decompresses|over the limit|TSDB refused|samples/s")


def ingress_replicas() -> dict[str, tuple[Any, ...]]:
    """Replica id → (Ray actor id, pid, start time, state) of the ingress, as Serve reports them."""
    apps = httpx.get(f"{helpers.RAY_DASHBOARD}/api/serve/applications/", timeout=10).json()["applications"]
    replicas = apps["ingress"]["deployments"]["RemoteWriteIngress"]["replicas"]
    return {r["replica_id"]: (r["actor_id"], r["pid"], r["start_time_s"], r["state"]) for r in replicas}


async def send_bodies(cases: list[hostile_bodies.Case], credentials: Credentials) -> list[tuple[int, str]]:
    """Each case's body POSTed to the ingress, ``R4_CONCURRENCY`` at a time: (status, text) each."""
    limit = asyncio.Semaphore(R4_CONCURRENCY)
    defaults = {
        "Cloud-Account-Id": credentials.account_id,
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }
    async with httpx.AsyncClient(
        auth=(credentials.account_id, credentials.password),
        timeout=120,
        limits=httpx.Limits(max_connections=R4_CONCURRENCY),
    ) as client:

        async def one(case: hostile_bodies.Case) -> tuple[int, str]:
            async with limit:
                answer = await client.post(helpers.WRITE_URL, content=case.body, headers={**defaults, **case.headers})
                return answer.status_code, answer.text

        return await asyncio.gather(*(one(case) for case in cases))


def samples_by_namespace(query: str) -> dict[str, set[tuple[int, float]]]:
    """namespace → the raw samples of a range-vector ``query`` (each series' tenant checked by the caller)."""
    found: dict[str, set[tuple[int, float]]] = {}
    for series in helpers.tsdb_query(query):
        found.setdefault(series["metric"]["namespace"], set()).update(
            (round(float(at) * 1000), float(value)) for at, value in series["values"]
        )
    return found


def test_r4_hostile_remote_write_bodies(serve_apps: str, accounts) -> None:
    _, credentials = accounts.create("org-r4")
    tag = uuid.uuid4().hex[:8]
    run = hostile_bodies.Run(int(time.time() * 1000), f"r4honest-{tag}", f"r4unfit-{tag}", f"r4mixed-{tag}")
    before = ingress_replicas()
    assert before and all(state == "RUNNING" for *_, state in before.values()), before

    started = time.monotonic()
    cases = hostile_bodies.generate(R4_BODIES, run)
    generated = time.monotonic() - started
    answers = asyncio.run(send_bodies(cases, credentials))
    elapsed = time.monotonic() - started

    codes = Counter(status for status, _ in answers)
    wrong: list[str] = []
    by_kind: dict[str, Counter[int]] = {}
    for case, (status, text) in zip(cases, answers):
        by_kind.setdefault(case.kind, Counter())[status] += 1
        if status not in case.statuses:
            wrong.append(f"{case.kind}: {status} {text.strip()[:200]!r} (allowed {sorted(case.statuses)})")
        elif status >= 400 and not (PROBLEM.search(text) and (case.needle is None or case.needle in text)):
            wrong.append(f"{case.kind}: {status} {text.strip()[:200]!r} does not name the problem ({case.needle!r})")
    for kind, counted in sorted(by_kind.items()):
        print(f"  R4 {kind}: {dict(sorted(counted.items()))}")

    after = ingress_replicas()

    # Honest traffic afterwards: lands, exact, under the sender. 429 is the sender's rate
    # limit after 10,000 bodies: retried, as Prometheus does.
    honest = f"r4after-{tag}"
    body = encode([({"__name__": NS_METRIC, "cluster": "r4", "namespace": honest}, [(int(time.time() * 1000), 0.375)])])
    helpers.wait_for("the honest write accepted", lambda: post(body, credentials).status_code == 204, timeout=30, interval=1)
    [landed] = helpers.wait_for(
        "the honest write in the TSDB", lambda: helpers.tsdb_query(f'{NS_METRIC}{{namespace="{honest}"}}'), timeout=10
    )

    # Unfit samples of accepted bodies: none stored; the fit ones beside them stored exactly.
    window = "[30m]"
    unfit = helpers.tsdb_query(f'count_over_time({{namespace=~"{run.dropped}-.*"}}{window})')
    expected_mixed: dict[str, set[tuple[int, float]]] = {}
    for case, (status, _) in zip(cases, answers):
        if status == 204:
            for namespace, kept in case.lands.items():
                expected_mixed.setdefault(namespace, set()).update(kept)
    mixed_series = helpers.tsdb_query(f'{{namespace=~"{run.mixed}-.*"}}{window}')
    mixed = samples_by_namespace(f'{{namespace=~"{run.mixed}-.*"}}{window}')
    accepted_unfit = sum(by_kind.get(kind, Counter())[204] for kind in ("NaN/Inf/negative cost", "fit sample among unfit"))

    figures.record(
        "R4",
        f"{len(cases):,} hostile remote-write bodies ({len({c.body for c in cases}):,} distinct, {len(by_kind)} kinds) "
        f"in {elapsed:.0f} s ({generated:.0f} s drawing them): "
        + ", ".join(f"{code}: {count:,}" for code, count in sorted(codes.items()))
        + f"; 5xx: {sum(n for code, n in codes.items() if code >= 500)}; wrong or unnamed answers: {len(wrong)}; "
        f"ingress replica {', '.join(f'{rid} (pid {pid})' for rid, (_, pid, *_) in after.items())} "
        f"{'unchanged' if after == before else f'CHANGED from {before}'}; "
        f"unfit samples stored: {len(unfit)} series of {accepted_unfit} accepted bodies carrying them; "
        f"honest write afterwards: {landed['value'][1]} (sent 0.375)",
    )
    assert not wrong, f"{len(wrong)} answers not as allowed, e.g.:\n" + "\n".join(wrong[:25])
    assert after == before, f"the ingress replica changed: {before} → {after}"
    assert landed["metric"]["tenant_id"] == credentials.account_id and float(landed["value"][1]) == 0.375
    assert accepted_unfit > 100  # the drop rule was exercised, not bypassed by refusals
    assert unfit == [], unfit
    assert mixed == expected_mixed
    assert {s["metric"]["tenant_id"] for s in mixed_series} <= {credentials.account_id}


# --- R5: the estate ---------------------------------------------------------------------


@dataclasses.dataclass
class Org:
    id: str
    token: str
    user_id: str
    email: str
    mark: str  # in every name of the organization
    accounts: dict[str, dict[str, Any]]  # role → the REST API's answer creating it (id, credentials)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def account(self, role: str = "main") -> str:
        return self.accounts[role]["id"]

    def credentials(self, role: str = "main") -> Credentials:
        return Credentials(**self.accounts[role]["credentials"])


@dataclasses.dataclass
class Estate:
    a: Org  # the attacker
    b: Org  # the victim
    a_task: str
    b_task: str
    a_item: str  # an optimization item of each (GET/PATCH …/optimizations)
    b_item: str
    start: int  # the samples written to the TSDB: (start, end], every RES seconds
    end: int
    b_resources: set[str]  # ids of B's ledger resources
    a_total: float  # A's namespaces over the ledger days, as the REST API must sum them

    def b_secrets(self) -> set[str]:
        """What of B must never reach A: its marker and its ids."""
        return {self.b.mark, self.b.id, self.b.user_id, self.b.account(), self.b_task, self.b_item, *self.b_resources}


def signup(name: str, mark: str) -> Org:
    email = f"{mark}-{name}@example.com"
    body = {"organization_name": f"{name} {mark}", "email": email, "password": "r5-password-1", "display_name": mark}
    signed = ok(call("POST", "/signup", json=body), 201)
    return Org(signed["organization_id"], signed["token"], signed["user_id"], email, mark, {})


def create_account(org: Org, role: str) -> None:
    body = {"name": f"{org.mark}-{role}", "type": "kubernetes_cnr"}
    org.accounts[role] = ok(call("POST", f"/organizations/{org.id}/cloud_accounts", org.token, json=body), 201)


def gauges(org: Org, start: int, end: int, rate: float) -> bytes:
    """A cluster and a namespace gauge of ``org``'s main account over (start, end], every RES s."""
    cluster = f"{org.mark}-cluster"
    times = range(start + RES, end + 1, RES)
    return encode([
        ({"__name__": CPU_METRIC, "cluster": cluster}, [(t * 1000, rate) for t in times]),
        ({"__name__": NS_METRIC, "cluster": cluster, "namespace": f"{org.mark}-ns"}, [(t * 1000, rate / 2) for t in times]),
    ])


# A value for every label a usage family may carry, where the family needs a particular one.
USAGE_LABEL_VALUES = {"resource": "memory", "unit": "byte", "reason": "OOMKilled", "cpu": "total", "mode": "idle",
                      "owner_kind": "StatefulSet", "owner_is_controller": "true"}


def usage(org: Org, start: int, end: int) -> bytes:
    """A series of every usage family (k8scost/usage_series.py) of ``org``'s main account over
    (start, end], every RES s, each label marked with the organization: counters grow."""
    times = range(start + RES, end + 1, RES)
    series = []
    for family in USAGE_FAMILIES.values():
        labels = {label: USAGE_LABEL_VALUES.get(label, f"{org.mark}-{label}") for label in family.labels}
        labels.update(cluster=f"{org.mark}-cluster", node=f"{org.mark}-node")
        counter = family.type == "counter"
        series.append(({"__name__": family.name, **labels}, [(t * 1000, t - start if counter else 2.0) for t in times]))
    return encode(series)


@pytest.fixture(scope="module")
def estate(serve_apps: str) -> Estate:
    tag = uuid.uuid4().hex[:8]
    a, b = signup("alpha", f"amark{tag}"), signup("beta", f"bmark{tag}")
    for role in ("main", "rotate", "delete"):
        create_account(a, role)
    create_account(b, "main")

    facts_a = cluster_facts(
        a.account(), f"{a.mark}-east", [PodSpec("shop", "web-1", "web", ("n1",) * 4, (1.0, 1.5, 2.0, 2.5))], (0.5,) * 4
    )
    facts_b = cluster_facts(
        b.account(),
        f"{b.mark}-cluster",
        [PodSpec(f"{b.mark}-ns", f"{b.mark}-pod", f"{b.mark}-svc", (f"{b.mark}-node",) * 4, (10.0,) * 4)],
        (5.0,) * 4,
    )
    asyncio.run(write_ledger(a.id, [[row(f) for f in facts_a]], D0, END))
    asyncio.run(write_ledger(b.id, [[row(f) for f in facts_b]], D0, END))

    end = int(time.time()) // RES * RES - RES
    start = end - 40 * RES
    for org, rate in ((a, 1.0), (b, 100.0)):
        answer = post(gauges(org, start, end, rate), org.credentials())
        assert answer.status_code == 204, answer.text
        answer = post(usage(org, start, end), org.credentials())
        assert answer.status_code == 204, answer.text

    tasks = []
    for org in (a, b):
        started = call("POST", f"/organizations/{org.id}/expenses_async", org.token, json={"start_date": D0, "end_date": END})
        tasks.append(ok(started, 202)["task_id"])
    a_item, b_item = asyncio.run(seed_optimizations(a, b))
    return Estate(
        a, b, tasks[0], tasks[1], a_item, b_item, start, end,
        {f.rid for f in facts_b},
        sum(f.cost for f in select(facts_a, resource_type=NS)),
    )


async def seed_optimizations(*orgs: Org) -> list[str]:
    """An optimization item of each organization's main account, in the Serve apps' database; their ids."""
    db = connect(from_env(StoreSettings))
    store, ids = OptimizationStore(db), []
    try:
        for org in orgs:
            namespace = Resource(Kind.NAMESPACE, f"{org.mark}-cluster", f"{org.mark}-ns", f"{org.mark}-ns")
            doc = item(Module.SPOT_INSTANCES, org.account(), org.id, ("r5",), resource_id=namespace.id(org.account()),
                       cloud_resource_id=namespace.cloud_resource_id(), resource_name=namespace.name, saving=1.0,
                       fields={"k8s_cluster": namespace.cluster, "k8s_namespace": namespace.name})
            await store.start_run(Module.SPOT_INSTANCES, org.account(), org.id, int(time.time()), 0, {})
            await store.complete_run(Module.SPOT_INSTANCES, org.account(), [doc])
            ids.append(doc["_id"])
    finally:
        db.client.close()
    return ids


class Probes:
    """Counts requests, and records leaks and server errors, for one part of the matrix."""

    def __init__(self, estate: Estate) -> None:
        self.estate = estate
        self.tried = 0
        self.leaks: list[str] = []
        self.errors: list[str] = []
        self.unexpected: list[str] = []
        self.statuses: Counter[int] = Counter()

    def check(
        self,
        what: str,
        sent: Iterable[Any],
        answer: httpx.Response,
        allowed: Iterable[int] | None = None,
        scoped: bool = True,
    ) -> None:
        """A leak: a secret of B in an answer to A beyond the echo of what A sent (refusals name
        the id at fault, answers repeat their filters); with ``scoped``, also an organization
        or account id in a 2xx answer that is not A's (REST answers are A's organization's)."""
        self.tried += 1
        self.statuses[answer.status_code] += 1
        text = answer.text
        if answer.status_code >= 500:
            self.errors.append(f"{what}: {answer.status_code} {text[:200]}")
        if allowed is not None and answer.status_code not in allowed:
            self.unexpected.append(f"{what}: {answer.status_code} {text[:200]} (expected {sorted(allowed)})")
        secrets = self.estate.b_secrets()
        beyond_echo = text
        for value in sorted((str(v) for v in sent if any(secret in str(v) for secret in secrets)), key=len, reverse=True):
            beyond_echo = beyond_echo.replace(json.dumps(value)[1:-1], "").replace(value, "")
        for secret in secrets:
            if secret in beyond_echo:
                self.leaks.append(f"{what}: {answer.status_code} holds {secret!r}: {text[:300]}")
        if scoped and answer.is_success and answer.headers.get("content-type", "").startswith("application/json"):
            self.leaks.extend(f"{what}: {leak}" for leak in foreign_ids(answer.json(), self.estate.a))

    def summary(self) -> str:
        return (
            f"{self.tried:,} requests, {len(self.leaks)} cross-tenant leaks, {len(self.errors)} 5xx "
            f"(answers: {', '.join(f'{code}: {n}' for code, n in sorted(self.statuses.items()))})"
        )

    def assert_clean(self) -> None:
        assert not self.leaks, "cross-tenant leaks:\n" + "\n".join(self.leaks[:20])
        assert not self.errors, "server errors:\n" + "\n".join(self.errors[:20])
        assert not self.unexpected, "unexpected answers:\n" + "\n".join(self.unexpected[:20])


def foreign_ids(answer: Any, org: Org, parent: str = "") -> list[str]:
    """Organization and account ids in an answer to ``org`` that are not ``org``'s."""
    own_accounts = {account["id"] for account in org.accounts.values()}
    found: list[str] = []
    if isinstance(answer, dict):
        for key, value in answer.items():
            if key == "organization_id" and value != org.id:
                found.append(f"organization_id {value}")
            elif key == "cloud_account_id" and isinstance(value, str) and value not in own_accounts:
                found.append(f"cloud_account_id {value}")
            elif key == "id" and parent == "organizations" and value != org.id:
                found.append(f"organization {value}")
            elif key == "id" and parent in ("cloud_accounts", "cloud_account") and value not in own_accounts:
                found.append(f"cloud account {value}")
            else:
                found += foreign_ids(value, org, key)
    elif isinstance(answer, list):
        for item in answer:
            found += foreign_ids(item, org, parent)
    return found


def test_the_leak_check_sees_leaks_and_not_echoes() -> None:
    """Without servers: the figures' "0 leaks" would mean nothing if the check missed one."""
    a = Org("org-a", "t", "user-a", "a@x", "amark0", {"main": {"id": "acct-a"}})
    b = Org("org-b", "t", "user-b", "b@x", "bmark0", {"main": {"id": "acct-b"}})
    probes = Probes(Estate(a, b, "task-a", "task-b", "item-a", "item-b", 0, 1, {"res-b"}, 0.0))

    def answer(status: int, body: Any) -> httpx.Response:
        return httpx.Response(status, json=body)

    probes.check("echo in a refusal", ["acct-b"], answer(404, {"error": {"message": "cloud account 'acct-b' not found"}}))
    probes.check("echo of a filter", ["bmark0-ns"], answer(200, {"filters": {"namespace": "bmark0-ns"}, "series": []}))
    probes.check("own data", [], answer(200, {"cloud_accounts": [{"id": "acct-a", "organization_id": "org-a"}]}))
    assert probes.leaks == []
    probes.check("B's name", [], answer(200, {"clean_expenses": [{"k8s_cluster": "bmark0-cluster"}]}))
    probes.check("B's name beside the echo", ["bmark0-ns"], answer(200, {"rows": ["bmark0-ns", "bmark0-pod"]}))
    probes.check("another account", [], answer(200, {"clean_expenses": [{"cloud_account_id": "acct-c"}]}))
    probes.check("another organization", [], answer(200, {"organizations": [{"id": "org-c"}]}))
    probes.check("B's id in an answer", ["acct-b"], answer(200, {"cloud_account_id": "acct-b"}))
    leaked = [leak.split(":", 1)[0] for leak in probes.leaks]
    assert leaked == ["B's name", "B's name beside the echo", "another account", "another organization", "B's id in an answer"]
    assert other_tenants_in({"result": [{"metric": {"tenant_id": "acct-b"}}]}, "acct-a") == ["tenant_id=acct-b"]


def tsdb_series(namespace_regex: str) -> list[dict[str, Any]]:
    return helpers.tsdb_query(f'last_over_time({{namespace=~"{namespace_regex}"}}[30m])')


# --- R5 (a)–(c): the ingress ------------------------------------------------------------


def test_r5a_body_labels_naming_another_tenant_land_under_the_sender(estate: Estate) -> None:
    a, b = estate.a, estate.b
    now = int(time.time() * 1000)
    spoofs = [  # (extra labels, extra headers)
        ({"tenant_id": b.account()}, {}),
        ({"tenant_id": b.account()}, {"THANOS-TENANT": b.account()}),
        ({}, {"THANOS-TENANT": b.account(), "X-Scope-OrgID": b.account()}),
        ({"tenant_id": f"{b.account()}|{a.account()}"}, {}),
        ({"tenant_id": f'{b.account()}"}} or {{tenant_id="{a.account()}'}, {}),
        ({"exported_tenant_id": b.account(), "tenant": b.account()}, {}),
        ({"__tenant_id__": b.account()}, {}),
        ({"tenant_id": b.account(), "cluster": f"{b.mark}-cluster"}, {"Cloud-Account-Id": a.account()}),
        # The usage families (k8scost/usage_series.py) with every label of their allow-list;
        # those without a namespace label are covered by tests/test_remote_write.py.
        *(({**{label: "x" for label in family.labels if label != "namespace"}, "__name__": family.name,
            "tenant_id": b.account()}, {"THANOS-TENANT": b.account()})
          for family in USAGE_FAMILIES.values() if "namespace" in family.labels),
    ]
    probes = Probes(estate)
    for i, (labels, headers) in enumerate(spoofs):
        series = {"__name__": NS_METRIC, "cluster": "spoof", "namespace": f"{a.mark}-spoof-{i}", **labels}
        answer = post(encode([(series, [(now, 0.25 + i)])]), a.credentials(), **headers)
        probes.check(f"spoof {i}", [], answer, allowed={204})
    landed = tsdb_series(f"{a.mark}-spoof-.*")
    cross = [s["metric"] for s in landed if s["metric"]["tenant_id"] != a.account()]
    figures.record(
        "R5",
        f"(a) a body label or header naming another tenant: {probes.tried} writes, {len(cross)} landed outside the "
        f"sender's tenant, {len(landed)} of {len(spoofs)} landed under the sender",
    )
    probes.assert_clean()
    assert cross == []
    assert sorted((s["metric"]["namespace"], float(s["value"][1])) for s in landed) == sorted(
        (f"{a.mark}-spoof-{i}", 0.25 + i) for i in range(len(spoofs))
    )


def test_r5b_a_header_naming_another_account_is_refused(estate: Estate) -> None:
    a, b = estate.a, estate.b
    mine, theirs = a.credentials(), b.account()
    now = int(time.time() * 1000)
    cases = [  # (Cloud-Account-Id header, basic-auth username, password)
        (theirs, mine.account_id, mine.password),
        (theirs, theirs, mine.password),
        ("", theirs, mine.password),
        (mine.account_id, theirs, mine.password),
        (f"{theirs}, {mine.account_id}", mine.account_id, mine.password),
        (theirs.upper(), theirs.upper(), mine.password),
    ]
    probes = Probes(estate)
    for i, (header, username, password) in enumerate(cases):
        body = encode([({"__name__": NS_METRIC, "cluster": "spoof", "namespace": f"{a.mark}-header-{i}"}, [(now, 1.0)])])
        answer = httpx.post(
            helpers.WRITE_URL,
            content=body,
            auth=(username, password),
            headers={"Cloud-Account-Id": header, "Content-Encoding": "snappy"},
            timeout=30,
        )
        probes.check(f"header {header!r} as {username!r}", [header, username], answer, allowed={401, 403})
    # Two Cloud-Account-Id headers, the other account's first.
    body = encode([({"__name__": NS_METRIC, "cluster": "spoof", "namespace": f"{a.mark}-header-dup"}, [(now, 1.0)])])
    answer = httpx.post(
        helpers.WRITE_URL,
        content=body,
        auth=(mine.account_id, mine.password),
        headers=[("Cloud-Account-Id", theirs), ("Cloud-Account-Id", mine.account_id), ("Content-Encoding", "snappy")],
        timeout=30,
    )
    probes.check("two headers", [theirs], answer, allowed={401, 403})
    landed = tsdb_series(f"{a.mark}-header-.*")
    figures.record("R5", f"(b) Cloud-Account-Id naming another account with the sender's credentials: {probes.summary()}, "
                         f"{len(landed)} series landed")
    probes.assert_clean()
    assert landed == []


def test_r5c_wrong_old_and_deleted_credentials_are_refused(estate: Estate) -> None:
    a = estate.a
    probes = Probes(estate)
    now = int(time.time() * 1000)
    counter = itertools.count()

    def write(credentials: Credentials, allowed: set[int]) -> httpx.Response:
        namespace = f"{a.mark}-cred-{next(counter)}"
        answer = post(encode([({"__name__": NS_METRIC, "cluster": "cred", "namespace": namespace}, [(now, 1.0)])]), credentials)
        probes.check(f"credentials {credentials.account_id} {namespace}", [credentials.account_id], answer, allowed=allowed)
        return answer

    main = a.credentials()
    for password in ("", "wrong", main.password[:-1], main.password + "x", main.password.upper(),
                     a.credentials("rotate").password, "' OR 1=1 --", '{"$ne": null}', "*", "\\", "é漢字🙂"):
        write(Credentials(main.account_id, password), {401})
    for account_id in ("*", ".*", '{"$ne": null}', "' OR 1=1 --", str(uuid.uuid4())):
        write(Credentials(account_id, main.password), {400, 401})

    old = a.credentials("rotate")
    rotated = call("POST", f"/cloud_accounts/{old.account_id}/credentials", a.token)
    new = Credentials(**ok(rotated, 201)["credentials"])
    helpers.wait_for("the old password to be refused", lambda: post(encode([]), old).status_code == 401, timeout=10)
    write(old, {401})
    write(new, {204})

    gone = a.credentials("delete")
    assert call("DELETE", f"/cloud_accounts/{gone.account_id}", a.token).status_code == 204
    helpers.wait_for("the deleted account to be refused", lambda: post(encode([]), gone).status_code == 401, timeout=10)
    write(gone, {401})

    landed = tsdb_series(f"{a.mark}-cred-.*")
    figures.record("R5", f"(c) wrong, rotated-away and deleted credentials: {probes.summary()}, "
                         f"{len(landed) - 1} refused writes landed")
    probes.assert_clean()
    # Only the write with the new password landed.
    assert [s["metric"]["tenant_id"] for s in landed] == [new.account_id]


# --- R5 (d) and (f): the REST API -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Operation:
    """One method on one path of the OpenAPI document."""

    method: str
    path: str
    path_params: tuple[str, ...]
    query: tuple[tuple[str, bool, dict[str, Any]], ...]  # (name, required, schema)
    body: dict[str, Any] | None  # a valid body, when the operation takes one

    def url(self, values: dict[str, str]) -> str:
        return REST + self.path.format(**{name: quote(values[name], safe="") for name in self.path_params})


def rest_operations() -> list[Operation]:
    spec = httpx.get(f"{REST}/openapi.json", timeout=30).json()
    operations = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            parameters = op.get("parameters", [])
            operations.append(Operation(
                method.upper(),
                path,
                tuple(p["name"] for p in parameters if p["in"] == "path"),
                tuple((p["name"], p.get("required", False), p.get("schema", {})) for p in parameters if p["in"] == "query"),
                valid_body(spec, path, op),
            ))
    return operations


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


# Free-form JSON bodies (no properties in the document), by the path's last segment.
FREE_FORM_BODIES = {"expenses_async": {"start_date": D0, "end_date": END}}


def valid_body(spec: dict[str, Any], path: str, op: dict[str, Any]) -> dict[str, Any] | None:
    """A body the operation accepts: each required field from its schema (enum, literal pattern, type)."""
    if "requestBody" not in op:
        return None
    schema = _resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
    if not schema.get("properties"):
        return dict(FREE_FORM_BODIES[path.rsplit("/", 1)[-1]])  # KeyError: add the new free-form body
    body: dict[str, Any] = {}
    for name in schema.get("required", []):
        field = _resolve(spec, schema["properties"][name])
        literal = re.fullmatch(r"\^([\w-]+)\$", field.get("pattern", ""))
        if "enum" in field:
            body[name] = field["enum"][0]
        elif literal:
            body[name] = literal.group(1)
        elif field.get("type") == "integer":
            body[name] = max(1, field.get("minimum", 1))
        else:
            body[name] = "r5-probe".ljust(field.get("minLength", 0), "x")
    return body


def valid_query(op: Operation) -> dict[str, Any]:
    """Values of the required query parameters (ids excepted: the caller gives those)."""
    values = {"start_date": D0, "end_date": END, "step": 3600}
    chosen: dict[str, Any] = {}
    for name, required, schema in op.query:
        if not required or name in ID_PARAMS:
            continue
        enum = schema.get("enum") or schema.get("items", {}).get("enum")
        if enum:
            chosen[name] = enum[0]
        elif name == "query":  # k8s_live: a query name of the allow-list
            chosen[name] = next(iter(promql.LIVE_QUERIES))
        else:
            chosen[name] = values[name]  # KeyError: give the new required parameter a valid value
    return chosen


ID_PARAMS = ("organization_id", "cloud_account_id", "task_id", "user_id", "item_id")


def ids_of(estate: Estate, org: Org) -> dict[str, str]:
    return {
        "organization_id": org.id,
        "cloud_account_id": org.account(),
        "task_id": estate.a_task if org is estate.a else estate.b_task,
        "user_id": org.user_id,  # POST /v2/users/{user_id}/password: B's is 404 to A, and never changed
        "item_id": estate.a_item if org is estate.a else estate.b_item,  # PATCH …/optimizations/{item_id}
    }


async def test_r5d_a_token_of_another_organization_on_every_rest_route(estate: Estate) -> None:
    a, b = estate.a, estate.b
    operations = rest_operations()
    assert len(operations) >= 17, [f"{op.method} {op.path}" for op in operations]
    design_routes = {"/v2/available_filters", "/v2/clean_expenses", "/v2/expenses_async", "/v2/expenses_async/{task_id}"}
    assert design_routes <= {op.path for op in operations}  # the design's routes are in the matrix
    mine, theirs = ids_of(estate, a), ids_of(estate, b)
    probes = Probes(estate)
    routes = set()
    async with httpx.AsyncClient(timeout=60, headers=a.headers) as client:
        for op in operations:
            if op.path in ("/v2/signup", "/v2/tokens"):
                continue  # sign-up, sign-in and sign-out: about no organization (and sign-out would end A's token)
            query_ids = [name for name, _, _ in op.query if name in ID_PARAMS]
            unknown = [name for name in op.path_params if name not in ID_PARAMS]
            assert not unknown, f"{op.method} {op.path}: give the id parameter(s) {unknown} values in ID_PARAMS"
            id_params = [*op.path_params, *query_ids]
            if not id_params:  # nothing to point at B: A's own answer must hold nothing of B
                if op.method == "GET":
                    answer = await client.get(REST + op.path, params=valid_query(op))
                    probes.check(f"GET {op.path}", [], answer, allowed={200})
                    routes.add(op.path)
                continue
            for owners in itertools.product(("A", "B"), repeat=len(id_params)):
                if "B" not in owners:
                    continue
                values = {name: (theirs if owner == "B" else mine)[name] for name, owner in zip(id_params, owners)}
                query = {**valid_query(op), **{name: values[name] for name in query_ids}}
                url = op.url(values)
                answer = await client.request(op.method, url, params=query, json=op.body)
                probes.check(f"{op.method} {op.path} {dict(zip(id_params, owners))}", [*values.values(), *query.values()],
                             answer, allowed={403, 404})
                routes.add(op.path)
        # The one id a body may carry: an account of B asked for in A's own organization.
        body = {**FREE_FORM_BODIES["expenses_async"], "cloud_account_id": [b.account()]}
        answer = await client.post(f"{REST}/v2/organizations/{a.id}/expenses_async", json=body)
        probes.check("POST expenses_async with B's account in the body", [b.account()], answer, allowed={404})
        # The design's route (routes/seed.py) carries it in its filter object; its organization
        # is the query's (probed above from the OpenAPI document), else the token's.
        body = {**FREE_FORM_BODIES["expenses_async"], "filter": {"cloud_account_id": [b.account()]}}
        answer = await client.post(f"{REST}/v2/expenses_async", json=body)
        probes.check("POST /v2/expenses_async with B's account in its filter", [b.account()], answer, allowed={404})

    # B is untouched (its token still works: a password change would have revoked it), its
    # account still writes, and A's own answer is A's.
    got = ok(call("GET", f"/cloud_accounts/{b.account()}", b.token))
    listed = ok(call("GET", f"/organizations/{b.id}/cloud_accounts", b.token))["cloud_accounts"]
    still_writes = post(gauges(b, estate.start, estate.end, 100.0), b.credentials()).status_code
    own = ok(call("GET", f"/organizations/{a.id}/clean_expenses?start_date={D0}&end_date={END}", a.token))
    # B's optimization item is still active: no PATCH of A's dismissed or excluded it.
    b_spot = ok(call("GET", f"/organizations/{b.id}/optimizations?type=k8s_spot_instances", b.token))
    figures.record("R5", f"(d) A's token on B's ids, every REST route and id parameter "
                         f"({len(routes)} routes from the OpenAPI document): {probes.summary()}")
    probes.assert_clean()
    assert (got["name"], [x["id"] for x in listed]) == (f"{b.mark}-main", [b.account()])
    assert still_writes == 204  # neither rotated nor deleted by A
    assert own["total_cost"] == pytest.approx(estate.a_total) and estate.a_total > 0
    assert {e["cloud_account_id"] for e in own["clean_expenses"]} == {a.account()}
    assert [i["id"] for i in b_spot["optimizations"]["k8s_spot_instances"]["items"]] == [estate.b_item]


async def test_r5f_injection_in_every_rest_parameter(estate: Estate) -> None:
    a, b = estate.a, estate.b
    operations = rest_operations()
    mine = ids_of(estate, a)
    probes = Probes(estate)
    # B's names as filter values, besides the injection strings.
    values = [*INJECTIONS, f"{b.mark}-ns", f"{b.mark}-cluster", f"{b.mark}-node", f"{b.mark}-svc", "K8s Pod"]
    tasks: list[str] = []
    all_query_names = sorted({name for op in operations for name, _, _ in op.query})
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=60, headers=a.headers) as client:

        async def probe(what: str, method: str, url: str, params: Any = None, body: Any = None, sent: str = "") -> None:
            async with limit:
                answer = await client.request(method, url, params=params, json=body)
            probes.check(what, [sent], answer)
            if answer.status_code == 202:
                tasks.append(answer.json()["task_id"])

        pending = []
        for op in operations:
            if op.path in ("/v2/signup", "/v2/tokens") or op.method == "DELETE":
                continue
            base = {**valid_query(op), **{name: mine[name] for name, required, _ in op.query if name in ID_PARAMS and required}}
            for name, _, _ in op.query:
                for value in values:
                    pending.append(probe(f"{op.method} {op.path} ?{name}={value[:40]!r}", op.method, op.url(mine),
                                         {**base, name: value}, op.body, value))
            for name in op.path_params:
                for value in values:
                    url = op.url({**mine, name: value})
                    pending.append(probe(f"{op.method} {op.path} {name}={value[:40]!r}", op.method, url, base, op.body, value))
            if op.body is not None and op.path.endswith("expenses_async"):
                for name in all_query_names:
                    for value in values:
                        body = {**op.body, name: value}
                        pending.append(probe(f"POST {op.path} body {name}={value[:40]!r}", "POST", op.url(mine), None, body, value))
                for body in ({**op.body, "k8s_namespace": {"$ne": None}}, {**op.body, "$where": "1"},
                             {**op.body, "cloud_account_id": {"$in": [b.account()]}}, [op.body], '{"$ne": null}'):
                    pending.append(probe(f"POST {op.path} body {str(body)[:60]}", "POST", op.url(mine), None, body))
        await asyncio.gather(*pending)

        # Tasks accepted with odd values must finish, with A's data only.
        deadline = time.monotonic() + 120
        unfinished = list(tasks)
        while unfinished and time.monotonic() < deadline:
            task_id = unfinished.pop(0)
            answer = await client.get(f"{REST}/v2/organizations/{a.id}/expenses_async/{task_id}")
            if answer.status_code == 200 and answer.json()["status"] == "pending":
                unfinished.append(task_id)
                await asyncio.sleep(0.2)
                continue
            probes.check(f"task {task_id}", [], answer, allowed={200})
            if answer.json().get("status") != "done":
                probes.unexpected.append(f"task {task_id} ended {answer.json()}")
    figures.record("R5", f"(f) injection in every REST query, path and body parameter: {probes.summary()}; "
                         f"{len(tasks)} accepted tasks finished")
    probes.assert_clean()
    assert not unfinished, f"tasks still pending: {unfinished}"


# --- R5 (e) and (f): Metroculus ---------------------------------------------------------


def metroculus_endpoints() -> dict[str, list[str]]:
    """Endpoint → its parameters, as Metroculus itself names them in its 404 and 400 answers."""
    secret = {"Secret": CLUSTER_SECRET}
    missing = httpx.get(f"{METROCULUS}/v2/__r5__", headers=secret, timeout=30)
    assert missing.status_code == 404, missing.text
    endpoints = missing.json()["error"]["message"].split("endpoints: ", 1)[1].split(", ")
    found = {}
    for endpoint in endpoints:
        unknown = httpx.get(f"{METROCULUS}{endpoint}", params={"__r5__": "1"}, headers=secret, timeout=30)
        assert unknown.status_code == 400, unknown.text
        found[endpoint] = unknown.json()["error"]["message"].split("allowed: ", 1)[1].split(", ")
    return found


def metroculus_query(estate: Estate, params: list[str], tenant: str) -> dict[str, str]:
    """A valid request naming ``tenant``: the values Metroculus needs, over the written samples."""
    values = {
        "cloud_account_id": tenant,
        "start_date": str(estate.start),
        "end_date": str(estate.end),
        "lag": "0",
        "metrics": f"{NS_METRIC},{CPU_METRIC}",
        "step": str(10 * RES),
    }
    if "query" in params:  # k8s_live: a query name of the allow-list
        values["query"] = next(iter(promql.LIVE_QUERIES))
    return {name: values[name] for name in params if name in values}


def other_tenants_in(answer: Any, tenant: str) -> list[str]:
    """``tenant_id`` labels and ``cloud_account_id`` fields of an answer naming another tenant."""
    found: list[str] = []
    if isinstance(answer, dict):
        for key, value in answer.items():
            if key in ("tenant_id", "cloud_account_id") and isinstance(value, str) and value != tenant:
                found.append(f"{key}={value}")
            else:
                found += other_tenants_in(value, tenant)
    elif isinstance(answer, list):
        for item in answer:
            found += other_tenants_in(item, tenant)
    return found


async def test_r5e_metroculus_secret_and_tenant_isolation(estate: Estate) -> None:
    a, b = estate.a, estate.b
    endpoints = metroculus_endpoints()
    assert {"/v2/kubecost_cluster_costs", "/v2/kubecost_metrics"} <= set(endpoints), endpoints
    probes = Probes(estate)
    async with httpx.AsyncClient(timeout=60) as client:
        for endpoint, params in endpoints.items():
            url = f"{METROCULUS}{endpoint}"
            query = metroculus_query(estate, params, a.account())
            for headers, allowed in (
                ({}, {401}),
                ({"Secret": ""}, {401}),
                ({"Secret": "wrong"}, {403}),
                ({"Secret": CLUSTER_SECRET + "x"}, {403}),
                ({"Secret": CLUSTER_SECRET.upper()}, {403}),
                ({"Secret": a.credentials().password}, {403}),
                ({"Authorization": f"Bearer {a.token}"}, {401}),
                ({"Authorization": f"Basic {CLUSTER_SECRET}"}, {401}),
            ):
                answer = await client.get(url, params=query, headers=headers)
                probes.check(f"{endpoint} with {headers}", [], answer, allowed=allowed, scoped=False)
            answer = await client.get(url, params={**query, "Secret": CLUSTER_SECRET})
            probes.check(f"{endpoint} secret as a parameter", [], answer, allowed={401}, scoped=False)

            # With the secret: each tenant's answer is its own; k8s_live's for every query of its
            # allow-list, each of which finds the tenant's own series (the usage families' too).
            for org, other in ((a, b), (b, a)):
                for live_query in (promql.LIVE_QUERIES if "query" in params else (None,)):
                    query = metroculus_query(estate, params, org.account())
                    if live_query is not None:
                        query["query"] = live_query
                    answer = await client.get(url, params=query, headers={"Secret": CLUSTER_SECRET})
                    assert answer.status_code == 200, f"{endpoint}: give its parameters valid values: {answer.text}"
                    probes.tried += 1
                    strangers = other_tenants_in(answer.json(), org.account())
                    if other.mark in answer.text or strangers:
                        probes.leaks.append(f"{endpoint} for {org.mark}: {strangers} {answer.text[:300]}")
                    if live_query in promql.LIVE_USAGE_QUERIES:
                        assert answer.json()["series"] and org.mark in answer.text, f"{live_query}: {answer.text[:300]}"
    # The written costs come back to their own tenant, exactly (1.0 and 100.0 $/h over 40 steps).
    costs = {}
    for org in (a, b):
        answer = httpx.get(f"{METROCULUS}/v2/kubecost_cluster_costs", headers={"Secret": CLUSTER_SECRET}, timeout=30,
                           params=metroculus_query(estate, ["cloud_account_id", "start_date", "end_date"], org.account()))
        costs[org.mark] = {name: c["breakdown"]["cpu_cost"] for name, c in answer.json()["clusters"].items()}
    figures.record("R5", f"(e) Metroculus, {len(endpoints)} endpoints: a missing or wrong secret, and each tenant's "
                         f"answers: {probes.summary()}")
    probes.assert_clean()
    seconds = estate.end - estate.start
    assert costs == {
        a.mark: {f"{a.mark}-cluster": pytest.approx(1.0 * seconds / 3600)},
        b.mark: {f"{b.mark}-cluster": pytest.approx(100.0 * seconds / 3600)},
    }


async def test_r5f_injection_in_every_metroculus_parameter(estate: Estate) -> None:
    a = estate.a
    endpoints = metroculus_endpoints()
    probes = Probes(estate)
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=60, headers={"Secret": CLUSTER_SECRET}) as client:

        async def probe(endpoint: str, params: dict[str, str], what: str) -> None:
            async with limit:
                answer = await client.get(f"{METROCULUS}{endpoint}", params=params)
            # Metroculus serves any tenant to a holder of the secret: an answer must hold the
            # asked tenant's series only, and of B nothing but what was asked.
            probes.check(what, params.values(), answer, scoped=False)
            if answer.status_code == 200:
                strangers = other_tenants_in(answer.json(), params["cloud_account_id"])
                if strangers:
                    probes.leaks.append(f"{what}: {strangers}")
            elif not 400 <= answer.status_code < 500 or not error_message(answer.json()):
                probes.unexpected.append(f"{what}: {answer.status_code} {answer.text[:200]}")

        pending = []
        for endpoint, params in endpoints.items():
            base = metroculus_query(estate, params, a.account())
            for name in params:
                for value in (*INJECTIONS, f"{a.account()}.*", f'{a.account()}"}} or {{tenant_id="{estate.b.account()}',
                              f"{a.account()}\n", estate.b.mark):
                    pending.append(probe(endpoint, {**base, name: value}, f"{endpoint} ?{name}={value[:40]!r}"))
            pending.append(probe(endpoint, {**base, "$where": "1"}, f"{endpoint} ?$where"))
        await asyncio.gather(*pending)
    figures.record("R5", f"(f) injection in every Metroculus parameter ({len(endpoints)} endpoints): {probes.summary()}")
    probes.assert_clean()
