"""Which queued jobs get which idle devices in one scheduling pass, and why the others wait.

Everything here is pure: frozen dataclasses in, a :class:`Decision` out; no clock, no I/O, and the
same input always gives the same decision, whatever order the backends, devices or jobs come in.

The policy follows the SDA Manager manual:

* Jobs are taken in :func:`queue_order`: higher priority first, then earlier request, then lower id.
* A job's candidate backends are the ACTIVE backends of its backend group, narrowed to
  ``allowed_backends`` when the job names them (a job launched on host H runs its process on H, so
  it may only get H's devices). Only IDLE devices of candidate backends, not held by a reserved
  SDA, are handed out.
* Strict priority without backfill: once a job waits for devices (too few are idle, or it waits
  behind another job), every later job of the same backend group whose candidate backends overlap
  its candidates waits behind it, even a small one that would fit (the manual's "a 48-node customer
  at the head keeps the 0.5-node customers out"; admins fix that with priorities). Jobs on other
  backends or in other groups are unaffected.
* Jobs that never hold anything up: one that can never fit (it needs more devices than its candidate
  backends have usable, or it has no candidate backend at all), one whose SDA already runs as many
  jobs as it may (one process per SDA unless the token is duplicable), and a reserved-SDA job (it
  only ever uses its own reserved devices).
* A job is packed onto as few backends as possible (see :func:`place`).

How many SDAs a token may own (``Max SDA``) is checked when SDAs are created, with
:func:`scheduler_core.access.sda_quota_left`, not here.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

IDLE = "IDLE"
SHUTDOWN = "SHUTDOWN"

DeviceKey = tuple[int, int]
"""One device: (backend id, device index)."""


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


@dataclass(frozen=True)
class Allocation:
    """The devices given to one job, sorted by (backend id, device index)."""

    job_id: int
    devices: tuple[DeviceKey, ...]


@dataclass(frozen=True)
class Decision:
    """The outcome of one pass: the jobs that start (in queue order) and why each other job waits."""

    allocations: tuple[Allocation, ...]
    waiting: Mapping[int, str] = field(hash=False)


def queue_order(jobs: Iterable[QueuedJob]) -> list[QueuedJob]:
    """Return the jobs in the order the scheduler serves them.

    Args:
        jobs: the queued jobs, in any order.

    Returns:
        The jobs sorted by priority (highest first), then request time (earliest first), then id.
    """
    return sorted(jobs, key=_order_key)


def _order_key(job: QueuedJob) -> tuple[int, float, int]:
    return (-job.priority, job.request_time, job.id)


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
    free, sizes = _group_devices(backends, held).get(backend_group_id, ({}, {}))
    return place(free, count, sizes)


def schedule(
    backends: Sequence[BackendState],
    queue: Sequence[QueuedJob],
    active_per_sda: Mapping[int, int] = MappingProxyType({}),
    reserved: Collection[DeviceKey] = (),
) -> Decision:
    """Decide which queued jobs start now, on which devices, and why every other job waits.

    Args:
        backends: every backend with its devices and their current status.
        queue: the jobs waiting for devices (job ids must be unique).
        active_per_sda: SDA id -> how many of its jobs are already submitted or running.
        reserved: devices held by reserved SDAs; ordinary jobs never get them. Devices named in a
            queued job's ``reserved_devices`` are treated as reserved too.

    Returns:
        The allocations, in queue order, and a one-line reason for every job that waits.

    Raises:
        ValueError: two queued jobs share an id, or two backends share an id.
    """
    ids = {job.id for job in queue}
    if len(ids) != len(queue):
        raise ValueError("queued job ids must be unique")
    if len({b.id for b in backends}) != len(backends):
        raise ValueError("backend ids must be unique")

    held = set(reserved)
    for job in queue:
        held.update(job.reserved_devices)
    pools = {g: _Pool(free, sizes) for g, (free, sizes) in _group_devices(backends, held).items()}
    status = {(b.id, d.index): d.status for b in backends if b.active for d in b.devices}

    allocations: list[Allocation] = []
    waiting: dict[int, str] = {}
    started: dict[int, int] = {}  # SDA id -> jobs started in this pass
    taken_reserved: set[DeviceKey] = set()
    holds: dict[int, _Holds] = {}  # backend group id -> the jobs waiting for its devices

    for job in queue_order(queue):
        if job.device_count < 1:
            waiting[job.id] = f"asks for {job.device_count} device(s); a job needs at least 1"
            continue
        running = active_per_sda.get(job.sda_id, 0) + started.get(job.sda_id, 0)
        if job.sda_limit > 0 and running >= job.sda_limit:
            waiting[job.id] = _limit_reason(job, running)
            continue

        if job.reserved_devices:
            devices = tuple(sorted(set(job.reserved_devices)))
            reason = _reserved_reason(job, devices, status, taken_reserved)
            if reason is not None:
                waiting[job.id] = reason
                continue
            taken_reserved.update(devices)
        else:
            group = job.backend_group_id
            pool = pools.get(group)
            if pool is None:
                pool = pools[group] = _Pool({}, {})
            candidates = pool.candidates(job.allowed_backends)
            if candidates is not None and not candidates:
                waiting[job.id] = _no_candidate_reason(job)
                continue
            usable = pool.usable if candidates is None else pool.usable_on(candidates)
            if job.device_count > usable:
                where = f"backend group {group} has" if candidates is None else f"backend(s) {_ids(candidates)} have"
                waiting[job.id] = f"needs {job.device_count} device(s) but {where} {usable} usable"
                continue
            group_holds = holds.setdefault(group, _Holds())
            head = group_holds.head(candidates)
            if head is not None:
                waiting[job.id] = f"behind job {head.id} (priority {head.priority}) in backend group {group}"
                group_holds.add(job, candidates)
                continue
            placed = _take(pool, job.device_count, candidates)
            if placed is None:
                group_holds.add(job, candidates)
                idle = pool.total if candidates is None else pool.idle_on(candidates)
                where = f"backend group {group}" if candidates is None else f"backend(s) {_ids(candidates)}"
                waiting[job.id] = f"waiting for {job.device_count} device(s) on {where}: {idle} idle"
                continue
            devices = placed

        allocations.append(Allocation(job.id, devices))
        started[job.sda_id] = started.get(job.sda_id, 0) + 1

    return Decision(tuple(allocations), MappingProxyType(waiting))


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

    __slots__ = ("by_backend", "everything", "first")

    def __init__(self) -> None:
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
        return min(found, key=_order_key, default=None)

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
) -> dict[int, tuple[dict[int, list[int]], dict[int, int]]]:
    """Return, per backend group, the idle device indexes and the usable size of each active backend.

    Usable devices are those not shut down and not held by a reserved SDA; only active backends count.
    """
    groups: dict[int, tuple[dict[int, list[int]], dict[int, int]]] = {}
    for backend in backends:
        if not backend.active:
            continue
        free, sizes = groups.setdefault(backend.group_id, ({}, {}))
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
