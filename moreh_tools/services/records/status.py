"""What ``moreh-smi`` shows a token: its devices, their GPUs and processes, its queue."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from state.records.guardian import DeviceFlag

#: How the tools call one SDA, as the real ones say "MoAI Accelerator" or "KT AI Accelerator".
DEVICE_NAME = "Moreh SDA"

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
