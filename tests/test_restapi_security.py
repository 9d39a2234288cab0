"""The REST API's sign-in throttle and token revocation, in-process (httpx over ASGI) against
the real MongoDB wire.

The throttle's clock is the test's (``create_api(clock=…)``): windows pass without waiting.
The apps trust one proxy hop, so each test gives its requests client addresses of its own in
``X-Forwarded-For`` and none shares a count with another. Two apps on one database stand
for two Serve replicas.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from fastapi import FastAPI, Request

from k8scost.settings import RestApiSettings, StoreSettings, from_env
from k8scost.stores.mongo import connect
from k8scost.stores.organizations import OrganizationStore
from serve_apps.restapi import metrics
from serve_apps.restapi.api import RestApiConfig, create_api
from serve_apps.restapi.dependencies import client_address

pytestmark = [pytest.mark.services, pytest.mark.asyncio(loop_scope="session")]

SECRET = "test-cluster-secret"
JWT_KEY = "test-jwt-key-of-at-least-32-bytes!"
PASSWORD = "correct horse battery"
PER_EMAIL, PER_ADDRESS, WINDOW = 3, 5, 600.0


class Clock:
    """Unix seconds that a test moves forward, from a second into a throttle window (they are
    aligned on the epoch), so that a test's failures fall in one."""

    def __init__(self) -> None:
        self.now = (time.time() // WINDOW + 1) * WINDOW + 1

    def left(self) -> int:
        """Seconds to the end of the current window."""
        return int((self.now // WINDOW + 1) * WINDOW - self.now)

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands for a Ray counter: what was counted, by tags."""

    def __init__(self) -> None:
        self.counted: Counter[tuple[tuple[str, str], ...]] = Counter()

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.counted[tuple(sorted((tags or {}).items()))] += int(value)


class Api:
    """One app (a replica) with its client."""

    def __init__(self, config: RestApiConfig, clock: Clock) -> None:
        self.app: FastAPI = create_api(config, clock=clock)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://restapi.test")

    async def close(self) -> None:
        await self.client.aclose()
        await self.app.state.stores.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def config(real_services: None) -> AsyncIterator[RestApiConfig]:
    stores = from_env(StoreSettings, mongodb_database=f"test_restapi_security_{uuid.uuid4().hex[:12]}")
    settings = from_env(
        RestApiSettings,
        {},
        jwt_secret=JWT_KEY,
        signin_failures_per_email=PER_EMAIL,
        signin_failures_per_address=PER_ADDRESS,
        signin_window_seconds=WINDOW,
        forwarded_hops=1,
    )
    yield RestApiConfig(settings, stores, SECRET, "http://127.0.0.1:1/unused")
    await connect(stores).client.drop_database(stores.mongodb_database)


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture(loop_scope="session")
async def replicas(config: RestApiConfig, clock: Clock) -> AsyncIterator[tuple[Api, Api]]:
    """Two apps on one database and one clock, as two Serve replicas are."""
    apps = Api(config, clock), Api(config, clock)
    try:
        yield apps
    finally:
        for api in apps:
            await api.close()


@pytest.fixture()
def counters(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorder]:
    recorders = {"failures": Recorder(), "throttled": Recorder()}
    monkeypatch.setattr(metrics, "SIGNIN_FAILURES", recorders["failures"])
    monkeypatch.setattr(metrics, "SIGNIN_THROTTLED", recorders["throttled"])
    return recorders


def address() -> str:
    """A client address no other request of the run has used."""
    n = uuid.uuid4().int
    return f"10.{n % 251}.{n // 251 % 251}.{n // 63001 % 251 + 1}"


def sent_from(addr: str) -> dict[str, str]:
    # A forged entry on the left, as a client can write it; the trusted hop's is the last.
    return {"X-Forwarded-For": f"203.0.113.{uuid.uuid4().int % 250 + 1}, {addr}"}


async def signup(api: Api, addr: str | None = None) -> dict[str, Any]:
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    body = {"organization_name": "Org", "email": email, "password": PASSWORD, "display_name": "U"}
    answer = await api.client.post("/v2/signup", json=body, headers=sent_from(addr or address()))
    assert answer.status_code == 201, answer.text
    return {**answer.json(), "email": email}


async def sign_in(api: Api, email: str, password: str, addr: str) -> httpx.Response:
    return await api.client.post("/v2/tokens", json={"email": email, "password": password}, headers=sent_from(addr))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def works(api: Api, token: str) -> bool:
    answer = await api.client.get("/v2/organizations", headers=bearer(token))
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


def message(answer: httpx.Response) -> str:
    return answer.json()["error"]["message"]


# --- the sign-in throttle ------------------------------------------------------------------


async def test_one_email_is_throttled_after_its_failures_from_any_address(
    replicas: tuple[Api, Api], clock: Clock, counters: dict[str, Recorder]
) -> None:
    one, other = replicas
    user = await signup(one)
    # The failures spread over both replicas and as many addresses: counted together.
    for i in range(PER_EMAIL):
        refused = await sign_in((one, other)[i % 2], user["email"], "wrong password", address())
        assert refused.status_code == 401, refused.text
        clock.now += 10
    throttled = await sign_in(one, user["email"], PASSWORD, address())  # the right password, a fresh address
    assert throttled.status_code == 429, throttled.text
    left = clock.left()
    assert left == WINDOW - 31
    assert throttled.headers["Retry-After"] == str(left)
    assert throttled.json()["error"] == {
        "reason": "too_many_requests",
        "message": f"too many failed sign-ins for this email ({PER_EMAIL} in {WINDOW:g} s); retry in {left} s",
    }
    assert (await sign_in(other, user["email"].upper(), PASSWORD, address())).status_code == 429  # either replica
    assert counters["failures"].counted[()] == PER_EMAIL
    assert counters["throttled"].counted[(("by", "email"),)] == 2

    clock.now += left - 1
    assert (await sign_in(one, user["email"], PASSWORD, address())).status_code == 429  # a second early
    clock.now += 1
    answer = await sign_in(other, user["email"], PASSWORD, address())
    assert answer.status_code == 201, answer.text
    assert await works(one, answer.json()["token"])


async def test_one_address_is_throttled_after_its_failures_on_any_email(
    replicas: tuple[Api, Api], clock: Clock, counters: dict[str, Recorder]
) -> None:
    one, other = replicas
    user = await signup(one)
    addr = address()
    for i in range(PER_ADDRESS):  # guesses at as many emails, each below its own limit
        refused = await sign_in((one, other)[i % 2], f"guess-{uuid.uuid4().hex[:8]}@example.com", "x", addr)
        assert refused.status_code == 401, refused.text
    throttled = await sign_in(other, user["email"], PASSWORD, addr)
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == str(int(WINDOW - 1))
    assert message(throttled) == (
        f"too many failed sign-ins from your address {addr} ({PER_ADDRESS} in {WINDOW:g} s); retry in {int(WINDOW - 1)} s"
    )
    assert counters["throttled"].counted == Counter({(("by", "address"),): 1})
    # The same user from another address: not throttled, the email has no failure.
    assert (await sign_in(one, user["email"], PASSWORD, address())).status_code == 201

    clock.now += WINDOW - 1
    assert (await sign_in(one, user["email"], PASSWORD, addr)).status_code == 201


async def test_the_forged_part_of_x_forwarded_for_does_not_change_the_address(replicas: tuple[Api, Api]) -> None:
    one, _ = replicas
    addr = address()
    for _ in range(PER_ADDRESS):
        # sent_from writes a new forged left entry each time; the trusted hop's stays the same.
        assert (await sign_in(one, f"x-{uuid.uuid4().hex[:8]}@example.com", "x", addr)).status_code == 401
    assert (await sign_in(one, f"x-{uuid.uuid4().hex[:8]}@example.com", "x", addr)).status_code == 429


async def test_unknown_emails_are_throttled_as_known_ones(replicas: tuple[Api, Api]) -> None:
    one, _ = replicas
    known, unknown = (await signup(one))["email"], f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    answers = {}
    for email in (known, unknown):
        for _ in range(PER_EMAIL):
            assert (await sign_in(one, email, "wrong password", address())).status_code == 401
        answers[email] = await sign_in(one, email, "wrong password", address())
    # Nothing but the seconds tells them apart: no way to learn which emails have accounts.
    assert [(a.status_code, re.sub(r"\d+ s$", "", message(a))) for a in answers.values()] == [
        (429, f"too many failed sign-ins for this email ({PER_EMAIL} in {WINDOW:g} s); retry in ")
    ] * 2


async def test_concurrent_guesses_get_exactly_the_limit(replicas: tuple[Api, Api]) -> None:
    one, other = replicas
    user = await signup(one)
    guesses = [sign_in((one, other)[i % 2], user["email"], f"guess {i}", address()) for i in range(4 * PER_EMAIL)]
    codes = Counter(answer.status_code for answer in await asyncio.gather(*guesses))
    assert codes == Counter({401: PER_EMAIL, 429: 3 * PER_EMAIL})


async def test_a_success_clears_the_emails_count_but_not_the_addresss(replicas: tuple[Api, Api]) -> None:
    one, _ = replicas
    user, addr = await signup(one), address()
    for _ in range(2):  # twice the email's limit less two failures, a success between
        for _ in range(PER_EMAIL - 1):
            assert (await sign_in(one, user["email"], "wrong password", address())).status_code == 401
        assert (await sign_in(one, user["email"], PASSWORD, address())).status_code == 201

    for _ in range(PER_ADDRESS - 1):
        assert (await sign_in(one, f"g-{uuid.uuid4().hex[:8]}@example.com", "x", addr)).status_code == 401
    assert (await sign_in(one, user["email"], PASSWORD, addr)).status_code == 201  # not counted as a failure
    assert (await sign_in(one, f"g-{uuid.uuid4().hex[:8]}@example.com", "x", addr)).status_code == 401
    # The success did not reset the address: its fifth failure was the last allowed.
    assert (await sign_in(one, user["email"], PASSWORD, addr)).status_code == 429


# --- revoking tokens -------------------------------------------------------------------------


async def test_sign_out_revokes_the_presented_token_only(replicas: tuple[Api, Api]) -> None:
    one, other = replicas
    user = await signup(one)
    first = user["token"]
    second = (await sign_in(one, user["email"], PASSWORD, address())).json()["token"]
    assert await works(one, first) and await works(other, first)

    assert (await one.client.delete("/v2/tokens", headers=bearer(first))).status_code == 204
    refused = await other.client.get("/v2/organizations", headers=bearer(first))  # the other replica too, at once
    assert refused.status_code == 401
    assert refused.json()["error"] == {
        "reason": "unauthorized",
        "message": "token revoked (signed out, or the password changed); sign in again (POST /v2/tokens)",
    }
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert (await one.client.delete("/v2/tokens", headers=bearer(first))).status_code == 401
    assert await works(other, second)  # the user's other token is another session
    third = (await sign_in(other, user["email"], PASSWORD, address())).json()["token"]
    assert await works(one, third)


async def test_a_password_change_revokes_every_token_of_the_user(replicas: tuple[Api, Api], clock: Clock) -> None:
    one, other = replicas
    user, bystander = await signup(one), await signup(one)
    tokens = [user["token"], (await sign_in(one, user["email"], PASSWORD, address())).json()["token"]]
    changed = await other.client.post(
        f"/v2/users/{user['user_id']}/password",
        json={"current_password": PASSWORD, "new_password": "a new password"},
        headers={**bearer(tokens[0]), **sent_from(address())},
    )
    assert changed.status_code == 201, changed.text
    new = changed.json()
    assert (new["user_id"], new["organization_id"]) == (user["user_id"], user["organization_id"])
    for token in tokens:
        assert not await works(one, token)
    assert await works(one, new["token"])
    assert await works(one, bystander["token"])  # another user's session is untouched
    assert (await sign_in(other, user["email"], PASSWORD, address())).status_code == 401
    assert (await sign_in(other, user["email"], "a new password", address())).status_code == 201


async def test_a_password_change_needs_the_current_password_and_is_throttled(
    replicas: tuple[Api, Api], counters: dict[str, Recorder]
) -> None:
    one, _ = replicas
    user = await signup(one)
    url, headers = f"/v2/users/{user['user_id']}/password", bearer(user["token"])
    for _ in range(PER_EMAIL):
        wrong = await one.client.post(
            url, json={"current_password": "guess", "new_password": "whatever-1"}, headers={**headers, **sent_from(address())}
        )
        assert wrong.status_code == 403
        assert wrong.json()["error"] == {"reason": "forbidden", "message": "current_password: wrong password"}
    assert await works(one, user["token"])  # a refused change revokes nothing
    # A stolen token is no way around the sign-in throttle: the right password is 429 now too.
    right = {"current_password": PASSWORD, "new_password": "whatever-1"}
    throttled = await one.client.post(url, json=right, headers={**headers, **sent_from(address())})
    assert throttled.status_code == 429 and "for this email" in message(throttled)
    assert (await sign_in(one, user["email"], PASSWORD, address())).status_code == 429
    assert counters["failures"].counted[()] == PER_EMAIL


async def test_only_the_user_itself_changes_its_password(replicas: tuple[Api, Api]) -> None:
    one, _ = replicas
    user, other = await signup(one), await signup(one)
    body = {"current_password": PASSWORD, "new_password": "a new password"}
    cases = [
        (bearer(other["token"]), user["user_id"], 404, f"user {user['user_id']!r} not found"),
        (bearer(user["token"]), "not-a-user", 404, "user 'not-a-user' not found"),
        ({"Secret": SECRET}, user["user_id"], 403, "a service acts for no user: the user does this with its own token"),
        ({}, user["user_id"], 401, "missing Authorization header; send 'Authorization: Bearer <token>'"),
    ]
    for headers, user_id, status, expected in cases:
        answer = await one.client.post(f"/v2/users/{user_id}/password", json=body, headers=headers)
        assert (answer.status_code, message(answer)) == (status, expected)
    short = await one.client.post(
        f"/v2/users/{user['user_id']}/password", json={**body, "new_password": "short"}, headers=bearer(user["token"])
    )
    assert short.status_code == 400 and message(short).startswith("new_password:")
    assert await works(one, user["token"]) and await works(one, other["token"])
    assert (await sign_in(one, user["email"], PASSWORD, address())).status_code == 201  # unchanged


async def test_a_password_change_during_a_sign_in_leaves_it_no_token(
    replicas: tuple[Api, Api], config: RestApiConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change's revocation may run between the old password's check and the new session:
    the sign-in must not hand out a token that outlives the change."""
    one, _ = replicas
    user = await signup(one)
    authenticate, change = OrganizationStore.authenticate, OrganizationStore.change_password

    async def changed_meanwhile(self: OrganizationStore, email: str, password: str) -> Any:
        checked = await authenticate(self, email, password)
        assert await change(self, checked.id, PASSWORD, "changed meanwhile") is not None
        return checked

    monkeypatch.setattr(OrganizationStore, "authenticate", changed_meanwhile)
    sessions = connect(config.stores)["sessions"]
    before = await sessions.count_documents({"user_id": user["user_id"]})
    answer = await sign_in(one, user["email"], PASSWORD, address())
    assert (answer.status_code, message(answer)) == (401, "the password changed meanwhile; sign in with the new one")
    assert await sessions.count_documents({"user_id": user["user_id"]}) == before  # none left open
    monkeypatch.undo()
    assert (await sign_in(one, user["email"], "changed meanwhile", address())).status_code == 201


async def test_a_token_needs_an_open_session(replicas: tuple[Api, Api]) -> None:
    one, _ = replicas
    user = await signup(one)
    claims = jwt.decode(user["token"], JWT_KEY, algorithms=["HS256"], audience="cloudtuner-restapi")
    assert set(claims) == {"sub", "org", "jti", "iat", "exp", "aud"}
    # Signed with the right key, but of a session that was never opened, or of none.
    unknown = jwt.encode({**claims, "jti": str(uuid.uuid4())}, JWT_KEY, algorithm="HS256")
    other_user = jwt.encode({**claims, "sub": str(uuid.uuid4())}, JWT_KEY, algorithm="HS256")
    without = jwt.encode({k: v for k, v in claims.items() if k != "jti"}, JWT_KEY, algorithm="HS256")
    for token, expected in ((unknown, "token revoked"), (other_user, "token revoked"), (without, "invalid token")):
        answer = await one.client.get("/v2/organizations", headers=bearer(token))
        assert answer.status_code == 401 and message(answer).startswith(expected), answer.text
    service = await one.client.delete("/v2/tokens", headers={"Secret": SECRET})
    assert (service.status_code, message(service)) == (400, "a service caller has no token to revoke")


@pytest.mark.parametrize(
    ("hops", "forwarded", "expected"),
    [
        (0, ["198.51.100.7"], "127.0.0.1"),  # no proxy trusted: the header is the client's own to write
        (1, ["198.51.100.7, 10.0.0.9"], "10.0.0.9"),
        (1, ["198.51.100.7", "10.0.0.9"], "10.0.0.9"),  # two headers are one list
        (2, ["198.51.100.7, 10.0.0.9, 10.0.0.1"], "10.0.0.9"),
        (2, ["10.0.0.1"], "127.0.0.1"),  # fewer entries than proxies: misrouted, the peer
        (1, [], "127.0.0.1"),
    ],
)
async def test_the_client_address_is_the_last_trusted_hops(hops: int, forwarded: list[str], expected: str) -> None:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    request = Request({"type": "http", "headers": headers, "client": ("127.0.0.1", 5555)})
    assert client_address(request, from_env(RestApiSettings, {}, forwarded_hops=hops)) == expected
