"""Error answers: ``{"error": {"reason": ..., "message": ...}}`` with the HTTP status.

``reason`` is a stable machine word (``bad_request``, ``unauthorized``, ``not_found``,
``conflict``, ``unavailable``); ``message`` tells a person what to change, naming the
parameter at fault — the same contract as Metroculus's ``error`` text.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from k8scost.query_params import BadParameter
from k8scost.stores import StoreUnavailable

log = logging.getLogger("ray.serve")

_REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict"}


class ApiError(Exception):
    """Ends a request with this status and error body."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or _REASONS.get(status, "error")
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(kind: str, value: str) -> ApiError:
    # The same answer whether the id is unknown or another organization's: ids of others
    # must not be discoverable by probing.
    return ApiError(404, f"{kind} {value[:128]!r} not found")


def error_response(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"reason": reason, "message": message}}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line that names each parameter or field."""
    parts = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
        name = ".".join(location) or "body"
        parts.append(f"{name}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def install(api: FastAPI) -> None:
    """Answer every error in the one shape, including FastAPI's own."""

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.reason, exc.message, headers)

    @api.exception_handler(BadParameter)
    async def _bad_parameter(request: Request, exc: BadParameter) -> JSONResponse:
        return error_response(400, "bad_request", exc.message)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "bad_request", _validation_message(exc))

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, _REASONS.get(exc.status_code, "error"), str(exc.detail))

    @api.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "unavailable", f"{exc.store} unavailable, retry later", {"Retry-After": "5"})
