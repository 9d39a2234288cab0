"""The error answer of our HTTP APIs, Metroculus and the REST API: ``{"error": {"reason", "message"}}``.

``reason`` is a stable machine word a caller may branch on (``REASONS``, by HTTP status);
``message`` tells a person what to change, naming the parameter at fault.
"""

from __future__ import annotations

from typing import Any

REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    429: "too_many_requests",
    502: "bad_gateway",
    503: "unavailable",
}


def error_body(status: int, message: str) -> dict[str, dict[str, str]]:
    """The body of an answer of ``status``."""
    return {"error": {"reason": REASONS.get(status, "error"), "message": message}}


def error_message(body: Any) -> str | None:
    """The message of an error answer's body, None when ``body`` is not one (a proxy's page)."""
    try:
        return str(body["error"]["message"])
    except (KeyError, TypeError):
        return None
