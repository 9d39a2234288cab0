"""Expenses from the ledger: ``clean_expenses``, ``available_filters``, ``breakdown_expenses``
(GET, query parameters checked by ``serve_apps.restapi.params``: 400 naming the one at
fault), and ``expenses_async``, clean_expenses computed in the background (202, then poll).
An account or task id of another organization is 404.
"""

# No `from __future__ import annotations`: routes (see serve_apps/restapi/api.py).
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request

from k8scost.query_params import BadParameter
from serve_apps.restapi import params
from serve_apps.restapi.dependencies import OrganizationIdDep, SettingsDep, StoresDep
from serve_apps.restapi.errors import ApiError, bad_request, not_found
from serve_apps.restapi.expenses import ExpenseService, check_clean_request
from serve_apps.responses import JSONAnswer
from serve_apps.restapi.state import OpenStores

log = logging.getLogger("ray.serve")

router = APIRouter()
# Strong references to the running tasks: the event loop keeps only weak ones.
_background: set[asyncio.Task[None]] = set()


def expense_route(
    on: APIRouter,
    path: str,
    allowed: frozenset[str],
    summary: str,
    answer: Callable[[ExpenseService, str, params.ExpenseRequest], Awaitable[dict[str, Any]]],
    organization: Any = OrganizationIdDep,
    default_range: bool = False,
) -> None:
    """A GET route on ``on`` answering ``answer`` for the checked query parameters ``allowed``.

    ``organization``: the dependency giving the organization (the path's, or the query's on
    the design's routes: ``organization_id`` is then read there, and accepted once by the
    parser). ``default_range``: start_date and end_date may be left out (``params.parse``).
    """
    in_query = frozenset({"organization_id"}) if organization is not OrganizationIdDep else frozenset()

    async def endpoint(
        request: Request, organization_id: organization, opened: StoresDep, settings: SettingsDep
    ) -> JSONAnswer:
        asked = params.parse(request.query_params.multi_items(), allowed, settings, in_query, default_range)
        # A response as is: FastAPI's encoder walks every value in Python first, which
        # costs more than the query for a 90-day breakdown of 1,000 namespaces.
        return JSONAnswer(await answer(opened.expenses, organization_id, asked))

    on.add_api_route(
        path,
        endpoint,
        methods=["GET"],
        summary=summary,
        openapi_extra=params.openapi_parameters(allowed, params.RANGE_PARAMS if default_range else ()),
        name=path,
    )


def _expense_route(path: str, allowed: frozenset[str], summary: str, answer: Any) -> None:
    expense_route(router, f"/organizations/{{organization_id}}/{path}", allowed, summary, answer)


_expense_route(
    "clean_expenses",
    params.CLEAN_PARAMS,
    "Costliest resources of one type over a range, totals, and the accounts' cluster costs",
    ExpenseService.clean_expenses,
)
_expense_route(
    "available_filters",
    params.FILTERS_PARAMS,
    "Values each filter may take over a range",
    ExpenseService.available_filters,
)
_expense_route(
    "breakdown_expenses",
    params.BREAKDOWN_PARAMS,
    "Daily costs per value of breakdown_by, with this and the previous period's totals",
    ExpenseService.breakdown_expenses,
)


def json_object_body(description: str) -> dict[str, Any]:
    """OpenAPI's entry for a route that reads a required JSON object body itself."""
    schema = {"type": "object", "description": description}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post(
    "/organizations/{organization_id}/expenses_async",
    status_code=202,
    summary="Start computing clean_expenses (for long ranges); poll the task for its result",
    openapi_extra=json_object_body(
        "The clean_expenses query parameters as fields; a list repeats a filter, "
        'e.g. {"start_date": 1700000000, "end_date": 1702592000, "k8s_namespace": ["shop", "db"]}.'
    ),
)
async def start_task(
    request: Request, organization_id: OrganizationIdDep, opened: StoresDep, settings: SettingsDep
) -> dict[str, Any]:
    body = await json_body(request)
    asked = params.parse(params.items_from_body(body), params.CLEAN_PARAMS, settings)
    return await queue_task(opened, organization_id, body, asked, lambda: opened.expenses.clean_expenses(organization_id, asked))


@router.get("/organizations/{organization_id}/expenses_async/{task_id}", summary="A task's status and result")
async def get_task(organization_id: OrganizationIdDep, task_id: str, opened: StoresDep) -> JSONAnswer:
    return await task_answer(opened, organization_id, task_id)


async def json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise bad_request("body: not JSON; send the clean_expenses parameters as a JSON object") from None


async def queue_task(
    opened: OpenStores,
    organization_id: str,
    body: Any,
    asked: params.ExpenseRequest,
    compute: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """A task computing ``compute()`` (a clean_expenses answer for ``asked``) in the
    background; its id. What the answer would refuse is refused first, without a task."""
    check_clean_request(asked)
    # Refuse ids of other organizations now, not in a task nobody may read.
    await opened.expenses.scope_accounts(organization_id, asked.accounts)
    task_id = await opened.tasks.create(organization_id, body)
    task = asyncio.create_task(_run_task(opened, task_id, compute))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return {"task_id": task_id}


async def task_answer(opened: OpenStores, organization_id: str, task_id: str) -> JSONAnswer:
    """A task's status and result; 404 for one unknown or of another organization."""
    found = await opened.tasks.get(task_id, organization_id)
    if found is None:
        raise not_found("task", task_id)
    return JSONAnswer(found)


async def _run_task(opened: OpenStores, task_id: str, compute: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    try:
        result = await compute()
    except Exception as exc:  # noqa: BLE001  (recorded in the task for its reader)
        log.warning("expenses task %s failed: %r", task_id, exc)
        message = "the expenses could not be computed; submit it again"
        if isinstance(exc, ApiError | BadParameter):  # the request's fault: say which
            message = exc.message
        try:
            await opened.tasks.fail(task_id, message)
        except Exception:  # noqa: BLE001  (the reader's timeout reports it failed)
            log.warning("expenses task %s: failure not recorded", task_id)
        return
    try:
        await opened.tasks.finish(task_id, result)
    except Exception as exc:  # noqa: BLE001
        log.warning("expenses task %s: result not stored: %r", task_id, exc)
