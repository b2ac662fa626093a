"""What the live dashboard shows (the user view and the admin view) and who may open which.

A poll names the fingerprint of the state it last drew; when nothing changed since, the answer says so
and carries nothing else, so an idle dashboard costs one cheap query per interval wherever the state is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from moreh_tools.services.records import (
    SIMULATED_GPU_NAME,
    Access,
    AdminData,
    GridBackend,
    GridDevice,
    HistoryRow,
    JobRow,
    Snapshot,
    UsageRow,
    UserData,
    View,
)
from moreh_tools.services.scheduling import STARTS_NEXT_PASS
from moreh_tools.services.status import collect_status
from state import views
from state.errors import PermissionDeniedError, UnknownTokenError

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext
    from state.records import HistoryEntry, Job
    from state.session import Session

HISTORY_ROWS = 30
EVENT_ROWS = 60
USAGE_WINDOW = timedelta(hours=24)


def access(ctx: ServiceContext) -> Access:
    """Whose dashboard this is: the token's (user view, and the admin view for ADMIN), or the state owner's."""
    token = ctx.caller.token
    if token is None:
        if not ctx.caller.is_admin:
            raise UnknownTokenError(
                "SDA token is not given. Set MOREH_SDA_TOKEN (or the token file) for your devices; the admin view "
                "needs an ADMIN token or the state's owner."
            )
        return Access(None, f"state at {ctx.home}", admin=True)
    with ctx.read() as s:
        from moreh_tools.services.devices import check_token

        owner = check_token(s, token)
    label = owner.description or f"token {token[:8]}…"
    # A token opens the views of its level, even for the state's owner (the admin view without a token).
    return Access(token, label, admin=owner.access_level == "ADMIN")


def snapshot(ctx: ServiceContext, *, view: View, since: str = "") -> Snapshot:
    """Read what ``view`` shows; with ``since`` (the fingerprint of the last answer) and no change, just say so."""
    who = access(ctx)
    if view not in who.views:
        raise PermissionDeniedError(f"The {view} view is not available to {who.label}.")
    with ctx.read() as s:
        now, structure, samples = views.fingerprint(s)
        mark = repr((structure, samples))
        if since and since == mark:
            return Snapshot(now, ctx.daemon_running, changed=False, fingerprint=mark)
        if view == "user":
            assert who.token is not None
            return Snapshot(now, ctx.daemon_running, user=gather_user(s, who.token, who.label), fingerprint=mark)
        from moreh_tools.services.scheduling import fairshare_rows

        running, queue = gather_jobs(s)
        admin = AdminData(
            gather_grid(s), running, queue, gather_usage(s, now, running + queue),
            tuple(reversed(s.events.tail(EVENT_ROWS))), tuple(fairshare_rows(s)),
        )
        return Snapshot(now, ctx.daemon_running, admin=admin, fingerprint=mark)


# -- gathering -----------------------------------------------------------------------------------------------


def placed_on(job: Job) -> str:
    """``node1:0-3`` style: the GPUs a job holds, grouped by host."""
    by_host: dict[str, list[int]] = {}
    for ref in job.devices:
        by_host.setdefault(ref.backend_host, []).append(ref.index)
    return " ".join(f"{host}:{_ranges(sorted(indexes))}" for host, indexes in by_host.items())


def _ranges(indexes: list[int]) -> str:
    parts: list[str] = []
    start = prev = indexes[0]
    for index in [*indexes[1:], None]:
        if index is not None and index == prev + 1:
            prev = index
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if index is not None:
            start = prev = index
    return ",".join(parts)


def _job_row(job: Job, owner: str, position: int | None, reason: str) -> JobRow:
    return JobRow(
        id=job.id,
        token=job.token,
        owner=owner,
        sda_id=job.sda_id,
        status=job.status,
        priority=job.priority,
        device_count=job.device_count,
        host=job.host,
        process=job.process_name,
        position=position,
        reason=reason,
        request_time=job.request_time,
        start_time=job.start_time,
        placed_on=placed_on(job),
        time_limit=job.time_limit,
    )


def _history_row(entry: HistoryEntry) -> HistoryRow:
    return HistoryRow(
        entry.id, entry.sda_id, entry.process_name, entry.exit_code, entry.end_reason, entry.start_time, entry.end_time
    )


def gather_user(s: Session, token: str, label: str) -> UserData:
    """The user view of ``token``: devices (moreh-smi's status), jobs with queue places, recent history."""
    status = collect_status(s, token)
    waiting = {w.job_id: w for w in status.waiting}
    jobs = []
    for job in sorted(s.jobs.of_token(token), key=lambda j: (j.status == "QUEUED", j.sda_id, j.id)):
        wait = waiting.get(job.id)
        row = _job_row(job, label, wait.position if wait else None, wait.reason if wait else "")
        if wait is not None:
            row = replace(row, reason_code=wait.reason_code, expected_start=wait.expected_start)
        jobs.append(row)
    history = tuple(_history_row(e) for e in reversed(s.jobs.history(HISTORY_ROWS, token)))
    return UserData(status, tuple(jobs), history)


def gather_grid(s: Session) -> tuple[GridBackend, ...]:
    """Every backend and its GPUs with their scheduling status and last samples."""
    backends, devices = views.grid(s)
    flagged: dict[tuple[int, int | None], list[str]] = {}
    if not s.guardian.quiet():  # the GPU guardian's causes: UNHEALTHY GPUs, foreign processes, NVML failing
        for flag in s.guardian.flags():
            flagged.setdefault((flag.backend_id, flag.index), []).append(flag.cause)
    by_backend: dict[int, list[GridDevice]] = {}
    for d in devices:
        by_backend.setdefault(d.backend_id, []).append(
            GridDevice(d.idx, d.status, d.memory_used_mib, d.memory_total_mib, d.util_gpu, d.job_id,
                       d.name == SIMULATED_GPU_NAME, "; ".join(flagged.get((d.backend_id, d.idx), ())))
        )
    return tuple(
        GridBackend(
            b.id, b.host, b.status, b.group, tuple(by_backend.get(b.id, ())), "; ".join(flagged.get((b.id, None), ()))
        )
        for b in backends
    )


def gather_jobs(s: Session) -> tuple[tuple[JobRow, ...], tuple[JobRow, ...]]:
    """(running jobs by id, queued jobs in scheduling order with their place, why they wait and when they start)."""
    from moreh_tools.services.scheduling import queue_info

    jobs = s.jobs.all()
    owners = s.tokens.descriptions({j.token for j in jobs})
    queued = {j.id: j for j in jobs if j.status == "QUEUED"}
    info = queue_info(s) if queued else {}
    running = tuple(_job_row(j, owners.get(j.token, ""), None, "") for j in jobs if j.status != "QUEUED")
    order = sorted(queued, key=lambda jid: (info[jid].position or 0, jid) if jid in info else (len(queued) + 1, jid))
    queue_rows = tuple(
        replace(
            _job_row(queued[jid], owners.get(queued[jid].token, ""), place, info[jid].reason if jid in info else STARTS_NEXT_PASS),
            reason_code=info[jid].reason_code if jid in info else "",
            expected_start=info[jid].expected_start if jid in info else None,
        )
        for place, jid in enumerate(order, start=1)
    )
    return running, queue_rows


def gather_usage(s: Session, now: datetime, jobs: Sequence[JobRow]) -> tuple[UsageRow, ...]:
    """Device-hours per token over the last :data:`USAGE_WINDOW`, with what each has queued and running now."""
    running: dict[str, int] = {}
    queued: dict[str, int] = {}
    owners: dict[str, str] = {}
    for job in jobs:
        counts = queued if job.queued else running
        counts[job.token] = counts.get(job.token, 0) + 1
        owners[job.token] = job.owner
    used = s.jobs.usage(now - USAGE_WINDOW, now)
    rows = [
        UsageRow(
            u.token, u.description, u.device_seconds / 3600, u.jobs, running.get(u.token, 0), queued.get(u.token, 0)
        )
        for u in used
    ]
    # Tokens that only wait (or only just started) have used nothing yet but belong in the table.
    rows += [
        UsageRow(token, owners.get(token, ""), 0.0, 0, running.get(token, 0), queued.get(token, 0))
        for token in sorted((set(running) | set(queued)) - {u.token for u in used})
    ]
    return tuple(rows)
