"""Error answers: ``{"error": {"reason": ..., "message": ...}}`` with the HTTP status, the
shape Metroculus answers too (``k8scost.api_errors``), for every error, FastAPI's own included.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from k8scost.api_errors import error_body
from k8scost.query_params import BadParameter
from k8scost.stores import StoreUnavailable

log = logging.getLogger("ray.serve")


class ApiError(Exception):
    """Ends a request with this status and message (its reason is the status's), and ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(kind: str, value: str) -> ApiError:
    # The same answer whether the id is unknown or another organization's: ids of others
    # must not be discoverable by probing.
    return ApiError(404, f"{kind} {value[:128]!r} not found")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


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
        headers = {"WWW-Authenticate": "Bearer", **exc.headers} if exc.status == 401 else exc.headers
        return error_response(exc.status, exc.message, headers)

    @api.exception_handler(BadParameter)
    async def _bad_parameter(request: Request, exc: BadParameter) -> JSONResponse:
        return error_response(400, exc.message)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(exc))

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @api.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(503, f"{exc.store} unavailable, retry later", {"Retry-After": "5"})
