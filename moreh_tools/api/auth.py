"""Who is calling: token authentication, the access rules, and hiding other users' token values.

Access levels (moreh_tools/api/docs/API.md, "Authentication and authorisation"):

* ADMIN: everything.
* DEVELOPER: reads the cluster-wide catalogue (backends, groups, models, signal, queue) like an ADMIN, but changes
  only what belongs to its own token, and sees other tokens' values redacted, as a USER does.
* USER: reads and changes only what belongs to its own token (its SDAs, jobs, usage, events); others' things answer
  601 "not found" so their existence does not leak.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from moreh_tools.api.errors import NOT_FOUND, ApiError

ADMIN, DEVELOPER, USER = "ADMIN", "DEVELOPER", "USER"
REDACTED_PREFIX = "hidden-"


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: its token value and access level."""

    token: str
    access_level: str

    @property
    def is_admin(self) -> bool:
        """Whether the caller may do everything."""
        return self.access_level == ADMIN

    @property
    def reads_all(self) -> bool:
        """Whether the caller may read the cluster-wide catalogue (ADMIN and DEVELOPER)."""
        return self.access_level in (ADMIN, DEVELOPER)

    def owns(self, token: str | None) -> bool:
        """Whether ``token`` is the caller's own token."""
        return token is not None and token == self.token


def presented_token(request: Request) -> str | None:
    """The token the request presents: ``Authorization: Bearer <token>``, else the query parameter ``apikey``."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    apikey = request.query_params.get("apikey")
    return apikey or None


def authenticate(request: Request) -> Caller:
    """FastAPI dependency: the caller, or 601 (HTTP 401) for a missing or unknown token; counts the rate limit."""
    from moreh_tools.api.app import limiter_of, lookup_access_level

    token = presented_token(request)
    client = request.client.host if request.client else "unknown"
    limiter = limiter_of(request.app)
    if token is None:
        limiter.hit(f"client:{client}")
        raise ApiError(
            NOT_FOUND,
            "Invalid token: send 'Authorization: Bearer <token>' (or the query parameter apikey=<token>).",
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    level = lookup_access_level(request.app, token)
    if level is None:
        limiter.hit(f"client:{client}")  # guessing tokens spends the client's budget, not a token's
        raise ApiError(
            NOT_FOUND,
            "Invalid token: the token is not known to this SDA Manager.",
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.url.path not in UNLIMITED_PATHS:
        limiter.hit(f"token:{token}")
    return Caller(token, level)


# Reports of what already happened to the caller's own job: refusing one would leave the job RUNNING
# on the master with its devices held and nobody to retry, so they never spend the request budget.
UNLIMITED_PATHS = frozenset({"/api/remote/job/running", "/api/remote/job/finish"})


# An endpoint's authenticated caller: ``def endpoint(request: Request, caller: CallerDep)``.
CallerDep = Annotated[Caller, Depends(authenticate)]


def require_admin(caller: Caller) -> None:
    """Refuse (601, HTTP 403) unless the caller is an ADMIN."""
    if not caller.is_admin:
        raise ApiError(NOT_FOUND, f"This operation needs an ADMIN token; yours is {caller.access_level}.", 403)


def require_reader(caller: Caller) -> None:
    """Refuse (601, HTTP 403) unless the caller may read the cluster-wide catalogue (ADMIN or DEVELOPER)."""
    if not caller.reads_all:
        raise ApiError(
            NOT_FOUND, "This listing needs an ADMIN or DEVELOPER token; a USER token sees only its own.", 403
        )


def require_self_or_admin(caller: Caller, token: str | None) -> None:
    """Refuse another token's things with the same 601 a missing token gets, so their existence does not leak."""
    if caller.is_admin or caller.owns(token):
        return
    raise ApiError(NOT_FOUND, f"Token '{token}' not found.", 404)


def redact(token_value: str | None, caller: Caller) -> str | None:
    """``token_value`` for an ADMIN or its owner; otherwise a stable handle that does not reveal it.

    The handle (``hidden-`` + 8 hex digits of a SHA-256) lets a USER tell two other tokens' jobs apart in the queue.
    """
    if token_value is None or caller.is_admin or caller.owns(token_value):
        return token_value
    return REDACTED_PREFIX + hashlib.sha256(token_value.encode()).hexdigest()[:8]
