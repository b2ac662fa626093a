"""``check state``: read the whole state file and say whether any of it is damaged (not in the manual's listing)."""

from __future__ import annotations

from moreh_tools.smclient.output import Message, Output
from moreh_tools.smclient.registry import Context, command
from state.errors import StateUnavailableError


@command(
    "check state",
    "Read every table of the state file and report damage",
    "check state",
    hidden=True,  # help prints the manual's listing exactly; the README documents this one
)
def check_state(ctx: Context, args: list[str]) -> Output:
    from state.integrity import check_state as check
    from state.integrity import summary

    results = check(ctx.service.db)
    line = summary(results)
    if any(r.problem for r in results):
        raise StateUnavailableError(
            f"The state in {ctx.service.home} is damaged: {line}. Restore a backup copy (state.duckdb.bak-*) or "
            "move the file away (a fresh one is created)."
        )
    return Message(
        f"State check: {line}.",
        {"tables": [{"table": r.table, "rows": r.rows} for r in results]},
    )
