"""Who is calling: a user with a bearer token (JWT, HS256), or a SaaS service with the cluster secret.

A token carries the user, the organization and its session (``jti``): its signature and
expiry are checked here, without I/O; that its session is still open (not signed out, no
password change since) is checked by ``serve_apps.restapi.dependencies.caller`` against
``k8scost.stores.sessions``. A user sees only its organization; a service
(``Secret: <CLUSTER_SECRET>``, the header Metroculus takes too) may act on any organization.
"""

from __future__ import annotations

import dataclasses
import hmac

import jwt

from k8scost.metroculus_client import SECRET_HEADER
from serve_apps.restapi.errors import ApiError

_ALGORITHM = "HS256"
# Checked on decode, so a token minted for another service with the same key is refused.
_AUDIENCE = "cloudtuner-restapi"


@dataclasses.dataclass(frozen=True)
class Caller:
    """An authenticated caller; ``organization_id`` None means a service, allowed everywhere."""

    organization_id: str | None
    user_id: str | None = None
    session_id: str | None = None  # the token's session: what sign-out closes

    @property
    def is_service(self) -> bool:
        return self.organization_id is None

    def may_see(self, organization_id: str) -> bool:
        return self.organization_id is None or self.organization_id == organization_id


@dataclasses.dataclass(frozen=True)
class Token:
    token: str
    expires_at: int


class Tokens:
    """Issues and checks the bearer tokens of one deployment."""

    def __init__(self, key: str, ttl_seconds: int, cluster_secret: str) -> None:
        self._key = key
        self._ttl = ttl_seconds
        self._cluster_secret = cluster_secret.encode()

    def expiry(self, now: float) -> int:
        """When a token issued at ``now`` expires (Unix seconds)."""
        return int(now) + self._ttl

    def issue(self, user_id: str, organization_id: str, session_id: str, now: float) -> Token:
        """A token of the open session ``session_id``, expiring at ``expiry(now)``."""
        expires = self.expiry(now)
        claims = {
            "sub": user_id, "org": organization_id, "jti": session_id, "iat": int(now), "exp": expires, "aud": _AUDIENCE,
        }
        return Token(jwt.encode(claims, self._key, algorithm=_ALGORITHM), expires)

    def caller(self, authorization: str | None, secret: str | None) -> Caller:
        """The caller these headers prove, or 401; a user's session is yet to be checked open."""
        if secret is not None:
            # Starlette decodes headers as latin-1: back to the bytes the caller sent.
            if not hmac.compare_digest(secret.encode("latin-1"), self._cluster_secret):
                raise ApiError(401, f"wrong {SECRET_HEADER} header")
            return Caller(None)
        if not authorization:
            raise ApiError(401, "missing Authorization header; send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Authorization header must be 'Bearer <token>'")
        try:
            # algorithms pinned: a token may not choose its own (e.g. "none").
            claims = jwt.decode(
                token.strip(),
                self._key,
                algorithms=[_ALGORITHM],
                audience=_AUDIENCE,
                options={"require": ["exp", "sub", "org", "jti", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "token expired; sign in again (POST /v2/tokens)") from None
        except jwt.InvalidTokenError:
            raise ApiError(401, "invalid token") from None
        if not all(isinstance(claims[name], str) for name in ("org", "sub", "jti")):
            raise ApiError(401, "invalid token")
        return Caller(claims["org"], claims["sub"], claims["jti"])
