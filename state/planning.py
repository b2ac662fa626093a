"""Everything one scheduling pass reads, the same for every pass: the applied ones and the read-only ones.

:func:`scheduling_snapshot` adds to the queue (:func:`state.queue.scheduling_inputs`) what backfill, quotas
and fair share need: the jobs that hold devices (with their start times, limits, quota charge, borrowed and
preempting flags), the quotas in force (with the grants of approved requests), each group's fair-share
factor, and the plan the last applied pass left (``scheduler_plan``), so that a pass in a launcher on the
state file, one in the daemon, and the read-only passes behind ``moreh-smi`` and the dashboard all decide
from the same inputs. :func:`save_plan` is how an applied pass leaves its plan for the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from scheduler_core.fairshare import fairshare_factors
from scheduler_core.scheduling import (
    BackendState,
    Decision,
    Policy,
    QueuedJob,
    Quota,
    Reservation,
    RunningJob,
    charged_group,
    queue_order,
    schedule,
)
from state.queue import scheduling_inputs

if TYPE_CHECKING:
    from state.session import Session

DeviceKey = tuple[int, int]


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass(frozen=True)
class SchedulingInputs:
    """A snapshot of what :func:`scheduler_core.scheduling.schedule` needs, read in one session at ``now``."""

    backends: list[BackendState]
    queue: list[QueuedJob]
    active: dict[int, int]
    reserved: set[DeviceKey]
    running: list[RunningJob]
    now: float
    quotas: dict[tuple[int, int], Quota]
    fairshare: dict[int, float] | None
    previous: list[Reservation]

    def decide(self, policy: Policy) -> Decision:
        """Run the pure scheduler on this snapshot."""
        return schedule(
            self.backends,
            self.queue,
            self.active,
            self.reserved,
            running=self.running,
            now=self.now,
            policy=policy,
            quotas=self.quotas,
            fairshare=self.fairshare,
            previous=self.previous,
        )

    def ordered(self) -> list[QueuedJob]:
        """The queue in the order the scheduler serves it (priority, fair share, request time, id)."""
        return queue_order(self.queue, self.fairshare)

    def positions(self) -> dict[int, int]:
        """The 1-based place of every queued job in :meth:`ordered`, by job id."""
        return {job.id: n for n, job in enumerate(self.ordered(), start=1)}


def token_groups(s: Session) -> dict[str, list[int]]:
    """Token -> the ids of the user groups it belongs to, lowest first."""
    groups: dict[str, list[int]] = {}
    for group_id, token in s.all("SELECT group_id, token FROM user_group_tokens ORDER BY group_id"):
        groups.setdefault(str(token), []).append(int(group_id))
    return groups


def group_shares(quotas: dict[tuple[int, int], Quota], group_ids: Sequence[int]) -> dict[int, float]:
    """Each user group's fair share: its nominal quotas (grants included) summed over backend groups, at least 1."""
    shares = {g: 0.0 for g in group_ids}
    for (group, _), quota in quotas.items():
        shares[group] = shares.get(group, 0.0) + quota.nominal
    return {g: max(1.0, share) for g, share in shares.items()}


def fairshare_of(s: Session, now: float, halflife: float, quotas: dict[tuple[int, int], Quota]) -> dict[int, float]:
    """Every user group's fair-share factor at ``now`` (empty when no group has used anything yet)."""
    usage = {g: u for g, u in s.fairshare.decayed(now, halflife).items() if u > 0}
    if not usage:
        return {}
    groups = [int(r[0]) for r in s.all("SELECT id FROM user_groups ORDER BY id")]
    return fairshare_factors(usage, group_shares(quotas, groups))


def _running(s: Session) -> list[RunningJob]:
    devices: dict[int, list[DeviceKey]] = {}
    for job_id, backend_id, index in s.all("SELECT job_id, backend_id, device_index FROM job_devices ORDER BY 1, 2, 3"):
        devices.setdefault(int(job_id), []).append((int(backend_id), int(index)))
    rows = s.all(
        "SELECT j.id, j.token, j.sda_id, j.priority, coalesce(j.submit_time, j.start_time, j.request_time), "
        "j.time_limit, coalesce(g.backend_group_id, 0), j.charged_group, j.borrowed, j.preempting, j.preempted_for "
        "FROM jobs j LEFT JOIN sdas s ON s.id = j.sda_id LEFT JOIN model_groups g ON g.id = s.model_group_id "
        "WHERE j.status <> 'QUEUED'"
    )
    return [
        RunningJob(
            id=int(jid),
            token=str(token),
            sda_id=int(sda_id),
            priority=int(priority),
            devices=tuple(devices.get(int(jid), ())),
            start_time=_epoch(start) or 0.0,
            time_limit=float(limit) if limit is not None else None,
            backend_group_id=int(group),
            charged_group=int(charged) if charged is not None else None,
            borrowed=bool(borrowed),
            preempting=bool(preempting),
            preempted_for=int(victim_of) if victim_of is not None else None,
        )
        for jid, token, sda_id, priority, start, limit, group, charged, borrowed, preempting, victim_of in rows
    ]


def load_plan(s: Session) -> list[Reservation]:
    """The reservations the last applied pass planned, by job id."""
    planned: dict[int, tuple[float, list[DeviceKey]]] = {}
    for job_id, start, backend_id, index in s.all(
        "SELECT job_id, start_time, backend_id, device_index FROM scheduler_plan ORDER BY 1, 3, 4"
    ):
        planned.setdefault(int(job_id), (float(start), []))[1].append((int(backend_id), int(index)))
    return [Reservation(job_id, start, tuple(devices)) for job_id, (start, devices) in sorted(planned.items())]


def save_plan(s: Session, reservations: Sequence[Reservation]) -> None:
    """Replace the stored plan by ``reservations`` (one statement each way)."""
    s.execute("DELETE FROM scheduler_plan")
    rows = [(r.job_id, r.start, b, i) for r in reservations for b, i in r.devices]
    if rows:
        s.execute(
            "INSERT INTO scheduler_plan SELECT unnest(?::BIGINT[]), unnest(?::DOUBLE[]), unnest(?::INTEGER[]), "
            "unnest(?::INTEGER[])",
            [[r[n] for r in rows] for n in range(4)],
        )


def scheduling_snapshot(s: Session, *, now: float, halflife: float) -> SchedulingInputs:
    """Read everything a pass needs at ``now`` (``halflife``: of the fair-share usage, in seconds)."""
    backends, queue, active, reserved = scheduling_inputs(s)
    running = _running(s) if active else []
    quotas = {key: Quota(nominal, borrow) for key, (nominal, borrow) in s.quotas.in_force(now).items()}
    groups = token_groups(s)
    factors: dict[int, float] = {}
    if groups:
        factors = fairshare_of(s, now, halflife, quotas)
        queue = [_with_groups(job, groups.get(job.token, []), quotas) for job in queue]
    previous = load_plan(s) if queue else []
    return SchedulingInputs(backends, queue, active, reserved, running, now, quotas, factors or None, previous)


def _with_groups(job: QueuedJob, groups: list[int], quotas: dict[tuple[int, int], Quota]) -> QueuedJob:
    if not groups:
        return job
    charged = None if job.reserved_devices else charged_group(groups, job.backend_group_id, quotas)
    return replace(job, charged_group=charged, fairshare_group=charged if charged is not None else min(groups))


def plan(s: Session, policy: Policy, *, now: float, halflife: float) -> tuple[SchedulingInputs, Decision]:
    """The pass the scheduler would make at ``now``, without applying it (for views: reasons, estimates, order)."""
    inputs = scheduling_snapshot(s, now=now, halflife=halflife)
    if not inputs.queue:
        return inputs, Decision((), {})
    return inputs, inputs.decide(policy)
