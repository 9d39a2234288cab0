"""Organizations: ``GET /v2/organizations``, the caller's (every one, for a service), and
``GET /v2/organizations/{organization_id}`` (404 if not the caller's)."""

# No `from __future__ import annotations`: routes (see serve_apps/restapi/api.py).
from typing import Any

from fastapi import APIRouter

from k8scost.stores.organizations import Organization
from serve_apps.restapi.dependencies import CallerDep, OrganizationIdDep, StoresDep
from serve_apps.restapi.errors import not_found

router = APIRouter()


def _organization(organization: Organization) -> dict[str, Any]:
    return {"id": organization.id, "name": organization.name, "created_at": organization.created_at}


@router.get("/organizations", summary="The caller's organization (every one, for a service)")
async def list_organizations(who: CallerDep, opened: StoresDep) -> dict[str, Any]:
    if who.is_service:
        found = await opened.organizations.list_organizations()
    else:
        assert who.organization_id is not None
        organization = await opened.organizations.get_organization(who.organization_id)
        found = [organization] if organization else []
    return {"organizations": [_organization(o) for o in found]}


@router.get("/organizations/{organization_id}", summary="One organization")
async def get_organization(organization_id: OrganizationIdDep, opened: StoresDep) -> dict[str, Any]:
    organization = await opened.organizations.get_organization(organization_id)
    if organization is None:
        raise not_found("organization", organization_id)
    return _organization(organization)
