"""Check: the health of the API, its state database, the scheduler daemon and IPMI (``GET /api/check``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from moreh_tools.api import ipmi
from moreh_tools.api.auth import CallerDep
from moreh_tools.api.errors import IPMI, NOT_FOUND, SYNTAX, ApiError
from moreh_tools.api.params import param
from moreh_tools.api.routes.hardware import SIGNAL_PARAMS, find_backends
from state.errors import StateError

router = APIRouter(tags=["Check"])
CHECK_TYPES = ("api", "ipmi", "db", "grpc")


@router.get("/api/v1/ping", summary="Liveness: a constant answer, no token, no state read (extension)")
async def ping() -> dict[str, bool]:
    """``{"pong": true}`` for load balancers and probes; the benchmarks' ceiling of what the server can answer."""
    return {"pong": True}


@router.get("/api/check", summary="Health of the API, DB, scheduler (gRPC) or IPMI")
def check(request: Request, caller: CallerDep) -> str:
    """``"success"``, or the failing part's code: 601 db, 602 grpc (the scheduler daemon), 603 ipmi.

    ``node`` (a backend's IP, IPMI IP or name) limits the check to that node; it must be known (601).
    """
    kind = param(request, "type", str, required=False, default="api")
    node = param(request, "node", str, required=False)
    param_name = param(request, "param_name", str, required=False)
    if kind not in CHECK_TYPES:
        raise ApiError(SYNTAX, f"SyntaxError. Parameter 'type' must be one of {', '.join(CHECK_TYPES)}, got '{kind}'.")
    if param_name is not None and param_name not in SIGNAL_PARAMS:
        raise ApiError(
            SYNTAX,
            f"SyntaxError. Parameter 'param_name' must be one of {', '.join(SIGNAL_PARAMS)}, got '{param_name}'.",
        )
    store = request.app.state.store
    try:
        with store.reading() as s:
            s.tokens.count()
            if node:
                find_backends(s, node)
    except StateError as exc:
        raise ApiError(NOT_FOUND, f"DB error: {exc}", 503) from None
    # kind "grpc" asks whether the daemon runs: it is the daemon that answers this request.
    if kind == "ipmi" and ipmi.tool() is None:
        raise ApiError(IPMI, "ipmitool is not installed on the SDA Manager host (install the ipmitool package).", 502)
    return "success"
