"""What the services return: frozen dataclasses that cross the port (in process, or as JSON) and that the
tools render. Nothing here reads the state or prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from state.records import DeviceFlag, Event, GroupQuota, Job, QuotaRequest

if TYPE_CHECKING:
    from state.records import SDA

View = Literal["user", "admin"]

#: The name the simulated provider gives its GPUs (moreh_tools.gpus.simulated.SIMULATED_GPU_NAME);
#: copied, not imported, because that module loads psutil and moreh-smi must start fast.
SIMULATED_GPU_NAME = "Simulated GPU (moreh-tools)"

#: Samples older than this (seconds) are refreshed by moreh-smi itself when no daemon runs.
SAMPLE_MAX_AGE_S = 2.0

def used_percent(used_mib: int | None, total_mib: int | None) -> int | None:
    """Memory in use as a whole percentage of the total (None: not sampled, or no total)."""
    if used_mib is None or not total_mib:
        return None
    return round(100 * used_mib / total_mib)


@dataclass(frozen=True)
class GpuStatus:
    """One physical GPU behind a device, with its last sampled figures (None: never sampled)."""

    backend_id: int
    host: str
    index: int
    name: str
    memory_total_mib: int | None
    memory_used_mib: int | None
    util_gpu: int | None
    util_mem: int | None
    temp_gpu: int | None
    temp_mem: int | None

    @property
    def location(self) -> str:
        """``host:index``, as ``moreh-smi -p`` prints it."""
        return f"{self.host}:{self.index}"

    @property
    def simulated(self) -> bool:
        """Whether the figures come from the simulated provider, not from a real GPU."""
        return self.name == SIMULATED_GPU_NAME

    @property
    def memory_percent(self) -> int | None:
        """Memory in use as a whole percentage of the total."""
        return used_percent(self.memory_used_mib, self.memory_total_mib)


@dataclass(frozen=True)
class ProcessStatus:
    """One process of a running job and the GPU memory it holds (None: not sampled yet)."""

    device: int
    job_id: int
    pid: int | None
    name: str
    memory_mib: int | None


@dataclass(frozen=True)
class QueueInfo:
    """Where a queued job stands: its place in scheduling order, why it waits, and when it should start.

    ``reason_code`` is one of :data:`scheduler_core.reasons.REASON_CODES` (``ReservedForJob:<id>`` names the job);
    ``expected_start`` is the plan's start (local time with its offset), None when the plan has none.
    """

    job_id: int
    position: int | None
    reason_code: str
    reason: str
    expected_start: datetime | None = None

    @property
    def expected_text(self) -> str:
        """The estimate as ``YYYY-MM-DD hh:mm:ss`` ("" when there is none)."""
        return "" if self.expected_start is None else self.expected_start.strftime("%Y-%m-%d %H:%M:%S")

    @property
    def expected_iso(self) -> str | None:
        """The estimate in ISO 8601 with the UTC offset (None when there is none)."""
        return None if self.expected_start is None else self.expected_start.isoformat(timespec="seconds")


@dataclass(frozen=True)
class WaitingJob:
    """A queued job of the token: where it stands in the queue, what it waits for, and when it should start."""

    device: int
    job_id: int
    pid: int | None
    process: str
    position: int | None
    reason: str
    reason_code: str = ""
    expected_start: datetime | None = None


@dataclass(frozen=True)
class IdleStatus:
    """A running job that its idle policy finds idle: for how long, and how long until its devices are reclaimed."""

    device: int
    job_id: int
    idle_s: float
    seconds_left: float
    window_s: float


@dataclass(frozen=True)
class DeviceStatus:
    """One of the token's SDAs (a "device" to the user) and what it is doing."""

    id: int
    current: bool
    name: str
    model: str
    model_group: str | None
    model_devices: int
    reserved: bool
    state: str  # idle | waiting | preparing | running
    job_ids: tuple[int, ...]
    gpus: tuple[GpuStatus, ...]
    #: How the running job's processes are contained, as its launcher reported it ("" when not known).
    containment: str = ""

    @property
    def in_use(self) -> bool:
        """Whether a job holds the device's GPUs."""
        return self.state in ("preparing", "running")

    @property
    def model_text(self) -> str:
        """The model, with ``at <group>`` when it is reached through an SDA model group."""
        return f"{self.model} at {self.model_group}" if self.model_group else self.model

    @property
    def memory_used_mib(self) -> int | None:
        """GPU memory the device's job uses, summed over its GPUs (None while idle or unsampled)."""
        values = [g.memory_used_mib for g in self.gpus if g.memory_used_mib is not None]
        return sum(values) if self.in_use and values else None

    @property
    def memory_total_mib(self) -> int | None:
        """GPUs x memory per GPU while a job holds them (None while idle)."""
        values = [g.memory_total_mib for g in self.gpus if g.memory_total_mib is not None]
        return sum(values) if self.in_use and values else None

    @property
    def utilization(self) -> int | None:
        """Mean GPU utilisation of the device's GPUs while a job holds them."""
        values = [g.util_gpu for g in self.gpus if g.util_gpu is not None]
        return round(sum(values) / len(values)) if self.in_use and values else None

    @property
    def simulated(self) -> bool:
        """Whether any GPU behind the device is simulated."""
        return any(g.simulated for g in self.gpus)


@dataclass(frozen=True)
class SmiStatus:
    """Everything ``moreh-smi`` prints about one token."""

    token: str
    current_version: str
    latest_version: str
    max_devices: int
    current_device: int | None
    devices: tuple[DeviceStatus, ...]
    processes: tuple[ProcessStatus, ...]
    waiting: tuple[WaitingJob, ...]
    #: The GPU guardian's flags on the GPUs behind the token's devices and on the hosts its jobs wait for.
    flags: tuple[DeviceFlag, ...] = ()
    #: The token's running jobs that are idle under an idle policy, with the time left before the reclaim.
    idle: tuple[IdleStatus, ...] = ()

    def device(self, device_id: int) -> DeviceStatus | None:
        """The device with this id, if the token has it."""
        return next((d for d in self.devices if d.id == device_id), None)

    def only(self, device_id: int) -> SmiStatus:
        """The same status narrowed to one device and its jobs."""
        return SmiStatus(
            self.token,
            self.current_version,
            self.latest_version,
            self.max_devices,
            self.current_device,
            tuple(d for d in self.devices if d.id == device_id),
            tuple(p for p in self.processes if p.device == device_id),
            tuple(w for w in self.waiting if w.device == device_id),
            self.flags,
            tuple(i for i in self.idle if i.device == device_id),
        )

    @property
    def simulated(self) -> bool:
        """Whether figures shown for a device in use come from simulated GPUs."""
        return any(d.simulated for d in self.devices if d.in_use)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the derived figures each table shows."""
        out = asdict(self)
        for waiting, raw in zip(self.waiting, out["waiting"], strict=True):
            raw["expected_start"] = (
                None if waiting.expected_start is None else waiting.expected_start.isoformat(timespec="seconds")
            )
        for device, raw in zip(self.devices, out["devices"], strict=True):
            raw["memory_used_mib"] = device.memory_used_mib
            raw["memory_total_mib"] = device.memory_total_mib
            raw["utilization"] = device.utilization
            raw["simulated"] = device.simulated
            for gpu, raw_gpu in zip(device.gpus, raw["gpus"], strict=True):
                raw_gpu["location"] = gpu.location
                raw_gpu["simulated"] = gpu.simulated
        return out


#: How the tools call one SDA, as the real ones say "MoAI Accelerator" or "KT AI Accelerator".
DEVICE_NAME = "Moreh SDA"


@dataclass(frozen=True)
class ModelOption:
    """One line of a numbered model list: a model the token may use, and the group it comes through."""

    number: int
    model_id: int
    name: str
    devices: int
    group_id: int | None
    group_name: str | None

    @property
    def label(self) -> str:
        """``Large.256GB``, or ``small mg1`` when the model comes through an SDA model group (seed FAQ)."""
        return f"{self.name} {self.group_name}" if self.group_name else self.name

    @property
    def text(self) -> str:
        """``small at mg1`` (the ``Current …:`` line's form), or just the name."""
        return f"{self.name} at {self.group_name}" if self.group_name else self.name

    def is_model_of(self, sda: SDA) -> bool:
        """Whether this is the SDA's model, reached through the SDA's group."""
        return self.model_id == sda.model_id and self.group_id == sda.model_group_id


@dataclass(frozen=True)
class Added:
    """What the user sees after adding a device, and whether the picker may go on."""

    devices: tuple[DeviceStatus, ...]
    room: int
    options: tuple[ModelOption, ...]


@dataclass(frozen=True)
class OwnedDevices:
    """The token's device ids and its devices as the short table shows them."""

    ids: tuple[int, ...]
    devices: tuple[DeviceStatus, ...]


@dataclass(frozen=True)
class SwitchChoices:
    """What moreh-switch-model offers: the current model's text and the numbered options."""

    current: str
    current_option: ModelOption | None
    options: tuple[ModelOption, ...]
    device_id: int
    busy: str | None = None


@dataclass(frozen=True)
class Switched:
    """The model switched to, and whether anything changed."""

    option: ModelOption
    changed: bool


@dataclass(frozen=True)
class VersionInfo:
    """What ``moreh-smi -s`` shows."""

    server: str
    latest: str
    supported: tuple[str, ...]


@dataclass(frozen=True)
class ConsoleResult:
    """What one admin console line printed, how it ended, and ``exit``/``clear`` requests."""

    stdout: str
    stderr: str
    exit_code: int
    action: str | None = None


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


# -- jobs ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    """One GPU of a host as it registers: NVML index order, its UUID, name and memory."""

    uuid: str
    name: str
    memory_total_mib: int


@dataclass(frozen=True)
class Submitted:
    """A queued job, whether the scheduling pass gave it devices, and what to tell the user if not.

    ``env`` holds the token's environment values for the command. ``busy_pid``/``busy_command`` name the
    process that holds the SDA when the job waits for it (one process per SDA).
    """

    job: Job
    allocated: bool
    env: tuple[tuple[str, str], ...]
    busy_pid: int | None = None
    busy_command: str = ""
    position: int | None = None
    reason: str = ""
    reason_code: str = ""
    expected_start: datetime | None = None


@dataclass(frozen=True)
class JobUpdate:
    """What a launcher learns about its job.

    ``state``: ``queued`` (still waiting), ``allocated`` (devices given; ``job`` has them), ``running``
    (no change while it runs), ``release`` (someone asked the running job to stop; ``detail`` says who),
    ``preempt`` (the scheduler takes the running job's borrowed devices back; ``detail`` says for whom),
    ``ended`` (it left the queue or ended; ``reason`` is the end reason), ``notice`` (a line from the GPU
    guardian for the launcher's stderr in ``detail``; ``reason`` is its id, for the next ``seen="running#<id>"``).
    """

    state: Literal["queued", "allocated", "running", "release", "preempt", "ended", "notice"]
    job: Job | None = None
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Release:
    """A job of a host that someone asked to stop, for the host's daemon to end when its launcher is gone."""

    job_id: int
    pid: int | None
    pid_create_time: float | None


@dataclass(frozen=True)
class ForeignProcess:
    """A process on a host's GPU that no job holding that GPU accounts for, as the master found it.

    ``kind``: ``foreign`` (no job's) or ``escaped`` (job ``job_id``'s, on a GPU it was not given);
    ``device_job``: the job holding the GPU (None: free); ``cause``: one line for logs and users.
    """

    index: int
    pid: int
    user: str | None
    uid: int | None
    memory_mib: int
    kind: str
    job_id: int | None
    device_job: int | None
    cause: str


@dataclass(frozen=True)
class HostReply:
    """The master's answer to a host's report: the host's jobs to stop, and the foreign processes on its GPUs."""

    backend_id: int
    release: tuple[Release, ...] = ()
    foreign: tuple[ForeignProcess, ...] = ()
    notes: tuple[str, ...] = ()  # what the GPU guardian changed, for the host's daemon log


@dataclass(frozen=True)
class HealthSample:
    """One GPU health event as a host reports it (``device`` None: the whole host; see ``GpuHealthEvent``)."""

    device: int | None
    kind: str
    code: int | None
    cause: str


@dataclass(frozen=True)
class GpuProcessSample:
    """One process on one GPU, with the job it belongs to as far as its host can tell.

    ``job_id``: the ``MOREH_JOB_ID`` of this state that the process or an ancestor carries (None: none readable);
    ``ancestors``: its parent, grandparent, ... pids (the master matches them against jobs' command pids).
    """

    index: int
    pid: int
    memory_mib: int
    user: str | None = None
    uid: int | None = None
    job_id: int | None = None
    ancestors: tuple[int, ...] = ()


@dataclass(frozen=True)
class HostWatch:
    """What a host's GPU guardian saw in one tick: health events, and every process on its GPUs.

    ``processes`` is None when they could not be listed (NVML failing): that says nothing about them.
    """

    health: tuple[HealthSample, ...] = ()
    processes: tuple[GpuProcessSample, ...] | None = None


@dataclass(frozen=True)
class DeviceCheck:
    """The answer to a launcher about to start its job: ``ok``, or why the job went back to the queue."""

    ok: bool
    reason: str = ""



@dataclass(frozen=True)
class GpuSample:
    """One GPU's figures at one moment, as a host reports them."""

    index: int
    memory_total_mib: int | None
    memory_used_mib: int | None
    util_gpu: int | None
    util_mem: int | None
    temp_gpu: int | None
    temp_mem: int | None


@dataclass(frozen=True)
class ProcessSample:
    """A job's process on one GPU and the memory it holds there."""

    job_id: int
    pid: int
    name: str
    memory_mib: int
    index: int


# -- quotas ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaRow:
    """A quota as ``show quota`` lists it: the quota, its grants in force, and what the group uses now."""

    quota: GroupQuota
    used: int
    borrowed: int


@dataclass(frozen=True)
class MyQuota:
    """What ``moreh-smi quota`` shows a user: the quotas of the token's groups and the token's requests."""

    quotas: tuple[QuotaRow, ...]
    requests: tuple[QuotaRequest, ...]
