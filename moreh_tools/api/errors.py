"""API errors: the Moreh status codes 600..604 and the bodies the Moreh API document shows.

Every error body is ``{"code": N, "details": "<one line>"}`` except 603 (ipmitool) and 604 (signal), whose
documented body is a bare JSON string. Every error response also carries ``X-Moreh-Code: N`` so a client can tell
the code apart without parsing the body. The HTTP status is a standard one (400, 401, 403, 404, 409, 429, 502, ...)
unless ``MOREH_API_LITERAL_STATUS=1`` asks for the document's literal form, where the HTTP status is the code.
"""

from __future__ import annotations

import os
from typing import Any

from state.errors import (
    BadRequestError,
    ConflictError,
    InvalidValueError,
    NotFoundError,
    PermissionDeniedError,
    StateBusyError,
    StateError,
    StateUnavailableError,
    UnknownTokenError,
)

SYNTAX, NOT_FOUND, BACKEND, IPMI, SIGNAL = 600, 601, 602, 603, 604
CODES = (SYNTAX, NOT_FOUND, BACKEND, IPMI, SIGNAL)
CODE_HEADER = "X-Moreh-Code"
_BARE_STRING_CODES = (IPMI, SIGNAL)


class ApiError(Exception):
    """An error to answer with: the Moreh ``code``, a one-line ``message`` and the HTTP ``status``."""

    def __init__(self, code: int, message: str, status: int = 400, *, headers: dict[str, str] | None = None) -> None:
        """Record the code, message, HTTP status and extra response headers (e.g. Retry-After)."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.headers = headers or {}


def from_state_error(exc: StateError) -> ApiError:
    """Map a state-layer error: not found → 601, anything else → 602, keeping its one-line message."""
    message = str(exc)
    if isinstance(exc, UnknownTokenError):
        return ApiError(NOT_FOUND, message, 401, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, PermissionDeniedError):
        return ApiError(NOT_FOUND, message, 403)
    if isinstance(exc, BadRequestError):
        return ApiError(SYNTAX, message, 400)
    if isinstance(exc, NotFoundError):
        return ApiError(NOT_FOUND, message, 404)
    if isinstance(exc, ConflictError):
        return ApiError(BACKEND, message, 409)
    if isinstance(exc, InvalidValueError):
        return ApiError(BACKEND, message, 400)
    if isinstance(exc, StateBusyError | StateUnavailableError):
        return ApiError(BACKEND, message, 503, headers={"Retry-After": "1"})
    return ApiError(BACKEND, message, 400)


def literal_status() -> bool:
    """Whether the HTTP status should be the Moreh code itself (``MOREH_API_LITERAL_STATUS=1``)."""
    return os.environ.get("MOREH_API_LITERAL_STATUS", "") not in ("", "0")


MAX_DETAILS = 500


def one_line(message: str) -> str:
    """``message`` as one printable line: control characters escaped (a value echoed back may hold them), and
    at most MAX_DETAILS characters."""
    if not message.isprintable():
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return message if len(message) <= MAX_DETAILS else message[: MAX_DETAILS - 3] + "..."


def error_body(code: int, message: str) -> Any:
    """The documented body for ``code``: a bare string for 603/604, ``{code, details}`` otherwise."""
    message = one_line(message)
    if code in _BARE_STRING_CODES:
        return message
    return {"code": code, "details": message}


def error_status(error: ApiError) -> int:
    """The HTTP status to send for ``error``."""
    if literal_status() and error.code in CODES:
        return error.code
    return error.status
