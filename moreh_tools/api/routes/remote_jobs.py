"""Extensions beyond the 52 documented endpoints: ``moreh-run`` and the host daemons against a remote master.

A job launched through a remote master runs on the host where ``moreh-run`` runs: that host is a backend of
the master (registered by its first job or its daemon, with its GPUs), and the master's scheduler gives the job
devices of that backend only. The launcher submits, long-polls until allocated, marks the job running and
finishes it; the host's ``sdamanager`` posts its GPU samples and the jobs' GPU processes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import Caller, CallerDep, require_admin
from moreh_tools.api.errors import BACKEND, NOT_FOUND, SYNTAX, ApiError
from moreh_tools.api.params import param
from state.records import END_REASONS, PRIORITY_MAX, PRIORITY_MIN

if TYPE_CHECKING:
    from state.records import Job
    from state.session import Session

router = APIRouter(tags=["Remote tools"])
MAX_WAIT_S = 30.0
# A safety net only: a wake can miss (e.g. two requests waiting on one job share its FIFO).
RECHECK_S = 2.0
MAX_DEVICES = 1024


def job_json(job: Job) -> dict[str, Any]:
    """The job as JSON (times as ISO-8601 text)."""
    data = asdict(job)
    for key in ("request_time", "submit_time", "start_time"):
        if data[key] is not None:
            data[key] = data[key].isoformat()
    return data


def _json_list(name: str, text: str | None) -> list[Any]:
    if text is None:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        raise ApiError(SYNTAX, f"SyntaxError. Parameter '{name}' must be a JSON list.") from None
    if not isinstance(value, list) or len(value) > MAX_DEVICES:
        raise ApiError(SYNTAX, f"SyntaxError. Parameter '{name}' must be a JSON list (at most {MAX_DEVICES}).")
    return value


def _gpu_list(text: str | None) -> list[tuple[str, str, int]]:
    """``[[uuid, name, memory MiB], ...]`` in index order."""
    out = []
    for item in _json_list("devices", text):
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not all(isinstance(v, str) for v in item[:2])
            or not isinstance(item[2], int)
            or isinstance(item[2], bool)
            or not 0 <= item[2] < 2**31
        ):
            raise ApiError(SYNTAX, "SyntaxError. Parameter 'devices' must list [uuid, name, memory MiB] per GPU.")
        out.append((item[0][:200], item[1][:200], item[2]))
    return out


def _register(s: Session, host: str, ip: str, devices: list[tuple[str, str, int]]) -> int:
    backend_id = s.backends.local_id(host)
    if backend_id is not None:
        return backend_id
    if not devices:
        raise ApiError(NOT_FOUND, f"Host '{host}' is not a registered backend; send its GPUs in 'devices'.", 404)
    return s.backends.register_local(host, ip or host, devices)


def _check_host(host: str) -> str:
    if not host or len(host) > 253 or not host.isprintable() or " " in host:
        raise ApiError(SYNTAX, "SyntaxError. Parameter 'host' must be the host's name.")
    return host


def _owned_job(s: Session, caller: Caller, job_id: int) -> Job | None:
    """The caller's queued or running job (None once it ended); 601 for another token's job."""
    job = s.jobs.find(job_id)
    if job is not None:
        if not (caller.is_admin or caller.owns(job.token)):
            raise ApiError(NOT_FOUND, f"Job {job_id} not found.", 404)
        return job
    ended = s.jobs.history_entry(job_id)
    if ended is None or not (caller.is_admin or caller.owns(ended.token)):
        raise ApiError(NOT_FOUND, f"Job {job_id} not found.", 404)
    return None


def _int(value: Any) -> Any:
    """A 32-bit integer from JSON (None stays None); ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise ValueError(value)
    return value


def _refuse(message: str) -> ApiError:
    return ApiError(BACKEND, message, 409)


@router.post("/api/remote/job", summary="moreh-run: queue a job for this host (extension)")
def submit_job(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Queue a job of the caller's token that runs on ``host`` and run a scheduling pass, in one transaction.

    The first job of a host registers it as a backend with ``devices`` (``[[uuid, name, MiB], ...]``).
    """
    host = _check_host(param(request, "host", str))
    ip = param(request, "ip", str, required=False, default="")
    sda = param(request, "sda", int, required=False)
    priority = param(request, "priority", int, required=False)
    process = param(request, "process", str, required=False, default="")
    launcher_pid = param(request, "launcherPid", int, required=False, default=0)
    launcher_create_time = param(request, "launcherCreateTime", float, required=False, default=0.0)
    client_version = param(request, "clientVersion", str, required=False, default="")
    devices = _gpu_list(param(request, "devices", str, required=False))
    if priority is not None and not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ApiError(
            SYNTAX, f"SyntaxError. Parameter 'priority' must be from {PRIORITY_MIN} to {PRIORITY_MAX}, got {priority}."
        )
    if not 0 <= launcher_pid < 2**31:
        raise ApiError(SYNTAX, "SyntaxError. Parameter 'launcherPid' must be a process id.")
    from moreh_tools.jobs import control

    store = request.app.state.store
    what = f"moreh-run {process}"[:200] if process else "moreh-run (api)"
    with store.transaction(what) as s:
        token = s.tokens.get(caller.token)
        # The same ceiling PUT /api/scheduler/queue keeps: otherwise a USER jumps the queue at submit time.
        if priority is not None and not caller.is_admin and priority > token.priority:
            raise ApiError(
                NOT_FOUND,
                f"A {caller.access_level} token may set its jobs' priority up to its token priority "
                f"({token.priority}), not {priority}; ask an ADMIN for more.",
                403,
            )
        sda_id = sda if sda is not None else token.current_sda
        if sda_id is None:
            raise _refuse(
                "This token has no SDA; add one with 'moreh-smi device --add', ask an admin to create one, "
                "or use --sda ID."
            )
        found = s.one("SELECT token FROM sdas WHERE id = ?", [sda_id])
        if found is None:
            raise _refuse(f"SDA {sda_id} does not exist; see your SDAs with 'moreh-smi'.")
        if found[0] != caller.token:
            raise _refuse(
                f"SDA {sda_id} belongs to another token; use one of your SDAs (see 'moreh-smi') with --sda or "
                "MOREH_VISIBLE_DEVICE."
            )
        _register(s, host, ip, devices)
        job = s.jobs.submit(
            caller.token,
            sda_id,
            host=host,
            launcher_pid=launcher_pid,
            launcher_create_time=launcher_create_time,
            process_name=process[:200],
            priority=priority,
            client_version=client_version[:50],
        )
        decision = s.jobs.run_scheduling_pass()
        allocated = any(a.job_id == job.id for a in decision.allocations)
        answer: dict[str, Any] = {"allocated": allocated, "env": [list(pair) for pair in token.env]}
        answer.update(busyPid=None, busyCommand="", position=None, reason="")
        if allocated:
            job = s.jobs.get(job.id)
        else:
            for other in s.jobs.of_token(caller.token):
                if other.sda_id == job.sda_id and other.id != job.id and other.status != "QUEUED":
                    answer.update(busyPid=other.pid or other.launcher_pid, busyCommand=other.process_name)
                    break
            answer.update(position=s.jobs.queue_position(job.id), reason=decision.waiting.get(job.id, ""))
    control.wake_allocated(store.home, decision)
    answer["job"] = job_json(job)
    return answer


@router.get("/api/remote/job/wait", summary="moreh-run: wait until the job has devices (long poll; extension)")
def wait_job(request: Request, caller: CallerDep) -> dict[str, Any]:
    """``{"state": "allocated", "job": ...}``, ``{"state": "queued"}`` after ``timeout`` seconds (at most 30),
    or ``{"state": "ended", "reason": ...}`` when the job left the queue without devices."""
    job_id = param(request, "id", int)
    timeout = param(request, "timeout", float, required=False, default=20.0)
    if not 0 <= timeout <= MAX_WAIT_S:
        raise ApiError(SYNTAX, f"SyntaxError. Parameter 'timeout' must be from 0 to {MAX_WAIT_S:g} seconds.")
    from moreh_tools.jobs.wakeup import WakeUp

    store = request.app.state.store
    deadline = time.monotonic() + timeout
    # Sleep on the job's FIFO, as a local launcher does, rather than reading the state in a loop: whoever
    # allocates or releases the job on the master wakes it. Opened before the first read, so no wake is lost.
    wakeup = WakeUp(store.home, job_id)
    try:
        while True:
            with store.reading() as s:
                job = _owned_job(s, caller, job_id)
                ended = s.jobs.history_entry(job_id) if job is None else None
            if job is None:
                return {"state": "ended", "reason": ended.end_reason if ended is not None else "removed"}
            if job.status != "QUEUED":
                return {"state": "allocated", "job": job_json(job)}
            left = deadline - time.monotonic()
            if left <= 0:
                return {"state": "queued"}
            wakeup.wait(min(left, RECHECK_S))
    finally:
        wakeup.close()


@router.post("/api/remote/job/running", summary="moreh-run: the job's command started (extension)")
def job_running(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Mark the job RUNNING with its command's ``pid``; ``{"withdrawn": true}`` when it was released meanwhile."""
    job_id = param(request, "id", int)
    pid = param(request, "pid", int)
    create_time = param(request, "createTime", float, required=False, default=0.0)
    if not 0 < pid < 2**31:
        raise ApiError(SYNTAX, "SyntaxError. Parameter 'pid' must be a process id.")
    from moreh_tools import identity
    from moreh_tools.jobs import processes

    with request.app.state.store.transaction("moreh-run: command started (api)") as s:
        job = _owned_job(s, caller, job_id)
        withdrawn = job is None or job.release_requested
        if job is not None and not withdrawn:
            if job.status == "QUEUED":
                raise _refuse(f"Job {job_id} has no devices yet; wait for them first.")
            # Releasing the job signals this pid's tree here: it must be the job's command, not anyone's process.
            if job.host == identity.host_name() and processes.carries_job_tag(pid, job_id) is False:
                raise _refuse(f"Process {pid} is not job {job_id}'s command (it lacks MOREH_JOB_ID={job_id}).")
            s.jobs.mark_running(job_id, pid, create_time)
    return {"withdrawn": withdrawn}


@router.post("/api/remote/job/finish", summary="moreh-run: the job ended (extension)")
def job_finish(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Record the end (``reason``: finished, failed, released or lost) and hand the devices on."""
    job_id = param(request, "id", int)
    exit_code = param(request, "exitCode", int, required=False)
    reason = param(request, "reason", str)
    if reason not in END_REASONS:
        raise ApiError(SYNTAX, f"SyntaxError. Parameter 'reason' must be one of {', '.join(END_REASONS)}.")
    if exit_code is not None and not -(2**31) <= exit_code < 2**31:
        raise ApiError(SYNTAX, "SyntaxError. Parameter 'exitCode' is out of range.")
    from moreh_tools.jobs import control

    store = request.app.state.store
    with store.transaction("moreh-run: job ended (api)") as s:
        job = _owned_job(s, caller, job_id)
        if job is not None:
            if reason == "released":
                s.jobs.request_release(job_id)
            elif job.status != "QUEUED":
                s.jobs.mark_cleaning(job_id)
            s.jobs.finish(job_id, exit_code, reason)
        # Only an end that freed devices can let others start; a repeated report costs no pass.
        decision = s.jobs.run_scheduling_pass() if job is not None else None
    if decision is not None:
        control.wake_allocated(store.home, decision)
    return {"code": "SUCCESS"}


@router.post("/api/remote/samples", summary="A host's daemon reports its GPUs and job processes (extension; ADMIN)")
def report_samples(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Record one sample of ``host``'s GPUs (``samples``) and its jobs' GPU processes (``processes``).

    The answer lists the host's jobs someone asked to release (``release``: id, pid, pidCreateTime).

    ``devices`` (``[[uuid, name, MiB], ...]``) registers the host as a backend the first time.
    """
    require_admin(caller)
    host = _check_host(param(request, "host", str))
    ip = param(request, "ip", str, required=False, default="")
    devices = _gpu_list(param(request, "devices", str, required=False))
    samples = _json_list("samples", param(request, "samples", str))
    processes = _json_list("processes", param(request, "processes", str, required=False))
    from state.records import Device

    figures = ("memory_total_mib", "memory_used_mib", "util_gpu", "util_mem", "temp_gpu", "temp_mem")
    try:
        rows = [
            (_int(p["job_id"]), _int(p["pid"]), str(p["name"])[:200], _int(p["memory_mib"]), _int(p["index"]))
            for p in processes
        ]
        readings = [(_int(d["index"]), [_int(d.get(k)) for k in figures]) for d in samples]
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
        raise ApiError(
            SYNTAX, "SyntaxError. Parameters 'samples'/'processes' do not have the documented fields."
        ) from None
    with request.app.state.store.transaction(f"sample gpus {host} (api)") as s:
        backend_id = _register(s, host, ip, devices)
        known = {int(r[0]) for r in s.all("SELECT idx FROM devices WHERE backend_id = ?", [backend_id])}
        sampled = [
            Device(backend_id, index, "", None, None, *values)
            for index, values in readings
            if index is not None and index in known
        ]
        if sampled:  # DuckDB's executemany refuses an empty list: a host without GPUs still reports its releases
            s.backends.record_samples(backend_id, sampled)
        active = s.all("SELECT id FROM jobs WHERE host = ? AND status IN ('SUBMITTED', 'RUNNING')", [host])
        by_job: dict[int, list[tuple[int, str, int, int | None, int | None]]] = {int(r[0]): [] for r in active}
        for job_id, pid, name, memory, index in rows:
            if job_id in by_job and index in known and pid is not None and memory is not None:
                by_job[job_id].append((pid, name, memory, backend_id, index))
        for job_id, job_rows in by_job.items():
            s.jobs.record_processes(job_id, job_rows)
        released = s.all(
            "SELECT id, pid, pid_create_time FROM jobs WHERE host = ? AND release_requested "
            "AND status IN ('SUBMITTED', 'RUNNING') ORDER BY id",
            [host],
        )
    # The host's daemon ends these jobs' processes; their launchers then record the ends.
    return {"code": "SUCCESS", "release": [{"id": r[0], "pid": r[1], "pidCreateTime": r[2]} for r in released]}
