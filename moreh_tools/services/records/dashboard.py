"""What the dashboard draws: job and history rows, the device grid, usage and fair share, one snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from moreh_tools.services.records.status import SmiStatus, used_percent
from state.records.catalogue import Event


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
    reason_code: str = ""
    expected_start: datetime | None = None
    time_limit: float | None = None

    @property
    def expected_text(self) -> str:
        """The estimated start as ``YYYY-MM-DD hh:mm:ss`` ("" when there is none)."""
        return "" if self.expected_start is None else self.expected_start.strftime("%Y-%m-%d %H:%M:%S")

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
    #: Why the GPU guardian keeps it out of use (UNHEALTHY's cause, a foreign process); "" when nothing.
    flag: str = ""

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
    #: Why none of its GPUs is handed out (NVML fails on the host); "" when nothing.
    failure: str = ""

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
class FairShareRow:
    """A user group's fair share: its share (nominal GPUs, at least 1), decayed usage and factor (0..1)."""

    user_group_id: int
    name: str
    share: float
    usage_gpu_seconds: float
    factor: float

    @property
    def usage_gpu_hours(self) -> float:
        """The decayed usage in GPU-hours."""
        return self.usage_gpu_seconds / 3600.0


@dataclass(frozen=True)
class AdminData:
    """The admin view: the grid, the jobs (running, then queued in scheduling order), usage, events."""

    backends: tuple[GridBackend, ...]
    running: tuple[JobRow, ...]
    queue: tuple[JobRow, ...]
    usage: tuple[UsageRow, ...]
    events: tuple[Event, ...]
    fairshare: tuple[FairShareRow, ...] = ()

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
    fingerprint: str = ""  # give it back with the next poll: an unchanged state then answers changed=False
