"""Kubernetes cloud accounts: create (201, its credentials and configuration, shown once), list,
get, rename, rotate credentials (201, the new ones shown once), delete (204). A malformed body
is 400 naming the field; an organization or account the caller may not see is 404."""

# No `from __future__ import annotations`: request models and routes (see serve_apps/restapi/api.py).
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from k8scost.stores.accounts import KUBERNETES_CNR, Account, Credentials
from serve_apps.restapi import onboarding
from serve_apps.restapi.dependencies import CloudAccountDep, OrganizationIdDep, SettingsDep, StoresDep
from serve_apps.restapi.errors import not_found
from serve_apps.restapi.routes import STRICT

router = APIRouter()


class CloudAccountBody(BaseModel):
    model_config = STRICT
    name: str = Field(min_length=1, max_length=256)
    type: str = Field(pattern=f"^{KUBERNETES_CNR}$", description="Only `kubernetes_cnr`.")


class RenameBody(BaseModel):
    model_config = STRICT
    name: str = Field(min_length=1, max_length=256)


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


@router.post(
    "/organizations/{organization_id}/cloud_accounts",
    status_code=201,
    summary="Create a Kubernetes cloud account: its credentials (shown once) and configuration",
)
async def create_account(
    body: CloudAccountBody, organization_id: OrganizationIdDep, opened: StoresDep, settings: SettingsDep
) -> dict[str, Any]:
    account, credentials = await opened.accounts.create(organization_id, body.name)
    return {
        **_account(account),
        "credentials": _credentials(credentials),
        "config": onboarding.configuration(account, settings.public_write_url, credentials.password),
    }


@router.get("/organizations/{organization_id}/cloud_accounts", summary="The organization's live cloud accounts")
async def list_accounts(organization_id: OrganizationIdDep, opened: StoresDep) -> dict[str, Any]:
    return {"cloud_accounts": [_account(a) for a in await opened.accounts.list(organization_id)]}


@router.get("/cloud_accounts/{cloud_account_id}", summary="One cloud account and its configuration (no password)")
async def get_account(account: CloudAccountDep, settings: SettingsDep) -> dict[str, Any]:
    return {**_account(account), "config": onboarding.configuration(account, settings.public_write_url)}


@router.patch("/cloud_accounts/{cloud_account_id}", summary="Rename a cloud account")
async def rename_account(body: RenameBody, account: CloudAccountDep, opened: StoresDep) -> dict[str, Any]:
    renamed = await opened.accounts.rename(account.id, body.name)
    if renamed is None:  # deleted meanwhile
        raise not_found("cloud account", account.id)
    return _account(renamed)


@router.post(
    "/cloud_accounts/{cloud_account_id}/credentials",
    status_code=201,
    summary="Rotate the remote-write password: the new one is shown once, the old one stops working",
)
async def rotate(account: CloudAccountDep, opened: StoresDep, settings: SettingsDep) -> dict[str, Any]:
    credentials = await opened.accounts.rotate(account.id)
    if credentials is None:
        raise not_found("cloud account", account.id)
    return {
        "credentials": _credentials(credentials),
        "config": onboarding.configuration(account, settings.public_write_url, credentials.password),
    }


@router.delete(
    "/cloud_accounts/{cloud_account_id}",
    status_code=204,
    summary="Delete a cloud account: the ingress refuses its writes, the ledger keeps its history",
)
async def delete_account(account: CloudAccountDep, opened: StoresDep) -> Response:
    if not await opened.accounts.delete(account.id):
        raise not_found("cloud account", account.id)
    return Response(status_code=204)
