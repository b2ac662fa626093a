"""The job lifecycle, one rule set for every way in: submit, wait, start, finish, release, reconcile.

A job moves QUEUED -> SUBMITTED (devices PREPARING) -> RUNNING (PROCESSING) -> history. The launcher
(``moreh-run``) drives it through :func:`submit`, :func:`wait`, :func:`started` and :func:`finish`;
anyone with the right may :func:`release` it; :func:`schedule` runs a scheduling pass after ending
the jobs of this host whose launcher and guardian are both gone. Processes are only ever signalled on
the machine they run on, and never while a transaction is open, except for the orphans of a job whose
launcher and guardian both died (they are ended before a pass can hand their devices on).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from moreh_tools.services import settings
from moreh_tools.services.caller import ADMIN, Caller
from moreh_tools.services.hosts import find_host, register_in
from moreh_tools.services.records import GpuInfo, JobUpdate, Submitted
from moreh_tools.services.scheduling import finish_job, run_pass, run_pass_on, woken
from state.errors import BadRequestError, ConflictError, NotFoundError, PermissionDeniedError, UnknownTokenError

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext
    from scheduler_core.scheduling import Decision
    from state.planning import SchedulingInputs
    from state.records import HistoryEntry, Job, Token
    from state.session import Session

#: At most one self-driven scheduling pass per this many seconds across every waiting launcher (no daemon).
SELF_SCHEDULE_INTERVAL_S = 10.0
#: How long a release waits for a job's own launcher to end it before ending it itself.
LAUNCHER_ANSWER_S = 5.0


# -- submitting --------------------------------------------------------------------------------------------


def submit(
    ctx: ServiceContext,
    *,
    sda: int | None = None,
    priority: int | None = None,
    process: str,
    launcher_pid: int,
    launcher_create_time: float,
    host: str,
    ip: str,
    machine_id: str,
    gpus: Sequence[GpuInfo] | None = None,
    guardian_pid: int | None = None,
    guardian_create_time: float | None = None,
    client_version: str = "",
    time_limit: float | None = None,
    requeue_of: int | None = None,
) -> Submitted:
    """Queue a job of the caller's token to run on the caller's host, and run a scheduling pass, in one transaction.

    The SDA is ``sda``, else the token's current one. A priority above the token's own needs an ADMIN
    token. An unregistered host is registered with ``gpus`` when the caller may register hosts (the
    state's owner, ADMIN or HOST), else refused. A launcher that submits twice (a retry after a lost
    answer) gets its first job back.

    ``time_limit`` is what the user asked for (``moreh-run --time``, seconds); the job's limit is decided
    here once (:func:`moreh_tools.services.limits.job_limit`), and a request above a maximum is refused
    before anything is queued. ``requeue_of`` names a job of the same token that ended ``preempted``
    (``moreh-run --requeue``): the new job takes its SDA, priority, limit and request time, so it goes
    back to the place in the queue the preempted one had.
    """
    from moreh_tools.services.limits import job_limit

    token_value = ctx.caller.token
    if token_value is None:
        raise UnknownTokenError("SDA token is not given.")
    if time_limit is not None and not 0 < time_limit <= 365 * 86400:
        raise BadRequestError(f"A time limit must be more than 0 and at most 365 days, not {time_limit} s.")
    with ctx.write(f"moreh-run {process}"[:200]) as s:
        token = _known_token(s, token_value)
        request_time = None
        if requeue_of is not None:
            before = _requeued(s, token_value, requeue_of)
            sda, priority, request_time = before.sda_id, before.priority, before.request_time
            if time_limit is None:
                time_limit = before.time_limit
        elif priority is not None:
            check_priority_allowed(token, priority)
        sda_id = sda if sda is not None else token.current_sda
        if sda_id is None:
            raise ConflictError(
                "This token has no SDA; add one with 'moreh-smi device --add', ask an admin to create one, "
                "or use --sda ID."
            )
        _check_own_sda(s, token_value, sda_id)
        backend_id = find_host(s, machine_id, host)
        if backend_id is None:
            if not gpus or not ctx.caller.is_host:
                raise NotFoundError(
                    f"This host '{host}' is not a registered backend; start 'sdamanager' on it with a HOST or ADMIN "
                    "token (MOREH_SDA_TOKEN), or ask an admin to register it."
                )
            backend_id = register_in(s, host=host, ip=ip, machine_id=machine_id, gpus=gpus)
        elif gpus and ctx.caller.is_host:
            # GPUs that appeared since the host registered (MOREH_FAKE_GPUS raised) join as IDLE; nothing else moves.
            backend_id = register_in(s, host=host, ip=ip, machine_id=machine_id, gpus=gpus)
        again = s.jobs.of_launcher(backend_id, launcher_pid, launcher_create_time)
        if again is not None:
            job = s.jobs.get(again)
            return Submitted(job, job.status != "QUEUED", token.env)
        if machine_id == ctx.machine_id:
            end_abandoned(s, backend_id, str(ctx.home))
        limit = job_limit(s, token_value, s.sdas.get(sda_id).model_id, time_limit)
        job = s.jobs.submit(
            token_value,
            sda_id,
            backend_id=backend_id,
            launcher_pid=launcher_pid,
            launcher_create_time=launcher_create_time,
            guardian_pid=guardian_pid,
            guardian_create_time=guardian_create_time,
            process_name=process[:200],
            priority=priority,
            client_version=client_version[:50],
            time_limit=limit,
            request_time=request_time,
        )
        if requeue_of is not None:
            s.events.record("REQUEUE_JOB", f"id={job.id} preempted={requeue_of}", token_value)
        inputs, decision = run_pass_on(s)
        if any(a.job_id == job.id for a in decision.allocations):
            result = Submitted(s.jobs.get(job.id), True, token.env)
        else:  # why it waits, where it stands and when it should start
            result = _explain(s, job, token.env, decision, inputs)
    ctx.wake(j for j in woken(decision) if j != job.id)
    return result


def _requeued(s: Session, token: str, job_id: int) -> HistoryEntry:
    """The preempted job ``job_id`` of ``token`` that a ``--requeue`` resubmits (refused unless it is one)."""
    ended = s.jobs.history_entry(job_id)
    if ended is None or ended.token != token:
        raise NotFoundError(f"Job {job_id} is not an ended job of this token; only a preempted job can be requeued.")
    if ended.end_reason != "preempted":
        raise ConflictError(f"Job {job_id} ended as {ended.end_reason}, not preempted; only a preempted job is requeued.")
    return ended


def _known_token(s: Session, token: str) -> Token:
    try:
        return s.tokens.get(token)
    except NotFoundError:
        raise UnknownTokenError(f"Token '{token[:8]}...' is not known to the SDA Manager.") from None


def _check_own_sda(s: Session, token: str, sda_id: int) -> None:
    try:
        sda = s.sdas.get(sda_id)
    except NotFoundError:
        raise NotFoundError(f"SDA {sda_id} does not exist; see your SDAs with 'moreh-smi'.") from None
    if sda.token != token:
        raise ConflictError(
            f"SDA {sda_id} belongs to another token; use one of your SDAs (see 'moreh-smi') with --sda or "
            "MOREH_VISIBLE_DEVICE."
        )


def _explain(
    s: Session, job: Job, env: tuple[tuple[str, str], ...], decision: Decision, inputs: SchedulingInputs | None
) -> Submitted:
    """Why the job waits: its SDA busy with another process, or not enough free devices; and when it should start.

    ``inputs``: what the pass that left it waiting decided on; its place is its place in their order among the
    jobs that pass did not start.
    """
    from moreh_tools.services.scheduling import local_time

    busy_pid: int | None = None
    busy_command = ""
    for other in s.jobs.of_token(job.token):
        if other.sda_id == job.sda_id and other.id != job.id and other.status != "QUEUED":
            busy_pid = other.pid or other.launcher_pid
            busy_command = other.process_name
            break
    if inputs is None:
        inputs = s.jobs.snapshot(now=settings.now(), halflife=settings.fairshare_halflife())
    started = {a.job_id for a in decision.allocations}
    waiting = [queued.id for queued in inputs.ordered() if queued.id not in started]
    return Submitted(
        job,
        False,
        env,
        busy_pid,
        busy_command,
        waiting.index(job.id) + 1 if job.id in waiting else None,
        decision.waiting.get(job.id, ""),
        decision.reason_codes.get(job.id, ""),
        local_time(decision.expected_start.get(job.id)),
    )


# -- waiting and watching ---------------------------------------------------------------------------------


def owned_job(s: Session, caller: Caller, job_id: int) -> tuple[Job | None, bool]:
    """(the job if still queued or running, whether it exists at all) for its owner or an admin.

    Another token's job answers exactly like a missing one, before anything else is looked at.
    """
    job = s.jobs.find(job_id)
    if job is not None:
        if not (caller.is_admin or caller.owns(job.token)):
            raise NotFoundError(f"Job {job_id} not found.")
        return job, True
    ended = s.jobs.history_entry(job_id)
    if ended is None or not (caller.is_admin or caller.owns(ended.token)):
        raise NotFoundError(f"Job {job_id} not found.")
    return None, True


def job_update(s: Session, caller: Caller, job_id: int, seen: str) -> JobUpdate | None:
    """What changed for a launcher that last saw its job ``seen`` (``queued``, ``running``, ``running#<notice id>``
    or ``release``); None: nothing."""
    job, _ = owned_job(s, caller, job_id)
    if job is None:
        ended = s.jobs.history_entry(job_id)
        if ended is None:
            return JobUpdate("ended", reason="removed")
        return JobUpdate("ended", reason=ended.end_reason, detail=ended.end_detail)
    if job.status == "QUEUED":
        return None if seen == "queued" else JobUpdate("queued", job)
    if seen == "queued":
        return JobUpdate("allocated", job)
    if job.release_requested and seen != "release":
        return JobUpdate("release", job, detail=job.release_detail)
    if job.preempting and seen not in ("release", "preempt"):
        for_job = f"job {job.preempted_for}" if job.preempted_for is not None else "another job"
        return JobUpdate("preempt", job, detail=f"its borrowed devices went back to {for_job}'s user group")
    from moreh_tools.services.guardian import notice_update  # the GPU guardian's lines for the launcher

    return notice_update(s, job_id, seen)


def wait(ctx: ServiceContext, *, job_id: int, timeout: float, seen: str = "queued") -> JobUpdate:
    """Block until the job's state differs from ``seen`` or ``timeout`` seconds pass (then: ``seen`` again).

    Without a daemon this sleeps on the job's FIFO (whoever changes the job writes to it) and, when the
    wait times out, drives the scheduler itself (at most once per :data:`SELF_SCHEDULE_INTERVAL_S` across
    all launchers). In the daemon, the server waits without a thread instead (see the API's op endpoint).
    """
    from moreh_tools.jobs import wakeup

    deadline = time.monotonic() + max(timeout, 0.0)
    fifo = wakeup.WakeUp(ctx.home, job_id)  # before the first read: a change after it wakes us
    try:
        while True:
            with ctx.read() as s:
                update = job_update(s, ctx.who(s), job_id, seen)
            if update is not None:
                return update
            left = deadline - time.monotonic()
            if left <= 0:
                return JobUpdate("queued" if seen == "queued" else "running")
            if not fifo.wait(left) and seen == "queued" and not ctx.daemon_running:
                schedule_if_due(ctx)
    finally:
        fifo.close()


# -- starting and ending ------------------------------------------------------------------------------------


def started(ctx: ServiceContext, *, job_id: int, pid: int, create_time: float, containment: str = "") -> bool:
    """Mark the job RUNNING with its command's pid; True when it was withdrawn (released or ended) meanwhile.

    The pid is the launcher's claim: releasing the job signals that pid's tree. On this machine it is checked
    at once (the job's command carries ``MOREH_JOB_ID``); elsewhere the host's daemon checks it before it
    signals anything. ``containment`` says how the launcher contains the job's processes (its cgroup, or
    the process-group fallback), for ``moreh-smi -p``.
    """
    from moreh_tools.jobs import processes

    if not 0 < pid < 2**31:
        raise BadRequestError(f"{pid} is not a process id.")
    with ctx.write("moreh-run: command started") as s:
        job, _ = owned_job(s, ctx.who(s), job_id)
        withdrawn = job is None or job.release_requested
        if job is not None and not withdrawn:
            if job.status == "QUEUED":
                raise ConflictError(f"Job {job_id} has no devices yet; wait for them first.")
            here = find_host(s, ctx.machine_id, ctx.host)
            if job.backend_id == here and processes.carries_job_tag(pid, job_id) is False:
                raise ConflictError(f"Process {pid} is not job {job_id}'s command (it lacks MOREH_JOB_ID={job_id}).")
            s.jobs.mark_running(job_id, pid, create_time)
            if containment:
                from state import containment as contained

                contained.record(s, job_id, containment)
    return withdrawn


def cleaning(ctx: ServiceContext, *, job_id: int) -> None:
    """The job's command ended and its leftovers are being killed: its devices show CLEANING meanwhile."""
    with ctx.write("moreh-run: cleaning up") as s:
        job, _ = owned_job(s, ctx.who(s), job_id)
        if job is not None and job.status != "QUEUED":
            s.jobs.mark_cleaning(job_id)


#: The end reasons of a job someone (or the GPU guardian) asked to stop.
STOPPED_REASONS = ("released", "idle")


def finish(
    ctx: ServiceContext, *, job_id: int, exit_code: int | None, reason: str, detail: str = ""
) -> str | None:
    """Record the job's end (``finished``, ``failed``, ``lost``, ``cancelled``...) and hand its devices on.

    Returns who stopped the job when someone asked it to stop (the release's detail), else None: a launcher
    whose command was ended by its host's daemon before the launcher heard of the release still says why.
    Repeating it is harmless: a job already ended is left as it is and costs no scheduling pass.
    """
    with ctx.write(f"moreh-run: job {job_id} {reason}") as s:
        job, _ = owned_job(s, ctx.who(s), job_id)
        if job is None:  # ended already: by a release that did not wait for this launcher, or a repeat
            ended = s.jobs.history_entry(job_id)
            if ended is None or ended.end_reason not in STOPPED_REASONS:
                return None
            return ended.end_detail or "it was released"
        if job.status != "QUEUED":
            s.jobs.mark_cleaning(job_id)
        finish_job(s, job_id, exit_code, reason, detail)
        decision = run_pass(s)
    ctx.wake([job_id, *woken(decision)])
    if not job.release_requested:
        return None
    return job.release_detail or "it was released"


def abandoned(
    ctx: ServiceContext, *, machine_id: str, host: str, launcher_pid: int, launcher_create_time: float
) -> int | None:
    """A guardian whose launcher died before it learnt its job's id: end that launcher's job as ``lost``.

    Finds the job by its launcher (machine, pid, start time); returns its id, None when it never got queued.
    """
    with ctx.read() as s:
        backend_id = find_host(s, machine_id, host)
        job_id = s.jobs.of_launcher(backend_id, launcher_pid, launcher_create_time) if backend_id else None
    if job_id is not None:
        finish(ctx, job_id=job_id, exit_code=None, reason="lost", detail="its moreh-run died while submitting")
    return job_id


# -- releasing ------------------------------------------------------------------------------------------------


def release(ctx: ServiceContext, *, job_ids: Sequence[int], detail: str) -> list[int]:
    """Ask jobs to stop: queued ones leave the queue at once; running ones end within the grace period.

    The caller must be an admin or own every job. A running job's launcher, told at once, stops its
    command (SIGTERM, then SIGKILL after ``MOREH_RELEASE_GRACE``) and records the end; jobs of this
    machine whose launcher does not answer in time are ended here. Returns the ids released; the call
    returns once they have ended (or their host is left to end them).
    """
    from moreh_tools.jobs import processes

    with ctx.write(f"release {' '.join(map(str, job_ids))}"[:200]) as s:
        jobs = []
        for job_id in job_ids:
            job = s.jobs.find(job_id)
            if job is None:
                continue
            if not (ctx.who(s).is_admin or ctx.caller.owns(job.token)):
                raise NotFoundError(f"Job {job_id} not found.")
            jobs.append(s.jobs.request_release(job_id, detail))
        decision = run_pass(s) if any(j.status == "QUEUED" for j in jobs) else None
    ctx.wake([j.id for j in jobs] + (woken(decision) if decision else []))
    running = [j for j in jobs if j.status != "QUEUED"]
    if not running:
        return [j.id for j in jobs]
    here = this_backend_id(ctx)
    local = [j for j in running if here is not None and j.backend_id == here]
    grace = processes.release_grace()
    # The launchers were told; end the commands here too (they may ignore SIGTERM, or their launcher hang).
    processes.end_jobs([(j.id, j.pid, j.pid_create_time) for j in local], str(ctx.home), grace)
    # Each launcher records its job's end once its command is gone; one that is gone itself cannot.
    deadline = time.monotonic() + LAUNCHER_ANSWER_S
    waiting = {j.id: j for j in local if processes.is_alive(j.launcher_pid, j.launcher_create_time)}
    while waiting and time.monotonic() < deadline:
        with ctx.read() as s:
            waiting = {
                job_id: job
                for job_id, job in waiting.items()
                if s.jobs.find(job_id) is not None and processes.is_alive(job.launcher_pid, job.launcher_create_time)
            }
        if waiting:
            time.sleep(0.05)
    with ctx.read() as s:
        unended = {j.id for j in local if s.jobs.find(j.id) is not None}
    if unended:
        # A launcher still alive may have started its command after the sweep above: end it before the
        # devices are handed on, then record what no launcher did.
        stuck = [j for j in local if j.id in unended]
        processes.end_jobs([(j.id, None, None) for j in stuck], str(ctx.home), grace)
        with ctx.write("release") as s:
            for job in stuck:
                if s.jobs.find(job.id) is not None:
                    s.jobs.mark_cleaning(job.id)
                    finish_job(s, job.id, None, "released", detail)
            decision = run_pass(s)
        ctx.wake([j.id for j in stuck] + woken(decision))
    return [j.id for j in jobs]


def release_mine(ctx: ServiceContext, *, device: str | None = None) -> list[int]:
    """``moreh-smi -r``: release the caller's token's jobs (of one of its devices); the ids released (none: [])."""
    from moreh_tools.services.devices import check_token, owned_device

    token = ctx.caller.token
    if token is None:
        raise UnknownTokenError("SDA token is not given.")
    with ctx.read() as s:
        check_token(s, token)
        sda_id = owned_device(s, token, device).id if device is not None else None
        ids = [j.id for j in s.jobs.of_token(token) if sda_id is None or j.sda_id == sda_id]
    if not ids:
        return []
    return release(ctx, job_ids=ids, detail="released by its user (moreh-smi -r)")


def this_backend_id(ctx: ServiceContext) -> int | None:
    """The backend of the machine this process runs on, if registered."""
    with ctx.read() as s:
        return find_host(s, ctx.machine_id, ctx.host)


def check_priority_allowed(token: Token, priority: int) -> None:
    """A token's own jobs may have at most the token's priority, unless it is an ADMIN token."""
    if token.access_level != ADMIN and priority > token.priority:
        raise PermissionDeniedError(
            f"A {token.access_level} token may set its jobs' priority up to its token priority "
            f"({token.priority}), not {priority}; ask an admin for more."
        )


def set_priority(ctx: ServiceContext, *, job_id: int, priority: int) -> None:
    """Change a queued job's priority and let the scheduler act on the new order at once.

    An admin may set any priority; a job's own token up to the token's priority.
    """
    with ctx.write(f"update job priority {job_id} {priority}") as s:
        job, _ = owned_job(s, ctx.who(s), job_id)
        if job is None:
            raise NotFoundError(f"Job {job_id} has already ended; see 'get history feid {job_id}'.")
        if not ctx.who(s).is_admin:
            check_priority_allowed(s.tokens.get(job.token), priority)
        s.jobs.update_priority(job_id, priority)
        # A new order can let a job start now (a lowered head no longer holds its group up).
        decision = run_pass(s)
    ctx.wake(woken(decision))


# -- the scheduling pass ------------------------------------------------------------------------------------


def end_abandoned(s: Session, backend_id: int, home: str) -> list[int]:
    """End this machine's jobs whose launcher and guardian are both gone, inside the caller's transaction.

    Their orphaned processes (if any) get SIGTERM and, half a second later, SIGKILL, before the devices go
    back to the pool: no later job may share a GPU with them. Returns the jobs ended (as ``lost``).
    """
    from moreh_tools.jobs import processes

    dead = [
        job
        for job in s.jobs.on_backend(backend_id)
        if not processes.is_alive(job.launcher_pid, job.launcher_create_time)
        and not processes.is_alive(job.guardian_pid, job.guardian_create_time)
    ]
    if not dead:
        return []
    processes.end_jobs([(j.id, j.pid, j.pid_create_time) for j in dead], home, grace=0.5)
    from moreh_tools.services.enforcement import limit_deadline, timeout_detail

    ended = []
    now = settings.now()
    for job in dead:
        if job.status != "QUEUED":
            s.jobs.mark_cleaning(job.id)
        deadline = limit_deadline(job) if job.status != "QUEUED" else None
        reason, detail = "lost", "its moreh-run and guardian are gone"
        if deadline is not None and now >= deadline:
            reason, detail = "timeout", timeout_detail(job)
        if finish_job(s, job.id, None, reason, detail) is not None:
            ended.append(job.id)
    return ended


def schedule(ctx: ServiceContext, reason: str = "scheduling pass") -> tuple[Decision, list[int]]:
    """End this machine's abandoned jobs, run a scheduling pass, wake whoever got devices.

    Returns the decision and the jobs ended as ``lost``.
    """
    with ctx.write(reason) as s:
        backend_id = find_host(s, ctx.machine_id, ctx.host)
        lost = end_abandoned(s, backend_id, str(ctx.home)) if backend_id is not None else []
        decision = run_pass(s)
    ctx.wake([*lost, *woken(decision)])
    return decision, lost


def end_jobs_of_silent_hosts(ctx: ServiceContext, timeout: float, keep: int | None = None) -> list[tuple[int, str]]:
    """End (as ``lost``) the jobs of hosts that stopped reporting for ``timeout`` seconds, except backend ``keep``.

    Such a host's devices also leave the pool (the scheduler skips silent backends) until it reports again.
    Returns (job id, host) of the jobs ended.
    """
    with ctx.read() as s:
        silent = [b for b in s.backends.silent_since(timeout) if b != keep]
        doomed = [(job.id, job.host) for backend_id in silent for job in s.jobs.on_backend(backend_id)]
    if not silent:
        return []
    with ctx.write("sdamanager: hosts that stopped reporting") as s:
        for backend_id in silent:
            s.backends.mark_unreachable(backend_id)
        ended = []
        for job_id, host in doomed:
            job = s.jobs.find(job_id)
            if job is None:
                continue
            if job.status != "QUEUED":
                s.jobs.mark_cleaning(job_id)
            finish_job(s, job_id, None, "lost", f"its host '{host}' stopped reporting for {timeout:g} s")
            ended.append((job_id, host))
    ctx.wake(job_id for job_id, _ in ended)
    return ended


def schedule_if_due(ctx: ServiceContext, min_interval: float = SELF_SCHEDULE_INTERVAL_S) -> bool:
    """Run :func:`schedule` unless some launcher did so in the last ``min_interval`` seconds (no daemon).

    Waiting launchers call this when their wait times out; the shared time stamp keeps a hundred of them
    from each taking the state lock for the same pass.
    """
    from moreh_tools.jobs import wakeup

    if not wakeup.claim_turn(ctx.home, "last-schedule", min_interval):
        return False
    schedule(ctx, "moreh-run: scheduling pass (no daemon)")
    return True
