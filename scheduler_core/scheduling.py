"""Which queued jobs get which idle devices in one scheduling pass, why the others wait, and when they start.

Everything here is pure: frozen dataclasses and ``now`` in, a :class:`Decision` out; no clock, no
I/O, and the same input always gives the same decision, whatever order the backends, devices,
running jobs or queued jobs come in.

The policy follows the SDA Manager manual, extended with Slurm-style backfill and Kueue-style quotas:

* Jobs are taken in :func:`queue_order`: higher priority first, then (with fair share) the higher
  fair-share factor, then earlier request, then lower id.
* A job's candidate backends are the ACTIVE backends of its backend group, narrowed to
  ``allowed_backends`` when the job names them (a job launched on host H runs its process on H, so
  it may only get H's devices). Only IDLE devices of candidate backends, not held by a reserved
  SDA, are handed out.
* ``policy=STRICT`` (the default of :func:`schedule`, today's behaviour): strict priority without
  backfill. Once a job waits for devices, every later job of the same backend group whose candidate
  backends overlap its candidates waits behind it, even a small one that would fit (the manual's "a
  48-node customer at the head keeps the 0.5-node customers out"). Jobs on other backends or in
  other groups are unaffected.
* ``policy=BACKFILL`` (``Policy()``): the first job that cannot start gets a *reservation*: the
  earliest time at which enough of its devices will be free, computed from the running jobs' end
  times (start + time limit; a job without a limit never ends), and the devices it will use then.
  A later job may start now only on devices that no reservation needs, or on reserved devices when
  its own time limit ends before the reserved start, so it can never delay a reservation. The next
  blocked jobs get reservations too, up to ``Policy.backfill_depth`` per pass; a blocked job past
  the depth, or one whose start cannot be planned (it depends on a job without a time limit), holds
  up later jobs exactly as under STRICT. Callers pass the previous pass's reservations back
  (``previous=``): a job keeps its planned devices while its plan still holds, so that when jobs
  run to their limits and nothing new arrives, no job starts later than its first estimate.
* Jobs that never hold anything up: one that can never fit (it needs more devices than its candidate
  backends have usable, or it has no candidate backend at all), one whose SDA already runs as many
  jobs as it may (one process per SDA unless the token is duplicable), a reserved-SDA job (it only
  ever uses its own reserved devices), one held back by its group's quota, borrowed work, and a
  job waiting on preemptions (its devices are set aside for it).
* Quotas (``quotas``, keyed by (user group, backend group)): a job charged to a group
  (``charged_group``) starts within the group's nominal quota, or as *borrowed* work on idle devices
  up to nominal + borrow. Borrowed work is served after everything else in the pass, on what is
  left, and not at all in a backend group where a job waits for reclaimed devices. A job within its
  nominal quota that cannot start may reclaim devices from borrowed jobs of other groups
  (:class:`Preemption`): jobs that have run at least ``Policy.preempt_min_runtime``, of groups still
  above their nominal quota, lowest priority first, then the newest start, as few as free enough,
  and never devices a reservation needs before the reclaiming job would end. Jobs that started
  within their quota are never preempted.
* A job is packed onto as few backends as possible (see :func:`place`); a job that ends before a
  reservation starts goes to the devices that reservation holds first (they are of no use to
  longer jobs).

How many SDAs a token may own (``Max SDA``) is checked when SDAs are created, with
:func:`scheduler_core.access.sda_quota_left`, not here.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from scheduler_core import reasons
from scheduler_core.fairshare import NEUTRAL_FACTOR
from scheduler_core.timelimits import format_duration

IDLE = "IDLE"
SHUTDOWN = "SHUTDOWN"
STRICT_MODE = "strict"
BACKFILL_MODE = "backfill"
MODES = (STRICT_MODE, BACKFILL_MODE)
INF = math.inf

DeviceKey = tuple[int, int]
"""One device: (backend id, device index)."""

_NOTHING: Mapping[int, int] = MappingProxyType({})


def _empty() -> Mapping[int, object]:
    return MappingProxyType({})


@dataclass(frozen=True)
class DeviceState:
    """One device of a backend and its scheduling status.

    ``status`` is one of ``SHUTDOWN``, ``IDLE``, ``PREPARING``, ``PROCESSING``, ``CLEANING``; only
    ``IDLE`` devices are ever handed out.
    """

    backend_id: int
    index: int
    status: str


@dataclass(frozen=True)
class BackendState:
    """A backend node, the backend group it belongs to, and its devices (``active`` is False when shut down)."""

    id: int
    host: str
    group_id: int
    active: bool
    devices: tuple[DeviceState, ...]


@dataclass(frozen=True)
class QueuedJob:
    """A job waiting in the queue for devices.

    ``sda_limit`` is how many jobs of this SDA may be submitted or running at once: 1 means one process
    per SDA (the default), 0 means unlimited (a duplicable token), n means at most n. A job of a reserved
    SDA names the devices the SDA holds in ``reserved_devices`` and runs on exactly those.

    ``allowed_backends`` names the backends whose devices the job may get (the backend of the host its
    process runs on); None means any backend of its backend group, and an empty set means none (the
    job's host is not a registered backend), so the job waits with that reason.

    ``time_limit`` is the job's limit in seconds (see :func:`scheduler_core.timelimits.effective_limit`);
    None means unlimited: the job can then only start where no reservation is planned. ``charged_group``
    is the user group whose quota the job is charged to (the lowest-id group of the token that has a
    quota on the job's backend group); None means no quota applies. Reserved-SDA jobs are never
    charged. ``fairshare_group`` is the user group whose fair-share factor orders the job among jobs
    of equal priority; None falls back to ``charged_group``.
    """

    id: int
    token: str
    sda_id: int
    priority: int
    request_time: float
    device_count: int
    backend_group_id: int
    sda_limit: int = 1
    reserved_devices: tuple[DeviceKey, ...] = ()
    allowed_backends: frozenset[int] | None = None
    time_limit: float | None = None
    charged_group: int | None = None
    fairshare_group: int | None = None


@dataclass(frozen=True)
class RunningJob:
    """A job that holds devices (SUBMITTED or RUNNING, including one whose devices are CLEANING).

    ``start_time`` is when the job got its devices (epoch seconds; the submit time for a job not yet
    RUNNING), ``time_limit`` its limit in seconds (None: it never ends, as far as planning goes). A
    job planned to end in the past (it overran its limit) counts as ending now.

    ``charged_group`` is the user group its devices are charged to (None: not charged), ``borrowed``
    whether it started beyond that group's nominal quota (what :attr:`Allocation.borrowed` said when
    it started; the state must keep it). Only borrowed jobs are ever preempted.

    ``preempting`` marks a job a pass chose as a :class:`Preemption` victim and that is being stopped;
    ``preempted_for`` is the queued job it was preempted for. Its devices count as about to be free
    for that job (no further preemption is decided for it while they suffice); when that job is no
    longer queued, they count as free from ``now`` for everyone.
    """

    id: int
    token: str
    sda_id: int
    priority: int
    devices: tuple[DeviceKey, ...]
    start_time: float
    time_limit: float | None = None
    backend_group_id: int = 0
    charged_group: int | None = None
    borrowed: bool = False
    preempting: bool = False
    preempted_for: int | None = None

    @property
    def end_time(self) -> float:
        """When the job must end by its limit (epoch seconds; ``inf`` without a limit)."""
        return INF if self.time_limit is None else self.start_time + self.time_limit


@dataclass(frozen=True)
class Quota:
    """How many devices a user group may use on a backend group: ``nominal`` for sure, ``borrow`` more when idle.

    A job that keeps its group's usage within ``nominal`` starts as ordinary work and is never
    preempted for quota reasons. A job that takes the group beyond ``nominal`` (but not beyond
    ``nominal + borrow``) starts only as borrowed work, which groups within their nominal quota
    may reclaim.
    """

    nominal: int
    borrow: int = 0

    def __post_init__(self) -> None:
        """Refuse negative amounts."""
        if self.nominal < 0 or self.borrow < 0:
            raise ValueError(f"a quota needs nominal and borrow >= 0, not {self.nominal} and {self.borrow}")


@dataclass(frozen=True)
class Policy:
    """How a pass schedules.

    ``mode``: ``"backfill"`` (the default for new callers) or ``"strict"`` (no reservations, no
    backfill: the behaviour of the plain ``schedule(backends, queue, active, reserved)`` call).
    ``backfill_depth``: how many blocked jobs one pass plans a reservation for (Slurm's
    ``bf_max_job_test``); later blocked jobs hold up the jobs behind them as under strict.
    ``preempt_min_runtime``: seconds a borrowed job must have run before a reclaim may preempt it.
    """

    mode: str = BACKFILL_MODE
    backfill_depth: int = 50
    preempt_min_runtime: float = 300.0

    def __post_init__(self) -> None:
        """Refuse unknown modes and negative bounds."""
        if self.mode not in MODES:
            raise ValueError(f"unknown scheduling mode '{self.mode}': use one of {', '.join(MODES)}")
        if self.backfill_depth < 0:
            raise ValueError(f"backfill_depth must be >= 0, not {self.backfill_depth}")
        if not self.preempt_min_runtime >= 0:
            raise ValueError(f"preempt_min_runtime must be >= 0 seconds, not {self.preempt_min_runtime}")


STRICT = Policy(mode=STRICT_MODE)
BACKFILL = Policy()


@dataclass(frozen=True)
class Allocation:
    """The devices given to one job, sorted by (backend id, device index); ``borrowed``: started beyond its quota."""

    job_id: int
    devices: tuple[DeviceKey, ...]
    borrowed: bool = False


@dataclass(frozen=True)
class Reservation:
    """A waiting job's planned start: when (epoch seconds, ``now`` for a job waiting on preemptions) and on which devices."""

    job_id: int
    start: float
    devices: tuple[DeviceKey, ...]


@dataclass(frozen=True)
class Preemption:
    """A borrowed running job to stop (``victim_id``) so that queued job ``for_job`` gets its devices; ``reason`` is one line."""

    victim_id: int
    for_job: int
    reason: str


@dataclass(frozen=True)
class Decision:
    """The outcome of one pass.

    ``allocations``: the jobs that start, in queue order. ``waiting``: a one-line reason for every other
    queued job. ``reason_codes``: the same jobs, each with one code of
    :data:`scheduler_core.reasons.REASON_CODES`. ``expected_start``: the same jobs, each with its planned
    start (epoch seconds; ``now`` for a job waiting on preemptions) or None when there is no plan
    for it (strict mode plans nothing, past the backfill depth, behind a job whose start cannot be
    planned, a plan that depends on a job without a time limit, borrowed work, or a job that cannot
    start at all). ``reservations``: the planned starts, in queue order; pass them back to the next
    pass as ``previous``. ``preemptions``: borrowed running jobs to stop, in the order they were decided.
    ``borrowed``: the allocations that start beyond their group's nominal quota (the state must keep
    that flag for :attr:`RunningJob.borrowed`).
    """

    allocations: tuple[Allocation, ...]
    waiting: Mapping[int, str] = field(hash=False)
    reason_codes: Mapping[int, str] = field(default_factory=_empty, hash=False)  # type: ignore[arg-type]
    expected_start: Mapping[int, float | None] = field(default_factory=_empty, hash=False)  # type: ignore[arg-type]
    reservations: tuple[Reservation, ...] = ()
    preemptions: tuple[Preemption, ...] = ()

    @property
    def borrowed(self) -> tuple[Allocation, ...]:
        """The allocations that start as borrowed work (beyond their group's nominal quota)."""
        return tuple(a for a in self.allocations if a.borrowed)


def queue_order(jobs: Iterable[QueuedJob], fairshare: Mapping[int, float] | None = None) -> list[QueuedJob]:
    """Return the jobs in the order the scheduler serves them.

    Args:
        jobs: the queued jobs, in any order.
        fairshare: user group id -> fair-share factor (see :mod:`scheduler_core.fairshare`). A job's group
            is its ``fairshare_group``, else its ``charged_group``; a job without one, or whose group is
            missing here, gets :data:`~scheduler_core.fairshare.NEUTRAL_FACTOR`.

    Returns:
        The jobs sorted by priority (highest first), then fair-share factor (highest first; only with
        ``fairshare``), then request time (earliest first), then id.
    """
    if not fairshare:
        return sorted(jobs, key=_order_key)
    return sorted(jobs, key=lambda job: _fair_key(job, fairshare))


def _order_key(job: QueuedJob) -> tuple[int, float, int]:
    return (-job.priority, job.request_time, job.id)


def _fair_key(job: QueuedJob, fairshare: Mapping[int, float]) -> tuple[int, float, float, int]:
    group = job.fairshare_group if job.fairshare_group is not None else job.charged_group
    factor = NEUTRAL_FACTOR if group is None else fairshare.get(group, NEUTRAL_FACTOR)
    return (-job.priority, -factor, job.request_time, job.id)


def charged_group(
    token_groups: Iterable[int], backend_group_id: int, quotas: Mapping[tuple[int, int], Quota]
) -> int | None:
    """Return the user group a job is charged to: the lowest-id group of the token with a quota on the backend group.

    Args:
        token_groups: ids of the user groups the job's token belongs to.
        backend_group_id: the job's backend group.
        quotas: (user group id, backend group id) -> quota.

    Returns:
        The group id, or None when no group of the token has a quota there (no quota applies).
    """
    return min((g for g in token_groups if (g, backend_group_id) in quotas), default=None)


def place(
    free: Mapping[int, Sequence[int]], count: int, backend_sizes: Mapping[int, int]
) -> tuple[DeviceKey, ...] | None:
    """Choose ``count`` devices among the free ones, on as few backends as possible.

    A job that fits on one backend goes to the best fit: the backend with the fewest free devices that
    still holds it (ties: lowest backend id), on its lowest device indexes. A bigger job takes whole
    backends, the one with the most free devices first (among equals, a fully free backend before a
    partly used one, then the lowest id), until the rest fits on one backend, which is again chosen by
    best fit. With backends of one size this means: fully free backends first, the remainder on the
    best-fit backend.

    Args:
        free: backend id -> indexes of its free devices.
        count: how many devices the job needs (at least 1).
        backend_sizes: backend id -> how many usable devices the backend has; a backend whose free
            devices reach its size is fully free. A backend missing here counts as fully free.

    Returns:
        The chosen (backend id, device index) pairs, sorted; None when fewer than ``count`` are free.

    Raises:
        ValueError: ``count`` is less than 1.
    """
    if count < 1:
        raise ValueError(f"a placement needs at least 1 device, not {count}")
    avail = {b: sorted(set(indexes)) for b, indexes in free.items() if indexes}
    if sum(len(v) for v in avail.values()) < count:
        return None
    chosen: list[DeviceKey] = []
    rest = count
    while True:
        fitting = [b for b, v in avail.items() if len(v) >= rest]
        if fitting:
            best = min(fitting, key=lambda b: (len(avail[b]), b))
            chosen.extend((best, i) for i in avail[best][:rest])
            return tuple(sorted(chosen))
        whole = min(
            avail,
            key=lambda b: (-len(avail[b]), len(avail[b]) < backend_sizes.get(b, len(avail[b])), b),
        )
        indexes = avail.pop(whole)
        chosen.extend((whole, i) for i in indexes)
        rest -= len(indexes)


def reserve(
    backends: Sequence[BackendState],
    count: int,
    backend_group_id: int,
    reserved: Collection[DeviceKey] = (),
) -> tuple[DeviceKey, ...] | None:
    """Choose the devices a new reserved SDA will hold, with the same packing as :func:`place`.

    Args:
        backends: every backend with its devices.
        count: how many devices the SDA needs (at least 1).
        backend_group_id: the backend group the SDA's model is tied to.
        reserved: devices already held by other reserved SDAs.

    Returns:
        The chosen (backend id, device index) pairs, sorted; None when the group has too few idle devices.

    Raises:
        ValueError: ``count`` is less than 1.
    """
    held = set(reserved)
    free, sizes, _ = _group_devices(backends, held).get(backend_group_id, ({}, {}, {}))
    return place(free, count, sizes)


def schedule(
    backends: Sequence[BackendState],
    queue: Sequence[QueuedJob],
    active_per_sda: Mapping[int, int] = _NOTHING,
    reserved: Collection[DeviceKey] = (),
    *,
    running: Sequence[RunningJob] = (),
    now: float = 0.0,
    policy: Policy = STRICT,
    quotas: Mapping[tuple[int, int], Quota] = MappingProxyType({}),
    fairshare: Mapping[int, float] | None = None,
    previous: Sequence[Reservation] = (),
) -> Decision:
    """Decide which queued jobs start now, on which devices, why every other job waits, and when it should start.

    Args:
        backends: every backend with its devices and their current status.
        queue: the jobs waiting for devices (job ids must be unique).
        active_per_sda: SDA id -> how many of its jobs are already submitted or running.
        reserved: devices held by reserved SDAs; ordinary jobs never get them. Devices named in a
            queued job's ``reserved_devices`` are treated as reserved too.
        running: the jobs holding devices, with their start times and limits (plans and quotas need
            them; without them every busy device counts as busy forever and no group has used anything).
        now: the current time, epoch seconds (the caller reads the clock, not this function).
        policy: :data:`STRICT` (the default: today's behaviour) or a backfill :class:`Policy`.
        quotas: (user group id, backend group id) -> :class:`Quota`; a job charged to a group without a
            quota on its backend group is not limited.
        fairshare: user group id -> fair-share factor, to order jobs of equal priority (see :func:`queue_order`).
        previous: the reservations of the previous pass (``Decision.reservations``). A job whose plan
            still holds keeps its planned devices, and starts on them when its time comes; without
            them every pass plans afresh and an estimate may move when devices are chosen differently.

    Returns:
        The allocations in queue order, a one-line reason, a reason code and an expected start for
        every job that waits, the reservations and the preemptions.

    Raises:
        ValueError: two queued jobs, two backends or two running jobs share an id, a job is both queued
            and running, or a time limit is not a positive number of seconds.
    """
    ids = {job.id for job in queue}
    if len(ids) != len(queue):
        raise ValueError("queued job ids must be unique")
    if len({b.id for b in backends}) != len(backends):
        raise ValueError("backend ids must be unique")
    running_ids = {r.id for r in running}
    if len(running_ids) != len(running):
        raise ValueError("running job ids must be unique")
    if running_ids & ids:
        raise ValueError(f"jobs {_ids(running_ids & ids)} are both queued and running")
    for limit in [j.time_limit for j in queue] + [r.time_limit for r in running]:
        if limit is not None and not limit > 0:
            raise ValueError(f"a time limit must be a positive number of seconds, not {limit}")

    ordered = queue_order(queue, fairshare)
    before = {r.job_id: r for r in previous if r.job_id in ids}
    return _Pass(backends, ordered, active_per_sda, reserved, running, now, policy, quotas, before).run()


class _Pass:
    """One run over the ordered queue: the working state of :func:`schedule`."""

    def __init__(
        self,
        backends: Sequence[BackendState],
        ordered: list[QueuedJob],
        active_per_sda: Mapping[int, int],
        reserved: Collection[DeviceKey],
        running: Sequence[RunningJob],
        now: float,
        policy: Policy,
        quotas: Mapping[tuple[int, int], Quota],
        previous: Mapping[int, Reservation],
    ) -> None:
        self.ordered = ordered
        self.previous = previous
        self.rank = {job.id: n for n, job in enumerate(ordered)}
        self.active = active_per_sda
        self.now = now
        self.policy = policy
        self.backfill = policy.mode == BACKFILL_MODE
        self.depth_left = policy.backfill_depth if self.backfill else 0
        self.quotas = quotas

        held = set(reserved)
        for job in ordered:
            held.update(job.reserved_devices)
        self.status = {(b.id, d.index): d.status for b in backends if b.active for d in b.devices}

        # What the running jobs mean for plans and quotas. Sorted by id so nothing depends on input order.
        queued = set(self.rank)
        self.busy_until: dict[DeviceKey, float] = {}
        self.pending_for: dict[int, list[DeviceKey]] = {}  # queued job -> devices being freed for it
        self.pending_ids: dict[int, list[int]] = {}  # queued job -> the jobs being preempted for it
        self.usage: dict[tuple[int, int], int] = {}  # (user group, backend group) -> devices used
        self.leaving: dict[tuple[int, int], int] = {}  # devices of jobs being preempted, per the same key
        self.victims: dict[int, list[RunningJob]] = {}  # backend group -> borrowed jobs, in preemption order
        for r in sorted(running, key=lambda r: r.id):
            beneficiary_waits = r.preempting and r.preempted_for in queued
            end = self.now if r.preempting and not beneficiary_waits else max(self.now, r.end_time)
            for device in r.devices:
                self.busy_until[device] = end
            if beneficiary_waits:
                assert r.preempted_for is not None
                self.pending_for.setdefault(r.preempted_for, []).extend(r.devices)
                self.pending_ids.setdefault(r.preempted_for, []).append(r.id)
            if r.charged_group is None or all(d in held for d in r.devices):
                continue
            key = (r.charged_group, r.backend_group_id)
            self.usage[key] = self.usage.get(key, 0) + len(r.devices)
            if r.preempting:
                self.leaving[key] = self.leaving.get(key, 0) + len(r.devices)
            elif r.borrowed and self.now - r.start_time >= policy.preempt_min_runtime:
                self.victims.setdefault(r.backend_group_id, []).append(r)
        self.groups = {
            g: _Group(g, free, sizes, usable, now, self.busy_until, self.status)
            for g, (free, sizes, usable) in _group_devices(backends, held).items()
        }
        for group in self.groups.values():
            group.plans = self.backfill
        for jobs in self.victims.values():
            # Lowest priority first, then the newest start (the least work lost), then the highest id.
            jobs.sort(key=lambda r: (r.priority, -r.start_time, -r.id))

        self.allocations: list[Allocation] = []
        self.waiting: dict[int, str] = {}
        self.codes: dict[int, str] = {}
        self.expected: dict[int, float | None] = {}
        self.reservations: list[Reservation] = []
        self.planned: dict[int, float] = {}  # job id -> its reservation's start
        self.preemptions: list[Preemption] = []
        self.preempted: set[int] = set()
        self.started: dict[int, int] = {}  # SDA id -> jobs started in this pass
        self.taken_reserved: set[DeviceKey] = set()
        self.holds: dict[int, _Holds] = {}  # backend group id -> the jobs that hold up later ones
        self.reclaiming: set[int] = set()  # backend groups where a job waits for reclaimed devices
        self.deferred: list[QueuedJob] = []  # jobs that would start as borrowed work, served last

    # -- the pass ------------------------------------------------------------------------------------

    def run(self) -> Decision:
        for job in self.ordered:
            self._serve(job, borrowing=False)
        # Work within quota (or without one) is served first: borrowed work then takes what is left,
        # so it never takes devices a job within its quota would otherwise have to reclaim.
        for job in self.deferred:
            self._serve(job, borrowing=True)
        self.allocations.sort(key=lambda a: self.rank[a.job_id])
        return Decision(
            tuple(self.allocations),
            MappingProxyType(self.waiting),
            MappingProxyType(self.codes),
            MappingProxyType(self.expected),
            tuple(self.reservations),
            tuple(self.preemptions),
        )

    def _wait(self, job: QueuedJob, code: str, reason: str, start: float | None = None) -> None:
        self.waiting[job.id] = reason
        self.codes[job.id] = code
        self.expected[job.id] = start

    def _serve(self, job: QueuedJob, *, borrowing: bool) -> None:
        """Start, defer or make wait one job; ``borrowing``: the second sweep, over jobs that would borrow."""
        n = job.device_count
        if n < 1:
            self._wait(job, reasons.NEVER_FITS, f"asks for {n} device(s); a job needs at least 1")
            return
        running = self.active.get(job.sda_id, 0) + self.started.get(job.sda_id, 0)
        if job.sda_limit > 0 and running >= job.sda_limit:
            self._wait(job, reasons.SDA_BUSY, _limit_reason(job, running))
            return

        if job.reserved_devices:
            devices = tuple(sorted(set(job.reserved_devices)))
            reason = _reserved_reason(job, devices, self.status, self.taken_reserved)
            if reason is not None:
                self._wait(job, reasons.RESERVED_SDA, reason)
                return
            self.taken_reserved.update(devices)
            self._started(job, devices, borrowed=False)
            return

        gid = job.backend_group_id
        group = self.groups.get(gid)
        if group is None:
            group = self.groups[gid] = _Group(gid, {}, {}, {}, self.now, self.busy_until, self.status)
            group.plans = self.backfill
        candidates = group.pool.candidates(job.allowed_backends)
        if candidates is not None and not candidates:
            self._wait(job, reasons.NO_BACKEND, _no_candidate_reason(job))
            return
        usable = group.pool.usable if candidates is None else group.pool.usable_on(candidates)
        if n > usable:
            where = f"backend group {gid} has" if candidates is None else f"backend(s) {_ids(candidates)} have"
            self._wait(job, reasons.NEVER_FITS, f"needs {n} device(s) but {where} {usable} usable")
            return

        quota: Quota | None = None
        borrowed = False
        charge = job.charged_group
        if charge is not None:
            quota = self.quotas.get((charge, gid))
        if quota is not None and charge is not None:
            used = self.usage.get((charge, gid), 0)
            if used + n > quota.nominal + quota.borrow:
                self._quota_wait(job, quota, used)
                return
            borrowed = used + n > quota.nominal
            if borrowed and not borrowing:
                self.deferred.append(job)
                return
            if borrowed and gid in self.reclaiming:
                self._wait(
                    job,
                    reasons.RESOURCES,
                    f"would borrow {n} device(s) beyond user group {charge}'s quota of {quota.nominal}, but backend "
                    f"group {gid} is reclaiming devices for jobs within their quota",
                )
                return

        group_holds = self.holds.get(gid)
        if group_holds is None:
            group_holds = self.holds[gid] = _Holds(self.rank)
        head = group_holds.head(candidates)
        if head is not None and self.rank[head.id] < self.rank[job.id]:  # (a deferred job may rank before a hold)
            self._wait(job, reasons.PRIORITY, f"behind job {head.id} (priority {head.priority}) in backend group {gid}")
            if not borrowed:
                group_holds.add(job, candidates)
            return

        end = INF if job.time_limit is None else self.now + job.time_limit
        placed = None
        before = self.previous.get(job.id)
        if before is not None and before.start <= self.now and len(before.devices) == n:
            placed = group.take_planned(before.devices, candidates, end)
        if placed is None:
            placed = group.place_now(n, candidates, end)
        if placed is not None:
            self._started(job, placed, borrowed=borrowed, group=group, end=end)
            return
        self._blocked(job, group, candidates, end, quota if not borrowed else None, borrowed, group_holds)

    def _started(
        self,
        job: QueuedJob,
        devices: tuple[DeviceKey, ...],
        *,
        borrowed: bool,
        group: _Group | None = None,
        end: float = INF,
    ) -> None:
        self.allocations.append(Allocation(job.id, devices, borrowed))
        self.started[job.sda_id] = self.started.get(job.sda_id, 0) + 1
        if group is None:
            return  # a reserved-SDA job: its devices are outside every pool and plan
        if job.charged_group is not None:
            key = (job.charged_group, group.id)
            self.usage[key] = self.usage.get(key, 0) + len(devices)

    def _quota_wait(self, job: QueuedJob, quota: Quota, used: int) -> None:
        where = f"backend group {job.backend_group_id}"
        if quota.borrow == 0:
            self._wait(
                job,
                reasons.QUOTA_EXCEEDED,
                f"user group {job.charged_group} uses {used} of its quota of {quota.nominal} device(s) on {where}; "
                f"this job needs {job.device_count} more",
            )
        else:
            self._wait(
                job,
                reasons.BORROWING_LIMIT_REACHED,
                f"user group {job.charged_group} uses {used} of its quota of {quota.nominal} + {quota.borrow} "
                f"borrowed device(s) on {where}; this job needs {job.device_count} more",
            )

    def _blocked(
        self,
        job: QueuedJob,
        group: _Group,
        candidates: frozenset[int] | None,
        end: float,
        in_quota: Quota | None,
        borrowed: bool,
        group_holds: _Holds,
    ) -> None:
        """A job that cannot start now: reclaim, plan a reservation, or hold up the jobs behind it."""
        n = job.device_count
        idle = group.idle_count(candidates)
        where = f"backend group {group.id}" if candidates is None else f"backend(s) {_ids(candidates)}"
        owner_rank = group.conflict(n, candidates, end)
        owner = self.ordered[owner_rank] if owner_rank is not None else None

        if in_quota is not None and self._reclaim(job, group, candidates, end):
            return  # its devices are set aside for it: it holds no one up, even under strict

        code = reasons.RESOURCES if owner is None else reasons.reserved_for(owner.id)
        reason = f"waiting for {n} device(s) on {where}: {idle} idle"
        if owner is not None:
            left = format_duration(max(0.0, self.planned[owner.id] - self.now))
            limit = "has no time limit" if job.time_limit is None else f"would run {format_duration(job.time_limit)}"
            reason += f", held for job {owner.id} (planned to start in {left}); this job {limit}, which would delay it"
        if borrowed:
            # Borrowed work takes idle devices or waits; it never reserves or holds anyone up.
            self._wait(job, code, reason + " (borrowed work does not reserve devices)")
            return
        if self.depth_left > 0:
            self.depth_left -= 1
            start, devices = group.plan(n, candidates, job.time_limit, self.rank[job.id], self.previous.get(job.id))
            if start < INF:
                self.reservations.append(Reservation(job.id, start, devices))
                self.planned[job.id] = start
                self._wait(job, code, reason + f"; expected to start in {format_duration(start - self.now)}", start)
                return
        group_holds.add(job, candidates)
        self._wait(job, code, reason)

    def _reclaim(self, job: QueuedJob, group: _Group, candidates: frozenset[int] | None, end: float) -> bool:
        """Free devices for a job within its nominal quota from borrowed jobs of other groups; True when it waits on that."""
        n = job.device_count
        free = group.usable_now(candidates, end)
        pending = [
            d
            for d in self.pending_for.get(job.id, ())
            if d[0] in group.pool.sizes and (candidates is None or d[0] in candidates) and group.free_until(d, end)
        ]
        need = n - sum(len(v) for v in free.values()) - len(pending)
        victims: list[tuple[RunningJob, list[DeviceKey]]] = []
        if need > 0:
            found = self._victims(job, group, candidates, need, end)
            if found is None:
                return False
            victims = found
        if not pending and not victims:
            return False  # enough is idle already: placement failed for another reason
        freed = [d for _, devices in victims for d in devices]
        take = max(0, n - len(pending) - len(freed))
        chosen_free = list(place(free, take, group.pool.sizes) or ()) if take else []
        busy = (pending + freed)[: n - take]
        spare = (pending + freed)[n - take :]
        devices = tuple(sorted(chosen_free + busy))
        group.claim(chosen_free, busy, spare, end)
        assert job.charged_group is not None  # only a job with a quota reclaims
        key = (job.charged_group, group.id)
        self.usage[key] = self.usage.get(key, 0) + n
        self.reclaiming.add(group.id)
        for victim, _ in victims:
            self.preempted.add(victim.id)
            assert victim.charged_group is not None  # only charged jobs are ever victims
            leaving = (victim.charged_group, group.id)
            self.leaving[leaving] = self.leaving.get(leaving, 0) + len(victim.devices)
            self.preemptions.append(
                Preemption(
                    victim.id,
                    job.id,
                    f"borrowed by user group {victim.charged_group}; job {job.id} of user group {job.charged_group} "
                    f"is within its quota on backend group {group.id}",
                )
            )
        stopping = sorted({r.id for r, _ in victims} | set(self.pending_ids.get(job.id, ())))
        self.reservations.append(Reservation(job.id, self.now, devices))
        self.planned[job.id] = self.now
        self._wait(
            job,
            reasons.PREEMPTING,
            f"waiting for borrowed job(s) {_ids(stopping)} to stop and free their devices "
            f"(user group {job.charged_group} is within its quota on backend group {group.id})",
            self.now,
        )
        return True

    def _victims(
        self, job: QueuedJob, group: _Group, candidates: frozenset[int] | None, need: int, end: float
    ) -> list[tuple[RunningJob, list[DeviceKey]]] | None:
        """The fewest borrowed jobs of other groups whose devices give ``job`` the ``need`` it lacks; None if impossible."""
        over: dict[int, int] = {}
        chosen: list[tuple[RunningJob, list[DeviceKey]]] = []
        freed = 0
        for r in self.victims.get(group.id, ()):
            if r.id in self.preempted or r.charged_group == job.charged_group:
                continue
            assert r.charged_group is not None
            useful = [d for d in r.devices if d[0] in group.pool.sizes and (candidates is None or d[0] in candidates)]
            # A device an earlier plan needs before this job would end stays with that plan: reclaiming
            # must not delay a reservation any more than backfill may.
            if not useful or not all(group.free_until(d, end) for d in r.devices):
                continue
            g = r.charged_group
            if g not in over:
                quota = self.quotas.get((g, group.id))
                nominal = quota.nominal if quota is not None else 0
                over[g] = self.usage.get((g, group.id), 0) - self.leaving.get((g, group.id), 0) - nominal
            if over[g] <= 0:
                continue  # that group is back within its quota: nothing of it is borrowed any more
            chosen.append((r, useful))
            over[g] -= len(r.devices)
            freed += len(useful)
            if freed >= need:
                break
        if freed < need:
            return None
        for item in reversed(list(chosen)):
            if freed - len(item[1]) >= need:
                chosen.remove(item)
                freed -= len(item[1])
        return chosen


def _merge(*maps: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """Join free-device maps (backend -> indexes) that share no device."""
    out: dict[int, list[int]] = {}
    for m in maps:
        for b, indexes in m.items():
            if indexes:
                out.setdefault(b, []).extend(indexes)
    return out


class _Group:
    """One backend group during a pass: its free devices, the reservations on them, and its plan.

    * ``pool``: devices free now that no reservation needs (any job may take them).
    * holes: devices free now that a reservation needs from some time on (its *horizon*); a job may
      use one only if its time limit ends by then.
    * the timeline (built at the group's first reservation): per usable device, when its current
      occupant leaves (``avail``: now for a free device, a running job's planned end, ``inf`` when
      unknown or unlimited) and the reservations planned on it after that. A device's *gaps* are
      the free stretches between them; the last one is open-ended unless a reservation never ends.

    Starting now and planning later follow one rule: at a time T, the *feasible* devices are those
    with a gap holding [T, T + limit); a job takes feasible devices whose gap ends (at a later
    reservation) first, the soonest-needed first, since no longer job can use them, then devices
    with an open-ended gap, packed by :func:`place`. A job that kept a plan from the previous pass
    keeps its devices while they are still feasible at the same start, which is what keeps plans
    from drifting from pass to pass.
    """

    __slots__ = (
        "_prefix",
        "assigned",
        "avail",
        "busy_until",
        "claimed",
        "clean",
        "gaps",
        "hole_list",
        "holes",
        "id",
        "now",
        "plans",
        "pool",
        "resv",
        "status",
        "usable",
    )

    def __init__(
        self,
        gid: int,
        free: dict[int, list[int]],
        sizes: dict[int, int],
        usable: dict[int, list[int]],
        now: float,
        busy_until: Mapping[DeviceKey, float],
        status: Mapping[DeviceKey, str],
    ) -> None:
        self.id = gid
        self.pool = _Pool(free, sizes)
        self.usable = usable  # backend -> its usable (not shut down, not reserved) device indexes
        self.now = now
        self.busy_until = busy_until
        self.status = status
        self.holes: dict[int, dict[int, tuple[float, int]]] = {}  # backend -> index -> (horizon, owner rank)
        self.hole_list: list[tuple[float, int, int, int]] = []  # sorted (horizon, owner rank, backend, index)
        self._prefix: list[int] | None = None  # lowest owner rank over hole_list[: k + 1]
        self.assigned: dict[DeviceKey, float] = {}  # devices whose occupant this pass changed -> when it leaves
        self.claimed: set[DeviceKey] = set()  # devices held for jobs waiting on preemptions
        self.plans = False  # whether this pass plans reservations (backfill)
        # The timeline, built lazily (most passes never plan):
        self.avail: dict[DeviceKey, float] | None = None
        self.resv: dict[DeviceKey, list[tuple[float, float, int]]] = {}  # device -> sorted (start, end, owner rank)
        self.clean: list[tuple[float, int, int]] = []  # sorted (avail, backend, index) of unreserved devices
        self.gaps: list[tuple[float, float, int, int]] = []  # sorted (start, end, backend, index) of reserved devices

    # -- holes -----------------------------------------------------------------------------------------

    def _set_hole(self, device: DeviceKey, horizon: float | None, owner: int = 0) -> None:
        """Make ``device`` a hole with this horizon, or no hole at all (None)."""
        b, i = device
        old = self.holes.get(b, {}).pop(i, None)
        if old is not None:
            del self.hole_list[bisect_left(self.hole_list, (old[0], old[1], b, i))]
        if horizon is not None:
            self.holes.setdefault(b, {})[i] = (horizon, owner)
            insort(self.hole_list, (horizon, owner, b, i))
        self._prefix = None

    def _is_hole(self, device: DeviceKey) -> bool:
        return device[1] in self.holes.get(device[0], {})

    def idle_count(self, candidates: frozenset[int] | None) -> int:
        """How many devices of ``candidates`` (None: the group) are idle now, reserved or not."""
        if candidates is None:
            return self.pool.total + len(self.hole_list)
        return self.pool.idle_on(candidates) + sum(len(self.holes.get(b, ())) for b in candidates)

    def conflict(self, count: int, candidates: frozenset[int] | None, end: float) -> int | None:
        """When ``count`` idle devices exist but only by using holes a job ending at ``end`` may not: the
        rank of the earliest job (in queue order) whose reservation it would delay; else None."""
        if not self.hole_list or self.idle_count(candidates) < count:
            return None
        if candidates is None:
            cut = bisect_left(self.hole_list, (end,))
            if cut == 0:
                return None
            if self._prefix is None:
                prefix: list[int] = []
                low = self.hole_list[0][1]
                for entry in self.hole_list:
                    low = min(low, entry[1])
                    prefix.append(low)
                self._prefix = prefix
            return self._prefix[cut - 1]
        owners = [owner for b in candidates for horizon, owner in self.holes.get(b, {}).values() if horizon < end]
        return min(owners, default=None)

    def usable_now(self, candidates: frozenset[int] | None, end: float) -> dict[int, list[int]]:
        """Every device a job ending at ``end`` may take now on ``candidates``: the pool's and the usable holes."""
        free = self.pool.free_on(self.pool.sizes if candidates is None else candidates)
        holes: dict[int, list[int]] = {}
        for b, i in self._usable_holes(candidates, end):
            holes.setdefault(b, []).append(i)
        return _merge(free, holes)

    # -- starting now ------------------------------------------------------------------------------------

    def place_now(self, count: int, candidates: frozenset[int] | None, end: float) -> tuple[DeviceKey, ...] | None:
        """Take ``count`` devices for a job that starts now and ends at ``end``; None (nothing taken) if it cannot.

        Usable holes come first, the soonest-needed first (only jobs this short can use them), then
        the pool, packed by :func:`place`.
        """
        holes = self._usable_holes(candidates, end) if self.hole_list else []
        if len(holes) >= count:
            from_holes = holes[:count]
            from_pool: tuple[DeviceKey, ...] = ()
        else:
            rest = count - len(holes)
            if candidates is None:
                if rest > self.pool.total:
                    return None
                from_pool = self.pool.take(rest) or ()
            else:
                found = place(self.pool.free_on(candidates), rest, self.pool.sizes)
                if found is None:
                    return None
                self.pool.remove(found)
                from_pool = found
            from_holes = holes
        if self.plans:  # only plans read when devices come free again
            for d in from_pool:
                self._occupy(d, end)
        for d in from_holes:
            self._set_hole(d, None)
            self._occupy(d, end)
        return tuple(sorted((*from_pool, *from_holes)))

    def take_planned(
        self, devices: Sequence[DeviceKey], candidates: frozenset[int] | None, end: float
    ) -> tuple[DeviceKey, ...] | None:
        """Start a job now on the devices its plan named, if each is free and usable until ``end``; else None."""
        for d in devices:
            if d[0] not in self.pool.sizes or (candidates is not None and d[0] not in candidates):
                return None
            if not self.pool.has(d) and not (self._is_hole(d) and self.holes[d[0]][d[1]][0] >= end):
                return None
        from_pool = [d for d in devices if self.pool.has(d)]
        if from_pool:
            self.pool.remove(from_pool)
        for d in devices:
            if self._is_hole(d):
                self._set_hole(d, None)
            self._occupy(d, end)
        return tuple(sorted(devices))

    def _usable_holes(self, candidates: frozenset[int] | None, end: float) -> list[DeviceKey]:
        """The holes (of ``candidates``) a job ending at ``end`` may use, by (horizon, backend, index)."""
        if candidates is None:
            found = [(h, b, i) for h, _, b, i in self.hole_list[bisect_left(self.hole_list, (end,)) :]]
        else:
            found = [(h, b, i) for b in candidates for i, (h, _) in self.holes.get(b, {}).items() if h >= end]
        return [(b, i) for _, b, i in sorted(found)]

    # -- the timeline --------------------------------------------------------------------------------------

    def _timeline(self) -> dict[DeviceKey, float]:
        if self.avail is None:
            avail: dict[DeviceKey, float] = {}
            for b, indexes in self.usable.items():
                for i in indexes:
                    d = (b, i)
                    when = self.assigned.get(d)
                    if when is None:
                        when = self.now if self.status.get(d) == IDLE else self.busy_until.get(d, INF)
                    avail[d] = when
            self.avail = avail
            self.clean = sorted((t, b, i) for (b, i), t in avail.items() if t < INF)
        return self.avail

    def _gaps_of(self, device: DeviceKey) -> list[tuple[float, float]]:
        assert self.avail is not None
        start = self.avail[device]
        out: list[tuple[float, float]] = []
        for begin, end, _ in self.resv.get(device, ()):
            if begin > start:
                out.append((start, begin))
            start = max(start, end)
        if start < INF:
            out.append((start, INF))
        return out

    def _change(
        self, device: DeviceKey, avail: float | None = None, booking: tuple[float, float, int] | None = None
    ) -> None:
        """Change when a device's occupant leaves and/or add a reservation, keeping the sorted lists right."""
        if self.avail is None:
            assert booking is None  # bookings come from plan(), which builds the timeline first
            assert avail is not None
            self.assigned[device] = avail
            return
        b, i = device
        reserved = device in self.resv
        if reserved:
            for start, end in self._gaps_of(device):
                del self.gaps[bisect_left(self.gaps, (start, end, b, i))]
        elif self.avail[device] < INF:
            del self.clean[bisect_left(self.clean, (self.avail[device], b, i))]
        if avail is not None:
            self.avail[device] = avail
            self.assigned[device] = avail
        if booking is not None:
            insort(self.resv.setdefault(device, []), booking)
        if device in self.resv:
            for start, end in self._gaps_of(device):
                insort(self.gaps, (start, end, b, i))
        elif self.avail[device] < INF:
            insort(self.clean, (self.avail[device], b, i))

    def _occupy(self, device: DeviceKey, end: float) -> None:
        """A job starts on ``device`` now and leaves at ``end``."""
        self._change(device, avail=end)

    def plan(
        self,
        count: int,
        candidates: frozenset[int] | None,
        limit: float | None,
        owner: int,
        before: Reservation | None = None,
    ) -> tuple[float, tuple[DeviceKey, ...]]:
        """Reserve ``count`` devices at the earliest time they are all free for the job's limit; ``(inf, ())`` when never.

        ``before`` is the job's plan from the previous pass: when the earliest start is still its start
        and its devices are all still feasible then, the job keeps them.
        """
        avail = self._timeline()
        length = INF if limit is None else limit
        clean: list[tuple[float, int, int]] | Sequence[tuple[float, int, int]]
        gaps: list[tuple[float, float, int, int]] | Sequence[tuple[float, float, int, int]]
        if candidates is None:
            clean, gaps = self.clean, self.gaps
        else:
            mine = [(b, i) for b in candidates for i in self.usable.get(b, ())]
            clean = sorted((avail[d], d[0], d[1]) for d in mine if d not in self.resv and avail[d] < INF)
            gaps = sorted((s, e, d[0], d[1]) for d in mine if d in self.resv for s, e in self._gaps_of(d))
        # Sweep the candidate start times (the starts of free stretches) in order; the first at which
        # enough devices are free for the whole limit is the earliest start.
        ci = gi = 0
        open_gaps: list[tuple[float, int, int]] = []  # (end, backend, index): reserved devices free from their start
        start = INF
        while True:
            while gi < len(gaps) and not gaps[gi][0] + length <= gaps[gi][1]:
                gi += 1  # too short for this job at any start
            when = min(clean[ci][0] if ci < len(clean) else INF, gaps[gi][0] if gi < len(gaps) else INF)
            if when == INF:
                return INF, ()
            while ci < len(clean) and clean[ci][0] <= when:
                ci += 1
            while gi < len(gaps) and gaps[gi][0] <= when:
                s, e, b, i = gaps[gi]
                if s + length <= e:
                    heapq.heappush(open_gaps, (e, b, i))
                gi += 1
            while open_gaps and not when + length <= open_gaps[0][0]:
                heapq.heappop(open_gaps)
            if ci + len(open_gaps) >= count:
                start = when
                break
        bounded = sorted((e, b, i) for e, b, i in open_gaps if e < INF)
        feasible = {(b, i) for _, b, i in clean[:ci]} | {(b, i) for _, b, i in open_gaps}
        chosen: tuple[DeviceKey, ...]
        if (
            before is not None
            and before.start == start
            and len(before.devices) == count
            and feasible.issuperset(before.devices)
        ):
            chosen = tuple(sorted(before.devices))
        elif len(bounded) >= count:
            chosen = tuple(sorted((b, i) for _, b, i in bounded[:count]))
        else:
            unbounded: dict[int, list[int]] = {}
            for _, b, i in clean[:ci]:
                unbounded.setdefault(b, []).append(i)
            for e, b, i in open_gaps:
                if e == INF:
                    unbounded.setdefault(b, []).append(i)
            rest = place(unbounded, count - len(bounded), self.pool.sizes) or ()
            chosen = tuple(sorted([(b, i) for _, b, i in bounded] + list(rest)))
        booking = (start, start + length, owner)
        for d in chosen:
            self._change(d, booking=booking)
            horizon = self.resv[d][0][0]
            if self.pool.has(d):
                self.pool.remove([d])
                self._set_hole(d, horizon, owner)
            elif self._is_hole(d) and self.holes[d[0]][d[1]][0] != horizon:
                self._set_hole(d, horizon, self.resv[d][0][2])
        return start, tuple(sorted(chosen))

    def free_until(self, device: DeviceKey, end: float) -> bool:
        """Whether no claim of this pass holds ``device`` and no reservation needs it before ``end``."""
        if device in self.claimed:
            return False
        bookings = self.resv.get(device)
        return not bookings or bookings[0][0] >= end

    def claim(
        self, free: Sequence[DeviceKey], busy: Sequence[DeviceKey], spare: Sequence[DeviceKey], end: float
    ) -> None:
        """Hold devices for a job that waits on preemptions: ``free`` idle ones and ``busy`` ones being freed.

        ``spare`` are devices of the preempted jobs the waiting job does not need: free for anyone soon.
        """
        for d in free:
            if self._is_hole(d):
                self._set_hole(d, None)  # its reservation keeps it after this job, which ends before then
            else:
                self.pool.remove([d])
            self._change(d, avail=end)
        for d in busy:
            self._change(d, avail=end)
        for d in spare:
            self._change(d, avail=self.now)
        self.claimed.update(free)
        self.claimed.update(busy)


def _take(pool: _Pool, count: int, candidates: frozenset[int] | None) -> tuple[DeviceKey, ...] | None:
    """Allocate ``count`` devices from ``pool``, only on ``candidates`` when given (None: anywhere)."""
    if candidates is None:
        return pool.take(count)
    placed = place(pool.free_on(candidates), count, pool.sizes)
    if placed is not None:
        pool.remove(placed)
    return placed


class _Holds:
    """The jobs of one backend group that wait for devices, and which backends each holds up."""

    __slots__ = ("by_backend", "everything", "first", "rank")

    def __init__(self, rank: Mapping[int, int]) -> None:
        self.rank = rank  # job id -> position in queue order
        self.first: QueuedJob | None = None  # every job waiting here overlaps an unrestricted job
        self.everything: QueuedJob | None = None  # the first waiting job that may use any backend
        self.by_backend: dict[int, QueuedJob] = {}

    def head(self, candidates: frozenset[int] | None) -> QueuedJob | None:
        """Return the earliest waiting job whose candidate backends overlap ``candidates`` (None: all)."""
        if candidates is None:
            return self.first
        found = [] if self.everything is None else [self.everything]
        if len(candidates) <= len(self.by_backend):
            found.extend(self.by_backend[b] for b in candidates if b in self.by_backend)
        else:
            found.extend(job for b, job in self.by_backend.items() if b in candidates)
        return min(found, key=lambda job: self.rank[job.id], default=None)

    def add(self, job: QueuedJob, candidates: frozenset[int] | None) -> None:
        """Record that ``job`` waits for devices of ``candidates`` (None: any backend of the group)."""
        if self.first is None:
            self.first = job
        if candidates is None:
            if self.everything is None:
                self.everything = job
            return
        for backend in candidates:
            self.by_backend.setdefault(backend, job)


def _ids(backends: Iterable[int], shown: int = 5) -> str:
    ordered = sorted(backends)
    text = ",".join(map(str, ordered[:shown]))
    return text if len(ordered) <= shown else f"{text} and {len(ordered) - shown} more"


def _no_candidate_reason(job: QueuedJob) -> str:
    """Say why a job has no backend it may run on."""
    if not job.allowed_backends:
        return f"its host is not a registered backend, so no device of backend group {job.backend_group_id} can run it"
    return (
        f"may only use backend(s) {_ids(job.allowed_backends)}, none of them an ACTIVE backend of "
        f"backend group {job.backend_group_id}"
    )


def _reserved_reason(
    job: QueuedJob, devices: tuple[DeviceKey, ...], status: Mapping[DeviceKey, str], taken: Collection[DeviceKey]
) -> str | None:
    """Say why a reserved-SDA job cannot start on its reserved ``devices`` now; None when it can."""
    if len(devices) != job.device_count:
        return f"asks for {job.device_count} device(s) but SDA {job.sda_id} reserves {len(devices)}"
    if job.allowed_backends is not None:
        elsewhere = {b for b, _ in devices if b not in job.allowed_backends}
        if elsewhere:
            return f"SDA {job.sda_id} reserves devices on backend(s) {_ids(elsewhere)}, which its host cannot use"
    idle = sum(1 for d in devices if status.get(d) == IDLE and d not in taken)
    if idle < len(devices):
        return f"waiting for the {len(devices)} reserved device(s) of SDA {job.sda_id}: {idle} idle"
    return None


def _limit_reason(job: QueuedJob, running: int) -> str:
    """Say why a job of an SDA that already runs as many jobs as it may waits."""
    jobs = "1 job" if running == 1 else f"{running} jobs"
    if job.sda_limit == 1:
        return f"SDA {job.sda_id} already runs {jobs} (one process per SDA)"
    return f"SDA {job.sda_id} already runs {jobs} (duplicable limit {job.sda_limit})"


def _group_devices(
    backends: Sequence[BackendState], held: Collection[DeviceKey]
) -> dict[int, tuple[dict[int, list[int]], dict[int, int], dict[int, list[int]]]]:
    """Return, per backend group, the idle device indexes, the usable size and the usable indexes of each active backend.

    Usable devices are those not shut down and not held by a reserved SDA; only active backends count.
    """
    groups: dict[int, tuple[dict[int, list[int]], dict[int, int], dict[int, list[int]]]] = {}
    for backend in backends:
        if not backend.active:
            continue
        free, sizes, usable_of = groups.setdefault(backend.group_id, ({}, {}, {}))
        idle: set[int] = set()
        usable: set[int] = set()
        for device in backend.devices:
            if device.status == SHUTDOWN or (backend.id, device.index) in held:
                continue
            usable.add(device.index)
            if device.status == IDLE:
                idle.add(device.index)
        sizes[backend.id] = len(usable)
        free[backend.id] = sorted(idle)
        usable_of[backend.id] = sorted(usable)
    return groups


class _Pool:
    """The idle devices of one backend group, bucketed by how many each backend has free.

    Within one pass free counts only go down, so each bucket is a min-heap of backend ids whose stale
    entries (backends that have since lost devices) are dropped when they reach the top. A second heap
    per bucket holds the backends that are still fully free. Finding the best fit or the largest
    backend costs at most one scan over the bucket sizes, never a scan over the backends. Jobs limited
    to some backends use :func:`place` over :meth:`free_on` and hand the choice back to :meth:`remove`.
    """

    __slots__ = ("_count", "_free", "_full", "_heaps", "_largest", "_members", "sizes", "total", "usable")

    def __init__(self, free: dict[int, list[int]], sizes: dict[int, int]) -> None:
        self._free = {b: v for b, v in free.items() if v}
        self._count = {b: len(v) for b, v in self._free.items()}
        self.sizes = sizes  # every active backend of the group -> its usable device count
        self.total = sum(self._count.values())
        self.usable = sum(sizes.values())
        self._largest = max(self._count.values(), default=0)
        self._members = [0] * (self._largest + 1)
        self._heaps: list[list[int]] = [[] for _ in range(self._largest + 1)]
        self._full: list[list[int]] = [[] for _ in range(self._largest + 1)]
        for b, n in self._count.items():
            self._members[n] += 1
            self._heaps[n].append(b)
            if n >= sizes.get(b, n):
                self._full[n].append(b)
        for heap in self._heaps:
            heapq.heapify(heap)
        for heap in self._full:
            heapq.heapify(heap)

    def _top(self, heap: list[int], n: int) -> int | None:
        """Return the lowest backend id in ``heap`` that still has exactly ``n`` free devices."""
        while heap:
            if self._count[heap[0]] == n:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _use(self, backend: int, n: int, out: list[DeviceKey]) -> None:
        """Give the ``n`` lowest free devices of ``backend`` to ``out``."""
        indexes = self._free[backend]
        out.extend((backend, i) for i in indexes[:n])
        self._shrink(backend, indexes[n:])

    def _shrink(self, backend: int, left: list[int]) -> None:
        """Leave ``backend`` with only the free devices ``left`` (a subset of what it had)."""
        old = self._count[backend]
        new = len(left)
        self._free[backend] = left
        self._count[backend] = new
        self._members[old] -= 1
        if new:
            self._members[new] += 1
            heapq.heappush(self._heaps[new], backend)
        self.total -= old - new

    def candidates(self, allowed: frozenset[int] | None) -> frozenset[int] | None:
        """Return the active backends of the group among ``allowed``; None when that is all of them."""
        if allowed is None:
            return None
        found = frozenset(b for b in allowed if b in self.sizes)
        return None if len(found) == len(self.sizes) and found else found

    def usable_on(self, backends: Iterable[int]) -> int:
        """How many usable (not shut down, not reserved) devices ``backends`` have together."""
        return sum(self.sizes.get(b, 0) for b in backends)

    def idle_on(self, backends: Iterable[int]) -> int:
        """How many devices of ``backends`` are still free in this pass."""
        return sum(self._count.get(b, 0) for b in backends)

    def free_on(self, backends: Iterable[int]) -> dict[int, list[int]]:
        """Return the free device indexes of ``backends`` that have any, for :func:`place`."""
        return {b: list(self._free[b]) for b in backends if self._count.get(b)}

    def has(self, device: DeviceKey) -> bool:
        """Whether ``device`` is free in the pool."""
        return bool(self._count.get(device[0])) and device[1] in self._free[device[0]]

    def remove(self, devices: Iterable[DeviceKey]) -> None:
        """Take devices chosen among :meth:`free_on` out of the pool.

        Raises:
            ValueError: a device is not free in the pool.
        """
        by_backend: dict[int, set[int]] = {}
        for backend, index in devices:
            by_backend.setdefault(backend, set()).add(index)
        for backend, indexes in by_backend.items():
            if not self._count.get(backend) or not indexes.issubset(self._free[backend]):
                raise ValueError(f"devices {sorted(indexes)} of backend {backend} are not all free")
        for backend, indexes in by_backend.items():
            self._shrink(backend, [i for i in self._free[backend] if i not in indexes])

    def take(self, count: int) -> tuple[DeviceKey, ...] | None:
        """Allocate ``count`` devices with :func:`place`'s packing; None (and nothing taken) if too few are free."""
        if count > self.total:
            return None
        chosen: list[DeviceKey] = []
        rest = count
        while True:
            for n in range(rest, self._largest + 1):
                if self._members[n]:
                    best = self._top(self._heaps[n], n)
                    assert best is not None
                    self._use(best, rest, chosen)
                    chosen.sort()
                    return tuple(chosen)
            while not self._members[self._largest]:
                self._largest -= 1
            n = self._largest
            whole = self._top(self._full[n], n)
            if whole is None:
                whole = self._top(self._heaps[n], n)
                assert whole is not None
            self._use(whole, n, chosen)
            rest -= n
