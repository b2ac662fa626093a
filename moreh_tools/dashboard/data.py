"""What the dashboard shows, read from the state into frozen dataclasses, and the actions it takes.

Everything here runs in a worker thread, never in Textual's event loop: :meth:`StateSource.fetch`
holds the state lock only while it reads (one ``store.reading()`` session), and the widgets draw
the returned :class:`Snapshot` after the lock is gone. A cheap fingerprint query comes first, so a
state that did not change is not read again (the dashboard idles at a small fraction of a core).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from moreh_tools.smi.common import UserError, check_token
from moreh_tools.smi.status import SIMULATED_GPU_NAME, SmiStatus, collect_status, used_percent

if TYPE_CHECKING:
    from moreh_tools.smi.devices import ModelOption
    from state.records import Event, HistoryEntry, Job
    from state.session import Session
    from state.store import StateStore

View = Literal["user", "admin"]

DEFAULT_INTERVAL_S = 1.0
HISTORY_ROWS = 30
EVENT_ROWS = 60
USAGE_WINDOW = timedelta(hours=24)
#: Usage counts running jobs up to now, so it ages although nothing changes; re-read it this often.
USAGE_MAX_AGE_S = 30.0
#: H7's status reads this wording for a queued job the scheduler has no objection to.
STARTS_NEXT_PASS = "devices are free; it starts at the next scheduling pass"


# -- who is looking ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """Whose dashboard this is: a token (user view, admin view too for ADMIN) or the state's owner."""

    token: str | None
    label: str
    admin: bool

    @property
    def user(self) -> bool:
        """Whether there is a token, so a user view."""
        return self.token is not None

    @property
    def views(self) -> tuple[View, ...]:
        """The views this access may open, the first being where the dashboard starts."""
        views: list[View] = []
        if self.user:
            views.append("user")
        if self.admin:
            views.append("admin")
        return tuple(views)


def has_direct_access(home: Path) -> bool:
    """Whether this process may read the state itself (the master's admin, without a token)."""
    from state.paths import state_file

    path = state_file(home)
    return path.is_file() and os.access(path, os.R_OK | os.W_OK) and os.access(home, os.W_OK)


def resolve_access(store: StateStore, token: str | None) -> Access:
    """Check the token (or direct access to the state) before the screen is taken over."""
    if token is None:
        if not has_direct_access(store.home):
            raise UserError(
                "SDA token is not given. Set MOREH_SDA_TOKEN (or the token file) for your devices, or run on "
                "the master with access to the state (MOREH_HOME) for the admin view."
            )
        return Access(None, f"state at {store.home}", admin=True)
    with store.reading() as s:
        check_token(s, token)
        owner = s.tokens.get(token)
    label = owner.description or f"token {token[:8]}…"
    return Access(token, label, admin=owner.access_level == "ADMIN")


# -- what is shown ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    """A queued or running job, as the job tables show it."""

    id: int
    token: str
    owner: str
    sda_id: int
    status: str  # QUEUED | SUBMITTED | RUNNING
    priority: int
    device_count: int
    host: str
    process: str
    position: int | None
    reason: str
    request_time: datetime
    start_time: datetime | None
    placed_on: str

    @property
    def queued(self) -> bool:
        """Whether the job still waits for devices."""
        return self.status == "QUEUED"


@dataclass(frozen=True)
class HistoryRow:
    """An ended job of the token."""

    id: int
    sda_id: int
    process: str
    exit_code: int | None
    end_reason: str
    start_time: datetime | None
    end_time: datetime

    @property
    def duration(self) -> timedelta | None:
        """How long the job's process ran (None: it never started)."""
        return self.end_time - self.start_time if self.start_time is not None else None


@dataclass(frozen=True)
class UserData:
    """The user view: H7's ``moreh-smi`` status plus the job and history tables."""

    status: SmiStatus
    jobs: tuple[JobRow, ...]
    history: tuple[HistoryRow, ...]


@dataclass(frozen=True)
class GridDevice:
    """One GPU of the admin grid."""

    index: int
    status: str
    memory_used_mib: int | None
    memory_total_mib: int | None
    util_gpu: int | None
    job_id: int | None
    simulated: bool

    @property
    def memory_percent(self) -> int | None:
        """Memory in use as a whole percentage (None: not sampled)."""
        return used_percent(self.memory_used_mib, self.memory_total_mib)


@dataclass(frozen=True)
class GridBackend:
    """One backend row of the admin grid."""

    id: int
    host: str
    status: str
    group: str
    devices: tuple[GridDevice, ...]

    @property
    def simulated(self) -> bool:
        """Whether the backend's GPUs are simulated."""
        return any(d.simulated for d in self.devices)


@dataclass(frozen=True)
class UsageRow:
    """One token's use of devices in the usage window, and what it has in the queue now."""

    token: str
    owner: str
    device_hours: float
    jobs: int
    running: int
    queued: int


@dataclass(frozen=True)
class AdminData:
    """The admin view: the grid, the jobs (running, then queued in scheduling order), usage, events."""

    backends: tuple[GridBackend, ...]
    running: tuple[JobRow, ...]
    queue: tuple[JobRow, ...]
    usage: tuple[UsageRow, ...]
    events: tuple[Event, ...]

    @property
    def jobs(self) -> tuple[JobRow, ...]:
        """Running jobs first, then the queue in the order the scheduler serves it."""
        return self.running + self.queue


@dataclass(frozen=True)
class Snapshot:
    """One poll's result. ``taken_at`` is the state's clock (naive local time, as the state stores)."""

    taken_at: datetime
    daemon_running: bool
    user: UserData | None = None
    admin: AdminData | None = None
    changed: bool = True


@dataclass(frozen=True)
class ModelChoices:
    """What the model picker offers for the current device."""

    device_id: int
    current: ModelOption | None
    options: tuple[ModelOption, ...]
    busy: str | None = None


class DataSource(Protocol):
    """What the app needs: polls and actions. Tests pass a fixed source for deterministic screens."""

    access: Access

    def fetch(self, view: View) -> Snapshot:
        """Read what ``view`` shows (blocking; called in a worker thread)."""
        ...

    def release(self, job_id: int) -> str:
        """Release a job; return the message to show."""
        ...

    def set_priority(self, job_id: int, priority: int) -> str:
        """Change a queued job's priority; return the message to show."""
        ...

    def model_choices(self) -> ModelChoices:
        """The models the current device may switch to."""
        ...

    def switch_model(self, option: ModelOption) -> str:
        """Switch the current device's model; return the message to show."""
        ...


# -- reading the state ---------------------------------------------------------------------------------

_FINGERPRINT_SQL = """
SELECT now()::TIMESTAMP,
    (SELECT coalesce(max(id), 0) FROM events),
    (SELECT count(*) || ':' || coalesce(sum(hash(id, status, priority, pid)), 0) FROM jobs),
    (SELECT count(*) || ':' || coalesce(sum(hash(job_id, pid, memory_mib)), 0) FROM job_processes),
    (SELECT count(*) || ':' || coalesce(sum(hash(backend_id, idx, status)), 0) FROM devices),
    (SELECT max(sampled_at) FROM devices)
"""


def _fingerprint(s: Session) -> tuple[datetime, tuple[Any, ...], Any]:
    """(the state's clock, what changes with any state change, what changes with each GPU sample)."""
    row = s.one(_FINGERPRINT_SQL)
    assert row is not None
    # Not every change writes an event (a job starting to run, samples), hence the hashes.
    return row[0], tuple(row[1:5]), row[5]


def _owners(s: Session, tokens: Sequence[str]) -> dict[str, str]:
    if not tokens:
        return {}
    rows = s.all(
        f"SELECT value, description FROM tokens WHERE value IN ({', '.join('?' for _ in tokens)})", list(tokens)
    )
    return {str(v): str(d) for v, d in rows}


def _placed_on(job: Job) -> str:
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
        placed_on=_placed_on(job),
    )


def _history_row(entry: HistoryEntry) -> HistoryRow:
    return HistoryRow(
        entry.id,
        entry.sda_id,
        entry.process_name,
        entry.exit_code,
        entry.end_reason,
        entry.start_time,
        entry.end_time,
    )


def gather_user(s: Session, token: str, label: str) -> UserData:
    """The user view of ``token``: devices (H7's status), jobs with queue places, recent history."""
    status = collect_status(s, token)
    waiting = {w.job_id: w for w in status.waiting}
    jobs = []
    for job in sorted(s.jobs.of_token(token), key=lambda j: (j.status == "QUEUED", j.sda_id, j.id)):
        wait = waiting.get(job.id)
        jobs.append(_job_row(job, label, wait.position if wait else None, wait.reason if wait else ""))
    history = tuple(_history_row(e) for e in reversed(s.jobs.history(HISTORY_ROWS, token)))
    return UserData(status, tuple(jobs), history)


def gather_grid(s: Session) -> tuple[GridBackend, ...]:
    """Every backend and its GPUs with their scheduling status and last samples."""
    devices: dict[int, list[GridDevice]] = {}
    for backend_id, index, status, name, used, total, util, job_id in s.all(
        "SELECT d.backend_id, d.idx, d.status, d.name, d.memory_used_mib, d.memory_total_mib, d.util_gpu, jd.job_id "
        "FROM devices d LEFT JOIN job_devices jd ON jd.backend_id = d.backend_id AND jd.device_index = d.idx "
        "ORDER BY 1, 2"
    ):
        devices.setdefault(int(backend_id), []).append(
            GridDevice(int(index), str(status), used, total, util, job_id, name == SIMULATED_GPU_NAME)
        )
    return tuple(
        GridBackend(int(bid), str(host), str(status), str(group), tuple(devices.get(int(bid), ())))
        for bid, host, status, group in s.all(
            "SELECT b.id, b.host, b.status, coalesce(g.name, '') FROM backends b "
            "LEFT JOIN backend_groups g ON g.id = b.group_id ORDER BY b.id"
        )
    )


def gather_jobs(s: Session) -> tuple[tuple[JobRow, ...], tuple[JobRow, ...]]:
    """(running jobs by id, queued jobs in scheduling order with their place and why they wait)."""
    from scheduler_core.scheduling import queue_order, schedule

    jobs = s.jobs.all()
    owners = _owners(s, sorted({j.token for j in jobs}))
    queued = {j.id: j for j in jobs if j.status == "QUEUED"}
    order: list[int] = []
    reasons: dict[int, str] = {}
    if queued:
        backends, queue, active, reserved = s.jobs.scheduling_inputs()
        order = [q.id for q in queue_order(queue)]
        try:
            reasons = dict(schedule(backends, queue, active, reserved).waiting)
        except Exception:
            # The reason is a courtesy; a scheduler fault must not hide the queue.
            if os.environ.get("MOREH_DEBUG"):
                raise
    running = tuple(_job_row(j, owners.get(j.token, ""), None, "") for j in jobs if j.status != "QUEUED")
    queue_rows = tuple(
        _job_row(queued[jid], owners.get(queued[jid].token, ""), place, reasons.get(jid, STARTS_NEXT_PASS))
        for place, jid in enumerate(order, start=1)
        if jid in queued
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


@dataclass
class _Cache:
    structure: tuple[Any, ...] | None = None
    samples: Any = None
    user: UserData | None = None
    admin: AdminData | None = None
    usage_read_at: float = -USAGE_MAX_AGE_S
    admin_parts: dict[str, Any] = field(default_factory=dict)


class StateSource:
    """The dashboard's data source over the real state."""

    def __init__(self, store: StateStore, access: Access, host: str | None = None) -> None:
        """Read ``store`` as ``access`` allows; ``host`` is this host (for releasing jobs that run here)."""
        from moreh_tools import identity

        self.store = store
        self.access = access
        self.host = host or identity.host_name()
        self._cache: dict[View, _Cache] = {"user": _Cache(), "admin": _Cache()}
        self._sampled_at = -1e9

    # -- polling -------------------------------------------------------------------------------------

    def fetch(self, view: View, *, resample: bool = True) -> Snapshot:
        """Read ``view``; parts of the state that did not change since the last fetch are not read again.

        Without a daemon nobody samples this host's GPUs, so the user view does it (as ``moreh-smi``
        does) when the figures of the token's jobs here are stale, then reads again.
        """
        from moreh_tools.jobs.control import daemon_running
        from moreh_tools.smi.status import SAMPLE_MAX_AGE_S, refresh_samples, samples_stale

        if view not in self.access.views:
            raise UserError(f"The {view} view is not available to {self.access.label}.")
        daemon = daemon_running(self.store.home)
        sample_due = resample and not daemon and time.monotonic() - self._sampled_at >= SAMPLE_MAX_AGE_S
        cache = self._cache[view]
        with self.store.reading() as s:
            now, structure, samples = _fingerprint(s)
            structure_changed = structure != cache.structure
            samples_changed = structure_changed or samples != cache.samples
            if view == "user":
                assert self.access.token is not None
                if sample_due and samples_stale(s, self.access.token, self.host):
                    stale = True
                else:
                    stale = False
                    if samples_changed or cache.user is None:
                        cache.user = gather_user(s, self.access.token, self.access.label)
                changed = samples_changed
            else:
                stale = False
                changed = self._fetch_admin(s, cache, now, structure_changed, samples_changed)
        if stale:
            self._sampled_at = time.monotonic()
            try:
                refresh_samples(self.store, self.host)
            except Exception:
                # Stale figures are better than a dead dashboard.
                if os.environ.get("MOREH_DEBUG"):
                    raise
            return self.fetch(view, resample=False)
        cache.structure, cache.samples = structure, samples
        return Snapshot(
            now,
            daemon,
            user=cache.user if view == "user" else None,
            admin=cache.admin if view == "admin" else None,
            changed=changed,
        )

    def _fetch_admin(
        self, s: Session, cache: _Cache, now: datetime, structure_changed: bool, samples_changed: bool
    ) -> bool:
        parts = cache.admin_parts
        if samples_changed or "grid" not in parts:
            parts["grid"] = gather_grid(s)
        if structure_changed or "jobs" not in parts:
            parts["jobs"] = gather_jobs(s)
            parts["events"] = tuple(reversed(s.events.tail(EVENT_ROWS)))
        usage_due = time.monotonic() - cache.usage_read_at >= USAGE_MAX_AGE_S
        if structure_changed or usage_due or "usage" not in parts:
            running, queue = parts["jobs"]
            parts["usage"] = gather_usage(s, now, running + queue)
            cache.usage_read_at = time.monotonic()
        fresh = AdminData(parts["grid"], parts["jobs"][0], parts["jobs"][1], parts["usage"], parts["events"])
        changed = fresh != cache.admin
        cache.admin = fresh
        return changed

    def forget(self) -> None:
        """Read everything again at the next fetch (after an action of ours)."""
        for cache in self._cache.values():
            cache.structure = None

    # -- actions ---------------------------------------------------------------------------------------

    def _job(self, job_id: int) -> Job:
        with self.store.reading() as s:
            job = s.jobs.find(job_id)
        if job is None:
            raise UserError(f"Job {job_id} has already ended; nothing was changed.")
        if not self.access.admin and job.token != self.access.token:
            raise UserError(f"Job {job_id} is not one of your jobs; nothing was changed.")
        return job

    def release(self, job_id: int) -> str:
        """Release a job (queued: it leaves the queue; running here: its processes are stopped)."""
        from moreh_tools.jobs.control import release_jobs

        job = self._job(job_id)
        release_jobs(self.store, [job], self.host)
        self.forget()
        return f"Job {job_id} released."

    def set_priority(self, job_id: int, priority: int) -> str:
        """Change a queued job's priority and let the scheduler act on the new order at once."""
        from moreh_tools.jobs.control import wake_allocated

        if not self.access.admin:
            raise UserError("Only an admin may change a job's priority.")
        with self.store.transaction(f"moreh-smi --dashboard: update job priority {job_id} {priority}") as s:
            s.jobs.update_priority(job_id, priority)
            decision = s.jobs.run_scheduling_pass()
        wake_allocated(self.store.home, decision)
        self.forget()
        return f"Job {job_id} priority set to {priority}."

    def model_choices(self) -> ModelChoices:
        """The current device and the models this token may switch it to."""
        from moreh_tools.smi.devices import current_device, job_on, model_options

        token = self._token()
        with self.store.reading() as s:
            sda = current_device(s, token)
            options = tuple(model_options(s, token))
            job = job_on(s, sda.id)
        current = next((o for o in options if o.is_model_of(sda)), None)
        busy = f"job {job.id} ({job.status}) uses it" if job is not None else None
        if sda.reserved:
            busy = "it is a reserved device"
        return ModelChoices(sda.id, current, options, busy)

    def switch_model(self, option: ModelOption) -> str:
        """Switch the current device to ``option`` (refused while a job uses the device)."""
        from moreh_tools.smi.devices import switch_model

        token = self._token()
        with self.store.transaction(f"moreh-smi --dashboard: switch model {option.text}") as s:
            switched = switch_model(s, token, option)
        self.forget()
        if not switched:
            return f"The device already is {option.text}; nothing was changed."
        return f'The model is successfully switched to "{option.text}".'

    def _token(self) -> str:
        if self.access.token is None:
            raise UserError("Switching a model needs a token (MOREH_SDA_TOKEN); the admin view has none.")
        return self.access.token
