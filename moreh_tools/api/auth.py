"""Who is calling: token authentication, the access rules, and hiding other users' token values.

Access levels (moreh_tools/api/docs/API.md, "Authentication and authorisation"):

* ADMIN: everything.
* DEVELOPER: reads the cluster-wide catalogue (backends, groups, models, signal, queue) like an ADMIN, but changes
  only what belongs to its own token, and sees other tokens' values redacted, as a USER does.
* USER: reads and changes only what belongs to its own token (its SDAs, jobs, usage, events); others' things answer
  601 "not found" so their existence does not leak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from moreh_tools.api.errors import NOT_FOUND, ApiError
from moreh_tools.services.caller import ADMIN, DEVELOPER, HOST, REDACTED_PREFIX, USER, Caller, redact

__all__ = [
    "ADMIN",
    "DEVELOPER",
    "HOST",
    "REDACTED_PREFIX",
    "USER",
    "ApiCaller",
    "Caller",
    "CallerDep",
    "authenticate",
    "presented_token",
    "redact",
    "require_admin",
    "require_reader",
    "require_self_or_admin",
]


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


def identify(request: Request, *, budgeted: bool = True, report: bool = False) -> Caller:
    """The caller of a request; UnknownTokenError for a missing or unknown token; 429 past the token's budget.

    Over the daemon's Unix socket, a process of the daemon's own user or root owns the state and needs no
    token. ``budgeted`` requests over TCP spend their token's budget (HOST tokens never do: a host reports
    every tick however many hosts share its token); ``report`` requests (a launcher's reports about its own
    job) spend a separate, generous budget instead. Budgets are checked before the token is looked up, so a
    client over its budget costs no state read. An unknown token spends the budget of the client's address
    (``X-Forwarded-For`` counts only from the proxies named in ``MOREH_API_TRUSTED_PROXIES``).
    """
    from moreh_tools.api.peer import UNIX_CLIENT
    from moreh_tools.api.tokens import limiter_of, lookup_access_level, report_limiter_of
    from state.errors import UnknownTokenError

    client = request.client
    unix = client is not None and client.host == UNIX_CLIENT
    uid = client.port if unix and client is not None and client.port >= 0 else None
    owner = uid is not None and uid in (0, request.app.state.owner_uid)
    token = presented_token(request)
    limiter = limiter_of(request.app)
    # Not checked before the lookup: clients share an address (every local user is 127.0.0.1), and one
    # guesser must not lock the others out; the lookup of an unknown token is one cached read.
    guesser = f"client:{client.host if client else 'unknown'}"
    if report and not unix and token is not None:
        report_limiter_of(request.app).hit(f"report:{token}")
    budgeted = budgeted and not unix and token is not None
    if budgeted:
        limiter.check(f"token:{token}")
    level = lookup_access_level(request.app, token) if token is not None else None
    if level is None and not owner:
        if not unix:
            limiter.hit(guesser)  # guessing spends the client's budget
        if token is None:
            raise UnknownTokenError(
                "Invalid token: send 'Authorization: Bearer <token>' (or the query parameter apikey=<token>)."
            )
        raise UnknownTokenError("Invalid token: the token is not known to this SDA Manager.")
    if budgeted and level != HOST:
        limiter.hit(f"token:{token}")
    return Caller(token, level, owner=owner, uid=uid, via="socket" if unix else "http")


@dataclass(frozen=True)
class ApiCaller(Caller):
    """A caller of the REST API's documented endpoints: one with a token (they act on "the caller's" things)."""

    token: str


def authenticate(request: Request) -> ApiCaller:
    """FastAPI dependency: the caller, or 601 (HTTP 401) for a missing or unknown token; counts the rate limit."""
    from state.errors import UnknownTokenError

    caller = identify(request)
    if caller.token is None:
        raise UnknownTokenError(
            "Invalid token: send 'Authorization: Bearer <token>' (or the query parameter apikey=<token>)."
        )
    return ApiCaller(caller.token, caller.level, owner=caller.owner, uid=caller.uid, via=caller.via)


# An endpoint's authenticated caller: ``def endpoint(request: Request, caller: CallerDep)``.
CallerDep = Annotated[ApiCaller, Depends(authenticate)]


def require_admin(caller: Caller) -> None:
    """Refuse (601, HTTP 403) unless the caller is an ADMIN."""
    if not caller.is_admin:
        raise ApiError(NOT_FOUND, f"This operation needs an ADMIN token; yours is {caller.level}.", 403)


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
