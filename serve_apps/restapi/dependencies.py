"""The routes' FastAPI dependencies: the app's settings and stores, who calls (and from which
address), and the path's organization, cloud account or user once the caller may see it.

A route declares what it needs by a parameter of one of the ``…Dep`` types below (an
``OrganizationIdDep`` is the path's organization id, checked by ``organization_of_caller``)
rather than calling checks in its body, so none can skip one. FastAPI runs each once per
request and before it reads the body: a bad token is 401, and an id the caller may not see
404, whatever the body. A user's token names its organization: any other organization, and
any cloud account of another, is answered 404 as if it did not exist, so ids of others
cannot be discovered by probing.
"""

# No `from __future__ import annotations` here: FastAPI reads these signatures (see api.py).
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from k8scost.metroculus_client import SECRET_HEADER
from k8scost.settings import RestApiSettings
from k8scost.stores.accounts import Account
from serve_apps.restapi.auth import Caller, Tokens
from serve_apps.restapi.errors import ApiError, bad_request, not_found
from serve_apps.restapi.state import OpenStores


def api_settings(request: Request) -> RestApiSettings:
    return request.app.state.config.api  # type: ignore[no-any-return]


SettingsDep = Annotated[RestApiSettings, Depends(api_settings)]


async def open_stores(request: Request) -> OpenStores:
    """The stores of the running event loop; 503 when one is unreachable."""
    return await request.app.state.stores.get()  # type: ignore[no-any-return]


StoresDep = Annotated[OpenStores, Depends(open_stores)]


def tokens(request: Request) -> Tokens:
    return request.app.state.tokens  # type: ignore[no-any-return]


TokensDep = Annotated[Tokens, Depends(tokens)]


async def caller(request: Request, issuer: TokensDep) -> Caller:
    """The caller the headers prove; 401 otherwise, also for a user's token whose session was
    closed (signed out, or the password changed since): see k8scost/stores/sessions.py."""
    who = issuer.caller(request.headers.get("Authorization"), request.headers.get(SECRET_HEADER))
    # The token is checked first, without I/O: a bad one is 401 even while MongoDB is down.
    if not who.is_service:
        opened = await open_stores(request)
        assert who.session_id is not None and who.user_id is not None
        if not await opened.sessions.is_open(who.session_id, who.user_id):
            raise ApiError(401, "token revoked (signed out, or the password changed); sign in again (POST /v2/tokens)")
    return who


CallerDep = Annotated[Caller, Depends(caller)]


def client_address(request: Request, settings: SettingsDep) -> str:
    """The caller's network address: the TCP peer, or with ``RESTAPI_FORWARDED_HOPS`` trusted
    proxies in front the ``X-Forwarded-For`` entry they appended (entries further left are the
    client's own to forge)."""
    peer = request.client.host if request.client else "unknown"
    hops = settings.forwarded_hops
    if hops <= 0:
        return peer
    forwarded = [entry.strip() for entry in ",".join(request.headers.getlist("X-Forwarded-For")).split(",")]
    forwarded = [entry for entry in forwarded if entry]
    return forwarded[-hops] if len(forwarded) >= hops else peer


ClientAddressDep = Annotated[str, Depends(client_address)]


def clock(request: Request) -> Callable[[], float]:
    """The sign-in throttle's clock (``create_api``'s; tests move it)."""
    return request.app.state.clock  # type: ignore[no-any-return]


ClockDep = Annotated[Callable[[], float], Depends(clock)]


def user_of_caller(user_id: str, who: CallerDep) -> str:
    """The path's ``user_id``, once it is the caller's own; 404 otherwise (a service has no
    user: 403). Not even a colleague of the same organization may act as another user."""
    if who.is_service:
        raise ApiError(403, "a service acts for no user: the user does this with its own token")
    if who.user_id != user_id:
        raise not_found("user", user_id)
    return user_id


UserIdDep = Annotated[str, Depends(user_of_caller)]


async def organization_of_caller(organization_id: str, who: CallerDep, opened: StoresDep) -> str:
    """The path's ``organization_id``, once the caller may see it; 404 otherwise."""
    if not who.may_see(organization_id):
        raise not_found("organization", organization_id)
    if who.is_service and await opened.organizations.get_organization(organization_id) is None:
        raise not_found("organization", organization_id)
    return organization_id


OrganizationIdDep = Annotated[str, Depends(organization_of_caller)]


async def organization_in_query(who: CallerDep, opened: StoresDep, organization_id: str | None = None) -> str:
    """The design's routes name the organization in the query (``?organization_id=``):
    checked as ``organization_of_caller`` checks the path's (404 for one the caller may not
    see). Without it, a user's token's organization; a service must name one (400)."""
    if organization_id is None and not who.is_service:
        organization_id = who.organization_id
    if not organization_id:
        raise bad_request("organization_id: missing")
    return await organization_of_caller(organization_id, who, opened)


OrganizationQueryDep = Annotated[str, Depends(organization_in_query)]


async def account_of_caller(cloud_account_id: str, who: CallerDep, opened: StoresDep) -> Account:
    """The path's live cloud account, once it is of an organization the caller may see; 404 otherwise."""
    account = await opened.accounts.get(cloud_account_id)
    if account is None or not who.may_see(account.organization_id):
        raise not_found("cloud account", cloud_account_id)
    return account


CloudAccountDep = Annotated[Account, Depends(account_of_caller)]
