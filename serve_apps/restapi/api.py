"""The FastAPI application: routes ``/v2/...`` (mounted at ``/restapi`` by Serve).

``create_api(config)`` builds it without touching any store: they are opened on the first
request, on the event loop that serves it, so the same app runs in a Serve replica, under
uvicorn, or in-process in tests. Answers are JSON; errors are ``serve_apps.restapi.errors``.

Scoping: a user's token names its organization; any other organization id, and any cloud
account or task id of another organization, is answered 404 as if it did not exist.
"""

# No `from __future__ import annotations` here: Serve ships the FastAPI app to its replicas
# pickled by value, and FastAPI could not resolve the request models from string annotations there.
import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from k8scost.metroculus_client import SECRET_HEADER, MetroculusClient
from k8scost.query_params import BadParameter
from k8scost.settings import LedgerSettings, MetroculusSettings, RestApiSettings, StoreSettings, from_env
from k8scost.stores.accounts import KUBERNETES_CNR, Account, AccountStore, Credentials
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.stores.expense_queries import ExpenseQueries
from k8scost.stores.mongo import connect
from k8scost.stores.organizations import EmailTaken, Organization, OrganizationStore
from k8scost.stores.rightsizing import RightsizingStore
from k8scost.stores.tasks import TaskStore
from serve_apps.restapi import errors, live, metrics, onboarding, params
from serve_apps.restapi import rightsizing as rightsizing_api
from serve_apps.restapi.auth import Caller, Tokens
from serve_apps.restapi.errors import ApiError, bad_request, not_found
from serve_apps.restapi.expenses import ExpenseService, check_clean_request

log = logging.getLogger("ray.serve")


@dataclasses.dataclass(frozen=True)
class RestApiConfig:
    """Everything the API reads from the environment, read once by whoever builds it."""

    api: RestApiSettings
    stores: StoreSettings
    cluster_secret: str
    metroculus_url: str

    @classmethod
    def from_env(cls) -> "RestApiConfig":
        return cls(
            from_env(RestApiSettings),
            from_env(StoreSettings),
            from_env(MetroculusSettings).cluster_secret,
            from_env(LedgerSettings).metroculus_url,
        )


class _Open:
    """The stores of one event loop."""

    def __init__(self, config: RestApiConfig, expenses: ExpenseStore, metroculus: MetroculusClient | None) -> None:
        db = connect(config.stores)
        self.accounts = AccountStore(db)
        self.organizations = OrganizationStore(db)
        self.tasks = TaskStore(db, config.api.task_timeout_seconds)
        self.rightsizing = RightsizingStore(db)
        # The live view is its only use, and passes RESTAPI_LIVE_TIMEOUT with each call.
        self.metroculus = metroculus or MetroculusClient(config.metroculus_url, config.cluster_secret)
        self.expenses = ExpenseService(self.accounts, ExpenseQueries(expenses))
        self.indexed = False


class Stores:
    """Opens the stores lazily, once per event loop (motor and httpx clients belong to one)."""

    def __init__(self, config: RestApiConfig, metroculus: MetroculusClient | None = None) -> None:
        self._config = config
        self._metroculus = metroculus
        self._expenses = ExpenseStore(config.stores)  # keeps a pool per loop by itself
        self._open: _Open | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._index_lock: asyncio.Lock | None = None

    async def get(self) -> _Open:
        loop = asyncio.get_running_loop()
        if self._open is None or self._loop is not loop:
            self._open = _Open(self._config, self._expenses, self._metroculus)
            self._loop, self._index_lock = loop, asyncio.Lock()
        opened = self._open
        if not opened.indexed:
            assert self._index_lock is not None
            async with self._index_lock:
                if not opened.indexed:
                    # Idempotent; the unique email index is what makes sign-up safe.
                    await opened.organizations.ensure_indexes()
                    await opened.accounts.ensure_indexes()
                    await opened.tasks.ensure_indexes()
                    opened.indexed = True
        return opened

    async def close(self) -> None:
        await self._expenses.close()
        if self._open is not None and self._metroculus is None:  # an injected client is its owner's
            await self._open.metroculus.aclose()


class JSONAnswer(JSONResponse):
    """JSON encoded by orjson: a 90-day breakdown of 1,000 namespaces (2.8 MB) takes the
    standard library 80 ms, as long as its ClickHouse query."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


# --- request bodies ------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)


class SignupBody(BaseModel):
    model_config = _STRICT
    organization_name: str = Field(min_length=1, max_length=256)
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=8, max_length=1024)
    display_name: str = Field(min_length=1, max_length=256)


class TokenBody(BaseModel):
    model_config = _STRICT
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class CloudAccountBody(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=256)
    type: str = Field(pattern=f"^{KUBERNETES_CNR}$", description="Only `kubernetes_cnr`.")


class RenameBody(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=256)


# --- answers -------------------------------------------------------------------------------


def _organization(organization: Organization) -> dict[str, Any]:
    return {"id": organization.id, "name": organization.name, "created_at": organization.created_at}


def _account(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "organization_id": account.organization_id,
        "name": account.name,
        "type": account.type,
        "created_at": account.created_at,
    }


def _credentials(credentials: Credentials) -> dict[str, str]:
    return {"account_id": credentials.account_id, "password": credentials.password}


def create_api(config: RestApiConfig, metroculus: MetroculusClient | None = None) -> FastAPI:
    """The app; ``metroculus`` replaces the client of the live view (tests make it fail)."""
    api = FastAPI(
        title="CloudTuner REST API",
        version="2",
        description="Organizations, users, Kubernetes cloud accounts and their costs. "
        "Authenticate with `Authorization: Bearer <token>` (POST /v2/signup or /v2/tokens), "
        f"or as a service with the `{SECRET_HEADER}` header.",
    )
    stores = Stores(config, metroculus)
    tokens = Tokens(config.api.jwt_secret, config.api.token_ttl_seconds, config.cluster_secret)
    api.state.stores = stores
    api.state.tokens = tokens
    errors.install(api)
    _install_metrics(api)
    background: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones

    def authenticate(request: Request) -> None:
        """Every route but sign-up and sign-in: a dependency, so 401 comes before any body check."""
        request.state.caller = tokens.caller(request.headers.get("Authorization"), request.headers.get(SECRET_HEADER))

    def caller(request: Request) -> Caller:
        return request.state.caller  # type: ignore[no-any-return]

    public = APIRouter(prefix="/v2")
    router = APIRouter(prefix="/v2", dependencies=[Depends(authenticate)])

    async def organization_of(request: Request, organization_id: str) -> tuple[Caller, _Open]:
        """The caller and stores, once ``organization_id`` is one the caller may see (else 404)."""
        who = caller(request)
        opened = await stores.get()
        if not who.may_see(organization_id):
            raise not_found("organization", organization_id)
        if who.is_service and await opened.organizations.get_organization(organization_id) is None:
            raise not_found("organization", organization_id)
        return who, opened

    async def account_of(request: Request, account_id: str) -> tuple[Account, _Open]:
        who = caller(request)
        opened = await stores.get()
        account = await opened.accounts.get(account_id)
        if account is None or not who.may_see(account.organization_id):
            raise not_found("cloud account", account_id)
        return account, opened

    def token_answer(user_id: str, organization_id: str) -> dict[str, Any]:
        token = tokens.issue(user_id, organization_id)
        return {
            "token": token.token,
            "expires_at": token.expires_at,
            "user_id": user_id,
            "organization_id": organization_id,
        }

    # --- users and tokens --------------------------------------------------------------

    @public.post("/signup", status_code=201, summary="Create an organization and its first user; returns a token")
    async def signup(body: SignupBody) -> dict[str, Any]:
        opened = await stores.get()
        try:
            organization, user = await opened.organizations.signup(
                body.organization_name, body.email, body.password, body.display_name
            )
        except EmailTaken:
            raise ApiError(409, "email: a user with this email exists already") from None
        return token_answer(user.id, organization.id)

    @public.post("/tokens", status_code=201, summary="Sign in: a bearer token for email and password")
    async def sign_in(body: TokenBody) -> dict[str, Any]:
        opened = await stores.get()
        user = await opened.organizations.authenticate(body.email, body.password)
        if user is None:
            raise ApiError(401, "wrong email or password")
        return token_answer(user.id, user.organization_id)

    # --- organizations -----------------------------------------------------------------

    @router.get("/organizations", summary="The caller's organization (every one, for a service)")
    async def list_organizations(request: Request) -> dict[str, Any]:
        who = caller(request)
        opened = await stores.get()
        if who.is_service:
            found = await opened.organizations.list_organizations()
        else:
            assert who.organization_id is not None
            organization = await opened.organizations.get_organization(who.organization_id)
            found = [organization] if organization else []
        return {"organizations": [_organization(o) for o in found]}

    @router.get("/organizations/{organization_id}", summary="One organization")
    async def get_organization(request: Request, organization_id: str) -> dict[str, Any]:
        _, opened = await organization_of(request, organization_id)
        organization = await opened.organizations.get_organization(organization_id)
        if organization is None:
            raise not_found("organization", organization_id)
        return _organization(organization)

    # --- cloud accounts ----------------------------------------------------------------

    @router.post(
        "/organizations/{organization_id}/cloud_accounts",
        status_code=201,
        summary="Create a Kubernetes cloud account: its credentials (shown once) and configuration",
    )
    async def create_account(request: Request, organization_id: str, body: CloudAccountBody) -> dict[str, Any]:
        _, opened = await organization_of(request, organization_id)
        account, credentials = await opened.accounts.create(organization_id, body.name)
        return {
            **_account(account),
            "credentials": _credentials(credentials),
            "config": onboarding.configuration(account, config.api.public_write_url, credentials.password),
        }

    @router.get("/organizations/{organization_id}/cloud_accounts", summary="The organization's live cloud accounts")
    async def list_accounts(request: Request, organization_id: str) -> dict[str, Any]:
        _, opened = await organization_of(request, organization_id)
        return {"cloud_accounts": [_account(a) for a in await opened.accounts.list(organization_id)]}

    @router.get("/cloud_accounts/{cloud_account_id}", summary="One cloud account and its configuration (no password)")
    async def get_account(request: Request, cloud_account_id: str) -> dict[str, Any]:
        account, _ = await account_of(request, cloud_account_id)
        return {**_account(account), "config": onboarding.configuration(account, config.api.public_write_url)}

    @router.patch("/cloud_accounts/{cloud_account_id}", summary="Rename a cloud account")
    async def rename_account(request: Request, cloud_account_id: str, body: RenameBody) -> dict[str, Any]:
        account, opened = await account_of(request, cloud_account_id)
        renamed = await opened.accounts.rename(account.id, body.name)
        if renamed is None:  # deleted meanwhile
            raise not_found("cloud account", cloud_account_id)
        return _account(renamed)

    @router.post(
        "/cloud_accounts/{cloud_account_id}/credentials",
        status_code=201,
        summary="Rotate the remote-write password: the new one is shown once, the old one stops working",
    )
    async def rotate(request: Request, cloud_account_id: str) -> dict[str, Any]:
        account, opened = await account_of(request, cloud_account_id)
        credentials = await opened.accounts.rotate(account.id)
        if credentials is None:
            raise not_found("cloud account", cloud_account_id)
        return {
            "credentials": _credentials(credentials),
            "config": onboarding.configuration(account, config.api.public_write_url, credentials.password),
        }

    @router.delete(
        "/cloud_accounts/{cloud_account_id}",
        status_code=204,
        summary="Delete a cloud account: the ingress refuses its writes, the ledger keeps its history",
    )
    async def delete_account(request: Request, cloud_account_id: str) -> Response:
        account, opened = await account_of(request, cloud_account_id)
        if not await opened.accounts.delete(account.id):
            raise not_found("cloud account", cloud_account_id)
        return Response(status_code=204)

    # --- expenses ----------------------------------------------------------------------

    def expense_route(
        path: str,
        allowed: frozenset[str],
        summary: str,
        answer: Callable[[ExpenseService, str, params.ExpenseRequest], Awaitable[dict[str, Any]]],
    ) -> None:
        async def endpoint(request: Request, organization_id: str) -> JSONAnswer:
            _, opened = await organization_of(request, organization_id)
            asked = params.parse(request.query_params.multi_items(), allowed, config.api)
            # A response as is: FastAPI's encoder walks every value in Python first, which
            # costs more than the query for a 90-day breakdown of 1,000 namespaces.
            return JSONAnswer(await answer(opened.expenses, organization_id, asked))

        router.add_api_route(
            f"/organizations/{{organization_id}}/{path}",
            endpoint,
            methods=["GET"],
            summary=summary,
            openapi_extra=params.openapi_parameters(allowed),
            name=path,
        )

    expense_route(
        "clean_expenses",
        params.CLEAN_PARAMS,
        "Costliest resources of one type over a range, totals, and the accounts' cluster costs",
        ExpenseService.clean_expenses,
    )
    expense_route(
        "available_filters",
        params.FILTERS_PARAMS,
        "Values each filter may take over a range",
        ExpenseService.available_filters,
    )
    expense_route(
        "breakdown_expenses",
        params.BREAKDOWN_PARAMS,
        "Daily costs per value of breakdown_by, with this and the previous period's totals",
        ExpenseService.breakdown_expenses,
    )

    @router.post(
        "/organizations/{organization_id}/expenses_async",
        status_code=202,
        summary="Start computing clean_expenses (for long ranges); poll the task for its result",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "description": "The clean_expenses query parameters as fields; a list repeats a filter, "
                            'e.g. {"start_date": 1700000000, "end_date": 1702592000, "k8s_namespace": ["shop", "db"]}.',
                        }
                    }
                },
            }
        },
    )
    async def start_task(request: Request, organization_id: str) -> dict[str, Any]:
        _, opened = await organization_of(request, organization_id)
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("body: not JSON; send the clean_expenses parameters as a JSON object") from None
        items = params.items_from_body(body)
        asked = params.parse(items, params.CLEAN_PARAMS, config.api)
        check_clean_request(asked)
        # Refuse ids of other organizations now, not in a task nobody may read.
        await opened.expenses.scope_accounts(organization_id, asked.accounts)
        task_id = await opened.tasks.create(organization_id, body)
        task = asyncio.create_task(_run_task(opened, task_id, organization_id, asked))
        background.add(task)
        task.add_done_callback(background.discard)
        return {"task_id": task_id}

    @router.get("/organizations/{organization_id}/expenses_async/{task_id}", summary="A task's status and result")
    async def get_task(request: Request, organization_id: str, task_id: str) -> JSONAnswer:
        _, opened = await organization_of(request, organization_id)
        found = await opened.tasks.get(task_id, organization_id)
        if found is None:
            raise not_found("task", task_id)
        return JSONAnswer(found)

    # --- live view (Metroculus k8s_live) ---------------------------------------------

    @router.get(
        "/organizations/{organization_id}/k8s_live",
        summary="An account's live series (usage vs requests, cost rates) from an allow-listed query",
        openapi_extra=live.OPENAPI,
    )
    async def k8s_live(request: Request, organization_id: str) -> JSONAnswer:
        _, opened = await organization_of(request, organization_id)
        values = live.parse(request.query_params.multi_items())
        await opened.expenses.scope_accounts(organization_id, [values["cloud_account_id"]])  # 404 if not ours
        return JSONAnswer(await live.live(opened.metroculus, values, config.api.live_timeout))

    # --- rightsizing (the rightsizing job's recommendations) ---------------------------

    @router.get(
        "/organizations/{organization_id}/k8s_rightsizing",
        summary="Recommended container requests, their efficiency and monthly savings, the largest savings first",
        openapi_extra=rightsizing_api.OPENAPI,
    )
    async def k8s_rightsizing(request: Request, organization_id: str) -> JSONAnswer:
        _, opened = await organization_of(request, organization_id)
        asked = rightsizing_api.parse(request.query_params.multi_items())
        accounts = await opened.expenses.scope_accounts(organization_id, asked.accounts)  # 404 if not ours
        return JSONAnswer(await rightsizing_api.answer(opened.rightsizing, accounts, asked))

    api.include_router(public)
    api.include_router(router)
    return api


async def _run_task(opened: _Open, task_id: str, organization_id: str, asked: params.ExpenseRequest) -> None:
    try:
        result = await opened.expenses.clean_expenses(organization_id, asked)
    except Exception as exc:  # noqa: BLE001  (recorded in the task for its reader)
        log.warning("expenses task %s failed: %r", task_id, exc)
        message = exc.message if isinstance(exc, ApiError | BadParameter) else "the expenses could not be computed; submit it again"
        try:
            await opened.tasks.fail(task_id, message)
        except Exception:  # noqa: BLE001  (the reader's timeout reports it failed)
            log.warning("expenses task %s: failure not recorded", task_id)
        return
    try:
        await opened.tasks.finish(task_id, result)
    except Exception as exc:  # noqa: BLE001
        log.warning("expenses task %s: result not stored: %r", task_id, exc)


def _install_metrics(api: FastAPI) -> None:
    @api.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # The route template, not the path: ids must not become metric tags.
        route = getattr(request.scope.get("route"), "path", "unknown")
        metrics.REQUESTS.inc(tags={"route": route, "method": request.method, "code": str(response.status_code)})
        metrics.REQUEST_SECONDS.observe(time.perf_counter() - started, tags={"route": route})
        if response.status_code == 503:
            metrics.STORE_ERRORS.inc(tags={"route": route})
        return response
