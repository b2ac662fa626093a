"""Token commands: create, delete, show, get, update, env values."""

from __future__ import annotations

from moreh_tools.grid import Column
from moreh_tools.smclient.args import to_int
from moreh_tools.smclient.output import Message, Output, Table
from moreh_tools.smclient.registry import Context, command
from state.records import Token

SHOW_COLUMNS = [
    Column("Token"),
    Column("Description"),
    Column("Cur SDA"),
    Column("Max SDA"),
    Column("Priority"),
    Column("Access Level"),
    Column("ENV value"),
]
GET_COLUMNS = [
    Column("Token"),
    Column("Description"),
    Column("Cur SDA"),
    Column("Max SDA"),
    Column("Duplicable"),
    Column("Priority"),
    Column("Access Level"),
    Column("Worker Execute Info"),
    Column("ENV value"),
]


def token_record(t: Token) -> dict[str, object]:
    """A token as a JSON object."""
    return {
        "token": t.value,
        "description": t.description,
        "current_sda": t.current_sda,
        "max_sda": t.max_sda,
        "duplicable": t.duplicable_text,
        "priority": t.priority,
        "access_level": t.access_level,
        "worker_execute_info": t.worker_execute_info,
        "env": dict(t.env),
    }


def _cur(t: Token) -> str:
    return "" if t.current_sda is None else str(t.current_sda)


def token_table(tokens: list[Token]) -> Table:
    """The seed's ``show token`` table."""
    rows = [
        [t.value, t.description, _cur(t), str(t.max_sda), str(t.priority), t.access_level, t.env_text] for t in tokens
    ]
    return Table(SHOW_COLUMNS, rows, lambda: [token_record(t) for t in tokens])


@command("create token", "Create new Token", "create token {description} {priority : optional}")
def create_token(ctx: Context, args: list[str]) -> Output:
    priority = to_int(args[1], "priority") if len(args) > 1 else 0
    with ctx.write() as s:
        value = s.tokens.create(args[0], priority)
    return Message(f"Create SDA Success (Token : {value})", {"token": value})


@command("delete token", "Delete Token", "delete token {token}")
def delete_token(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.tokens.delete(args[0])
    return Message("Delete Token success.")


LIMIT_COLUMNS = [Column("Time Limit"), Column("Max Time Limit")]


@command("get token", "Get Token information", "get token {token}")
def get_token(ctx: Context, args: list[str]) -> Output:
    from moreh_tools.services.limits import limit_text

    with ctx.read() as s:
        t = s.tokens.get(args[0])
        limits = s.limits.of_token(t.value)
    row = [
        t.value,
        t.description,
        _cur(t),
        str(t.max_sda),
        t.duplicable_text,
        str(t.priority),
        t.access_level,
        t.worker_execute_info,
        t.env_text,
    ]
    record = token_record(t)
    if not limits.is_set:  # the seeds' table, byte for byte, until a limit is set
        return Table(GET_COLUMNS, [row], [record])
    row += [limit_text(limits.default), limit_text(limits.maximum)]
    record.update(time_limit_default=limits.default, time_limit_max=limits.maximum)
    return Table(GET_COLUMNS + LIMIT_COLUMNS, [row], [record])


@command("show token", "Print list of Tokens")
def show_token(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        return token_table(s.tokens.all())


@command("show token running", "Print list of running Tokens")
def show_token_running(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        running: set[str] = set(s.tokens.running())
        return token_table([t for t in s.tokens.all() if t.value in running])


@command("update token desc", "Update Token", "update token desc {token} {description}")
def update_token_desc(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.tokens.update_description(args[0], args[1])
    return Message("Update Token success.")


@command("update token priority", "Update Token Priority", "update token priority {token} {priority}")
def update_token_priority(ctx: Context, args: list[str]) -> Output:
    priority = to_int(args[1], "priority")
    with ctx.write() as s:
        s.tokens.update_priority(args[0], priority)
    return Message("Update Token Priority success.")


@command(
    "update token access level",
    "Update Token access level",
    "update token access level {token} {access level [USER|ADMIN|DEVELOPER]}",
)
def update_token_access_level(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.tokens.update_access_level(args[0], args[1])
    return Message("Update Token Access Level success.")


@command("update token sda current", "Update Token sda default", "update token sda current {token} {current sda}")
def update_token_sda_current(ctx: Context, args: list[str]) -> Output:
    sda_id = to_int(args[1], "SDA ID")
    with ctx.write() as s:
        s.tokens.update_current_sda(args[0], sda_id)
    return Message("Update Token Current SDA success.")


@command("update token sda max", "Update Token sda max", "update token sda max {token} {max}")
def update_token_sda_max(ctx: Context, args: list[str]) -> Output:
    maximum = to_int(args[1], "max SDA")
    with ctx.write() as s:
        s.tokens.update_max_sda(args[0], maximum)
    return Message("Update Token Max SDA success.")


@command(
    "update token duplicable",
    "Update Token duplicable SDA count (1: off, 0: unlimited; needs max SDA 1)",
    "update token duplicable {token} {value}",
)
def update_token_duplicable(ctx: Context, args: list[str]) -> Output:
    count = to_int(args[1], "duplicable value")
    with ctx.write() as s:
        s.tokens.update_duplicable(args[0], count)
    return Message("Update Token Duplicable success.")


@command("add token env", "Add each token execution environment variable", "add token env {token} {name} {value}")
def add_token_env(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.tokens.add_env(args[0], args[1], args[2])
    return Message("Add Token Env success.")


@command("remove token env", "Remove each token execution environment variable", "remove token env {token} {name}")
def remove_token_env(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.tokens.remove_env(args[0], args[1])
    return Message("Remove Token Env success.")


@command(
    "update token timelimit",
    "Update Token job time limits (default and max; null clears; e.g. 2h, 1-00:00:00)",
    "update token timelimit {token} {default} {max : optional}",
)
def update_token_timelimit(ctx: Context, args: list[str]) -> Output:
    from moreh_tools.services.limits import set_token_limits

    limits = set_token_limits(ctx.service, token=args[0], default=args[1], maximum=args[2] if len(args) > 2 else None)
    return Message(
        "Update Token Time Limit success.",
        {"token": args[0], "time_limit_default": limits.default, "time_limit_max": limits.maximum},
    )
