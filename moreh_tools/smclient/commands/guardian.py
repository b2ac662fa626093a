"""GPU guardian commands: idle policies per token or SDA model, and what keeps devices out of use.

Not in the manual, so kept out of its ``help`` listing (which the seeds fix byte for byte); ``COMMAND ?`` still
prints each one's usage, and README.md lists them.
"""

from __future__ import annotations

from moreh_tools.grid import Column
from moreh_tools.services import guardian
from moreh_tools.smclient.commands.backends import flag_record
from moreh_tools.smclient.output import Message, Output, Table
from moreh_tools.smclient.registry import Context, command
from scheduler_core.guardian import duration_text
from state.records import IdlePolicyRow

IDLE_COLUMNS = [
    Column("Scope"),
    Column("Target"),
    Column("Util below"),
    Column("Memory below"),
    Column("Window"),
    Column("Grace"),
]
FLAG_COLUMNS = [
    Column("Backend", "right"),
    Column("Host"),
    Column("Device"),
    Column("Kind"),
    Column("Since"),
    Column("Cause"),
]
_WINDOW = "{window [seconds | 90s | 30m | 2h | 1d]}"
_GRACE = "{grace : optional}"


def policy_record(p: IdlePolicyRow) -> dict[str, object]:
    """An idle policy as a JSON object."""
    return {
        "scope": p.scope,
        "target": p.target,
        "util_percent": p.util_percent,
        "memory_mib": p.memory_mib,
        "window_s": p.window_s,
        "grace_s": p.grace_s,
        "updated_at": p.updated_at.isoformat(sep=" ", timespec="seconds"),
    }


def _set(ctx: Context, scope: str, args: list[str]) -> Output:
    policy = guardian.set_idle_policy(
        ctx.service,
        scope=scope,
        target=args[0],
        util=args[1],
        memory=args[2],
        window=args[3],
        grace=args[4] if len(args) > 4 else None,
    )
    return Message("Update Idle Policy success.", policy_record(policy))


@command(
    "update token idle",
    "Reclaim the devices of the token's jobs once idle for a window",
    f"update token idle {{token}} {{util %}} {{memory MiB}} {_WINDOW} {_GRACE}",
    hidden=True,
)
def update_token_idle(ctx: Context, args: list[str]) -> Output:
    return _set(ctx, "token", args)


@command(
    "update sdamodel idle",
    "Reclaim the devices of the SDA model's jobs once idle for a window",
    f"update sdamodel idle {{sdamodel id}} {{util %}} {{memory MiB}} {_WINDOW} {_GRACE}",
    hidden=True,
)
def update_sdamodel_idle(ctx: Context, args: list[str]) -> Output:
    return _set(ctx, "sdamodel", args)


@command("delete token idle", "Remove the token's idle policy", "delete token idle {token}", hidden=True)
def delete_token_idle(ctx: Context, args: list[str]) -> Output:
    guardian.clear_idle_policy(ctx.service, scope="token", target=args[0])
    return Message("Delete Idle Policy success.")


@command(
    "delete sdamodel idle", "Remove the SDA model's idle policy", "delete sdamodel idle {sdamodel id}", hidden=True
)
def delete_sdamodel_idle(ctx: Context, args: list[str]) -> Output:
    guardian.clear_idle_policy(ctx.service, scope="sdamodel", target=args[0])
    return Message("Delete Idle Policy success.")


@command("show idle", "Print the idle policies of tokens and SDA models", hidden=True)
def show_idle(ctx: Context, args: list[str]) -> Output:
    policies = guardian.idle_policies(ctx.service)
    rows = [
        [
            p.scope,
            p.target,
            f"{p.util_percent:g} %",
            f"{p.memory_mib:g} MiB",
            duration_text(p.window_s),
            duration_text(p.grace_s),
        ]
        for p in policies
    ]
    return Table(IDLE_COLUMNS, rows, [policy_record(p) for p in policies])


@command("show guardian", "Print the devices the GPU guardian keeps out of use, and why", hidden=True)
def show_guardian(ctx: Context, args: list[str]) -> Output:
    flags = guardian.device_flags(ctx.service)
    rows = [
        [
            str(f.backend_id),
            f.host,
            "all" if f.index is None else str(f.index),
            f.kind,
            f.since.strftime("%Y-%m-%d %H:%M:%S"),
            f.cause,
        ]
        for f in flags
    ]
    return Table(
        FLAG_COLUMNS,
        rows,
        [{"backend": f.backend_id, "host": f.host, "device": f.index, **flag_record(f)} for f in flags],
    )
