"""Records of jobs: a job in the queue or running, an ended one, usage and time limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class DeviceRef:
    """One device of one backend."""

    backend_id: int
    backend_host: str
    index: int


@dataclass(frozen=True)
class Job:
    """A job in the queue (QUEUED) or holding devices (SUBMITTED, RUNNING)."""

    id: int
    token: str
    sda_id: int
    priority: int
    status: str
    host: str
    pid: int | None
    pid_create_time: float | None
    launcher_pid: int | None
    launcher_create_time: float | None
    process_name: str
    client_version: str
    device_count: int
    request_time: datetime
    submit_time: datetime | None
    start_time: datetime | None
    release_requested: bool
    backend_id: int | None = None  # the backend of the host the job's process runs on
    guardian_pid: int | None = None
    guardian_create_time: float | None = None
    release_detail: str = ""  # who asked the job to stop ("released by an admin", ...), once someone has
    time_limit: float | None = None  # seconds the job may run (None: unlimited), fixed when it was queued
    charged_group: int | None = None  # the user group whose quota its devices count against (None: no quota)
    fairshare_group: int | None = None  # the user group whose usage it adds to (None: the token is in no group)
    borrowed: bool = False  # it started beyond its group's nominal quota: it may be preempted
    preempting: bool = False  # a scheduling pass chose it as a preemption victim; it is being stopped
    preempted_for: int | None = None  # the queued job it is preempted for
    preempt_time: float | None = None  # when it was chosen (epoch seconds)
    devices: tuple[DeviceRef, ...] = ()


@dataclass(frozen=True)
class HistoryEntry:
    """A job that has ended."""

    id: int
    token: str
    sda_id: int
    priority: int
    host: str
    pid: int | None
    process_name: str
    client_version: str
    device_count: int
    devices: str
    request_time: datetime
    start_time: datetime | None
    end_time: datetime
    exit_code: int | None
    end_reason: str
    end_detail: str = ""  # who or what ended it, when someone did ("released by an admin", "timed out", ...)
    time_limit: float | None = None  # the limit it ran under (seconds; None: unlimited)

    @property
    def device_refs(self) -> tuple[DeviceRef, ...]:
        """The devices the job held, from the JSON kept in ``devices`` (none when it cannot be read)."""
        import json  # here: few readers of a history entry need its devices

        try:
            items = json.loads(self.devices or "[]")
            return tuple(DeviceRef(int(d["backend_id"]), str(d["host"]), int(d["index"])) for d in items)
        except (ValueError, TypeError, KeyError):
            return ()


@dataclass(frozen=True)
class TokenUsage:
    """Device-seconds a token used in a period."""

    token: str
    description: str
    device_seconds: float
    jobs: int


@dataclass(frozen=True)
class TimeLimits:
    """A token's or an SDA model's time limits in seconds: the default a job gets and the most it may ask for."""

    default: float | None = None
    maximum: float | None = None

    @property
    def is_set(self) -> bool:
        """Whether either limit is set."""
        return self.default is not None or self.maximum is not None
