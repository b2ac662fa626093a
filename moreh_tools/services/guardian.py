"""The GPU guardian's use cases: judge what a host's daemon saw, check a job's devices before it starts, idle
policies, and what the tools show of it.

* :func:`observe` runs inside a host's report (:func:`moreh_tools.services.hosts.report`): failing GPUs go
  UNHEALTHY (never allocated until an admin clears them), NVML failing closes the host, processes on GPUs that no
  job holding them accounts for are flagged (the device is not handed out while they live), and running jobs
  under an idle policy are followed and, after the window, released with end reason ``idle``. Jobs affected get an
  event-log entry and a line for their launcher (:func:`notice_update`, through the watcher's long poll).
* :func:`check_devices`: a launcher about to start its job asks once more; a foreign process (or a failed GPU)
  sends the job back to the queue with the reason.
* :func:`set_idle_policy`, :func:`clear_idle_policy`, :func:`idle_policies`: the admin's settings (console, API).

The decisions are pure (:mod:`scheduler_core.guardian`, :mod:`scheduler_core.gpu_health`); the SQL is in
:mod:`state.guardian`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from moreh_tools.services.caller import require_admin
from moreh_tools.services.records import (
    DeviceCheck,
    ForeignProcess,
    GpuProcessSample,
    GpuSample,
    HostWatch,
    JobUpdate,
)
from scheduler_core.gpu_health import (
    DeviceProcess,
    Foreign,
    GpuFigures,
    GpuHealthEvent,
    IdlePolicy,
    PolicyError,
    find_foreign,
    update_idle,
)
from scheduler_core.guardian import (
    before_start,
    check_idle_policy,
    describe_foreign,
    host_failure,
    idle_notices,
    job_figures,
    job_pids,
    parse_idle_policy,
    reclaim_detail,
    stale_stretch,
    unhealthy_devices,
)
from state.errors import InvalidValueError, NotFoundError
from state.guardian import ProcessFlag
from state.records import FLAG_NVML, DeviceFlag, IdlePolicyRow, JobIdle

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext
    from state.session import Session

#: The prefix of a watcher's ``seen`` that asks for the guardian's notices: ``running#<last notice id>``.
NOTICES_SEEN = "running#"


@dataclass
class Observed:
    """What one report's judgement hands back: the foreign processes (for the host's policy) and jobs to wake."""

    foreign: tuple[ForeignProcess, ...] = ()
    woken: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the daemon's log


def _events(watch: HostWatch) -> list[GpuHealthEvent]:
    """The report's health events; one of a kind this version does not know is left out (never a failure)."""
    events = []
    for sample in watch.health:
        try:
            events.append(GpuHealthEvent(sample.device, sample.kind, sample.code, sample.cause[:500]))
        except ValueError:
            continue
    return events


def observe(s: Session, backend_id: int, samples: Sequence[GpuSample], watch: HostWatch) -> Observed:
    """Judge one report of a host's GPU guardian inside the report's transaction (see the module docstring)."""
    g = s.guardian
    out = Observed()
    host = s.backends.get(backend_id).host
    known = s.backends.device_indexes(backend_id)
    events = _events(watch)
    failure = host_failure(events)
    changed = g.set_host_failure(backend_id, failure)
    if changed == "failed":
        out.notes.append(f"host {host}: none of its GPUs is handed out while this lasts: {failure}")
    elif changed == "recovered":
        out.notes.append(f"host {host}: NVML works again; its GPUs are handed out again")
    for item in g.mark_unhealthy(backend_id, unhealthy_devices(events, known)):
        held = f" (held by job {item.job_id})" if item.job_id is not None else ""
        out.notes.append(f"GPU {host}:{item.index} is UNHEALTHY{held}: {item.cause}")
        if item.job_id is not None:
            g.add_notice(
                item.job_id,
                f"[warning] GPU {host}:{item.index} of job {item.job_id} is UNHEALTHY ({item.cause}); the job may fail. "
                "The GPU stays out of service until an admin clears it.",
            )
            out.woken.append(item.job_id)
    if failure is not None or watch.processes is None:
        return out  # the processes are unknown: keep the flags and the idle clocks as they are
    processes = [p for p in watch.processes if p.index in known]
    allocation = g.allocation(backend_id)
    owned = job_pids(((p.pid, p.job_id, p.ancestors) for p in processes), g.active_pids(backend_id))
    findings = find_foreign(
        [DeviceProcess(p.index, p.pid, p.memory_mib, p.user, p.uid) for p in processes], allocation, owned
    )
    new, gone = g.replace_processes(backend_id, [_flag(f) for f in findings])
    out.notes.extend(f"GPU {host}:{flag.index} is not handed out: {flag.cause}" for flag in new)
    out.notes.extend(f"GPU {host}:{index}: process {pid} is gone" for index, pid, _ in gone)
    for flag in new:
        for job_id in {j for j in (flag.device_job, flag.job_id) if j is not None}:
            g.add_notice(job_id, f"[warning] GPU {host}:{flag.index}: {flag.cause}.")
            out.woken.append(job_id)
    out.foreign = tuple(
        ForeignProcess(f.device, f.pid, f.user, f.uid, f.memory_mib, f.kind, f.job, f.device_job, describe_foreign(f))
        for f in findings
    )
    out.woken.extend(_follow_idle(s, backend_id, samples, processes, out.notes))
    g.forget_ended()
    return out


def _flag(finding: Foreign) -> ProcessFlag:
    return ProcessFlag(
        finding.device,
        finding.kind,
        describe_foreign(finding),
        finding.pid,
        finding.user,
        finding.memory_mib,
        finding.job,
        finding.device_job,
    )


def _policy_of(row: IdlePolicyRow) -> IdlePolicy:
    return IdlePolicy(row.util_percent, row.memory_mib, row.window_s, row.grace_s)


def _follow_idle(
    s: Session,
    backend_id: int,
    samples: Sequence[GpuSample],
    processes: Sequence[GpuProcessSample],
    notes: list[str],
) -> list[int]:
    """One idle sample of each running job of the backend under a policy; the jobs told something."""
    g = s.guardian
    running = g.running(backend_id)
    if not running:
        return []
    policies = {(p.scope, p.target): p for p in g.idle_policies()}
    known = g.idle_of(job.id for job in running)
    figures = {x.index: GpuFigures(x.util_gpu, x.memory_used_mib) for x in samples}
    used = {p.index for p in processes}
    now = g.now()
    tick = g.tick()
    woken: list[int] = []
    uncovered: list[int] = []
    for job in running:
        row = policies.get(("token", job.token)) or policies.get(("sdamodel", str(job.model_id)))
        prior = known.get(job.id)
        if row is None:
            uncovered.append(job.id)
            continue
        if job.release_requested or (prior is not None and prior.reclaimed):
            continue
        policy = _policy_of(row)
        if prior is not None and stale_stretch(prior.checked_at, now, tick):
            prior = JobIdle(job.id, None, False, None, False, prior.notified_at)  # unseen meanwhile: start afresh
        verdict = update_idle(
            policy,
            prior.idle_since if prior else None,
            job.started,
            job_figures(job.devices, figures, used),
            now,
            warned=prior.warned if prior else False,
        )
        notified_at = prior.notified_at if prior else None
        for notice in idle_notices(
            job.id,
            policy,
            was_idle=prior is not None and prior.idle_since is not None,
            was_warned=prior is not None and prior.warned,
            idle_s=verdict.idle_s,
            seconds_left=verdict.seconds_left,
            warn=verdict.warn,
            reclaim=verdict.reclaim,
            last_notified=notified_at,
            now=now,
        ):
            g.add_notice(job.id, notice.text)
            notified_at = now if notice.notified else notified_at
            woken.append(job.id)
        g.put_idle(
            JobIdle(job.id, verdict.idle_since, verdict.warned, verdict.seconds_left, verdict.reclaim, notified_at, now)
        )
        if verdict.reclaim:
            scope = "token" if row.scope == "token" else f"SDA model {row.target}"
            detail = reclaim_detail(policy, scope)
            s.events.record("IDLE_RECLAIM", f"id={job.id} {detail}", job.token)
            s.jobs.request_release(job.id, detail)
            notes.append(f"job {job.id} {detail}: released")
            woken.append(job.id)
    g.drop_idle(uncovered)
    return woken


# -- what a launcher hears ----------------------------------------------------------------------------------


def notice_update(s: Session, job_id: int, seen: str) -> JobUpdate | None:
    """The job's next guardian notice for a watcher that asked with ``seen="running#<id>"``; None: none new."""
    if not seen.startswith(NOTICES_SEEN):
        return None
    mark = seen[len(NOTICES_SEEN) :]
    after = int(mark) if mark.isascii() and mark.isdigit() and len(mark) < 19 else 0
    found = s.guardian.notice_after(job_id, after)
    if found is None:
        return None
    return JobUpdate("notice", reason=str(found[0]), detail=found[1])


def check_devices(
    ctx: ServiceContext, *, job_id: int, processes: Sequence[GpuProcessSample] | None = None
) -> DeviceCheck:
    """A launcher about to start job ``job_id`` asks whether its devices are still fit.

    ``processes`` are the processes the launcher sees on the job's GPUs now (None: it could not look). A device
    that failed, a host whose NVML fails, or a process on the job's GPUs that is not the job's sends the job back
    to the queue (it keeps its place; the devices a foreign process uses stay out of use while it lives) and the
    answer says why. A job that is not waiting to start (ended, released, running) is ``ok``: the launcher's next
    step says what happened to it.
    """
    with ctx.read() as s:
        job = s.jobs.find(job_id)
        caller = ctx.who(s)
        if job is None or not (caller.is_admin or caller.owns(job.token)):
            if job is not None or s.jobs.history_entry(job_id) is None:
                raise NotFoundError(f"Job {job_id} not found.")
            return DeviceCheck(True)
        if job.status == "QUEUED":  # sent back already (this is a retry of a lost answer)
            return DeviceCheck(False, "it waits in the queue again")
        if job.status != "SUBMITTED" or job.release_requested:
            return DeviceCheck(True)
        mine = {(d.backend_id, d.index) for d in job.devices}
        problems = [
            f"GPU {f.location}: {f.cause}" if f.kind != FLAG_NVML else f"host {f.host}: {f.cause}"
            for f in s.guardian.flags({b for b, _ in mine})
            if f.kind == FLAG_NVML or (f.backend_id, f.index) in mine
        ]
        host = s.backends.get(job.backend_id).host if job.backend_id is not None else ""
    fresh: list[Foreign] = []
    if processes is not None and job.backend_id is not None:
        here = [i for b, i in mine if b == job.backend_id]
        tagged = {p.pid for p in processes if p.job_id == job_id}
        found = before_start(
            [DeviceProcess(p.index, p.pid, p.memory_mib, p.user, p.uid) for p in processes], job_id, here, tagged
        )
        fresh = [replace(f, device_job=None) for f in found]  # the job leaves these GPUs: nobody holds them
        problems.extend(f"GPU {host}:{f.device}: {describe_foreign(f)}" for f in fresh)
    if not problems:
        return DeviceCheck(True)
    reason = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    with ctx.write(f"moreh-run: job {job_id} devices checked") as s:
        if fresh and job.backend_id is not None:
            s.guardian.add_processes(job.backend_id, [_flag(f) for f in fresh])
        moved = s.guardian.requeue(job_id, reason)
        decision = s.jobs.run_scheduling_pass() if moved else None
    if not moved:
        return DeviceCheck(True)
    ctx.wake([a.job_id for a in decision.allocations] if decision is not None else [])
    return DeviceCheck(False, reason)


# -- idle policies -----------------------------------------------------------------------------------------------


def set_idle_policy(
    ctx: ServiceContext,
    *,
    scope: str,
    target: str,
    util: str,
    memory: str,
    window: str,
    grace: str | None = None,
) -> IdlePolicyRow:
    """Set the idle policy of a token (``scope="token"``) or an SDA model (``"sdamodel"``, by id); ADMIN only.

    ``util`` (%), ``memory`` (MiB), ``window`` and ``grace`` (seconds or 90s/30m/2h/1d) as an admin types them;
    InvalidValueError (one line, nothing changed) for values out of range or a window shorter than the daemon's tick.
    """
    require_admin(ctx.caller, "Setting an idle policy")
    with ctx.write(f"update {scope} idle {target}") as s:
        try:
            policy = parse_idle_policy(util, memory, window, grace, s.guardian.tick())
        except PolicyError as exc:
            raise InvalidValueError(_sentence(str(exc))) from None
        return s.guardian.set_idle_policy(
            scope, target, policy.util_percent, policy.memory_mib, policy.window_s, policy.grace_s
        )


def set_idle_policy_values(
    ctx: ServiceContext, *, scope: str, target: str, util: float, memory: float, window: float, grace: float = 0.0
) -> IdlePolicyRow:
    """:func:`set_idle_policy` for numbers (the REST API): seconds for the window and grace."""
    require_admin(ctx.caller, "Setting an idle policy")
    with ctx.write(f"update {scope} idle {target}") as s:
        try:
            policy = check_idle_policy(util, memory, window, grace, s.guardian.tick())
        except PolicyError as exc:
            raise InvalidValueError(_sentence(str(exc))) from None
        return s.guardian.set_idle_policy(
            scope, target, policy.util_percent, policy.memory_mib, policy.window_s, policy.grace_s
        )


def clear_idle_policy(ctx: ServiceContext, *, scope: str, target: str) -> None:
    """Remove the idle policy of a token or an SDA model (ADMIN only); NotFoundError when it has none."""
    require_admin(ctx.caller, "Clearing an idle policy")
    with ctx.write(f"delete {scope} idle {target}") as s:
        s.guardian.clear_idle_policy(scope, target)


def idle_policies(ctx: ServiceContext) -> list[IdlePolicyRow]:
    """Every idle policy (ADMIN only)."""
    require_admin(ctx.caller, "Listing idle policies")
    with ctx.read() as s:
        return s.guardian.idle_policies()


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


# -- what the tools show ---------------------------------------------------------------------------------------


def device_flags(ctx: ServiceContext) -> list[DeviceFlag]:
    """Every flag in force (ADMIN or DEVELOPER: they name other users' processes)."""
    from moreh_tools.services.caller import require_reader

    require_reader(ctx.caller)
    with ctx.read() as s:
        return s.guardian.flags()
