"""Job queue commands: the queue, priorities, release, history and device usage.

The tables follow the seeds (``show job``, ``get job feid``); history and usage have no printed
example in the seeds, so they reuse the same column names and time format.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from moreh_tools.grid import Column, name_value_grid
from moreh_tools.smclient.args import UsageError, to_count, to_int
from moreh_tools.smclient.commands.system import time_text
from moreh_tools.smclient.output import Message, Output, Table
from moreh_tools.smclient.registry import Context, command
from state.errors import NotFoundError
from state.records import DeviceRef, HistoryEntry, Job, TokenUsage

if TYPE_CHECKING:
    from moreh_tools.services.records import QueueInfo
    from state.session import Session

DEFAULT_HISTORY_COUNT = 100
_VERSION = re.compile(r"\d+(?:\.\d+)+\S*")

JOB_COLUMNS = [
    Column("FeID", "right"),
    Column("Token"),
    Column("PRY", "right"),
    Column("Status"),
    Column("PID", "right"),
    Column("Process Name"),
    Column("Start Time"),
]
HISTORY_COLUMNS = [
    Column("FeID", "right"),
    Column("Token"),
    Column("PRY", "right"),
    Column("Status"),
    Column("PID", "right"),
    Column("Process Name"),
    Column("Start Time"),
    Column("End Time"),
    Column("Exit Code", "right"),
]
HISTORY_DEVICE_COLUMNS = [
    Column("FeID", "right"),
    Column("Token"),
    Column("Status"),
    Column("Devices", "right"),
    Column("Backend"),
    Column("Device_ID"),
    Column("Start Time"),
    Column("End Time"),
]
USAGE_COLUMNS = [
    Column("Token"),
    Column("Description"),
    Column("Jobs", "right"),
    Column("Device Seconds", "right"),
]


@dataclass
class StackedTables(Table):
    """Several Name/Value grids printed one after another (``get job token`` with several jobs)."""

    grids: Sequence[Sequence[tuple[str, str]]] = ()

    def as_text(self) -> str:
        """Each grid, separated by a blank line."""
        return "\n\n".join(name_value_grid(pairs) for pairs in self.grids)


# -- formatting -----------------------------------------------------------------------------------


def _time(value: datetime | None) -> str:
    return "" if value is None else time_text(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _num(value: int | None) -> str:
    return "" if value is None else str(value)


def _shown_pid(job: Job) -> int | None:
    # Before the command starts, the process on the host is the launcher waiting for devices.
    return job.pid if job.pid is not None else job.launcher_pid


def _by_host(devices: Sequence[DeviceRef]) -> list[tuple[str, str]]:
    """``[(host, "0,1,2")]`` in backend order, the seeds' ``back01 | 0,1,...`` rows."""
    hosts: dict[tuple[int, str], list[int]] = {}
    for d in devices:
        hosts.setdefault((d.backend_id, d.backend_host), []).append(d.index)
    return [(host, ",".join(map(str, sorted(idx)))) for (_, host), idx in sorted(hosts.items())]


def _history_devices(entry: HistoryEntry) -> list[DeviceRef]:
    return list(entry.device_refs)


def _devices_json(devices: Sequence[DeviceRef]) -> list[dict[str, Any]]:
    return [{"backend_id": d.backend_id, "host": d.backend_host, "index": d.index} for d in devices]


def _version_of(client: str) -> str:
    found = _VERSION.findall(client)
    return found[-1] if found else client


def _token_name(s: Session, token: str) -> str:
    return s.tokens.description(token)


def _queued_job(s: Session, job_id: int, ended: str) -> Job:
    """Job ``job_id`` of the queue; NotFoundError saying ``ended`` when it is in the history instead."""
    job = s.jobs.find(job_id)
    if job is None:
        if s.jobs.history_entry(job_id) is not None:
            raise NotFoundError(ended)
        raise NotFoundError(f"Job {job_id} is not in the queue; list the queue with 'show job'.")
    return job


def _count_arg(args: list[str], index: int, what: str) -> int:
    if len(args) <= index:
        return DEFAULT_HISTORY_COUNT
    return to_count(args[index], what)


# -- the queue --------------------------------------------------------------------------------


def job_record(job: Job) -> dict[str, Any]:
    """A queued or running job as a JSON object."""
    return {
        "id": job.id,
        "token": job.token,
        "sda_id": job.sda_id,
        "priority": job.priority,
        "status": job.status,
        "host": job.host,
        "pid": job.pid,
        "launcher_pid": job.launcher_pid,
        "process_name": job.process_name,
        "client_version": job.client_version,
        "device_count": job.device_count,
        "request_time": _iso(job.request_time),
        "submit_time": _iso(job.submit_time),
        "start_time": _iso(job.start_time),
        "release_requested": job.release_requested,
        "devices": _devices_json(job.devices),
    }


def job_table(jobs: Sequence[Job]) -> Table:
    """The seed's ``show job`` table."""
    rows = [
        [
            str(j.id),
            j.token,
            str(j.priority),
            j.status,
            _num(_shown_pid(j)),
            j.process_name,
            _time(j.start_time),
        ]
        for j in jobs
    ]
    return Table(JOB_COLUMNS, rows, [job_record(j) for j in jobs])


def _job_pairs(s: Session, job: Job) -> list[tuple[str, str]]:
    group_id = s.jobs.backend_group_of_sda(job.sda_id)
    try:
        group = s.backend_groups.require(group_id)
    except NotFoundError:
        group = str(group_id)
    return [
        ("Frontend ID", str(job.id)),
        ("Token", job.token),
        ("Token name", _token_name(s, job.token)),
        ("SDA", str(job.sda_id)),
        ("Priority", str(job.priority)),
        ("Status", job.status),
        ("Client", job.client_version),
        ("Client PID", _num(_shown_pid(job))),
        ("Process name", job.process_name),
        ("Backend Group", group),
        ("Request time", _time(job.request_time)),
        ("Start time", _time(job.start_time)),
        ("Version", _version_of(job.client_version)),
        ("Device count", str(job.device_count)),
        *_by_host(job.devices),
    ]


def _job_detail(s: Session, jobs: Sequence[Job]) -> Table:
    grids = [_job_pairs(s, j) for j in jobs]
    records = [{**job_record(j), "token_name": _token_name(s, j.token)} for j in jobs]
    rows = [list(p) for pairs in grids for p in pairs]
    return StackedTables([Column("Name"), Column("Value")], rows, records, grids)


START_COLUMNS = [
    Column("FeID", "right"),
    Column("Token"),
    Column("PRY", "right"),
    Column("Queue", "right"),
    Column("Reason"),
    Column("Expected Start"),
    Column("Waiting for"),
]


def _in_scheduling_order(s: Session, jobs: list[Job]) -> tuple[list[Job], dict[int, QueueInfo]]:
    """Running jobs by id, then the queued ones in the order the scheduler serves them (with their queue info)."""
    from moreh_tools.services.scheduling import queue_info

    if not any(j.status == "QUEUED" for j in jobs):
        return jobs, {}
    info = queue_info(s)
    last = len(info) + 1
    queued = sorted(
        (j for j in jobs if j.status == "QUEUED"),
        key=lambda j: (info[j.id].position or last if j.id in info else last, j.id),
    )
    return [j for j in jobs if j.status != "QUEUED"] + queued, info


def start_table(jobs: Sequence[Job], info: dict[int, QueueInfo]) -> Table:
    """``show job --start``: the queued jobs in scheduling order, why each waits and when it should start."""
    rows = []
    records = []
    for j in jobs:
        found = info.get(j.id)
        position = found.position if found else None
        rows.append(
            [
                str(j.id),
                j.token,
                str(j.priority),
                _num(position),
                found.reason_code if found else "",
                found.expected_text if found else "",
                found.reason if found else "",
            ]
        )
        records.append(
            {
                **job_record(j),
                "position": position,
                "reason_code": found.reason_code if found else None,
                "reason": found.reason if found else None,
                "expected_start": found.expected_iso if found else None,
            }
        )
    return Table(START_COLUMNS, rows, records)


# The seeds fix this command's help entry; 'show job --start' is ours (README, "The scheduler").
@command("show job", "Print list of Job list", "show job {status of job : optional}")
def show_job(ctx: Context, args: list[str]) -> Output:
    """``show job [STATUS]``: running jobs by id, then queued ones in scheduling order; ``--start``: see :func:`start_table`."""
    with ctx.read() as s:
        if args and args[0] == "--start":
            ordered, info = _in_scheduling_order(s, s.jobs.all("QUEUED"))
            return start_table(ordered, info)
        ordered, _ = _in_scheduling_order(s, s.jobs.all(args[0] if args else None))
        return job_table(ordered)


@command("get job feid", "Get job info in job queue", "get job feid {frontend id}")
def get_job_feid(ctx: Context, args: list[str]) -> Output:
    job_id = to_int(args[0], "frontend id")
    with ctx.read() as s:
        job = _queued_job(s, job_id, f"Job {job_id} has ended; see it with 'get history feid {job_id}'.")
        return _job_detail(s, [job])


@command("get job token", "Get job info in job queue", "get job token {token}")
def get_job_token(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        jobs = s.jobs.of_token(args[0])
        if not jobs:
            raise NotFoundError(f"Token '{args[0]}' has no job in the queue; see 'get history token {args[0]}'.")
        return _job_detail(s, jobs)


@command("update job priority", "Update Job Priority", "update job priority {frontend id} {priority}")
def update_job_priority(ctx: Context, args: list[str]) -> Output:
    from moreh_tools.services import jobs

    job_id = to_int(args[0], "frontend id")
    priority = to_int(args[1], "priority")
    # A new order can let a job start now (a lowered head no longer holds its group up): the service runs a pass.
    jobs.set_priority(ctx.service, job_id=job_id, priority=priority)
    return Message("Update Job Priority success.", {"id": job_id, "priority": priority})


# -- release ------------------------------------------------------------------------------------


def _released(ids: list[int], all_jobs: bool = False) -> Message:
    head = "Release All Device success." if all_jobs else "Release Device success."
    if not ids:
        return Message(f"{head} (no job to release)", {"released": []})
    label = "job" if len(ids) == 1 else "jobs"
    return Message(f"{head} ({label} : {', '.join(map(str, ids))})", {"released": ids})


def _release(ctx: Context, jobs: list[Job]) -> list[int]:
    from moreh_tools.services import jobs as job_service

    if not jobs:
        return []
    return job_service.release(ctx.service, job_ids=[j.id for j in jobs], detail="released by an admin")


@command("release", "Release Device", "release {[token | fronend id]} {SDA ID : optional}")
def release(ctx: Context, args: list[str]) -> Output:
    target = args[0]
    sda_id = to_int(args[1], "SDA ID") if len(args) > 1 else None
    with ctx.read() as s:
        if target.isascii() and target.isdigit():  # a frontend id; anything else names a token
            if sda_id is not None:
                raise UsageError(
                    f"An SDA ID selects among a token's jobs; with a frontend id leave it out: 'release {target}'."
                )
            job_id = to_int(target, "frontend id")
            jobs = [_queued_job(s, job_id, f"Job {job_id} has already ended; see 'get history feid {job_id}'.")]
        else:
            jobs = s.jobs.of_token(target)
            if sda_id is not None:
                sda = s.sdas.get(sda_id)
                if sda.token != target:
                    raise NotFoundError(f"SDA {sda_id} does not belong to token '{target}'; see 'get sda {target}'.")
                jobs = [j for j in jobs if j.sda_id == sda_id]
            if not jobs:
                where = f"SDA {sda_id} of token '{target}'" if sda_id is not None else f"Token '{target}'"
                raise NotFoundError(f"{where} has no job in the queue; nothing to release (see 'show job').")
    return _released(_release(ctx, jobs))


@command("release all", "Release All Device")
def release_all(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        jobs = s.jobs.all()
    return _released(_release(ctx, jobs), all_jobs=True)


# -- history ------------------------------------------------------------------------------------


def history_record(entry: HistoryEntry) -> dict[str, Any]:
    """An ended job as a JSON object."""
    return {
        "id": entry.id,
        "token": entry.token,
        "sda_id": entry.sda_id,
        "priority": entry.priority,
        "host": entry.host,
        "pid": entry.pid,
        "process_name": entry.process_name,
        "client_version": entry.client_version,
        "device_count": entry.device_count,
        "devices": _devices_json(_history_devices(entry)),
        "request_time": _iso(entry.request_time),
        "start_time": _iso(entry.start_time),
        "end_time": _iso(entry.end_time),
        "exit_code": entry.exit_code,
        "end_reason": entry.end_reason,
        "end_detail": entry.end_detail,
        "time_limit": entry.time_limit,
    }


def history_table(entries: Sequence[HistoryEntry]) -> Table:
    """``show history``: one line per ended job, oldest first."""
    rows = [
        [
            str(e.id),
            e.token,
            str(e.priority),
            e.end_reason.upper(),
            _num(e.pid),
            e.process_name,
            _time(e.start_time),
            _time(e.end_time),
            _num(e.exit_code),
        ]
        for e in entries
    ]
    return Table(HISTORY_COLUMNS, rows, [history_record(e) for e in entries])


def history_device_table(entries: Sequence[HistoryEntry]) -> Table:
    """``show history device``: like ``get sda``, a job on several backends takes one line per backend."""
    rows: list[list[str]] = []
    for e in entries:
        hosts = _by_host(_history_devices(e)) or [("", "")]
        for n, (host, indexes) in enumerate(hosts):
            head = [str(e.id), e.token, e.end_reason.upper(), str(e.device_count)] if n == 0 else ["", "", "", ""]
            tail = [_time(e.start_time), _time(e.end_time)] if n == 0 else ["", ""]
            rows.append([*head, host, indexes, *tail])
    return Table(HISTORY_DEVICE_COLUMNS, rows, [history_record(e) for e in entries])


@command("show history", "Print list of Job history list", "show history {count of history : optional}")
def show_history(ctx: Context, args: list[str]) -> Output:
    count = _count_arg(args, 0, "count of history")
    with ctx.read() as s:
        return history_table(s.jobs.history(count))


@command(
    "show history device",
    "Print list of Job history list with device info",
    "show history device {count of history : optional}",
)
def show_history_device(ctx: Context, args: list[str]) -> Output:
    count = _count_arg(args, 0, "count of history")
    with ctx.read() as s:
        return history_device_table(s.jobs.history(count))


@command("get history feid", "Get job info in job histroy", "get history feid {frontend id}")
def get_history_feid(ctx: Context, args: list[str]) -> Output:
    job_id = to_int(args[0], "frontend id")
    with ctx.read() as s:
        entry = s.jobs.history_entry(job_id)
        if entry is None:
            if s.jobs.find(job_id) is not None:
                raise NotFoundError(f"Job {job_id} has not ended yet; see it with 'get job feid {job_id}'.")
            raise NotFoundError(f"Job {job_id} is not in the job history; list it with 'show history'.")
        name = _token_name(s, entry.token)
    pairs = [
        ("Frontend ID", str(entry.id)),
        ("Token", entry.token),
        ("Token name", name),
        ("SDA", str(entry.sda_id)),
        ("Priority", str(entry.priority)),
        ("Status", entry.end_reason.upper()),
        ("Exit code", _num(entry.exit_code)),
        ("Client", entry.client_version),
        ("Client PID", _num(entry.pid)),
        ("Process name", entry.process_name),
        ("Request time", _time(entry.request_time)),
        ("Start time", _time(entry.start_time)),
        ("End time", _time(entry.end_time)),
        ("Version", _version_of(entry.client_version)),
        ("Device count", str(entry.device_count)),
        *_by_host(_history_devices(entry)),
    ]
    return Table(
        [Column("Name"), Column("Value")],
        [list(p) for p in pairs],
        [{**history_record(entry), "token_name": name}],
    )


@command(
    "get history token",
    "Get job info in job histroy",
    "get history token {token} {count of history : optional}",
)
def get_history_token(ctx: Context, args: list[str]) -> Output:
    count = _count_arg(args, 1, "count of history")
    with ctx.read() as s:
        return history_table(s.jobs.history(count, token=args[0]))


# -- usage ----------------------------------------------------------------------------------------


def _moment(date: str, time: str, which: str) -> datetime:
    # strptime alone would read other scripts' digits ('٢٠٢٤-01-31'); numbers on the console are ASCII.
    try:
        if not date.isascii():
            raise ValueError(date)
        day = datetime.strptime(date, "%Y-%m-%d")
    except ValueError:
        raise UsageError(f"The {which} date '{date}' is not a date: use YYYY-MM-DD, e.g. 2024-01-31.") from None
    try:
        if not time.isascii():
            raise ValueError(time)
        clock = datetime.strptime(time, "%H:%M:%S")
    except ValueError:
        raise UsageError(f"The {which} time '{time}' is not a time: use hh:mm:ss, e.g. 09:30:00.") from None
    return day.replace(hour=clock.hour, minute=clock.minute, second=clock.second)


def usage_table(usages: Sequence[TokenUsage], begin: datetime, end: datetime) -> Table:
    """Device-seconds per token, most first."""
    rows = [[u.token, u.description, str(u.jobs), f"{u.device_seconds:.2f}"] for u in usages]
    records = [
        {
            "token": u.token,
            "description": u.description,
            "jobs": u.jobs,
            "device_seconds": round(u.device_seconds, 3),
            "begin": begin.isoformat(),
            "end": end.isoformat(),
        }
        for u in usages
    ]
    return Table(USAGE_COLUMNS, rows, records)


@command(
    "show usage",
    "Print Device Usage",
    "show usage {begin date [YYYY-MM-DD]} {begin time [hh:mm:ss]} {end date [YYYY-MM-DD]} {end time [hh:mm:ss]} "
    "{token : optional}",
)
def show_usage(ctx: Context, args: list[str]) -> Output:
    begin = _moment(args[0], args[1], "begin")
    end = _moment(args[2], args[3], "end")
    token = args[4] if len(args) > 4 else None
    with ctx.read() as s:
        return usage_table(s.jobs.usage(begin, end, token), begin, end)
