"""A discrete-event replay of a job trace through the pure scheduler (``scheduler_core.scheduling.schedule``).

The simulated clock jumps from event to event (an arrival, a job's end). At each event time the
simulator builds the scheduler's inputs (backends and device states, the queue, the running jobs
with their start times and limits), runs one pass with ``now`` set to that time, and applies the
decision: allocations start at once and end after their run time; a preempted job stops
``PREEMPT_GRACE`` seconds later and goes back to the queue (its work is lost), as a daemon would do.

The trace generators are seeded, so a run is reproducible. ``benchmarks/bench_scheduler_sim.py``
prints the figures; ``tests/test_scheduler_backfill.py`` uses :func:`simulate` for small properties.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scheduler_core.fairshare import accrue, fairshare_factors
from scheduler_core.scheduling import (
    BackendState,
    DeviceState,
    Policy,
    QueuedJob,
    Quota,
    Reservation,
    RunningJob,
    schedule,
)

PREEMPT_GRACE = 30.0
"""Seconds a preempted job takes to stop."""


@dataclass(frozen=True)
class SimJob:
    """One job of a trace: when it arrives, how many GPUs, how long it really runs and its time limit."""

    id: int
    arrival: float
    gpus: int
    runtime: float
    limit: float | None
    group: int | None = None
    priority: int = 0
    host: int | None = None  # the backend a host-bound job must run on (moreh-run runs a job where it is launched)


@dataclass(frozen=True)
class Cluster:
    """``backends`` nodes of ``per_backend`` GPUs, all in backend group 0."""

    backends: int
    per_backend: int

    @property
    def gpus(self) -> int:
        """Every GPU of the cluster."""
        return self.backends * self.per_backend


@dataclass
class JobRecord:
    """What happened to one job."""

    job: SimJob
    first_estimate: float | None = None
    head_estimate: float | None = None  # its planned start when it was first the head of the queue's plan
    start: float | None = None
    end: float | None = None
    preempted: int = 0

    @property
    def wait(self) -> float:
        """Seconds from arrival to (last) start."""
        assert self.start is not None
        return self.start - self.job.arrival


@dataclass
class SimResult:
    """The outcome of one replay."""

    records: dict[int, JobRecord]
    cluster: Cluster
    first_arrival: float
    last_end: float
    busy_gpu_seconds: float
    useful_gpu_seconds: float
    gpu_seconds_by_group: dict[int | None, float]
    passes: int
    pass_seconds: float
    backlog_utilisation: float
    shares_while_contended: dict[int, float] = field(default_factory=dict)

    @property
    def utilisation(self) -> float:
        """Busy GPU-seconds (work later lost to preemption included) over the capacity of the whole run."""
        span = self.last_end - self.first_arrival
        return self.busy_gpu_seconds / (self.cluster.gpus * span) if span > 0 else 0.0

    def waits(self, sizes: Sequence[int] | None = None) -> list[float]:
        """The waits of the jobs of the given sizes (all jobs when None)."""
        return [r.wait for r in self.records.values() if sizes is None or r.job.gpus in sizes]

    def worst_slip(self) -> float:
        """The largest delay of any job's start past its first expected start (0 when none slipped)."""
        slips = [r.start - r.first_estimate for r in self.records.values() if r.first_estimate is not None and r.start]
        return max([0.0, *slips])

    def worst_head_slip(self) -> float:
        """The largest delay of a job's start past its planned start when it was first at the head of the plan."""
        slips = [r.start - r.head_estimate for r in self.records.values() if r.head_estimate is not None and r.start]
        return max([0.0, *slips])


def _backend(bid: int, per_backend: int, busy: set[int]) -> BackendState:
    return BackendState(
        bid,
        f"sim{bid}",
        0,
        True,
        tuple(DeviceState(bid, i, "PROCESSING" if i in busy else "IDLE") for i in range(per_backend)),
    )


def simulate(
    trace: Sequence[SimJob],
    cluster: Cluster,
    policy: Policy,
    *,
    quotas: Mapping[tuple[int, int], Quota] | None = None,
    fairshare_halflife: float | None = None,
    stop_after: float = math.inf,
) -> SimResult:
    """Replay ``trace`` on ``cluster`` under ``policy``; return every job's record and the run's figures.

    Args:
        trace: the jobs (ids unique, any order).
        cluster: the cluster.
        policy: the scheduling policy.
        quotas: (user group, 0) -> quota; jobs are charged to their ``group``.
        fairshare_halflife: with a half-life, jobs of equal priority are ordered by their group's
            fair-share factor, shares being the groups' nominal quotas (equal shares without quotas).
        stop_after: stop once the clock passes this time (the records of unfinished jobs stay open).
    """
    import time as _time  # the simulator times its own passes; the scheduler never reads the clock

    quotas = dict(quotas or {})
    arrivals = sorted(trace, key=lambda j: (j.arrival, j.id))
    by_id = {j.id: j for j in trace}
    records = {j.id: JobRecord(j) for j in trace}
    busy: dict[int, set[int]] = {b: set() for b in range(1, cluster.backends + 1)}
    backend_cache = {b: _backend(b, cluster.per_backend, set()) for b in busy}
    queue: dict[int, QueuedJob] = {}
    running: dict[int, RunningJob] = {}
    ends: list[tuple[float, int]] = []  # (end time, job id)
    groups = sorted({j.group for j in trace if j.group is not None})
    shares = {g: float(quotas[(g, 0)].nominal) if (g, 0) in quotas else 1.0 for g in groups}
    usage = dict.fromkeys(groups, 0.0)
    by_group: dict[int | None, float] = {}
    contended = dict.fromkeys(groups, 0.0)
    busy_seconds = useful = 0.0
    backlog_busy = backlog_time = 0.0
    passes = 0
    pass_seconds = 0.0
    now = arrivals[0].arrival if arrivals else 0.0
    first = now
    cursor = 0
    previous: tuple[Reservation, ...] = ()

    def queued_job(job: SimJob, at: float) -> QueuedJob:
        return QueuedJob(
            id=job.id,
            token=f"user{job.group}",
            sda_id=job.id,
            priority=job.priority,
            request_time=at,
            device_count=job.gpus,
            backend_group_id=0,
            sda_limit=0,
            allowed_backends=None if job.host is None else frozenset({job.host}),
            time_limit=job.limit,
            charged_group=job.group if job.group is not None and (job.group, 0) in quotas else None,
            fairshare_group=job.group,
        )

    while cursor < len(arrivals) or ends or queue:
        following = min(
            arrivals[cursor].arrival if cursor < len(arrivals) else math.inf,
            ends[0][0] if ends else math.inf,
        )
        if following == math.inf:
            break  # jobs left in the queue can never start
        elapsed = following - now
        if elapsed > 0:
            in_use = {g: 0 for g in groups}
            total = 0
            for r in running.values():
                total += len(r.devices)
                job = by_id[r.id]
                by_group[job.group] = by_group.get(job.group, 0.0) + len(r.devices) * elapsed
                if job.group is not None:
                    in_use[job.group] += len(r.devices)
            busy_seconds += total * elapsed
            if queue:
                backlog_busy += total * elapsed
                backlog_time += elapsed
            waiting_groups = {by_id[j].group for j in queue}
            if groups and all(g in waiting_groups for g in groups):
                for g in groups:
                    contended[g] += in_use[g] * elapsed
            if fairshare_halflife is not None:
                for g in groups:
                    usage[g] = accrue(usage[g], elapsed, fairshare_halflife, in_use[g] * elapsed)
        now = following
        if now > stop_after:
            break
        while ends and ends[0][0] <= now:
            _, jid = heapq.heappop(ends)
            r = running.pop(jid)
            for b, i in r.devices:
                busy[b].discard(i)
                backend_cache[b] = _backend(b, cluster.per_backend, busy[b])
            record = records[jid]
            if r.preempting and now < r.start_time + by_id[jid].runtime:
                record.preempted += 1
                record.start = None
                queue[jid] = queued_job(record.job, now)
            else:
                record.end = now
                useful += len(r.devices) * (now - r.start_time)
        while cursor < len(arrivals) and arrivals[cursor].arrival <= now:
            job = arrivals[cursor]
            queue[job.id] = queued_job(job, job.arrival)
            cursor += 1
        if not queue:
            continue
        factors = fairshare_factors(usage, shares) if fairshare_halflife is not None else None
        began = _time.perf_counter()
        decision = schedule(
            [backend_cache[b] for b in sorted(backend_cache)],
            list(queue.values()),
            running=list(running.values()),
            now=now,
            policy=policy,
            quotas=quotas,
            fairshare=factors,
            previous=previous,
        )
        previous = decision.reservations
        pass_seconds += _time.perf_counter() - began
        passes += 1
        for reservation in decision.reservations[:1]:
            head = records[reservation.job_id]
            if head.head_estimate is None:
                head.head_estimate = reservation.start
        for jid, expected in decision.expected_start.items():
            if expected is not None and records[jid].first_estimate is None:
                records[jid].first_estimate = expected
        for allocation in decision.allocations:
            job = by_id[allocation.job_id]
            del queue[job.id]
            for b, i in allocation.devices:
                busy[b].add(i)
                backend_cache[b] = _backend(b, cluster.per_backend, busy[b])
            running[job.id] = RunningJob(
                id=job.id,
                token=f"user{job.group}",
                sda_id=job.id,
                priority=job.priority,
                devices=allocation.devices,
                start_time=now,
                time_limit=job.limit,
                charged_group=queue_charge(job, quotas),
                borrowed=allocation.borrowed,
            )
            records[job.id].start = now
            heapq.heappush(ends, (now + job.runtime, job.id))
        for preemption in decision.preemptions:
            victim = running[preemption.victim_id]
            running[victim.id] = RunningJob(
                **{**victim.__dict__, "preempting": True, "preempted_for": preemption.for_job}
            )
            stop = now + PREEMPT_GRACE
            if stop < victim.start_time + by_id[victim.id].runtime:
                ends = [(t, j) for t, j in ends if j != victim.id]
                heapq.heapify(ends)
                heapq.heappush(ends, (stop, victim.id))
    last_end = max((r.end for r in records.values() if r.end is not None), default=first)
    total_contended = sum(contended.values())
    return SimResult(
        records=records,
        cluster=cluster,
        first_arrival=first,
        last_end=last_end,
        busy_gpu_seconds=busy_seconds,
        useful_gpu_seconds=useful,
        gpu_seconds_by_group=by_group,
        passes=passes,
        pass_seconds=pass_seconds,
        backlog_utilisation=backlog_busy / (cluster.gpus * backlog_time) if backlog_time else 0.0,
        shares_while_contended={g: v / total_contended for g, v in contended.items()} if total_contended else {},
    )


def queue_charge(job: SimJob, quotas: Mapping[tuple[int, int], Quota]) -> int | None:
    """The user group a job of the trace is charged to (its group, when that group has a quota)."""
    return job.group if job.group is not None and (job.group, 0) in quotas else None


# -- traces ------------------------------------------------------------------------------------------

SMALL_SIZES = (1, 2, 4, 8)
SMALL_WEIGHTS = (45, 20, 15, 20)
LARGE_SIZES = (16, 32, 64)
LARGE_WEIGHTS = (50, 30, 20)


def mixed_trace(
    cluster: Cluster,
    jobs: int = 2000,
    *,
    seed: int = 12,
    load: float = 1.05,
    large_fraction: float = 0.12,
    median_runtime: float = 1800.0,
    sigma: float = 1.0,
    exact_limits: bool = False,
    all_at_once: bool = False,
    groups: Sequence[int | None] = (None,),
    group_weights: Sequence[float] | None = None,
    host_bound: bool = True,
) -> list[SimJob]:
    """A seeded synthetic trace: 1-8 GPU jobs and 16-64 GPU multi-backend jobs, lognormal run times.

    Args:
        cluster: the cluster the load is sized for.
        jobs: how many jobs.
        seed: the random seed.
        load: offered load, as a fraction of the cluster's GPU-seconds over the arrival period.
        large_fraction: the share of multi-backend (16, 32, 64 GPU) jobs.
        median_runtime: the median run time in seconds (lognormal with ``sigma``).
        sigma: the lognormal shape.
        exact_limits: every job runs exactly to its limit (else the limit is 1-4x the run time).
        all_at_once: every job arrives at time 0 (nothing new arrives afterwards).
        groups: the user groups jobs belong to (None: no group).
        group_weights: how likely each group is (equal when None).
    """
    rng = random.Random(seed)
    mu = math.log(median_runtime)
    drafted: list[tuple[int, float, float, int | None, int | None]] = []
    largest = cluster.gpus
    for _ in range(jobs):
        host: int | None = None
        if rng.random() < large_fraction:
            gpus = rng.choices(LARGE_SIZES, LARGE_WEIGHTS)[0]
        else:
            gpus = rng.choices(SMALL_SIZES, SMALL_WEIGHTS)[0]
            host = rng.randint(1, cluster.backends) if host_bound else None
        gpus = min(gpus, largest)
        runtime = max(60.0, round(rng.lognormvariate(mu, sigma)))
        limit = runtime if exact_limits else math.ceil(runtime * rng.uniform(1.0, 4.0) / 60.0) * 60.0
        group = rng.choices(list(groups), list(group_weights) if group_weights else None)[0]
        drafted.append((gpus, runtime, limit, group, host))
    work = sum(d[0] * d[1] for d in drafted)
    period = work / (cluster.gpus * load)
    rate = len(drafted) / period
    trace: list[SimJob] = []
    at = 0.0
    for n, (gpus, runtime, limit, group, host) in enumerate(drafted, start=1):
        if not all_at_once:
            at += rng.expovariate(rate)
        trace.append(SimJob(n, round(at, 3), gpus, runtime, limit, group, host=host))
    return trace
