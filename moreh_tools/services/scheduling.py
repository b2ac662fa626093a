"""Scheduling passes as the services run them: the same settings and inputs for every pass, applied or not.

Every applied pass (a job queued or ended, a release, the daemon's tick, a waiting launcher's own pass)
goes through :func:`run_pass`; every read-only one (moreh-smi's waiting table, the dashboard, ``show job
--start``, the API's queue) through :func:`queue_info`. Both read the same snapshot
(:func:`state.planning.scheduling_snapshot`: running jobs with their limits, the previous plan, quotas in
force, fair-share factors) with the policy and clock of :mod:`moreh_tools.services.settings`, so what a
view says a job waits for is what the next pass decides. Jobs ending go through :func:`finish_job`, which
adds their GPU-seconds to their group's fair-share usage with the configured half-life.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING

from moreh_tools.services import settings
from moreh_tools.services.records import QueueInfo

if TYPE_CHECKING:
    from moreh_tools.services.records import FairShareRow
    from scheduler_core.scheduling import Decision
    from state.planning import SchedulingInputs
    from state.records import HistoryEntry
    from state.session import Session

#: What a queued job waits for when the scheduler has no objection: the next pass starts it.
STARTS_NEXT_PASS = "devices are free; it starts at the next scheduling pass"


def run_pass(s: Session) -> Decision:
    """Decide and apply one scheduling pass inside the caller's transaction."""
    return run_pass_on(s)[1]


def run_pass_on(s: Session) -> tuple[SchedulingInputs | None, Decision]:
    """:func:`run_pass`, with the inputs it decided on (None: nothing was queued)."""
    return s.jobs.scheduling_pass(settings.policy(), now=settings.now(), halflife=settings.fairshare_halflife())


def plan(s: Session) -> tuple[SchedulingInputs, Decision]:
    """The pass the scheduler would make now, without applying it (reads only what the views need)."""
    from state.planning import plan as planned

    return planned(s, settings.policy(), now=settings.now(), halflife=settings.fairshare_halflife())


def finish_job(s: Session, job_id: int, exit_code: int | None, reason: str, detail: str = "") -> HistoryEntry | None:
    """End a job (see :meth:`state.jobs.JobRepository.finish`), accruing its group's usage with the configured half-life."""
    return s.jobs.finish(
        job_id, exit_code, reason, detail, halflife=settings.fairshare_halflife(), now=settings.now()
    )


def woken(decision: Decision) -> list[int]:
    """The jobs whose launchers a pass must wake: those that got devices and those it preempts."""
    return [a.job_id for a in decision.allocations] + [p.victim_id for p in decision.preemptions]


def local_time(epoch: float | None) -> datetime | None:
    """An epoch time as a local datetime with its UTC offset (None stays None)."""
    return None if epoch is None else datetime.fromtimestamp(epoch).astimezone()


def queue_info(s: Session) -> dict[int, QueueInfo]:
    """Every queued job's place in scheduling order, reason code and sentence, and expected start, by job id.

    A fault of the scheduler leaves the reasons empty (they are a courtesy: a view must still show the queue),
    unless ``MOREH_DEBUG`` asks to see it.
    """
    from scheduler_core.reasons import STARTING

    try:
        inputs, decision = plan(s)
    except Exception:
        if os.environ.get("MOREH_DEBUG"):
            raise
        return {}
    positions = inputs.positions()
    info: dict[int, QueueInfo] = {}
    for job in inputs.queue:
        if job.id in decision.waiting:
            info[job.id] = QueueInfo(
                job.id,
                positions.get(job.id),
                decision.reason_codes.get(job.id, ""),
                decision.waiting[job.id],
                local_time(decision.expected_start.get(job.id)),
            )
        else:
            info[job.id] = QueueInfo(job.id, positions.get(job.id), STARTING, STARTS_NEXT_PASS, local_time(inputs.now))
    return info


def fairshare_rows(s: Session) -> list[FairShareRow]:
    """Every user group's share, decayed usage and fair-share factor now (factor 1 for all while nobody used anything)."""
    from moreh_tools.services.records import FairShareRow  # here: the dashboard's records cost moreh-smi's start
    from scheduler_core.fairshare import fairshare_factors
    from scheduler_core.scheduling import Quota
    from state.planning import group_shares

    now = settings.now()
    quotas = {key: Quota(n, b) for key, (n, b) in s.quotas.in_force(now).items()}
    groups = s.user_groups.all()
    usage = s.fairshare.decayed(now, settings.fairshare_halflife())
    shares = group_shares(quotas, [g.id for g in groups])
    factors = fairshare_factors({g: u for g, u in usage.items() if g in shares}, shares)
    return [
        FairShareRow(g.id, g.name, shares[g.id], usage.get(g.id, 0.0), factors.get(g.id, 1.0)) for g in groups
    ]
