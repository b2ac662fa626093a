"""The reference's moreh-smi tables, drawn with :mod:`moreh_tools.grid`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from moreh_tools.grid import Column, render_grid
from moreh_tools.services.records import DeviceStatus, SmiStatus

if TYPE_CHECKING:
    from state.records import DeviceFlag

NONE = "-"

STATUS_COLUMNS = [
    Column("Device"),
    Column("Name"),
    Column("Model"),
    Column("Memory Usage"),
    Column("Total Memory"),
    Column("Utilization"),
]
PROCESS_COLUMNS = [
    Column("Device", "right"),
    Column("Job ID", "right"),
    Column("PID", "right"),
    Column("Process"),
    Column("Memory Usage"),
]
WAITING_COLUMNS = [
    Column("Device", "right"),
    Column("Job ID", "right"),
    Column("PID", "right"),
    Column("Process"),
    Column("Queue", "right"),
    Column("Waiting for"),
    Column("Reason"),
    Column("Est. Start"),
]
SHORT_COLUMNS = [Column("Device"), Column("Name"), Column("Model")]
TOKEN_COLUMNS = [Column("Device"), Column("Name"), Column("Token"), Column("Model")]
GPU_COLUMNS = [
    Column("Dev", "right"),
    Column("Location"),
    Column("Dev Temp", "center"),
    Column("Mem Temp", "center"),
    Column("Dev Util", "center"),
    Column("Mem Util", "center"),
    Column("Mem Usage", "center"),
]


def _mib(value: int | None) -> str:
    return NONE if value is None else f"{value} MiB"


def _percent(value: int | None, width: int = 0) -> str:
    return NONE if value is None else f"{value:{width}d} %"


def _celsius(value: int | None) -> str:
    return NONE if value is None else f"{value} C"


def device_cell(device_id: int, current: bool) -> str:
    """``* 0`` for the current device, ``  1`` for the others (the id starts in the same column)."""
    return f"{'*' if current else ' '} {device_id}"


def version_text(status: SmiStatus) -> str:
    """The header row's text; an unknown version is left empty, as the real tool does."""
    return f"Current Version: {status.current_version}  Latest Version: {status.latest_version}"


def status_table(status: SmiStatus) -> str:
    """The main table: a version row, then one row per device."""
    rows = [
        [
            device_cell(d.id, d.current),
            d.name,
            d.model,
            _mib(d.memory_used_mib),
            _mib(d.memory_total_mib),
            _percent(d.utilization, 3),
        ]
        for d in status.devices
    ]
    version = version_text(status)
    columns = list(STATUS_COLUMNS)
    lines = render_grid(columns, rows).split("\n")
    inner = len(lines[0]) - 2
    if len(version) + 4 > inner:  # widen the last column so the version row fits
        columns[-1] = Column("Utilization", min_width=len("Utilization") + len(version) + 4 - inner)
        lines = render_grid(columns, rows).split("\n")
        inner = len(lines[0]) - 2
    version_row = "|" + version.rjust(inner - 2) + "  |"
    return "\n".join([lines[0], version_row, lines[0], *lines[1:]])


def processes_table(status: SmiStatus) -> str:
    """The ``Processes:`` table: one row per process of a running job."""
    rows = [
        [str(p.device), str(p.job_id), NONE if p.pid is None else str(p.pid), p.name or NONE, _mib(p.memory_mib)]
        for p in status.processes
    ]
    return render_grid(PROCESS_COLUMNS, rows)


def waiting_table(status: SmiStatus) -> str:
    """Queued jobs: the launcher's pid, the place in the queue and what the job waits for."""
    rows = [
        [
            str(w.device),
            str(w.job_id),
            NONE if w.pid is None else str(w.pid),
            w.process or NONE,
            NONE if w.position is None else str(w.position),
            w.reason,
            w.reason_code or NONE,
            NONE if w.expected_start is None else w.expected_start.strftime("%Y-%m-%d %H:%M:%S"),
        ]
        for w in status.waiting
    ]
    return render_grid(WAITING_COLUMNS, rows)


def simulated_note() -> str:
    """The label every view carries when its figures come from simulated GPUs."""
    return "Note: the GPU figures come from simulated GPUs (MOREH_FAKE_GPUS or no NVIDIA GPU found)."


def _short(seconds: float) -> str:
    total = max(round(seconds), 0)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def flag_line(flag: DeviceFlag) -> str:
    """One GPU guardian flag: ``GPU h:3 is UNHEALTHY since 12:00:01: Xid 79: ...``."""
    since = flag.since.strftime("%Y-%m-%d %H:%M:%S")
    if flag.index is None:
        return f"  host {flag.host}: no GPU is handed out since {since}: {flag.cause}"
    if flag.kind == "unhealthy":
        return f"  GPU {flag.location} is UNHEALTHY since {since}: {flag.cause}"
    return f"  GPU {flag.location} is not handed out since {since}: {flag.cause}"


def guardian_lines(status: SmiStatus) -> list[str]:
    """What the GPU guardian has to say about the token: idle jobs with the time left, flagged GPUs and hosts."""
    lines: list[str] = []
    for idle in status.idle:
        lines.append(
            f"Idle: job {idle.job_id} on device {idle.device} has been idle for {_short(idle.idle_s)}; its devices are "
            f"reclaimed in {_short(idle.seconds_left)} unless it uses them."
        )
    if status.flags:
        lines += ["GPU guardian:", *(flag_line(f) for f in status.flags)]
    return lines


def status_text(status: SmiStatus) -> str:
    """``moreh-smi`` (and ``-i``): the main table, then processes and waiting jobs when there are any."""
    parts = [status_table(status)]
    if status.processes:
        parts += ["", "Processes:", processes_table(status)]
    if status.waiting:
        parts += ["", "Waiting jobs:", waiting_table(status)]
    guard = guardian_lines(status)
    if guard:
        parts += ["", *guard]
    if not status.devices:
        parts.append("This token has no device yet; add one with 'moreh-smi device --add'.")
    if status.simulated:
        parts.append(simulated_note())
    return "\n".join(parts)


def short_table(devices: Sequence[DeviceStatus]) -> str:
    """The Device | Name | Model table the device options print."""
    return render_grid(SHORT_COLUMNS, [[device_cell(d.id, d.current), d.name, d.model] for d in devices])


def token_table(status: SmiStatus) -> str:
    """``moreh-smi -t``: the token of each device."""
    rows = [[device_cell(d.id, d.current), d.name, status.token, d.model] for d in status.devices]
    return render_grid(TOKEN_COLUMNS, rows)


def gpu_table(device: DeviceStatus, flags: Sequence[DeviceFlag] = ()) -> str:
    """``moreh-smi -p``: the physical GPUs behind one device (and what the GPU guardian says of them, if anything)."""
    rows = [
        [
            str(number),
            gpu.location,
            _celsius(gpu.temp_gpu),
            _celsius(gpu.temp_mem),
            _percent(gpu.util_gpu),
            _percent(gpu.util_mem),
            _percent(gpu.memory_percent),
        ]
        for number, gpu in enumerate(device.gpus)
    ]
    text = render_grid(GPU_COLUMNS, rows)
    behind = {(gpu.backend_id, gpu.index) for gpu in device.gpus}
    hosts = {b for b, _ in behind}
    mine = [f for f in flags if (f.backend_id, f.index) in behind or (f.index is None and f.backend_id in hosts)]
    if mine:
        text += "\n" + "\n".join(["GPU guardian:", *(flag_line(f) for f in mine)])
    if not device.gpus:
        text += f"\nDevice {device.id} holds no GPU now: a device gets its GPUs while a job runs on it."
    elif device.simulated:
        text += "\n" + simulated_note()
    if device.containment:
        text += f"\nJob containment: {device.containment}"
    return text
