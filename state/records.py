"""Plain records read from the state: what the rest of the product sees, never a database row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# HOST is ours (not in the manual): the token of a GPU host's sdamanager, which may register the host and report
# its GPUs, and nothing else an ADMIN may do.
ACCESS_LEVELS = ("USER", "ADMIN", "DEVELOPER", "HOST")
BACKEND_STATUSES = ("SHUTDOWN", "ACTIVE")
# UNHEALTHY: the GPU guardian saw the GPU fail (a critical Xid, uncorrectable ECC errors, pending page retirement or
# row remapping, lost); it is never allocated until an admin sets it IDLE again ('update device').
DEVICE_STATUSES = ("SHUTDOWN", "IDLE", "PREPARING", "PROCESSING", "CLEANING", "UNHEALTHY")
UNHEALTHY = "UNHEALTHY"
PRIORITY_MIN, PRIORITY_MAX = -99, 99


@dataclass(frozen=True)
class Token:
    """A user's identity: what ``show token`` and ``get token`` print."""

    value: str
    description: str
    priority: int
    access_level: str
    current_sda: int | None
    max_sda: int
    duplicable: int
    worker_execute_info: str
    env: tuple[tuple[str, str], ...] = ()

    @property
    def duplicable_text(self) -> str:
        """``off`` for 1 (one process per SDA), ``unlimited`` for 0, otherwise the count."""
        if self.duplicable == 1:
            return "off"
        if self.duplicable == 0:
            return "unlimited"
        return str(self.duplicable)

    @property
    def env_text(self) -> str:
        """The token's environment values as ``NAME=value, NAME=value``."""
        if not self.env:  # most tokens; 'show token' asks 10,000 of them
            return ""
        return ", ".join(f"{name}={value}" for name, value in self.env)


@dataclass(frozen=True)
class SDAModel:
    """A size of accelerator: how many whole devices an SDA of this model gets."""

    id: int
    name: str
    devices: int


@dataclass(frozen=True)
class DeviceRef:
    """One device of one backend."""

    backend_id: int
    backend_host: str
    index: int


@dataclass(frozen=True)
class SDA:
    """A token's software-defined accelerator."""

    id: int
    token: str
    model_id: int
    model_group_id: int | None
    description: str
    reserved: bool
    devices: tuple[DeviceRef, ...] = ()


@dataclass(frozen=True)
class UserGroup:
    """A named set of tokens."""

    id: int
    name: str
    description: str
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelGroup:
    """A named set of SDA models tied to one backend group."""

    id: int
    name: str
    backend_group_id: int
    backend_group_name: str
    models: tuple[SDAModel, ...] = ()


@dataclass(frozen=True)
class BackendGroup:
    """A named set of backends; id 0 is the default group every backend starts in."""

    id: int
    name: str
    backends: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Device:
    """One GPU of a backend with its scheduling status and its last sampled figures."""

    backend_id: int
    index: int
    status: str
    uuid: str | None = None
    name: str | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    util_gpu: int | None = None
    util_mem: int | None = None
    temp_gpu: int | None = None
    temp_mem: int | None = None


@dataclass(frozen=True)
class Backend:
    """A worker node and its devices."""

    id: int
    host: str
    ip: str
    group_id: int
    group_name: str
    status: str
    devices: tuple[Device, ...] = field(default=())


@dataclass(frozen=True)
class Version:
    """A worker software version and how to run it."""

    version: str
    supported: bool
    latest: bool
    path: str
    query_command: str
    worker_command: str
    health_check_command: str
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Event:
    """One entry of the event log: every state change writes one."""

    id: int
    time: datetime
    action: str
    token: str
    command: str
    detail: str
    origin: str = ""  # who asked: ``uid=N`` and the way in (file, socket, http); empty for older entries


JOB_STATUSES = ("QUEUED", "SUBMITTED", "RUNNING")
# ``cancelled``: its own user interrupted a job that was still waiting (Ctrl-C), unlike ``released`` (someone
# asked a job to stop: an admin, the user's moreh-smi -r, the dashboard). ``timeout``: the job reached its time
# limit. ``preempted``: the scheduler took its (borrowed) devices back for a user group within its quota.
# ``idle``: the GPU guardian reclaimed the devices of a job that stayed idle for its idle policy's window.
END_REASONS = ("finished", "failed", "released", "lost", "cancelled", "timeout", "preempted", "idle")


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


@dataclass(frozen=True)
class GroupQuota:
    """A user group's GPU quota on a backend group: ``nominal`` devices for sure, ``borrow`` more while idle.

    ``granted`` is what approved, unexpired quota requests add to the nominal quota now.
    """

    user_group_id: int
    user_group_name: str
    backend_group_id: int
    backend_group_name: str
    nominal: int
    borrow: int
    granted: int = 0

    @property
    def effective_nominal(self) -> int:
        """The nominal quota with the grants in force."""
        return self.nominal + self.granted


QUOTA_REQUEST_STATUSES = ("PENDING", "APPROVED", "REJECTED", "EXPIRED")


@dataclass(frozen=True)
class QuotaRequest:
    """A user's request for more GPUs for their user group, for some days (times are epoch seconds)."""

    id: int
    token: str
    user_group_id: int
    backend_group_id: int
    gpus: int
    days: int
    reason: str
    status: str
    requested_at: float
    decided_at: float | None = None
    expires_at: float | None = None


@dataclass(frozen=True)
class GroupUsage:
    """A user group's GPU-seconds as last accrued (``usage`` as of ``updated_at``, epoch seconds; decay it to now)."""

    user_group_id: int
    usage: float
    updated_at: float


# -- the GPU guardian ---------------------------------------------------------------------------------------

#: Kinds of :class:`DeviceFlag`: the device failed (its status is UNHEALTHY), a process outside the scheduler
#: uses it, a job's process uses it although the job was not given it, or NVML fails on the whole host.
FLAG_UNHEALTHY, FLAG_FOREIGN, FLAG_ESCAPED, FLAG_NVML = "unhealthy", "foreign", "escaped", "nvml"
FLAG_KINDS = (FLAG_UNHEALTHY, FLAG_FOREIGN, FLAG_ESCAPED, FLAG_NVML)


@dataclass(frozen=True)
class DeviceFlag:
    """Why the GPU guardian keeps a device (``index``) or a whole backend (``index`` None, kind ``nvml``) out of use.

    ``pid``/``user``/``memory_mib`` name the process of a ``foreign`` or ``escaped`` flag; ``job_id`` is the job an
    escaped process belongs to; ``device_job`` the job the device is allocated to (None: free). ``since`` is when
    the guardian first saw it.
    """

    backend_id: int
    host: str
    index: int | None
    kind: str
    cause: str
    since: datetime
    pid: int | None = None
    user: str | None = None
    memory_mib: int | None = None
    job_id: int | None = None
    device_job: int | None = None

    @property
    def location(self) -> str:
        """``host:index`` (``host`` for a host-wide flag)."""
        return self.host if self.index is None else f"{self.host}:{self.index}"


#: Scopes of an idle policy: a token, or an SDA model (by id).
IDLE_SCOPES = ("token", "sdamodel")


@dataclass(frozen=True)
class IdlePolicyRow:
    """An idle policy an admin set for a token or an SDA model (``target``: the token value or the model id)."""

    scope: str
    target: str
    util_percent: float
    memory_mib: float
    window_s: float
    grace_s: float
    updated_at: datetime


@dataclass(frozen=True)
class JobIdle:
    """The guardian's idle bookkeeping of one running job (times are the state's clock, epoch seconds)."""

    job_id: int
    idle_since: float | None
    warned: bool
    seconds_left: float | None
    reclaimed: bool
    notified_at: float | None = None
    checked_at: float | None = None  # the sample this was last updated by
