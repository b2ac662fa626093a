"""Extension beyond the 52 documented endpoints: the admin console over the API (``moreh_smclient`` remote mode).

``POST /api/smclient/command`` runs one console line through the very code the local console runs, on the
server's state, and returns what it printed. ADMIN only: the console is the administrator's tool.
"""

from __future__ import annotations

import io
from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import CallerDep, require_admin
from moreh_tools.api.params import param

router = APIRouter(tags=["Remote tools"])


@router.post("/api/smclient/command", summary="Run one moreh_smclient console line (extension; ADMIN)")
def smclient_command(request: Request, caller: CallerDep) -> dict[str, Any]:
    """``{"stdout", "stderr", "exitCode", "action"}``; ``action`` is ``exit`` or ``clear`` for those commands."""
    require_admin(caller)
    line = param(request, "line", str)
    as_json = param(request, "json", bool, required=False, default=False)
    from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested
    from moreh_tools.smclient.main import run_line_here

    out, err = io.StringIO(), io.StringIO()
    action = None
    try:
        code = run_line_here(line, json_output=as_json, out=out, err=err, store=request.app.state.store)
    except ExitRequested:
        code, action = 0, "exit"
    except ClearRequested:
        code, action = 0, "clear"
    return {"stdout": out.getvalue(), "stderr": err.getvalue(), "exitCode": code, "action": action}
