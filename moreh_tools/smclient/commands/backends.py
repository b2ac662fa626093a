"""Backend, backend group and device commands."""

from __future__ import annotations

from collections.abc import Sequence

from moreh_tools.grid import Column
from moreh_tools.smclient.args import is_null, to_bool, to_int, to_int_list
from moreh_tools.smclient.output import Message, Output, Table
from moreh_tools.smclient.registry import Context, command
from state.records import BACKEND_STATUSES, DEVICE_STATUSES, Backend, BackendGroup, DeviceFlag

_STATUS_WIDTH = max(map(len, DEVICE_STATUSES))
_BACKEND_STATUS_WIDTH = max(map(len, BACKEND_STATUSES))
DEFAULT_GROUP_ID = 0


def backend_record(b: Backend, flags: Sequence[DeviceFlag] = ()) -> dict[str, object]:
    """A backend as a JSON object. The GPU guardian's ``flags`` add, only where there are any, a device's ``flags``
    and the backend's ``gpu_failure`` (NVML failing on the host: none of its devices is handed out)."""
    mine = [f for f in flags if f.backend_id == b.id]
    record: dict[str, object] = {
        "id": b.id,
        "name": b.host,
        "ip": b.ip,
        "group": {"id": b.group_id, "name": b.group_name},
        "status": b.status,
        "devices": [_device_record(d.index, d.status, mine) for d in b.devices],
    }
    failure = next((f.cause for f in mine if f.index is None), None)
    if failure is not None:
        record["gpu_failure"] = failure
    return record


def _device_record(index: int, status: str, flags: Sequence[DeviceFlag]) -> dict[str, object]:
    record: dict[str, object] = {"index": index, "status": status}
    mine = [flag_record(f) for f in flags if f.index == index]
    if mine:
        record["flags"] = mine
    return record


def flag_record(f: DeviceFlag) -> dict[str, object]:
    """One guardian flag as a JSON object."""
    return {
        "kind": f.kind,
        "cause": f.cause,
        "since": f.since.isoformat(sep=" ", timespec="seconds"),
        "pid": f.pid,
        "user": f.user,
        "memory_mib": f.memory_mib,
        "job": f.job_id,
        "device_job": f.device_job,
    }


def flag_note(f: DeviceFlag) -> str:
    """One line under a table about a flag: where, what it does to the device, since when, why."""
    since = f.since.strftime("%Y-%m-%d %H:%M:%S")
    if f.index is None:
        return f"  backend {f.backend_id} ({f.host}): no device is handed out since {since}: {f.cause}"
    if f.kind == "unhealthy":
        return (
            f"  backend {f.backend_id} device {f.index}: UNHEALTHY since {since}: {f.cause} "
            f"(clear with 'update device {f.backend_id} {f.index} IDLE')"
        )
    return f"  backend {f.backend_id} device {f.index}: not handed out since {since}: {f.cause}"


def flag_notes(flags: Sequence[DeviceFlag]) -> list[str]:
    """The lines the backend tables print under the grid when the GPU guardian keeps devices out of use."""
    return ["GPU guardian:", *(flag_note(f) for f in flags)] if flags else []


def backend_table(backends: list[Backend], flags: Sequence[DeviceFlag] = ()) -> Table:
    """The seed's ``show backend`` table: devices two per row as ``index | status`` pairs.

    The Group column stays blank for the default group, as in the seed, and names any other group. The GPU
    guardian's flags on the backends shown (``flags``) are listed under the grid, only when there are any.
    """
    shown = {b.id for b in backends}
    flags = [f for f in flags if f.backend_id in shown]
    index_width = max((len(str(d.index)) for b in backends for d in b.devices), default=1)

    def pair(device_index: int | None, status: str) -> str:
        idx = "" if device_index is None else str(device_index)
        return f"{idx:<{index_width}}  |  {status:<{_STATUS_WIDTH}}"

    blank = pair(None, "")
    rows: list[list[str]] = []
    for b in backends:
        group = "" if b.group_id == DEFAULT_GROUP_ID else b.group_name
        head = [str(b.id), b.host, b.ip, group, b.status]
        devices = list(b.devices)
        if not devices:
            rows.append([*head, blank, blank])
        for n in range(0, len(devices), 2):
            left = pair(devices[n].index, devices[n].status)
            right = pair(devices[n + 1].index, devices[n + 1].status) if n + 1 < len(devices) else blank
            rows.append([*(head if n == 0 else ["", "", "", "", ""]), left, right])
    columns = [
        Column("ID"),
        Column("Name"),
        Column("Ip"),
        Column("Group"),
        Column("Status", min_width=_BACKEND_STATUS_WIDTH),
        Column("Device"),
        Column("Device"),
    ]
    return Table(columns, rows, lambda: [backend_record(b, flags) for b in backends], notes=flag_notes(flags))


def backendgroup_table(groups: list[BackendGroup]) -> Table:
    """The seed's ``show backendgroup`` table."""
    return Table(
        [Column("ID", "right"), Column("Name"), Column("Childs")],
        [[str(g.id), g.name, ", ".join(host for _, host in g.backends)] for g in groups],
        [
            {"id": g.id, "name": g.name, "backends": [{"id": bid, "name": host} for bid, host in g.backends]}
            for g in groups
        ],
    )


# -- backends ------------------------------------------------------------------------------


@command("create backend", "Create Backend", "create backend {host name} {ip} {device count}")
def create_backend(ctx: Context, args: list[str]) -> Output:
    count = to_int(args[2], "device count")
    with ctx.write() as s:
        backend_id = s.backends.create(args[0], args[1], count)
    return Message(f"Create Backend Success (id : {backend_id})", {"id": backend_id})


@command("delete backend", "Delete Backend", "delete backend {backend id}")
def delete_backend(ctx: Context, args: list[str]) -> Output:
    backend_id = to_int(args[0], "backend id")
    with ctx.write() as s:
        s.backends.delete(backend_id)
    return Message("Delete Backend success.")


@command("show backend", "Print list of Backend")
def show_backend(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        return backend_table(s.backends.all("id"), s.guardian.flags())


@command("show backend group", "Print list of backend sorted by group and node name")
def show_backend_group(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        return backend_table(s.backends.all("group"), s.guardian.flags())


@command("show backend name", "Print list of backend sorted by node name")
def show_backend_name(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        return backend_table(s.backends.all("name"), s.guardian.flags())


@command("get backend beid", "print backend by beckend id", "get backend beid {backend id}")
def get_backend_beid(ctx: Context, args: list[str]) -> Output:
    backend_id = to_int(args[0], "backend id")
    with ctx.read() as s:
        return backend_table([s.backends.get(backend_id)], s.guardian.flags())


@command("get backend group", "print backend by beckend group", "get backend group {backend group}")
def get_backend_group(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        return backend_table(s.backends.by_group(args[0]), s.guardian.flags())


@command("get backend name", "print backend by beckend name", "get backend name {backend name}")
def get_backend_name(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        return backend_table(s.backends.by_name(args[0]), s.guardian.flags())


@command("update backend host", "Update Backend Host name", "update backend host {backend id} {host name}")
def update_backend_host(ctx: Context, args: list[str]) -> Output:
    backend_id = to_int(args[0], "backend id")
    with ctx.write() as s:
        s.backends.update_host(backend_id, args[1])
    return Message("Update Backend Host success.")


@command("update backend ip", "Update Backend Ip address", "update backend ip {backend id} {ip}")
def update_backend_ip(ctx: Context, args: list[str]) -> Output:
    backend_id = to_int(args[0], "backend id")
    with ctx.write() as s:
        s.backends.update_ip(backend_id, args[1])
    return Message("Update Backend Ip success.")


@command(
    "update backend status",
    "Update Backend Status",
    "update backend status {backend id} {status [SHUTDOWN|ACTIVE]}",
)
def update_backend_status(ctx: Context, args: list[str]) -> Output:
    backend_id = to_int(args[0], "backend id")
    with ctx.write() as s:
        s.backends.update_status(backend_id, args[1])
    return Message("Update Backend Status success.")


@command(
    "update backend group",
    "Update Backend Group",
    "update backend group {backend id} {backend group id [id | null] : optional}",
)
def update_backend_group(ctx: Context, args: list[str]) -> Output:
    backend_id = to_int(args[0], "backend id")
    group_id = None if len(args) < 2 or is_null(args[1]) else to_int(args[1], "backend group id")
    with ctx.write() as s:
        s.backends.update_group(backend_id, group_id)
    return Message("Update Backend Group success.")


# -- devices -------------------------------------------------------------------------------


@command("update device", "Update Device Status", "update device {backend id} {device index} {status}")
def update_device(ctx: Context, args: list[str]) -> Output:
    backend_id = to_int(args[0], "backend id")
    index = to_int(args[1], "device index")
    with ctx.write() as s:
        s.backends.update_device(backend_id, index, args[2])
    return Message("Update Device Status success.")


@command("update device all", "Update All Device Status", "update device all {backend id} {status}")
def update_device_all(ctx: Context, args: list[str]) -> Output:
    backend_id = to_int(args[0], "backend id")
    with ctx.write() as s:
        count = s.backends.update_device(backend_id, None, args[1])
    return Message("Update All Device Status success.", {"updated": count})


# -- backend groups ------------------------------------------------------------------------


@command(
    "create backendgroup",
    "Create BackendGroup",
    "create backendgroup {name} {backend list [backend id 1,backend id 2,backend id 3,...] : optional}",
)
def create_backendgroup(ctx: Context, args: list[str]) -> Output:
    backends = to_int_list(args[1], "backend id") if len(args) > 1 else []
    with ctx.write() as s:
        group_id = s.backend_groups.create(args[0], backends)
    return Message(f"Create Group Success (id : {group_id})", {"id": group_id})


@command(
    "delete backendgroup",
    "Delete BackendGroup",
    "delete backendgroup {backend group id} {force delete [true|false] : optional}",
)
def delete_backendgroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "backend group id")
    force = to_bool(args[1], "force delete flag") if len(args) > 1 else False
    with ctx.write() as s:
        s.backend_groups.delete(group_id, force)
    return Message("Delete BackendGroup success.")


@command(
    "update backendgroup name",
    "Update BackendGroup Name",
    "update backendgroup name {backend group id} {name}",
)
def update_backendgroup_name(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "backend group id")
    with ctx.write() as s:
        s.backend_groups.rename(group_id, args[1])
    return Message("Update BackendGroup Name success.")


@command(
    "update backendgroup list",
    "Update BackendGroup Backend List (remove all if null)",
    "update backendgroup list {backend group id} {backend list [backend id 1,backend id 2,... | null]}",
)
def update_backendgroup_list(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "backend group id")
    backends = to_int_list(args[1], "backend id")
    with ctx.write() as s:
        s.backend_groups.replace_members(group_id, backends)
    return Message("Update BackendGroup Backend list success.")


@command("add backendgroup", "Add Backend to Backend Group", "add backendgroup {backend group id} {backend id}")
def add_backendgroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "backend group id")
    backend_id = to_int(args[1], "backend id")
    with ctx.write() as s:
        s.backend_groups.add(group_id, backend_id)
    return Message("Add Backend to Backend Group success.")


@command(
    "remove backendgroup",
    "Remove Backend from Backend Group",
    "remove backendgroup {backend group id} {backend id}",
)
def remove_backendgroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "backend group id")
    backend_id = to_int(args[1], "backend id")
    with ctx.write() as s:
        s.backend_groups.remove(group_id, backend_id)
    return Message("Remove Backend from Backend Group success.")


@command("show backendgroup", "Show BackendGroup", "show backendgroup {backend group id : optional}")
def show_backendgroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "backend group id") if args else None
    with ctx.read() as s:
        return backendgroup_table(s.backend_groups.all(group_id))
