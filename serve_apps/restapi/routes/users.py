"""Users and their bearer tokens.

- ``POST /v2/signup`` and ``POST /v2/tokens`` (sign-in), the only public routes: 201 with a
  token; 400 for a malformed body (naming the field), 409 for a taken email, 401 for a wrong
  email or password.
- ``DELETE /v2/tokens``: sign-out, 204; the presented token is refused (401) from then on.
- ``POST /v2/users/{user_id}/password``: the caller's own password changed, 201 with a new
  token; every token issued before is refused (401) from then on. 403 for a wrong current
  password, 404 for another user's id.

Failed password checks, at sign-in and at a password change, are throttled per email and per
client address for every replica (k8scost/stores/signins.py): past the limit, 429 with
Retry-After, whatever the password, until the window ends.
"""

# No `from __future__ import annotations`: request models and routes (see serve_apps/restapi/api.py).
import time
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from k8scost.stores.organizations import EmailTaken, User
from k8scost.stores.signins import EMAIL, Attempt, SignInThrottled
from serve_apps.restapi import metrics
from serve_apps.restapi.dependencies import (
    CallerDep,
    ClientAddressDep,
    ClockDep,
    SettingsDep,
    StoresDep,
    TokensDep,
    UserIdDep,
)
from serve_apps.restapi.errors import ApiError, not_found
from serve_apps.restapi.routes import STRICT
from serve_apps.restapi.state import OpenStores

router = APIRouter()


class SignupBody(BaseModel):
    model_config = STRICT
    organization_name: str = Field(min_length=1, max_length=256)
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=8, max_length=1024)
    display_name: str = Field(min_length=1, max_length=256)


class TokenBody(BaseModel):
    model_config = STRICT
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class PasswordBody(BaseModel):
    model_config = STRICT
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


async def _token_answer(opened: OpenStores, issuer: TokensDep, user: User) -> dict[str, Any]:
    """A token of a new session of ``user``, as its password was when ``user`` was read."""
    now = time.time()
    session_id = await opened.sessions.open(user.id, issuer.expiry(now), now)
    if not await opened.organizations.has_password_stamp(user.id, user.password_stamp):
        # The password changed since it was checked: that change's revocation may have run
        # before this session existed, and must still end it.
        await opened.sessions.close(session_id)
        raise ApiError(401, "the password changed meanwhile; sign in with the new one")
    token = issuer.issue(user.id, user.organization_id, session_id, now)
    return {
        "token": token.token,
        "expires_at": token.expires_at,
        "user_id": user.id,
        "organization_id": user.organization_id,
    }


async def _begin(opened: OpenStores, email: str, address: str, now: float, settings: SettingsDep) -> Attempt:
    """A password check the throttle lets through; 429 naming the count at its limit otherwise."""
    try:
        return await opened.signins.begin(email, address, now)
    except SignInThrottled as throttled:
        metrics.SIGNIN_THROTTLED.inc(tags={"by": throttled.by})
        if throttled.by == EMAIL:
            limit, whose = settings.signin_failures_per_email, "for this email"
        else:
            limit, whose = settings.signin_failures_per_address, f"from your address {address}"
        raise ApiError(
            429,
            f"too many failed sign-ins {whose} ({limit} in {settings.signin_window_seconds:g} s); "
            f"retry in {throttled.retry_after} s",
            {"Retry-After": str(throttled.retry_after)},
        ) from None


@router.post("/signup", status_code=201, summary="Create an organization and its first user; returns a token")
async def signup(body: SignupBody, opened: StoresDep, issuer: TokensDep) -> dict[str, Any]:
    try:
        _, user = await opened.organizations.signup(body.organization_name, body.email, body.password, body.display_name)
    except EmailTaken:
        raise ApiError(409, "email: a user with this email exists already") from None
    return await _token_answer(opened, issuer, user)


@router.post("/tokens", status_code=201, summary="Sign in: a bearer token for email and password")
async def sign_in(
    body: TokenBody,
    opened: StoresDep,
    issuer: TokensDep,
    settings: SettingsDep,
    address: ClientAddressDep,
    clock: ClockDep,
) -> dict[str, Any]:
    attempt = await _begin(opened, body.email, address, clock(), settings)
    user = await opened.organizations.authenticate(body.email, body.password)
    if user is None:
        metrics.SIGNIN_FAILURES.inc()
        raise ApiError(401, "wrong email or password")
    await opened.signins.succeeded(attempt)
    return await _token_answer(opened, issuer, user)


@router.delete("/tokens", status_code=204, summary="Sign out: the token of this request is revoked")
async def sign_out(who: CallerDep, opened: StoresDep) -> Response:
    if who.session_id is None:
        raise ApiError(400, "a service caller has no token to revoke")
    await opened.sessions.close(who.session_id)
    return Response(status_code=204)


@router.post(
    "/users/{user_id}/password",
    status_code=201,
    summary="Change the caller's own password; revokes every token of the user and returns a new one",
)
async def change_password(
    body: PasswordBody,
    user_id: UserIdDep,
    opened: StoresDep,
    issuer: TokensDep,
    settings: SettingsDep,
    address: ClientAddressDep,
    clock: ClockDep,
) -> dict[str, Any]:
    user = await opened.organizations.get_user(user_id)
    if user is None:  # deleted since its token's check
        raise not_found("user", user_id)
    # A stolen token must not be a way around the sign-in throttle to guess the password.
    attempt = await _begin(opened, user.email, address, clock(), settings)
    changed = await opened.organizations.change_password(user_id, body.current_password, body.new_password)
    if changed is None:
        metrics.SIGNIN_FAILURES.inc()
        raise ApiError(403, "current_password: wrong password")
    await opened.signins.succeeded(attempt)
    await opened.sessions.close_all(user_id)
    return await _token_answer(opened, issuer, changed)
