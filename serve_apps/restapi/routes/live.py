"""``GET /v2/organizations/{organization_id}/k8s_live``: Metroculus's live view for the browser
(``serve_apps.restapi.live`` says which failure answers what)."""

# No `from __future__ import annotations`: routes (see serve_apps/restapi/api.py).
from fastapi import APIRouter, Request

from serve_apps.restapi import live
from serve_apps.restapi.dependencies import OrganizationIdDep, SettingsDep, StoresDep
from serve_apps.responses import JSONAnswer

router = APIRouter()


@router.get(
    "/organizations/{organization_id}/k8s_live",
    summary="An account's live series (usage vs requests, cost rates) from an allow-listed query",
    openapi_extra=live.OPENAPI,
)
async def k8s_live(
    request: Request, organization_id: OrganizationIdDep, opened: StoresDep, settings: SettingsDep
) -> JSONAnswer:
    values = live.parse(request.query_params.multi_items())
    await opened.expenses.scope_accounts(organization_id, [values["cloud_account_id"]])  # 404 if not ours
    return JSONAnswer(await live.live(opened.metroculus, values, settings.live_timeout))
