"""What ``moreh-smi`` shows about a token (its devices, their GPUs, processes and waiting jobs), and ``-s``.

:func:`collect_status` only reads one session, so the dashboard can call it on every tick;
:func:`token_status` may first put fresh GPU figures into the state when nobody else samples them
(no daemon runs and the token has a job on this host whose figures are stale).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moreh_tools import __version__
from moreh_tools.services.records import (
    DEVICE_NAME,
    SAMPLE_MAX_AGE_S,
    DeviceStatus,
    GpuStatus,
    ProcessStatus,
    SmiStatus,
    WaitingJob,
)
from moreh_tools.services.scheduling import STARTS_NEXT_PASS
from state import views
from state.errors import UnknownTokenError

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext
    from moreh_tools.services.records import VersionInfo
    from state.session import Session
    from state.views import JobBrief, SdaRow

_ACTIVE = ("SUBMITTED", "RUNNING")


def unknown_token(token: str) -> UnknownTokenError:
    """The refusal of a token the state does not know."""
    return UnknownTokenError(f"Token '{token[:8]}...' is not known to the SDA Manager.")


def token_status(ctx: ServiceContext, *, refresh: bool = True) -> SmiStatus:
    """The caller's token's status; with ``refresh``, stale figures of its jobs on this host are sampled first.

    Only a tool working on the state file alone samples (the daemon samples every tick itself).
    """
    token = _token_of(ctx)
    with ctx.read() as s:
        status, jobs = _collect(s, token)
        here = any(j.host == ctx.host and j.status in _ACTIVE for j in jobs)
        stale = refresh and here and not ctx.daemon_running and views.samples_stale(s, token, ctx.host, SAMPLE_MAX_AGE_S)
    if stale:
        from moreh_tools.services.hosts import sample_this_host

        if sample_this_host(ctx):
            with ctx.read() as s:
                status = collect_status(s, token)
    return status


def _token_of(ctx: ServiceContext) -> str:
    token = ctx.caller.token
    if token is None:
        raise UnknownTokenError("SDA token is not given.")
    return token


def server_versions(ctx: ServiceContext) -> VersionInfo:
    """What ``moreh-smi -s`` shows: this server's version, the latest and the supported worker versions."""
    from moreh_tools.services.records import VersionInfo  # here: moreh-smi's usual view does not need it

    with ctx.read() as s:
        versions = s.versions.all()
    latest = next((v.version for v in versions if v.latest), "")
    return VersionInfo(f"moreh-tools {__version__}", latest, tuple(v.version for v in versions if v.supported))


def collect_status(s: Session, token: str) -> SmiStatus:
    """Gather the token's devices, jobs and GPU figures from one session (reads only)."""
    return _collect(s, token)[0]


def _collect(s: Session, token: str) -> tuple[SmiStatus, list[JobBrief]]:
    owner = views.token_overview(s, token)
    if owner is None:
        raise unknown_token(token)
    jobs = views.token_jobs(s, token)
    gpus: dict[int, list[GpuStatus]] = {}
    for row in views.token_gpus(s, token):
        gpus.setdefault(row.sda_id, []).append(GpuStatus(*row[1:]))
    from state import containment

    contained = containment.of_jobs(s, [j.id for j in jobs if j.status == "RUNNING"])
    devices = tuple(
        _device(
            sda,
            owner.current_sda,
            [j for j in jobs if j.sda_id == sda.id],
            tuple(gpus.get(sda.id, ())),
            next((contained[j.id] for j in jobs if j.sda_id == sda.id and j.id in contained), ""),
        )
        for sda in views.token_sdas(s, token)
    )
    active = [j for j in jobs if j.status in _ACTIVE]
    queued = [j for j in jobs if j.status == "QUEUED"]
    from moreh_tools.services.guardian_view import token_guard

    flags, idle = token_guard(
        s,
        token,
        [(g.backend_id, g.index) for device in devices for g in device.gpus],
        [(j.sda_id, j.id) for j in active if j.status == "RUNNING"],
    )
    status = SmiStatus(
        token=token,
        # The worker version a job of this token runs with: the admin's latest (moreh-tools' own version while no
        # worker version is registered, as on a fresh state). Comparing the tool's version with the workers' would
        # make everyone look out of date once an admin registers 24.5.0 (issue 15).
        current_version=owner.latest_version or __version__,
        latest_version=owner.latest_version,
        max_devices=owner.max_sda,
        current_device=owner.current_sda,
        devices=devices,
        processes=tuple(_processes(s, active)),
        waiting=tuple(_waiting(s, queued)),
        flags=flags,
        idle=idle,
    )
    return status, jobs


def _device(
    sda: SdaRow, current: int | None, jobs: list[JobBrief], gpus: tuple[GpuStatus, ...], containment: str = ""
) -> DeviceStatus:
    statuses = {j.status for j in jobs}
    if "RUNNING" in statuses:
        state = "running"
    elif "SUBMITTED" in statuses:
        state = "preparing"
    elif "QUEUED" in statuses:
        state = "waiting"
    else:
        state = "idle"
    return DeviceStatus(
        id=sda.id,
        current=sda.id == current,
        name=DEVICE_NAME,
        model=sda.model_name if sda.model_name is not None else "-",
        model_group=sda.group_name,
        model_devices=sda.model_devices if sda.model_devices is not None else 0,
        reserved=sda.reserved,
        state=state,
        job_ids=tuple(j.id for j in jobs),
        gpus=gpus,
        containment=containment,
    )


def _processes(s: Session, active: list[JobBrief]) -> list[ProcessStatus]:
    if not active:
        return []
    by_id = {j.id: j for j in active}
    sampled: dict[int, list[ProcessStatus]] = {}
    for row in views.job_process_totals(s, list(by_id)):
        job = by_id[row.job_id]
        # The job's own process is shown with its command line, as the real tool does.
        shown = job.process_name if row.pid == job.pid and job.process_name else row.name
        sampled.setdefault(job.id, []).append(ProcessStatus(job.sda_id, job.id, row.pid, shown, row.memory_mib))
    out: list[ProcessStatus] = []
    for job in sorted(active, key=lambda j: (j.sda_id, j.id)):
        out.extend(sampled.get(job.id) or [ProcessStatus(job.sda_id, job.id, job.pid, job.process_name, None)])
    return out


def _waiting(s: Session, queued: list[JobBrief]) -> list[WaitingJob]:
    if not queued:
        return []
    from moreh_tools.services.scheduling import queue_info

    info = queue_info(s)
    out = []
    for job in sorted(queued, key=lambda j: (j.sda_id, j.id)):
        found = info.get(job.id)
        out.append(
            WaitingJob(
                device=job.sda_id,
                job_id=job.id,
                pid=job.launcher_pid,
                process=job.process_name,
                position=found.position if found else None,
                reason=found.reason if found else STARTS_NEXT_PASS,
                reason_code=found.reason_code if found else "",
                expected_start=found.expected_start if found else None,
            )
        )
    return out


def waiting_reasons(s: Session) -> dict[int, str]:
    """Why each queued job waits, by asking the scheduler the question without applying its answer."""
    from moreh_tools.services.scheduling import queue_info

    return {job_id: info.reason for job_id, info in queue_info(s).items()}
