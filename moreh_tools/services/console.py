"""The admin console (``moreh_smclient``) as a use case: one line run against the state, its output captured.

The console's commands (:mod:`moreh_tools.smclient.commands`) are the admin's use cases; this runs one
line of them for an ADMIN caller (or the state's owner) and returns what it printed, so the line means
the same whether it ran in the admin's own process, in the local daemon, or on a remote master.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from moreh_tools.services.caller import require_admin
from moreh_tools.services.records import ConsoleResult

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext


def run_line(ctx: ServiceContext, *, line: str, json: bool = False) -> ConsoleResult:
    """Run one console line; ``action`` is ``exit`` or ``clear`` for those commands."""
    if not ctx.caller.owner:  # the state's owner may run its console whatever token its environment holds
        if ctx.caller.token is not None and ctx.caller.level is None:
            with ctx.read() as s:
                ctx.who(s)
        require_admin(ctx.caller, "The admin console")
    from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested
    from moreh_tools.smclient.main import run_line_here

    out, err = io.StringIO(), io.StringIO()
    action = None
    try:
        code = run_line_here(line, service=ctx, json_output=json, out=out, err=err)
    except ExitRequested:
        code, action = 0, "exit"
    except ClearRequested:
        code, action = 0, "clear"
    return ConsoleResult(out.getvalue(), err.getvalue(), code, action)
