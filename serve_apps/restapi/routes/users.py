"""Users and their bearer tokens: ``POST /v2/signup`` and ``POST /v2/tokens``, the only public routes.

201 with a token; 400 for a malformed body (naming the field), 409 for a taken email,
401 for a wrong email or password.
"""

# No `from __future__ import annotations`: request models and routes (see serve_apps/restapi/api.py).
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from k8scost.stores.organizations import EmailTaken
from serve_apps.restapi.auth import Tokens
from serve_apps.restapi.dependencies import StoresDep, TokensDep
from serve_apps.restapi.errors import ApiError
from serve_apps.restapi.routes import STRICT

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


def _token_answer(issuer: Tokens, user_id: str, organization_id: str) -> dict[str, Any]:
    token = issuer.issue(user_id, organization_id)
    return {
        "token": token.token,
        "expires_at": token.expires_at,
        "user_id": user_id,
        "organization_id": organization_id,
    }


@router.post("/signup", status_code=201, summary="Create an organization and its first user; returns a token")
async def signup(body: SignupBody, opened: StoresDep, issuer: TokensDep) -> dict[str, Any]:
    try:
        organization, user = await opened.organizations.signup(
            body.organization_name, body.email, body.password, body.display_name
        )
    except EmailTaken:
        raise ApiError(409, "email: a user with this email exists already") from None
    return _token_answer(issuer, user.id, organization.id)


@router.post("/tokens", status_code=201, summary="Sign in: a bearer token for email and password")
async def sign_in(body: TokenBody, opened: StoresDep, issuer: TokensDep) -> dict[str, Any]:
    user = await opened.organizations.authenticate(body.email, body.password)
    if user is None:
        raise ApiError(401, "wrong email or password")
    return _token_answer(issuer, user.id, user.organization_id)
