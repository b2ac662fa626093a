"""Ending the jobs their launcher does not end: past their time limit, or preempted, while it cannot act.

A launcher ends its own job when the limit is reached (SIGTERM, SIGKILL after ``MOREH_RELEASE_GRACE``) or
when a pass preempts it (after ``MOREH_PREEMPT_GRACE``). Its guardian ends the job if the launcher dies, and
the next pass on the host if both die (``lost``; ``timeout`` when the job was past its limit by then). What
is left is a launcher that is alive but cannot act (stopped, or hung): the daemon of the job's host ends such
jobs here, each tick, once the launcher has had its grace period and a little more (:data:`LAUNCHER_SLACK_S`),
and at once when the launcher is gone or stopped. Processes are only ever signalled on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from moreh_tools.services import settings
from moreh_tools.services.hosts import find_host
from moreh_tools.services.scheduling import finish_job, run_pass, woken

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext
    from state.records import Job
    from state.session import Session

#: How long after its own deadline (the limit or the preemption, plus its grace) a launcher that still runs
#: has to record the end before the daemon ends the job instead.
LAUNCHER_SLACK_S = 1.0


@dataclass(frozen=True)
class Overdue:
    """A job of this host to end now: why (``timeout`` or ``preempted``), the one-line detail, and the grace."""

    job: Job
    reason: str
    detail: str
    grace: float


def limit_deadline(job: Job) -> float | None:
    """When the job's time limit ends (epoch seconds; the limit counts from when it got its devices), None: no limit."""
    held = job.submit_time or job.start_time
    if job.time_limit is None or held is None:
        return None
    return held.timestamp() + job.time_limit


def timeout_detail(job: Job) -> str:
    """The end detail of a job that reached its limit."""
    from scheduler_core.timelimits import format_duration

    return f"it reached its time limit ({format_duration(job.time_limit or 0.0)})"


def overdue_on(s: Session, backend_id: int, now: float) -> list[Overdue]:
    """The jobs of backend ``backend_id`` (this host) that are past their limit or preemption and not ended by now."""
    from moreh_tools.jobs import processes

    release_grace = processes.release_grace()
    preempt_grace = settings.preempt_grace()
    found: list[Overdue] = []
    for job in s.jobs.on_backend(backend_id):
        if job.status == "QUEUED" or job.release_requested:
            continue  # a release has its own way out (services.jobs.release)
        acting = processes.can_act(job.launcher_pid, job.launcher_create_time)
        if job.preempting and job.preempt_time is not None:
            if now >= job.preempt_time + (preempt_grace + LAUNCHER_SLACK_S if acting else 0.0):
                found.append(Overdue(job, "preempted", f"preempted for job {job.preempted_for}", preempt_grace))
            continue
        deadline = limit_deadline(job)
        if deadline is not None and now >= deadline + (release_grace + LAUNCHER_SLACK_S if acting else 0.0):
            found.append(Overdue(job, "timeout", timeout_detail(job), release_grace))
    return found


def end_overdue(ctx: ServiceContext) -> list[Overdue]:
    """End this host's overdue jobs: their processes (SIGTERM, the grace, SIGKILL), then their records; a pass.

    Returns what was ended. Blocks for the longest grace involved: the daemon runs it off its tick.
    """
    from moreh_tools.jobs import processes

    with ctx.read() as s:
        backend_id = find_host(s, ctx.machine_id, ctx.host)
        overdue = overdue_on(s, backend_id, settings.now()) if backend_id is not None else []
    if not overdue:
        return []
    for grace in sorted({o.grace for o in overdue}):
        processes.end_jobs(
            [(o.job.id, o.job.pid, o.job.pid_create_time) for o in overdue if o.grace == grace], str(ctx.home), grace
        )
    ended: list[Overdue] = []
    with ctx.write("sdamanager: jobs past their time limit or preempted") as s:
        for o in overdue:
            job = s.jobs.find(o.job.id)
            if job is None:
                continue  # its launcher recorded the end meanwhile
            s.jobs.mark_cleaning(job.id)
            finish_job(s, job.id, None, o.reason, o.detail)
            ended.append(o)
        decision = run_pass(s)
    ctx.wake([o.job.id for o in ended] + woken(decision))
    return ended
