"""SDA and SDA model commands."""

from __future__ import annotations

from moreh_tools.grid import Column
from moreh_tools.smclient.args import UsageError, is_int, to_int
from moreh_tools.smclient.output import Message, Output, Table
from moreh_tools.smclient.registry import Context, command
from state.errors import InvalidValueError
from state.records import SDA, SDAModel, TimeLimits
from state.session import Session

SDA_COLUMNS = [
    Column("ID"),
    Column("Token"),
    Column("SDAModel"),
    Column("Reserved"),
    Column("Be_ID"),
    Column("Device_ID"),
]
MODEL_COLUMNS = [Column("ID", "right"), Column("Name"), Column("Devices", "right")]


def sda_record(sda: SDA) -> dict[str, object]:
    """An SDA as a JSON object."""
    return {
        "id": sda.id,
        "token": sda.token,
        "sdamodel": sda.model_id,
        "sdamodel_group": sda.model_group_id,
        "description": sda.description,
        "reserved": sda.reserved,
        "devices": [{"backend_id": d.backend_id, "host": d.backend_host, "index": d.index} for d in sda.devices],
    }


def sda_table(sdas: list[SDA]) -> Table:
    """The seed's ``get sda`` table; an SDA on several backends takes one line per backend."""
    rows: list[list[str]] = []
    for sda in sdas:
        by_backend: dict[int, list[int]] = {}
        for d in sda.devices:
            by_backend.setdefault(d.backend_id, []).append(d.index)
        lines = [(str(b), ",".join(map(str, idx))) for b, idx in by_backend.items()] or [("", "")]
        for n, (be, dev) in enumerate(lines):
            head = [str(sda.id), sda.token, str(sda.model_id), str(sda.reserved)] if n == 0 else ["", "", "", ""]
            rows.append([*head, be, dev])
    return Table(SDA_COLUMNS, rows, [sda_record(s) for s in sdas])


def model_table(models: list[SDAModel], limits: dict[int, TimeLimits] | None = None) -> Table:
    """The seed's ``show sdamodel`` table; with time limits set on some model, two more columns."""
    from moreh_tools.services.limits import limit_text

    shown = {m.id: limits[m.id] for m in models if limits and m.id in limits}
    if not shown:  # the seeds' table, byte for byte, until a limit is set
        return Table(
            MODEL_COLUMNS,
            [[str(m.id), m.name, str(m.devices)] for m in models],
            [{"id": m.id, "name": m.name, "devices": m.devices} for m in models],
        )
    none = TimeLimits()
    return Table(
        [*MODEL_COLUMNS, Column("Time Limit"), Column("Max Time Limit")],
        [
            [str(m.id), m.name, str(m.devices), limit_text(shown.get(m.id, none).default),
             limit_text(shown.get(m.id, none).maximum)]
            for m in models
        ],
        [
            {
                "id": m.id, "name": m.name, "devices": m.devices,
                "time_limit_default": shown.get(m.id, none).default, "time_limit_max": shown.get(m.id, none).maximum,
            }
            for m in models
        ],
    )


def _is_model(s: Session, value: str) -> bool:
    if not is_int(value):
        return False
    return s.models.exists(int(value))


def _create(ctx: Context, args: list[str], reserved: bool) -> int:
    with ctx.write() as s:
        if len(args) == 3 and not _is_model(s, args[2]) and _is_model(s, args[1]):
            token, model, description, group = args[0], args[1], args[2], None  # older seed order
        elif len(args) == 3 and not _is_model(s, args[2]):
            message = f"Neither '{args[1]}' nor '{args[2]}' is an SDA model id; list models with 'show sdamodel'."
            if not (is_int(args[1]) or is_int(args[2])):
                raise UsageError(message)  # no number where an SDA model id goes: bad usage, not a missing model
            raise InvalidValueError(message)
        else:
            token, description, model = args[0], args[1], args[2]
            group = args[3] if len(args) > 3 else None
        model_id = to_int(model, "SDA model id")
        group_id = to_int(group, "SDA model group id") if group is not None else None
        return s.sdas.create(token, description, model_id, group_id, reserved=reserved)


@command(
    "create sda",
    "Create new SDA or add SDA to registered Token",
    "create sda {token} {description} {SDAModel ID} {SDAModel Group ID : optional}",
)
def create_sda(ctx: Context, args: list[str]) -> Output:
    sda_id = _create(ctx, args, reserved=False)
    return Message("Create SDA success.", {"id": sda_id})


@command(
    "create resv_sda",
    "Create new reserving SDA or add reserving SDA to registered Token",
    "create resv_sda {token} {description} {SDAModel ID} {SDAModel Group ID : optional}",
)
def create_resv_sda(ctx: Context, args: list[str]) -> Output:
    sda_id = _create(ctx, args, reserved=True)
    return Message("Create SDA success.", {"id": sda_id, "reserved": True})


@command(
    "delete sda",
    "Delete all SDAs using requested Token or delete specified SDA using Token, SDA's ID",
    "delete sda {token} {SDA ID : optional}",
)
def delete_sda(ctx: Context, args: list[str]) -> Output:
    sda_id = to_int(args[1], "SDA ID") if len(args) > 1 else None
    with ctx.write() as s:
        count = s.sdas.delete(args[0], sda_id)
    return Message("Delete SDA success.", {"deleted": count})


@command("get sda", "Print enrolled SDAs using reqeusted Token", "get sda {token}")
def get_sda(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        return sda_table(s.sdas.of_token(args[0]))


@command("show sda", "Print list of SDAs")
def show_sda(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        return sda_table(s.sdas.all())


@command("show sda token", "Print list of SDAs sorted by token")
def show_sda_token(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        return sda_table(sorted(s.sdas.all(), key=lambda sda: (sda.token, sda.id)))


@command("show sda running", "Print list of running SDAs")
def show_sda_running(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        running: set[int] = set(s.sdas.running())
        return sda_table([sda for sda in s.sdas.all() if sda.id in running])


@command("update sda", "Update SDA", "update sda {token} {SDAModel ID} {SDAModel Group ID : optional}")
def update_sda(ctx: Context, args: list[str]) -> Output:
    model_id = to_int(args[1], "SDA model id")
    group_id = to_int(args[2], "SDA model group id") if len(args) > 2 else None
    with ctx.write() as s:
        sda_id = s.sdas.update_model(args[0], model_id, group_id)
    return Message("Update SDA success.", {"id": sda_id})


@command(
    "update sda id",
    "Update SDA ByID",
    "update sda id {token} {SDA ID} {SDAModel ID} {SDAModel Group ID : optional}",
)
def update_sda_id(ctx: Context, args: list[str]) -> Output:
    sda_id = to_int(args[1], "SDA ID")
    model_id = to_int(args[2], "SDA model id")
    group_id = to_int(args[3], "SDA model group id") if len(args) > 3 else None
    with ctx.write() as s:
        s.sdas.update_model(args[0], model_id, group_id, sda_id)
    return Message("Update SDA success.", {"id": sda_id})


@command("create sdamodel", "Create SDAModel", "create sdamodel {name} {devices}")
def create_sdamodel(ctx: Context, args: list[str]) -> Output:
    devices = to_int(args[1], "device count")
    with ctx.write() as s:
        model_id = s.models.create(args[0], devices)
    return Message(f"Create SDAModel Success (id : {model_id})", {"id": model_id})


@command("delete sdamodel", "Delete SDAModel", "delete sdamodel {SDAModel ID}")
def delete_sdamodel(ctx: Context, args: list[str]) -> Output:
    model_id = to_int(args[0], "SDA model id")
    with ctx.write() as s:
        s.models.delete(model_id)
    return Message("Delete SDAModel success.")


@command("show sdamodel", "Print list of SDAModels", "show sdamodel {token : optional}")
def show_sdamodel(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        limits = s.limits.models()
        if not args:
            return model_table(s.models.all(), limits)
        s.tokens.get(args[0])
        seen: dict[int, SDAModel] = {}
        for choice in s.model_groups.choices_for(args[0]):
            seen.setdefault(choice.model.id, choice.model)
        return model_table(list(seen.values()), limits)


@command(
    "update sdamodel timelimit",
    "Update SDAModel job time limits (default and max; null clears; e.g. 2h, 1-00:00:00)",
    "update sdamodel timelimit {sdamodel id} {default} {max : optional}",
)
def update_sdamodel_timelimit(ctx: Context, args: list[str]) -> Output:
    from moreh_tools.services.limits import set_model_limits

    model_id = to_int(args[0], "SDA model id")
    limits = set_model_limits(
        ctx.service, model_id=model_id, default=args[1], maximum=args[2] if len(args) > 2 else None
    )
    return Message(
        "Update SDAModel Time Limit success.",
        {"id": model_id, "time_limit_default": limits.default, "time_limit_max": limits.maximum},
    )
