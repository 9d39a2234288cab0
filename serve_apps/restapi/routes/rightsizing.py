"""``GET /v2/organizations/{organization_id}/k8s_rightsizing``: the rightsizing job's
recommendations (``serve_apps.restapi.rightsizing`` checks the parameters and builds the answer)."""

# No `from __future__ import annotations`: routes (see serve_apps/restapi/api.py).
from fastapi import APIRouter, Request

from serve_apps.restapi import rightsizing
from serve_apps.restapi.dependencies import OrganizationIdDep, StoresDep
from serve_apps.responses import JSONAnswer

router = APIRouter()


@router.get(
    "/organizations/{organization_id}/k8s_rightsizing",
    summary="Recommended container requests, their efficiency and monthly savings, the largest savings first",
    openapi_extra=rightsizing.OPENAPI,
)
async def k8s_rightsizing(request: Request, organization_id: OrganizationIdDep, opened: StoresDep) -> JSONAnswer:
    asked = rightsizing.parse(request.query_params.multi_items())
    accounts = await opened.expenses.scope_accounts(organization_id, asked.accounts)  # 404 if not ours
    return JSONAnswer(await rightsizing.answer(opened.rightsizing, accounts, asked))
