"""The REST API in-process (httpx over ASGI) against the real ClickHouse and MongoDB wire.

Ledger rows are seeded with ``ExpenseStore.insert`` — corrections left uncollapsed, one
resource-day cancelled outright, a pod that moves node, a cluster with a management fee and
one without — and resources with ``ResourceStore.upsert``; every total is checked against sums computed here, in Python,
from the seeded facts. Two organizations share cluster and namespace names, and every
endpoint and id parameter is tried across them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
import yaml
from asynch import Connection

from k8scost.settings import RestApiSettings, StoreSettings, from_env
from k8scost.stores.clickhouse import ExpenseRow, ExpenseStore
from k8scost.stores.mongo import connect
from k8scost.stores.organizations import OrganizationStore, check_password
from k8scost.stores.resources import RESOURCE_TYPES, Kind, Resource, ResourceStore
from serve_apps.restapi.api import RestApiConfig, create_api

# One loop for the module: the app's store clients belong to the loop they first ran on.
pytestmark = [pytest.mark.services, pytest.mark.asyncio(loop_scope="session")]

DAY = 86_400
D0 = int(datetime(2024, 2, 28, tzinfo=UTC).timestamp())  # days cross a month: two partitions
DAYS = [D0 + i * DAY for i in range(4)]
END = D0 + 4 * DAY
SECRET = "test-cluster-secret"
JWT_KEY = "test-jwt-key-of-at-least-32-bytes!"
PASSWORD = "correct horse battery"
NS, POD, NODE, CLUSTER, COMPONENT = (
    RESOURCE_TYPES[k] for k in (Kind.NAMESPACE, Kind.POD, Kind.NODE, Kind.CLUSTER, Kind.CLUSTER_COST)
)
MANAGEMENT = "__management__"


# --- the seeded ledger, and the same facts kept here for independent sums ---------------------


@dataclasses.dataclass(frozen=True)
class Fact:
    """One live (resource, day) cost, as the ledger should hold it."""

    account: str
    resource: Resource
    day: int
    cost: float

    @property
    def rid(self) -> str:
        return self.resource.id(self.account)

    @property
    def type(self) -> str:
        return RESOURCE_TYPES[self.resource.kind]

    def column(self, name: str) -> str | None:
        return {
            "cloud_account_id": self.account,
            "k8s_cluster": self.resource.cluster,
            "k8s_namespace": self.resource.namespace,
            "k8s_node": self.resource.node,
            "k8s_service": self.resource.service,
            "resource_type": self.type,
        }[name]


@dataclasses.dataclass(frozen=True)
class PodSpec:
    namespace: str
    name: str
    service: str | None
    nodes: tuple[str, ...]  # per day
    costs: tuple[float, ...]  # per day


def cluster_facts(
    account: str, cluster: str, pods: list[PodSpec], idle: tuple[float, ...], management: float = 0.0
) -> list[Fact]:
    """Pods, and namespaces, nodes, cluster derived from them; ``management``: the fee per day.

    The cluster's cost components: the fee, and what the namespaces cost split 3:1 into CPU and RAM.
    """
    facts: list[Fact] = []
    for i, day in enumerate(DAYS):
        namespaces: dict[str, float] = defaultdict(float)
        nodes: dict[str, float] = defaultdict(float)
        for pod in pods:
            cost = pod.costs[i]
            if cost == 0:
                continue
            node = pod.nodes[i]
            facts.append(Fact(account, Resource(Kind.POD, cluster, pod.namespace, pod.name, node, pod.service), day, cost))
            namespaces[pod.namespace] += cost
            nodes[node] += cost
        namespaces["__idle__"] += idle[i]
        allocated = sum(namespaces.values())
        components = {"cpu_cost": allocated * 0.75, "ram_cost": allocated * 0.25}
        if management:
            namespaces[MANAGEMENT] = components["management_cost"] = management
        for name, cost in components.items():
            facts.append(Fact(account, Resource(Kind.CLUSTER_COST, cluster, None, name), day, cost))
        for name, cost in namespaces.items():
            facts.append(Fact(account, Resource(Kind.NAMESPACE, cluster, name, name), day, cost))
        for name, cost in nodes.items():
            # A node costs what its pods cost plus its unallocated share.
            facts.append(Fact(account, Resource(Kind.NODE, cluster, None, name, node=name), day, cost + 0.25))
        facts.append(Fact(account, Resource(Kind.CLUSTER, cluster, None, cluster), day, sum(namespaces.values())))
    return facts


def row(fact: Fact, cost: float | None = None, sign: int = 1) -> ExpenseRow:
    r = fact.resource
    return ExpenseRow(
        fact.account,
        fact.rid,
        datetime.fromtimestamp(fact.day, UTC),
        fact.cost if cost is None else cost,
        sign,
        r.cluster,
        r.namespace,
        r.node,
        r.service,
        RESOURCE_TYPES[r.kind],
        r.name,
    )


def select(facts: list[Fact], **filters: Any) -> list[Fact]:
    """The facts matching ``filters`` (column → value or list of values), and day bounds;
    cluster cost components only when ``resource_type`` names them."""
    start, end = filters.pop("start", D0), filters.pop("end", END)
    chosen = []
    for fact in facts:
        if not start <= fact.day < end:
            continue
        if fact.type == COMPONENT and "resource_type" not in filters:
            continue
        if all(fact.column(k) in (v if isinstance(v, list) else [v]) for k, v in filters.items()):
            chosen.append(fact)
    return chosen


def per_resource(facts: list[Fact]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for fact in facts:
        totals[fact.rid] += fact.cost
    return dict(totals)


# --- fixtures ----------------------------------------------------------------------------------


def _dsn(database: str) -> str:
    return from_env(StoreSettings).clickhouse_url.rsplit("/", 1)[0] + "/" + database


async def _clickhouse(query: str, database: str = "default") -> None:
    async with Connection(dsn=_dsn(database)) as conn:
        async with conn.cursor() as cursor:
            await cursor.execute(query)


@dataclasses.dataclass
class Org:
    id: str
    token: str
    user_id: str
    email: str
    accounts: list[dict[str, Any]]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclasses.dataclass
class World:
    client: httpx.AsyncClient
    a: Org
    b: Org
    facts: list[Fact]  # every organization's
    config: RestApiConfig

    def facts_of(self, org: Org) -> list[Fact]:
        ids = {account["id"] for account in org.accounts}
        return [fact for fact in self.facts if fact.account in ids]


async def _signup(client: httpx.AsyncClient, name: str) -> Org:
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    answer = await client.post(
        "/v2/signup",
        json={"organization_name": name, "email": email, "password": PASSWORD, "display_name": name.title()},
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    return Org(body["organization_id"], body["token"], body["user_id"], email, [])


async def _account(client: httpx.AsyncClient, org: Org, name: str) -> dict[str, Any]:
    answer = await client.post(
        f"/v2/organizations/{org.id}/cloud_accounts", json={"name": name, "type": "kubernetes_cnr"}, headers=org.headers
    )
    assert answer.status_code == 201, answer.text
    org.accounts.append(answer.json())
    return answer.json()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(real_services: None) -> AsyncIterator[World]:
    ch_db, mongo_db = f"test_{uuid.uuid4().hex}", f"test_restapi_{uuid.uuid4().hex[:12]}"
    await _clickhouse(f"CREATE DATABASE {ch_db}")
    stores = from_env(StoreSettings, clickhouse_url=_dsn(ch_db), mongodb_database=mongo_db)
    expenses = ExpenseStore(stores)
    await expenses.migrate()
    # Merges stopped: corrections stay uncollapsed, as they are between merges in production.
    await _clickhouse(f"SYSTEM STOP MERGES {ch_db}.expenses")
    config = RestApiConfig(
        from_env(RestApiSettings, {}, jwt_secret=JWT_KEY, public_write_url="https://saas.example/storage/api/v2/write"),
        stores,
        SECRET,
        "http://127.0.0.1:1/unused",
    )
    api = create_api(config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://restapi.test")
    try:
        a, b = await _signup(client, "alpha"), await _signup(client, "beta")
        a1, a2, b1 = await _account(client, a, "alpha east"), await _account(client, a, "alpha west"), await _account(
            client, b, "beta east"
        )
        facts = (
            cluster_facts(
                a1["id"],
                "east",
                [
                    PodSpec("shop", "web-1", "web", ("n1",) * 4, (1.0, 1.5, 2.0, 2.5)),
                    # moves from n2 to n1 on the third day
                    PodSpec("shop", "web-2", "web", ("n2", "n2", "n1", "n1"), (0.5, 0.5, 0.75, 0.75)),
                    PodSpec("db", "pg-0", "pg", ("n2",) * 4, (3.0, 3.0, 3.25, 3.5)),
                    PodSpec("db", "job-x", None, ("n1",) * 4, (0.0, 0.125, 0.0, 0.0)),
                ],
                idle=(0.5, 0.5, 0.25, 0.0),
                management=2.4,  # $0.10/h
            )
            + cluster_facts(
                a2["id"], "west", [PodSpec("shop", "api-1", "api", ("w1",) * 4, (2.0, 2.0, 2.0, 2.0))], idle=(1.0,) * 4
            )
            # The other organization uses the same cluster, namespace and pod names.
            + cluster_facts(
                b1["id"], "east", [PodSpec("shop", "web-1", "web", ("n1",) * 4, (10.0, 10.0, 10.0, 10.0))], idle=(5.0,) * 4
            )
        )
        rows = [row(f) for f in facts]
        # Corrections, not merged: each first written at another value, then −1/+1.
        corrected = [f for f in facts if f.day == DAYS[1] or f.resource.name == "pg-0"]
        first = [row(f, f.cost * 3 + 1) if f in corrected else row(f) for f in facts]
        fixes = [r for f in corrected for r in (row(f, f.cost * 3 + 1, -1), row(f))]
        # A pod, namespace and service whose only day was cancelled outright: not live anywhere.
        ghost = Fact(a1["id"], Resource(Kind.POD, "east", "tmp", "ghost", "n9", "ghostsvc"), DAYS[0], 9.0)
        await expenses.insert(first + [row(ghost)])
        await expenses.insert(fixes + [row(ghost, sign=-1)])
        assert len(rows) == len(facts)

        resources = ResourceStore(connect(stores))
        await resources.ensure_indexes()
        for account in (a1, a2, b1):
            org_id = a.id if account in a.accounts else b.id
            mine = [f.resource for f in facts if f.account == account["id"]]
            # The latest placement of each resource, as the actor leaves it.
            await resources.upsert(account["id"], org_id, list({r.id(account["id"]): r for r in mine}.values()), D0, END)
        yield World(client, a, b, facts, config)
    finally:
        await client.aclose()
        await api.state.stores.close()
        await expenses.close()
        await _clickhouse(f"DROP DATABASE IF EXISTS {ch_db}")
        await connect(stores).client.drop_database(mongo_db)


def span(start: int = D0, end: int = END) -> dict[str, int]:
    return {"start_date": start, "end_date": end}


async def get(world: World, org: Org, path: str, params: Any = None, **kwargs: Any) -> httpx.Response:
    return await world.client.get(f"/v2/organizations/{org.id}/{path}", params=params, headers=org.headers, **kwargs)


# --- users and tokens --------------------------------------------------------------------------


async def test_sign_in_gives_a_token_that_works_and_wrong_passwords_do_not(world: World) -> None:
    answer = await world.client.post("/v2/tokens", json={"email": world.a.email.upper(), "password": PASSWORD})
    assert answer.status_code == 201
    body = answer.json()
    assert (body["user_id"], body["organization_id"]) == (world.a.user_id, world.a.id)
    assert body["expires_at"] - time.time() == pytest.approx(world.config.api.token_ttl_seconds, abs=5)
    claims = jwt.decode(body["token"], JWT_KEY, algorithms=["HS256"], audience="cloudtuner-restapi")
    assert (claims["sub"], claims["org"], claims["exp"]) == (world.a.user_id, world.a.id, body["expires_at"])
    mine = await world.client.get("/v2/organizations", headers={"Authorization": f"Bearer {body['token']}"})
    [organization] = mine.json()["organizations"]
    assert (organization["id"], organization["name"]) == (world.a.id, "alpha")

    for email, password in ((world.a.email, "wrong password"), ("nobody@example.com", PASSWORD)):
        refused = await world.client.post("/v2/tokens", json={"email": email, "password": password})
        assert refused.status_code == 401
        assert refused.json() == {"error": {"reason": "unauthorized", "message": "wrong email or password"}}


async def test_passwords_are_stored_salted_scrypt_digests(world: World) -> None:
    users = connect(world.config.stores)["users"]
    doc = await users.find_one({"_id": world.a.user_id})
    assert PASSWORD not in str(doc)
    assert doc["password"]["scheme"] == "scrypt" and len(bytes.fromhex(doc["password"]["salt"])) == 16
    assert check_password(doc["password"], PASSWORD) and not check_password(doc["password"], PASSWORD + "!")
    other = await users.find_one({"_id": world.b.user_id})
    assert other["password"]["salt"] != doc["password"]["salt"]


async def test_a_second_signup_with_the_same_email_is_a_conflict(world: World) -> None:
    answer = await world.client.post(
        "/v2/signup",
        json={"organization_name": "dup", "email": world.a.email.upper(), "password": PASSWORD, "display_name": "D"},
    )
    assert answer.status_code == 409
    assert answer.json()["error"] == {"reason": "conflict", "message": "email: a user with this email exists already"}
    # No organization was left behind by the refused sign-up.
    assert await connect(world.config.stores)["organizations"].count_documents({"name": "dup"}) == 0


async def test_ensure_user_is_idempotent(world: World) -> None:
    store = OrganizationStore(connect(world.config.stores))
    email = f"demo-{uuid.uuid4().hex[:8]}@example.com"
    org1, user1 = await store.ensure_user("demo", email, PASSWORD, "Demo")
    org2, user2 = await store.ensure_user("demo again", email, "another password", "Demo 2")
    assert (org1, user1) == (org2, user2)
    assert await store.authenticate(email, PASSWORD) == user1
    assert await store.authenticate(email, "another password") is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"organization_name": "x", "email": "not-an-email", "password": PASSWORD, "display_name": "X"}, "email"),
        ({"organization_name": "x", "email": "x@example.com", "password": "short", "display_name": "X"}, "password"),
        ({"organization_name": "", "email": "x@example.com", "password": PASSWORD, "display_name": "X"}, "organization_name"),
        ({"email": "x@example.com", "password": PASSWORD, "display_name": "X"}, "organization_name"),
        ({"organization_name": "x", "email": "x@example.com", "password": PASSWORD, "display_name": "X", "admin": True}, "admin"),
    ],
)
async def test_malformed_signups_are_400_naming_the_field(world: World, body: dict[str, Any], field: str) -> None:
    answer = await world.client.post("/v2/signup", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["reason"] == "bad_request"
    assert answer.json()["error"]["message"].startswith(f"{field}:")


def _token(world: World, org: Org, key: str | None = JWT_KEY, algorithm: str = "HS256", **claims: Any) -> str:
    now = int(time.time())
    base = {"sub": org.user_id, "org": org.id, "iat": now, "exp": now + 60, "aud": "cloudtuner-restapi"}
    return jwt.encode({**base, **claims}, key, algorithm=algorithm)


@pytest.mark.parametrize(
    "make_headers",
    [
        lambda w: {},
        lambda w: {"Authorization": "Bearer"},
        lambda w: {"Authorization": "Basic abc"},
        lambda w: {"Authorization": "Bearer not.a.jwt"},
        lambda w: {"Authorization": f"Bearer {_token(w, w.a, exp=int(time.time()) - 5)}"},  # expired
        lambda w: {"Authorization": f"Bearer {_token(w, w.a, key='another-key-of-32-bytes-or-more!!')}"},
        lambda w: {"Authorization": f"Bearer {_token(w, w.a, key=None, algorithm='none')}"},
        lambda w: {"Authorization": f"Bearer {_token(w, w.a, aud='another-service')}"},
        lambda w: {"Secret": "wrong-secret"},
    ],
    ids=["none", "empty", "basic", "garbage", "expired", "other-key", "alg-none", "other-audience", "wrong-secret"],
)
async def test_every_endpoint_refuses_missing_bad_and_expired_tokens(world: World, make_headers: Callable) -> None:
    headers = make_headers(world)
    a, account = world.a, world.a.accounts[0]["id"]
    calls = [
        ("GET", "/v2/organizations"),
        ("GET", f"/v2/organizations/{a.id}"),
        ("GET", f"/v2/organizations/{a.id}/cloud_accounts"),
        ("POST", f"/v2/organizations/{a.id}/cloud_accounts"),
        ("GET", f"/v2/cloud_accounts/{account}"),
        ("PATCH", f"/v2/cloud_accounts/{account}"),
        ("POST", f"/v2/cloud_accounts/{account}/credentials"),
        ("DELETE", f"/v2/cloud_accounts/{account}"),
        ("GET", f"/v2/organizations/{a.id}/clean_expenses?start_date={D0}&end_date={END}"),
        ("GET", f"/v2/organizations/{a.id}/available_filters?start_date={D0}&end_date={END}"),
        ("GET", f"/v2/organizations/{a.id}/breakdown_expenses?start_date={D0}&end_date={END}&breakdown_by=k8s_node"),
        ("POST", f"/v2/organizations/{a.id}/expenses_async"),
        ("GET", f"/v2/organizations/{a.id}/expenses_async/{uuid.uuid4()}"),
        # The design's routes (routes/seed.py), with and without the organization in the query.
        ("GET", f"/v2/clean_expenses?organization_id={a.id}&start_date={D0}&end_date={END}"),
        ("GET", "/v2/available_filters"),
        ("POST", f"/v2/expenses_async?organization_id={a.id}"),
        ("GET", f"/v2/expenses_async/{uuid.uuid4()}"),
    ]
    for method, path in calls:
        answer = await world.client.request(method, path, headers=headers, json={"name": "x", "type": "kubernetes_cnr"})
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.json()["error"]["reason"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert (await world.client.get(f"/v2/cloud_accounts/{account}", headers=world.a.headers)).status_code == 200


async def test_the_cluster_secret_acts_for_any_organization(world: World) -> None:
    service = {"Secret": SECRET}
    listed = (await world.client.get("/v2/organizations", headers=service)).json()["organizations"]
    assert {world.a.id, world.b.id} <= {o["id"] for o in listed}
    for org in (world.a, world.b):
        answer = await world.client.get(f"/v2/organizations/{org.id}/cloud_accounts", headers=service)
        assert [x["id"] for x in answer.json()["cloud_accounts"]] == sorted(x["id"] for x in org.accounts)
        costs = await world.client.get(f"/v2/organizations/{org.id}/clean_expenses", params=span(), headers=service)
        assert costs.json()["total_cost"] == pytest.approx(sum(f.cost for f in select(world.facts_of(org), resource_type=NS)))
    missing = await world.client.get(f"/v2/organizations/{uuid.uuid4()}", headers=service)
    assert missing.status_code == 404


# --- organizations and cloud accounts ----------------------------------------------------------


async def test_organizations_are_the_callers_own(world: World) -> None:
    answer = await world.client.get(f"/v2/organizations/{world.a.id}", headers=world.a.headers)
    assert answer.status_code == 200
    assert (answer.json()["id"], answer.json()["name"]) == (world.a.id, "alpha")


async def test_cloud_account_lifecycle_and_its_configuration(world: World) -> None:
    org = world.a
    created = await world.client.post(
        f"/v2/organizations/{org.id}/cloud_accounts", json={"name": "staging", "type": "kubernetes_cnr"}, headers=org.headers
    )
    assert created.status_code == 201
    body = created.json()
    account_id, password = body["id"], body["credentials"]["password"]
    assert body["credentials"]["account_id"] == account_id and len(password) >= 40
    assert (body["organization_id"], body["name"], body["type"]) == (org.id, "staging", "kubernetes_cnr")
    [write] = yaml.safe_load(body["config"]["prometheus_remote_write"])["remote_write"]
    assert write["url"] == "https://saas.example/storage/api/v2/write"
    assert write["headers"] == {"Cloud-Account-Id": account_id}
    assert write["basic_auth"] == {"username": account_id, "password": password}
    assert write["queue_config"]["retry_on_http_429"] is True
    env = body["config"]["exporter_env"]
    assert (env["TENANT_ID"], env["CLUSTER_NAME"], env["SCRAPE_INTERVAL"]) == (account_id, "staging", "60.0")
    assert set(env) >= {"KUBECOST_URL", "ALLOCATION_WINDOW", "EXPORTER_PORT"}

    # The password is stored as a salted digest, and the ingress's check accepts it.
    from k8scost.stores.accounts import AccountStore, Credentials

    store = AccountStore(connect(world.config.stores))
    assert password not in str(await connect(world.config.stores)["cloud_accounts"].find_one({"_id": account_id}))
    assert (await store.authenticate(Credentials(account_id, password))).id == account_id

    got = (await world.client.get(f"/v2/cloud_accounts/{account_id}", headers=org.headers)).json()
    assert "credentials" not in got and password not in str(got)
    assert yaml.safe_load(got["config"]["prometheus_remote_write"])["remote_write"][0]["basic_auth"] == {
        "username": account_id,
        "password_file": "/etc/prometheus/secrets/cloudtuner/password",
    }
    listed = (await world.client.get(f"/v2/organizations/{org.id}/cloud_accounts", headers=org.headers)).json()
    assert account_id in [a["id"] for a in listed["cloud_accounts"]]

    renamed = await world.client.patch(f"/v2/cloud_accounts/{account_id}", json={"name": "staging-2"}, headers=org.headers)
    assert renamed.status_code == 200 and renamed.json()["name"] == "staging-2"
    rotated = await world.client.post(f"/v2/cloud_accounts/{account_id}/credentials", headers=org.headers)
    assert rotated.status_code == 201
    new_password = rotated.json()["credentials"]["password"]
    assert new_password != password
    assert await store.authenticate(Credentials(account_id, password)) is None
    assert (await store.authenticate(Credentials(account_id, new_password))).name == "staging-2"

    deleted = await world.client.delete(f"/v2/cloud_accounts/{account_id}", headers=org.headers)
    assert deleted.status_code == 204 and deleted.content == b""
    assert await store.authenticate(Credentials(account_id, new_password)) is None  # the ingress refuses it
    assert (await world.client.get(f"/v2/cloud_accounts/{account_id}", headers=org.headers)).status_code == 404
    assert (await world.client.delete(f"/v2/cloud_accounts/{account_id}", headers=org.headers)).status_code == 404
    listed = (await world.client.get(f"/v2/organizations/{org.id}/cloud_accounts", headers=org.headers)).json()
    assert account_id not in [a["id"] for a in listed["cloud_accounts"]]


@pytest.mark.parametrize(
    "body", [{"name": "x", "type": "aws_cnr"}, {"name": "", "type": "kubernetes_cnr"}, {"type": "kubernetes_cnr"}]
)
async def test_bad_cloud_account_bodies_are_400(world: World, body: dict[str, Any]) -> None:
    answer = await world.client.post(f"/v2/organizations/{world.a.id}/cloud_accounts", json=body, headers=world.a.headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["message"].split(":")[0] in ("type", "name")


# --- isolation -------------------------------------------------------------------------------


async def test_every_id_of_another_organization_is_404(world: World) -> None:
    a, b = world.a, world.b
    b_account = b.accounts[0]["id"]
    task = await world.client.post(f"/v2/organizations/{b.id}/expenses_async", json=span(), headers=b.headers)
    assert task.status_code == 202
    b_task = task.json()["task_id"]
    own_task = (await world.client.post(f"/v2/organizations/{a.id}/expenses_async", json=span(), headers=a.headers)).json()["task_id"]
    q = f"start_date={D0}&end_date={END}"
    calls = [
        ("GET", f"/v2/organizations/{b.id}", None),
        ("GET", f"/v2/organizations/{b.id}/cloud_accounts", None),
        ("POST", f"/v2/organizations/{b.id}/cloud_accounts", {"name": "intruder", "type": "kubernetes_cnr"}),
        ("GET", f"/v2/cloud_accounts/{b_account}", None),
        ("PATCH", f"/v2/cloud_accounts/{b_account}", {"name": "pwned"}),
        ("POST", f"/v2/cloud_accounts/{b_account}/credentials", None),
        ("DELETE", f"/v2/cloud_accounts/{b_account}", None),
        ("GET", f"/v2/organizations/{b.id}/clean_expenses?{q}", None),
        ("GET", f"/v2/organizations/{b.id}/available_filters?{q}", None),
        ("GET", f"/v2/organizations/{b.id}/breakdown_expenses?{q}&breakdown_by=k8s_namespace", None),
        ("POST", f"/v2/organizations/{b.id}/expenses_async", span()),
        ("GET", f"/v2/organizations/{b.id}/expenses_async/{b_task}", None),
        # B's ids inside A's own organization
        ("GET", f"/v2/organizations/{a.id}/clean_expenses?{q}&cloud_account_id={b_account}", None),
        ("GET", f"/v2/organizations/{a.id}/available_filters?{q}&cloud_account_id={b_account}", None),
        ("GET", f"/v2/organizations/{a.id}/breakdown_expenses?{q}&breakdown_by=k8s_node&cloud_account_id={b_account}", None),
        ("POST", f"/v2/organizations/{a.id}/expenses_async", {**span(), "cloud_account_id": [b_account]}),
        ("GET", f"/v2/organizations/{a.id}/expenses_async/{b_task}", None),
        ("GET", f"/v2/organizations/{b.id}/expenses_async/{own_task}", None),
        # ids that exist nowhere answer the same
        ("GET", f"/v2/organizations/{uuid.uuid4()}", None),
        ("GET", f"/v2/cloud_accounts/{uuid.uuid4()}", None),
        ("GET", f"/v2/organizations/{a.id}/expenses_async/{uuid.uuid4()}", None),
    ]
    for method, path, body in calls:
        answer = await world.client.request(method, path, headers=a.headers, json=body)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["reason"] == "not_found"
    # B's account is untouched and still works for B.
    got = await world.client.get(f"/v2/cloud_accounts/{b_account}", headers=b.headers)
    assert got.status_code == 200 and got.json()["name"] == "beta east"
    assert (await world.client.get(f"/v2/organizations/{b.id}/expenses_async/{b_task}", headers=b.headers)).status_code == 200
    # A's answers hold none of B's costs although the names are the same.
    answer = (await get(world, a, "clean_expenses", span() | {"resource_type": POD})).json()
    assert {e["cloud_account_id"] for e in answer["clean_expenses"]} == {x["id"] for x in a.accounts}
    assert b_account not in str((await get(world, a, "available_filters", span())).json())


# --- clean_expenses ----------------------------------------------------------------------------


def _expected_page(world: World, org: Org, **filters: Any) -> tuple[dict[str, float], float]:
    chosen = select(world.facts_of(org), **filters)
    totals = per_resource(chosen)
    return totals, sum(totals.values())


async def test_clean_expenses_defaults_to_namespaces_and_matches_independent_sums(world: World) -> None:
    a = world.a
    answer = await get(world, a, "clean_expenses", span())
    assert answer.status_code == 200
    body = answer.json()
    expected, total = _expected_page(world, a, resource_type=NS)
    assert body["resource_type"] == NS
    assert (body["start_date"], body["end_date"]) == (D0, END)
    assert body["total_count"] == len(expected) == 6  # shop, db, __idle__, __management__ in east; shop, __idle__ in west
    assert body["total_cost"] == pytest.approx(total)
    assert {e["resource_id"]: e["cost"] for e in body["clean_expenses"]} == pytest.approx(expected)
    costs = [e["cost"] for e in body["clean_expenses"]]
    assert costs == sorted(costs, reverse=True)
    # Namespaces, idle and the management fee included, add up to the clusters' cost.
    cluster_total = sum(f.cost for f in select(world.facts_of(a), resource_type=CLUSTER))
    assert body["total_cost"] == pytest.approx(cluster_total)
    assert body["k8s_costs"]["k8s_total_cost"] == pytest.approx(cluster_total)

    a1 = a.accounts[0]
    [idle] = [e for e in body["clean_expenses"] if e["k8s_cluster"] == "east" and e["resource_name"] == "__idle__"]
    assert idle == {
        "resource_id": Resource(Kind.NAMESPACE, "east", "__idle__", "__idle__").id(a1["id"]),
        "resource_name": "__idle__",
        "cloud_resource_id": "k8s-namespace/east/__idle__",
        "cloud_account_id": a1["id"],
        "cloud_account_name": "alpha east",
        "cloud_account_type": "kubernetes_cnr",
        "resource_type": NS,
        "k8s_cluster": "east",
        "k8s_namespace": "__idle__",
        "k8s_node": None,
        "k8s_service": None,
        "cost": pytest.approx(1.25),
        "first_seen": D0,
        "last_seen": END,
    }


async def test_clean_expenses_k8s_costs_per_account_with_the_ledger_breakdown(world: World) -> None:
    a = world.a
    a1, a2 = (x["id"] for x in a.accounts[:2])
    body = (await get(world, a, "clean_expenses", span(D0 + 3600, END - 10))).json()
    breakdown = {x["cloud_account_id"]: x for x in body["k8s_costs"]["k8s_cost_breakdown"]}
    assert set(breakdown) == {a1, a2}
    keys = {"management_cost", "cpu_cost", "ram_cost", "pv_cost", "network_cost", "load_balancer_cost"}
    for account in (a1, a2):
        expected = sum(f.cost for f in select(world.facts, cloud_account_id=account, resource_type=CLUSTER))
        assert breakdown[account]["total_cost"] == pytest.approx(expected)
        components = {key: 0.0 for key in keys}
        for f in select(world.facts, cloud_account_id=account, resource_type=COMPONENT):
            components[f.resource.name] += f.cost
        assert breakdown[account]["breakdown"] == pytest.approx(components)
        assert sum(breakdown[account]["breakdown"].values()) == pytest.approx(expected)
    assert breakdown[a1]["cloud_account_name"] == "alpha east"
    assert breakdown[a1]["breakdown"]["management_cost"] == pytest.approx(4 * 2.4)
    assert breakdown[a2]["breakdown"]["management_cost"] == 0.0  # west has no fee

    only_east = (await get(world, a, "clean_expenses", span() | {"k8s_cluster": "east"})).json()["k8s_costs"]
    by_account = {x["cloud_account_id"]: x for x in only_east["k8s_cost_breakdown"]}
    east_cpu = sum(f.cost for f in select(world.facts_of(a), resource_type=COMPONENT, k8s_cluster="east")
                   if f.resource.name == "cpu_cost")
    assert by_account[a1]["breakdown"]["cpu_cost"] == pytest.approx(east_cpu)
    assert by_account[a2]["total_cost"] == 0.0 and sum(by_account[a2]["breakdown"].values()) == 0.0
    assert only_east["k8s_total_cost"] == pytest.approx(
        sum(f.cost for f in select(world.facts_of(a), resource_type=CLUSTER, k8s_cluster="east"))
    )


@pytest.mark.parametrize(
    "filters",
    [
        {"resource_type": POD},
        {"resource_type": NODE},
        {"resource_type": CLUSTER},
        {"resource_type": POD, "k8s_namespace": "shop"},
        {"resource_type": POD, "k8s_namespace": ["shop", "db"], "k8s_cluster": "east"},
        {"resource_type": POD, "k8s_node": "n2"},  # web-2 counts only for its days on n2
        {"resource_type": POD, "k8s_service": ["web", "api"]},
        {"resource_type": NODE, "k8s_node": ["n1", "w1"]},
        {"k8s_cluster": "west"},
        {"k8s_namespace": "__idle__"},
        {"cloud_account_id": 1},
        {"cloud_account_id": 1, "resource_type": POD, "k8s_namespace": "shop"},
        {"resource_type": POD, "start": DAYS[1], "end": DAYS[3]},
        {"resource_type": POD, "k8s_namespace": "nothing-here"},
    ],
)
async def test_clean_expenses_filters(world: World, filters: dict[str, Any]) -> None:
    a = world.a
    filters = dict(filters)
    if filters.get("cloud_account_id") == 1:
        filters["cloud_account_id"] = a.accounts[1]["id"]
    query = {k: v for k, v in filters.items() if k not in ("start", "end")}
    body = (await get(world, a, "clean_expenses", {**span(filters.get("start", D0), filters.get("end", END)), **query})).json()
    filters.setdefault("resource_type", NS)
    expected, total = _expected_page(world, a, **filters)
    assert body["resource_type"] == filters["resource_type"]
    assert body["total_count"] == len(expected)
    assert body["total_cost"] == pytest.approx(total)
    assert {e["resource_id"]: e["cost"] for e in body["clean_expenses"]} == pytest.approx(expected)
    assert {e["resource_type"] for e in body["clean_expenses"]} <= {filters["resource_type"]}


async def test_clean_expenses_shows_the_latest_placement_and_skips_cancelled_rows(world: World) -> None:
    body = (await get(world, world.a, "clean_expenses", span() | {"resource_type": POD})).json()
    by_name = {e["resource_name"]: e for e in body["clean_expenses"]}
    assert "ghost" not in by_name  # its only day was cancelled by a −1 row
    assert by_name["web-2"]["k8s_node"] == "n1" and by_name["web-2"]["cost"] == pytest.approx(2.5)
    assert by_name["web-2"]["cloud_resource_id"] == "k8s-pod/east/shop/web-2"
    assert by_name["pg-0"]["cost"] == pytest.approx(12.75)  # every day corrected, nothing collapsed
    assert (by_name["web-1"]["k8s_service"], by_name["job-x"]["k8s_service"]) == ("web", None)
    # An early window: web-2 was still on n2.
    early = (await get(world, world.a, "clean_expenses", span(D0, DAYS[2]) | {"resource_type": POD})).json()
    assert {e["resource_name"]: e["k8s_node"] for e in early["clean_expenses"]}["web-2"] == "n2"


async def test_clean_expenses_limit_keeps_the_costliest_and_the_full_totals(world: World) -> None:
    expected, total = _expected_page(world, world.a, resource_type=POD)
    ranked = sorted(expected.items(), key=lambda item: (-item[1], item[0]))
    for limit in (1, 2, len(expected), 50000):
        body = (await get(world, world.a, "clean_expenses", span() | {"resource_type": POD, "limit": limit})).json()
        assert [e["resource_id"] for e in body["clean_expenses"]] == [rid for rid, _ in ranked[:limit]]
        assert (body["total_count"], body["total_cost"]) == (len(expected), pytest.approx(total))


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"end_date": END}, "start_date"),
        ({"start_date": D0}, "end_date"),
        ({"start_date": "yesterday", "end_date": END}, "start_date"),
        ({"start_date": -5, "end_date": END}, "start_date"),
        ({"start_date": END, "end_date": D0}, "start_date"),
        ({"start_date": D0, "end_date": D0}, "start_date"),
        ({"start_date": D0, "end_date": D0 + 367 * DAY}, "end_date - start_date"),
        ({**span(), "limit": 0}, "limit"),
        ({**span(), "limit": 50001}, "limit"),
        ({**span(), "limit": "ten"}, "limit"),
        ({**span(), "resource_type": "K8s Deployment"}, "resource_type"),
        ({**span(), "resource_type": [POD, NS]}, "resource_type"),
        ({**span(), "k8s_namespace": ""}, "k8s_namespace"),
        ({**span(), "namespace": "shop"}, "unknown query parameter(s): namespace"),
        ({**span(), "breakdown_by": "k8s_node"}, "unknown query parameter(s): breakdown_by"),
        ([("start_date", D0), ("start_date", D0), ("end_date", END)], "query parameter(s) given more than once: start_date"),
    ],
)
async def test_clean_expenses_refuses_bad_parameters_naming_them(world: World, params: Any, named: str) -> None:
    answer = await get(world, world.a, "clean_expenses", params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["reason"] == "bad_request"
    assert answer.json()["error"]["message"].startswith(named)


async def test_a_year_is_the_longest_range(world: World) -> None:
    answer = await get(world, world.a, "clean_expenses", span(D0, D0 + 366 * DAY))
    assert answer.status_code == 200


# --- available_filters ---------------------------------------------------------------------------


async def test_available_filters_lists_live_values_of_the_range(world: World) -> None:
    a = world.a
    a1, a2 = a.accounts[0], a.accounts[1]
    body = (await get(world, a, "available_filters", span())).json()
    assert body == {
        "filter_values": {
            "k8s_cluster": ["east", "west"],
            "k8s_namespace": ["__idle__", MANAGEMENT, "db", "shop"],  # not "tmp": its rows were cancelled
            "k8s_node": ["n1", "n2", "w1"],
            "k8s_service": ["api", "pg", "web"],
            "cloud_account": sorted(
                [{"id": x["id"], "name": x["name"], "type": "kubernetes_cnr"} for x in (a1, a2)], key=lambda c: c["id"]
            ),
            "resource_type": sorted([CLUSTER, NS, NODE, POD]),
        }
    }
    west = (await get(world, a, "available_filters", span() | {"k8s_cluster": "west", "resource_type": POD})).json()
    assert west["filter_values"] | {"cloud_account": []} == {
        "k8s_cluster": ["west"],
        "k8s_namespace": ["shop"],
        "k8s_node": ["w1"],
        "k8s_service": ["api"],
        "cloud_account": [],
        "resource_type": [POD],
    }
    assert [c["id"] for c in west["filter_values"]["cloud_account"]] == [a2["id"]]
    # Only the last day: job-x (service-less) and web-2 on n2 are gone from it.
    last = (await get(world, a, "available_filters", span(DAYS[3], END) | {"cloud_account_id": a1["id"]})).json()
    assert last["filter_values"]["k8s_node"] == ["n1", "n2"]  # pg-0 still on n2
    empty = (await get(world, a, "available_filters", span(END, END + DAY))).json()
    assert all(values == [] for values in empty["filter_values"].values())


# --- breakdown_expenses --------------------------------------------------------------------------


def _expected_breakdown(world: World, org: Org, by: str, start: int, end: int, **filters: Any) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for fact in select(world.facts_of(org), start=start, end=end, **filters):
        out[fact.column(by) or ""][fact.day] += fact.cost
    return out


@pytest.mark.parametrize(
    ("by", "filters", "summed"),
    [
        ("k8s_namespace", {}, NS),
        ("k8s_node", {}, NODE),
        ("k8s_service", {}, POD),
        ("k8s_cluster", {}, NS),
        ("cloud_account_id", {}, NS),
        ("resource_type", {}, None),
        ("k8s_namespace", {"resource_type": POD, "k8s_cluster": "east"}, POD),
        ("k8s_node", {"k8s_namespace": "shop", "resource_type": POD}, POD),
        ("k8s_service", {"k8s_node": "n1"}, POD),
        ("resource_type", {"resource_type": [POD, NODE]}, None),
    ],
)
async def test_breakdown_expenses_per_day_and_totals(world: World, by: str, filters: dict[str, Any], summed: str | None) -> None:
    a = world.a
    start, end = DAYS[2], END  # two days, after two previous ones
    body = (await get(world, a, "breakdown_expenses", {**span(start, end), "breakdown_by": by, **filters})).json()
    assert (body["breakdown_by"], body["resource_type"]) == (by, summed)
    if summed is not None:
        filters = {**filters, "resource_type": summed}
    current = _expected_breakdown(world, a, by, start, end, **filters)
    previous = _expected_breakdown(world, a, by, D0, start, **filters)
    assert set(body["breakdown"]) == {str(DAYS[2]), str(DAYS[3])}
    for day in (DAYS[2], DAYS[3]):
        want = {key: days[day] for key, days in current.items() if day in days}
        assert {k: v["cost"] for k, v in body["breakdown"][str(day)].items()} == pytest.approx(want)
    assert body["total"] == pytest.approx(sum(sum(d.values()) for d in current.values()))
    assert body["previous_total"] == pytest.approx(sum(sum(d.values()) for d in previous.values()))
    assert body["previous_range_start"] == D0
    keys = set(current) | set(previous)
    assert set(body["counts"]) == keys
    for key in keys:
        assert body["counts"][key]["total"] == pytest.approx(sum(current.get(key, {}).values()))
        assert body["counts"][key]["previous_total"] == pytest.approx(sum(previous.get(key, {}).values()))


async def test_breakdown_by_namespace_of_the_whole_range_sums_to_the_clusters(world: World) -> None:
    body = (await get(world, world.a, "breakdown_expenses", span() | {"breakdown_by": "k8s_namespace"})).json()
    assert body["total"] == pytest.approx(sum(f.cost for f in select(world.facts_of(world.a), resource_type=CLUSTER)))
    assert body["previous_total"] == 0.0 and body["previous_range_start"] == D0 - 4 * DAY
    assert body["counts"]["__idle__"]["total"] == pytest.approx(1.25 + 4.0)
    # Days count from the start of the day holding start_date.
    mid = (await get(world, world.a, "breakdown_expenses", span(DAYS[3] + 7200, END) | {"breakdown_by": "k8s_cluster"})).json()
    assert list(mid["breakdown"]) == [str(DAYS[3])]


def _same_to_the_cent(*answers: dict[str, float]) -> bool:
    """Same keys, values less than half a cent apart (rounding each could split at a half cent)."""
    first, *others = answers
    return all(set(o) == set(first) and all(abs(o[k] - first[k]) < 0.005 for k in first) for o in others)


@pytest.mark.parametrize("share", ["false", "true"])
@pytest.mark.parametrize("filters", [{}, {"k8s_cluster": "east"}, {"k8s_cluster": "west"}, {"cloud_account_id": 1}])
async def test_namespaces_equal_clusters_to_the_cent_on_every_day(world: World, filters: dict[str, Any], share: str) -> None:
    """Idle, the management fee and unallocated costs included, shared or not; summed here independently."""
    a = world.a
    filters = {k: a.accounts[1]["id"] if v == 1 else v for k, v in filters.items()}
    params = span() | filters | {"breakdown_by": "k8s_cluster", "share_tenancy_costs": share}
    namespaces = (await get(world, a, "breakdown_expenses", params)).json()
    clusters = (await get(world, a, "breakdown_expenses", params | {"resource_type": CLUSTER})).json()
    assert (namespaces["resource_type"], clusters["resource_type"]) == (NS, CLUSTER)
    for day in DAYS:
        expected: dict[str, float] = defaultdict(float)
        for fact in select(world.facts_of(a), start=day, end=day + DAY, resource_type=CLUSTER, **filters):
            expected[fact.resource.cluster] += fact.cost
        got_namespaces = {k: v["cost"] for k, v in namespaces["breakdown"][str(day)].items()}
        got_clusters = {k: v["cost"] for k, v in clusters["breakdown"][str(day)].items()}
        assert _same_to_the_cent(got_namespaces, got_clusters, expected), (day, got_namespaces, got_clusters, expected)
    page = (await get(world, a, "clean_expenses", span() | filters | {"share_tenancy_costs": share})).json()
    assert abs(page["total_cost"] - page["k8s_costs"]["k8s_total_cost"]) < 0.005
    assert abs(page["total_cost"] - clusters["total"]) < 0.005


async def test_shared_tenancy_costs_go_to_namespaces_in_proportion_to_their_cost(world: World) -> None:
    a = world.a
    params = span() | {"breakdown_by": "k8s_namespace", "share_tenancy_costs": "true", "k8s_cluster": "east"}
    body = (await get(world, a, "breakdown_expenses", params)).json()
    assert body["share_tenancy_costs"] is True
    for day in DAYS:
        own = {f.resource.name: f.cost for f in select(world.facts_of(a), start=day, end=day + DAY,
                                                       resource_type=NS, k8s_cluster="east")}
        fee = own.pop(MANAGEMENT)
        workloads = sum(cost for name, cost in own.items() if name != "__idle__")
        expected = {name: cost if name == "__idle__" else cost + fee * cost / workloads for name, cost in own.items()}
        assert {k: v["cost"] for k, v in body["breakdown"][str(day)].items()} == pytest.approx(expected)
    # A pod or node sum is the same shared or not: only namespaces carry the lines.
    pods = span() | {"resource_type": POD}
    assert (await get(world, a, "clean_expenses", pods | {"share_tenancy_costs": "true"})).json()["clean_expenses"] == (
        await get(world, a, "clean_expenses", pods)).json()["clean_expenses"]
    # Shared per namespace in clean_expenses too, and nothing is lost.
    page = (await get(world, a, "clean_expenses", span() | {"share_tenancy_costs": "true"})).json()
    assert MANAGEMENT not in {e["resource_name"] for e in page["clean_expenses"]}
    assert page["total_cost"] == pytest.approx(sum(f.cost for f in select(world.facts_of(a), resource_type=CLUSTER)))


@pytest.mark.parametrize(
    ("params", "named"),
    [
        (span(), "breakdown_by"),
        (span() | {"breakdown_by": "pod"}, "breakdown_by"),
        (span() | {"breakdown_by": "k8s_node", "limit": 5}, "unknown query parameter(s): limit"),
        (span() | {"breakdown_by": "k8s_node", "resource_type": [POD, NODE]}, "resource_type"),
        (span() | {"breakdown_by": "k8s_node", "share_tenancy_costs": "yes"}, "share_tenancy_costs"),
        (span() | {"breakdown_by": "k8s_node", "resource_type": COMPONENT}, "resource_type"),
        ({"breakdown_by": "k8s_node", "start_date": D0, "end_date": "x"}, "end_date"),
    ],
)
async def test_breakdown_refuses_bad_parameters(world: World, params: dict[str, Any], named: str) -> None:
    answer = await get(world, world.a, "breakdown_expenses", params)
    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith(named)


# --- expenses_async ------------------------------------------------------------------------------


def _same_answer(a: Any, b: Any) -> bool:
    """Equal JSON answers, floats to 1e-12: ClickHouse adds the same rows in any order, so a
    sum asked twice may differ in its last bits."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_answer(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_answer(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-12)
    return a == b


async def _wait_task(world: World, org: Org, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        answer = await get(world, org, f"expenses_async/{task_id}")
        assert answer.status_code == 200
        if answer.json()["status"] != "pending" or time.monotonic() > deadline:
            return answer.json()
        await _sleep(0.05)


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def test_expenses_async_gives_the_clean_expenses_answer(world: World) -> None:
    a = world.a
    params = {**span(), "resource_type": POD, "k8s_namespace": ["shop", "db"], "limit": 2}
    started = await world.client.post(f"/v2/organizations/{a.id}/expenses_async", json=params, headers=a.headers)
    assert started.status_code == 202
    task = await _wait_task(world, a, started.json()["task_id"])
    assert task["status"] == "done"
    direct = (await get(world, a, "clean_expenses", params)).json()
    assert _same_answer(task["result"], direct)
    assert task["result"]["total_count"] == 5 and len(task["result"]["clean_expenses"]) == 2
    # Any replica answers: the task is in MongoDB, read here by a second app instance.
    other = create_api(world.config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=other), base_url="http://other") as client:
        again = await client.get(f"/v2/organizations/{a.id}/expenses_async/{started.json()['task_id']}", headers=a.headers)
    await other.state.stores.close()
    assert again.json() == task


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"end_date": END}, "start_date"),
        ({**span(), "limit": 0}, "limit"),
        ({**span(), "breakdown_by": "k8s_node"}, "unknown query parameter(s): breakdown_by"),
        ({**span(), "k8s_namespace": {"$ne": ""}}, "k8s_namespace"),
        ([1, 2], "body"),
    ],
)
async def test_expenses_async_refuses_bad_bodies(world: World, body: Any, named: str) -> None:
    answer = await world.client.post(f"/v2/organizations/{world.a.id}/expenses_async", json=body, headers=world.a.headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith(named)


async def test_clean_expenses_reads_resource_fields_from_the_ledger_alone(world: World) -> None:
    """Ids by construction, the seen interval from the ledger's days: MongoDB is never read."""
    mongo = connect(world.config.stores)
    saved = await mongo["cloud_resource"].find().to_list(None)
    await mongo["cloud_resource"].delete_many({})
    try:
        body = (await get(world, world.a, "clean_expenses", span() | {"resource_type": POD})).json()
    finally:
        await mongo["cloud_resource"].insert_many(saved)
    by_name = {e["resource_name"]: e for e in body["clean_expenses"]}
    assert by_name["web-1"]["cloud_resource_id"] == "k8s-pod/east/shop/web-1"
    assert (by_name["web-1"]["first_seen"], by_name["web-1"]["last_seen"]) == (D0, END)
    assert (by_name["job-x"]["first_seen"], by_name["job-x"]["last_seen"]) == (DAYS[1], DAYS[2])  # one day of cost


# --- the same app deployed on Ray Serve ------------------------------------------------


@pytest.mark.services
async def test_the_api_answers_through_serve_with_its_openapi(serve_apps: str) -> None:
    """Serve ships the app to its replica pickled: the request models must survive that."""
    email = f"serve-{uuid.uuid4().hex[:8]}@example.com"
    body = {"organization_name": "Serve Org", "email": email, "password": "serve-password-1", "display_name": "S"}
    async with httpx.AsyncClient(base_url=f"{serve_apps}/restapi", timeout=30) as client:
        signup = await client.post("/v2/signup", json=body)
        assert signup.status_code == 201, signup.text
        headers = {"Authorization": f"Bearer {signup.json()['token']}"}
        organizations = await client.get("/v2/organizations", headers=headers)
        assert [o["id"] for o in organizations.json()["organizations"]] == [signup.json()["organization_id"]]
        schema = await client.get("/openapi.json")
    assert schema.status_code == 200
    assert "/v2/organizations/{organization_id}/clean_expenses" in schema.json()["paths"]
