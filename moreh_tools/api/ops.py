"""``POST /api/v1/op/<name>``: every operation of the tools' port, over the daemon's socket and a master's API.

The body is a JSON object of the operation's arguments; the answer is ``{"result": ...}`` or, with a
4xx/5xx status, ``{"error": {"type": "<state error class>", "message": "<one line>"}}``. The caller is
the request's token (``Authorization: Bearer``); over the Unix socket a request from the daemon's own
user or root is the state's owner even without one (they may open the state file anyway). A client of
another protocol version is told so in one line. Long polls (``job_wait``) sleep on the job hub
without holding a thread.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from moreh_tools.api.auth import identify
from moreh_tools.api.views import service_context
from moreh_tools.port.ops import OPS, PROTOCOL, Op
from moreh_tools.services.context import ServiceContext
from state import errors

MAX_OP_BODY = 1 << 20
#: A long poll re-reads its job at least this often, in case a wake-up was missed.
RECHECK_S = 2.0
#: A launcher's reports about its own job never spend the token's request budget: refusing one would
#: strand the job (devices held, nobody retrying), and a waiting launcher asks again every ~25 s. They
#: spend a separate, generous budget of their own instead (``RateLimiter.for_reports``, ``MOREH_API_REPORT_RATE``), so a token
#: cannot flood the state's write lock through them; each is idempotent (a repeat changes nothing).
UNLIMITED_OPS = frozenset(
    {"job_wait", "job_started", "job_cleaning", "job_finish", "job_abandoned", "job_check_devices"}
)
_STATUS = {
    errors.BadRequestError: 400,
    errors.UnknownTokenError: 401,
    errors.PermissionDeniedError: 403,
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.InvalidValueError: 400,
    errors.StateBusyError: 503,
    errors.StateUnavailableError: 503,
}


def failure(exc: errors.StateError) -> JSONResponse:
    """The error answer for a state error: its class name and its one line."""
    from moreh_tools.api.errors import one_line

    status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
    headers = {"Retry-After": "1"} if status == 503 else None
    body = {"error": {"type": type(exc).__name__, "message": one_line(str(exc))}}
    return JSONResponse(body, status_code=status, headers=headers)


def _refuse(kind: type[errors.StateError], message: str) -> JSONResponse:
    return failure(kind(message))


_PARAMETERS: dict[str, tuple[dict[str, inspect.Parameter], dict[str, Any]]] = {}


def _parameters(op: Op[Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The service function's keyword-only parameters and their evaluated types (cached per op).

    Only these are evaluated: the first parameter's type (the context) is imported for type checking only.
    """
    found = _PARAMETERS.get(op.name)
    if found is None:
        function = op.function()
        accepted = {
            name: p for name, p in inspect.signature(function).parameters.items() if p.kind == p.KEYWORD_ONLY
        }
        scope = dict(function.__globals__)
        hints = {
            name: eval(p.annotation, scope) if isinstance(p.annotation, str) else p.annotation
            for name, p in accepted.items()
        }
        found = _PARAMETERS[op.name] = (accepted, hints)
    return found


def _arguments(op: Op[Any], body: Any) -> dict[str, Any]:
    """The op's keyword arguments decoded by the service function's type hints; BadRequestError otherwise."""
    from moreh_tools.port.codec import CodecError, decode

    if not isinstance(body, dict):
        raise errors.BadRequestError(f"The body of '{op.name}' must be a JSON object of its arguments.")
    accepted, hints = _parameters(op)
    unknown = sorted(set(body) - set(accepted))
    if unknown:
        raise errors.BadRequestError(f"'{op.name}' takes no argument {', '.join(unknown)}.")
    missing = [name for name, p in accepted.items() if p.default is p.empty and name not in body]
    if missing:
        raise errors.BadRequestError(f"'{op.name}' needs the argument(s) {', '.join(missing)}.")
    try:
        return {name: decode(hints.get(name, Any), value, name) for name, value in body.items()}
    except CodecError as exc:
        raise errors.BadRequestError(f"Argument of '{op.name}' malformed: {exc}.") from None


async def op_endpoint(request: Request) -> JSONResponse:
    """Run one op for the caller and answer its result as JSON."""
    from moreh_tools.api.errors import ApiError
    from moreh_tools.port.codec import encode

    name = request.path_params["name"]
    op = OPS.get(name)
    if op is None:
        return _refuse(errors.BadRequestError, f"No operation '{name[:60]}': this SDA Manager speaks protocol {PROTOCOL}.")
    spoken = request.headers.get("x-moreh-protocol", "")
    if spoken != str(PROTOCOL):
        from moreh_tools import __version__

        tool = request.headers.get("x-moreh-client", "this tool")[:60]
        return _refuse(
            errors.BadRequestError,
            f"{tool} speaks protocol {spoken or '?'} but this SDA Manager (moreh-tools {__version__}) speaks "
            f"{PROTOCOL}; use the same moreh-tools version on both sides.",
        )
    raw = await request.body()
    if len(raw) > MAX_OP_BODY:
        return _refuse(errors.BadRequestError, "The request body is over 1 MiB.")
    from moreh_tools.api.guards import MAX_JSON_DEPTH, json_too_deep

    if json_too_deep(raw):
        return _refuse(errors.BadRequestError, f"The request body nests deeper than {MAX_JSON_DEPTH} levels.")
    try:
        caller = identify(request, budgeted=name not in UNLIMITED_OPS, report=name in UNLIMITED_OPS)
        body = json.loads(raw) if raw.strip() else {}
        kwargs = _arguments(op, body)
        ctx = service_context(request, caller)
        if op.long_poll:
            result = await _long_poll(request, ctx, kwargs)
        else:
            result = await run_in_threadpool(op.function(), ctx, **kwargs)
    except errors.StateError as exc:
        return failure(exc)
    except ApiError as exc:  # the rate limiter's 429
        return JSONResponse(
            {"error": {"type": "StateBusyError", "message": exc.message}}, status_code=exc.status, headers=exc.headers
        )
    except (ValueError, RecursionError):  # a body that is not JSON, or nested beyond reason
        return _refuse(errors.BadRequestError, "The request body is not a JSON object.")
    return JSONResponse({"result": encode(result)})


async def _long_poll(request: Request, ctx: ServiceContext, kwargs: dict[str, Any]) -> Any:
    """``job_wait`` in the daemon: read, then sleep on the hub until the job changes or the time is up."""
    from moreh_tools.services import jobs
    from moreh_tools.services.records import JobUpdate

    job_id = int(kwargs["job_id"])
    timeout = min(max(float(kwargs.get("timeout", 20.0)), 0.0), float(os.environ.get("MOREH_API_MAX_WAIT", 30)))
    seen = str(kwargs.get("seen", "queued"))
    hub = request.app.state.hub

    def read() -> JobUpdate | None:
        with ctx.read() as s:
            return jobs.job_update(s, ctx.caller, job_id, seen)

    # Ownership first (read() refuses another token's job), then register, then read again: a change
    # between the two reads wakes the waiter, so none is lost.
    update = await run_in_threadpool(read)
    if update is not None:
        return update
    waiter = hub.register(job_id, ctx.caller.token)
    try:
        deadline = time.monotonic() + timeout
        while True:
            update = await run_in_threadpool(read)
            if update is not None:
                return update
            left = deadline - time.monotonic()
            if left <= 0 or await request.is_disconnected():
                return JobUpdate("queued" if seen == "queued" else "running")
            await waiter.wait(min(left, RECHECK_S))
    finally:
        hub.unregister(waiter)
