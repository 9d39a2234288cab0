"""Optimizations in OptScale's shape (``serve_apps.restapi.optimizations`` checks the parameters
and builds the answer), and a user's verdict on one item: dismiss, exclude, restore."""

# No `from __future__ import annotations`: request models and routes (see serve_apps/restapi/api.py).
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from serve_apps.restapi import optimizations
from serve_apps.restapi.dependencies import CallerDep, OrganizationIdDep, StoresDep
from serve_apps.restapi.errors import not_found
from serve_apps.responses import JSONAnswer
from serve_apps.restapi.routes import STRICT

router = APIRouter()


class ItemStatusBody(BaseModel):
    model_config = STRICT
    status: Literal["dismissed", "excluded", "active"] = Field(
        description="`dismissed` (the recommendation is not wanted), `excluded` (the resource is left out of "
        "the module) or `active` (restore it). Kept across the module's runs: an item keeps its id."
    )


@router.get(
    "/organizations/{organization_id}/optimizations",
    summary="Recommendations of every module (Kubernetes rightsizing, cluster rightsizing, spot, anomalies) "
    "and their monthly savings, in OptScale's shape",
    openapi_extra=optimizations.OPENAPI,
)
async def list_optimizations(request: Request, organization_id: OrganizationIdDep, opened: StoresDep) -> JSONAnswer:
    asked = optimizations.parse(request.query_params.multi_items())
    accounts = await opened.expenses.scope_accounts(organization_id, asked.accounts)  # 404 if not ours
    return JSONAnswer(await optimizations.answer(opened.optimizations, accounts, asked))


@router.patch(
    "/organizations/{organization_id}/optimizations/{item_id}",
    summary="Dismiss, exclude or restore one recommendation; the item with its new status",
)
async def mark_optimization(
    body: ItemStatusBody, item_id: str, organization_id: OrganizationIdDep, opened: StoresDep, who: CallerDep
) -> JSONAnswer:
    accounts = await opened.expenses.scope_accounts(organization_id, ())
    marked = await optimizations.set_status(opened.optimizations, accounts, item_id, body.status, who.user_id)
    if marked is None:
        raise not_found("optimization", item_id)
    return JSONAnswer(marked)
