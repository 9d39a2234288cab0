"""The design's routes (the seed document's Tests 7 and 8 and NGUI's call), beside OptScale's.

A front end written against the design calls ``/v2/available_filters``,
``/v2/clean_expenses`` and ``POST /v2/expenses_async`` with the organization in the query
(``?organization_id=``; a user's token's own when left out). Each is its OptScale-shaped
twin of ``serve_apps.restapi.routes.expenses`` — the same service, parser, checks and
scoping (``dependencies.organization_in_query`` checks the query's organization as the
path's is checked: 404 for one the caller may not see) — answered in the design's shape:

- ``available_filters``: each filter's values at the top level (``.k8s_namespace``), and
  start_date/end_date may be left out: the longest range allowed, ending now;
- ``clean_expenses``: an entry per resource and day, dated (``date``, ``cost``,
  ``k8s_namespace``, …), and each ``k8s_cost_breakdown`` entry's cost also as ``cost``;
- ``expenses_async``: the filters under ``filter``; its task computes the design's
  ``clean_expenses`` and is read at ``GET /v2/expenses_async/{task_id}``.
"""

# No `from __future__ import annotations`: routes (see serve_apps/restapi/api.py).
from typing import Any

from fastapi import APIRouter, Request

from serve_apps.restapi import params
from serve_apps.restapi.dependencies import OrganizationQueryDep, SettingsDep, StoresDep
from serve_apps.restapi.expenses import ExpenseService
from serve_apps.responses import JSONAnswer
from serve_apps.restapi.routes.expenses import expense_route, json_body, json_object_body, queue_task, task_answer

router = APIRouter()


async def available_filters(service: ExpenseService, organization_id: str, asked: params.ExpenseRequest) -> dict[str, Any]:
    """The twin's ``filter_values``, at the top level."""
    return (await service.available_filters(organization_id, asked))["filter_values"]  # type: ignore[no-any-return]


async def clean_expenses(service: ExpenseService, organization_id: str, asked: params.ExpenseRequest) -> dict[str, Any]:
    """The twin's answer with an entry per resource-day, and the breakdown's cost as ``cost`` too."""
    answer = await service.clean_expenses(organization_id, asked, per_day=True)
    for entry in answer["k8s_costs"]["k8s_cost_breakdown"]:
        entry["cost"] = entry["total_cost"]
    return answer


expense_route(
    router,
    "/available_filters",
    params.FILTERS_PARAMS,
    "The design's available_filters: values each filter may take (default range: the longest allowed, to now)",
    available_filters,
    OrganizationQueryDep,
    default_range=True,
)
expense_route(
    router,
    "/clean_expenses",
    params.CLEAN_PARAMS,
    "The design's clean_expenses: costs per resource and day (date, cost, k8s_namespace), totals, cluster costs",
    clean_expenses,
    OrganizationQueryDep,
)


@router.post(
    "/expenses_async",
    status_code=202,
    summary="The design's (NGUI's) expenses_async: the filters under `filter`; poll GET /v2/expenses_async/{task_id}",
    openapi_extra=json_object_body(
        "start_date, end_date (and limit, share_tenancy_costs) as fields, the filters "
        'in `filter`, each a value or a list: e.g. {"start_date": 1730419200, "end_date": 1730505600, '
        '"filter": {"k8s_namespace": "default"}}.'
    ),
)
async def start_task(
    request: Request, organization_id: OrganizationQueryDep, opened: StoresDep, settings: SettingsDep
) -> dict[str, Any]:
    body = await json_body(request)
    asked = params.parse(params.items_from_design_body(body), params.CLEAN_PARAMS, settings)
    return await queue_task(opened, organization_id, body, asked, lambda: clean_expenses(opened.expenses, organization_id, asked))


@router.get("/expenses_async/{task_id}", summary="A task of the design's expenses_async: status and result")
async def get_task(organization_id: OrganizationQueryDep, task_id: str, opened: StoresDep) -> JSONAnswer:
    return await task_answer(opened, organization_id, task_id)
