"""What moreh-smi shows, read from the state as frozen dataclasses.

:func:`collect_status` only reads one session, so the live dashboard can call it on every tick;
:func:`refresh_samples` is the separate (and rarer) step that puts fresh GPU figures into the
state when no daemon does it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from moreh_tools import __version__
from moreh_tools.smi.common import DEVICE_NAME, unknown_token

if TYPE_CHECKING:
    from state.session import Session
    from state.store import StateStore

#: The name the simulated provider gives its GPUs (moreh_tools.gpus.simulated.SIMULATED_GPU_NAME);
#: copied, not imported, because that module loads psutil and moreh-smi must start fast.
SIMULATED_GPU_NAME = "Simulated GPU (moreh-tools)"

#: Samples older than this (seconds) are refreshed by moreh-smi itself when no daemon runs.
SAMPLE_MAX_AGE_S = 2.0

_ACTIVE = ("SUBMITTED", "RUNNING")


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
class WaitingJob:
    """A queued job of the token: where it stands in the queue and what it waits for."""

    device: int
    job_id: int
    pid: int | None
    process: str
    position: int | None
    reason: str


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
        )

    @property
    def simulated(self) -> bool:
        """Whether figures shown for a device in use come from simulated GPUs."""
        return any(d.simulated for d in self.devices if d.in_use)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the derived figures each table shows."""
        out = asdict(self)
        for device, raw in zip(self.devices, out["devices"], strict=True):
            raw["memory_used_mib"] = device.memory_used_mib
            raw["memory_total_mib"] = device.memory_total_mib
            raw["utilization"] = device.utilization
            raw["simulated"] = device.simulated
            for gpu, raw_gpu in zip(device.gpus, raw["gpus"], strict=True):
                raw_gpu["location"] = gpu.location
                raw_gpu["simulated"] = gpu.simulated
        return out


def read_status(store: StateStore, token: str, *, refresh: bool = False) -> SmiStatus:
    """Collect the token's status in one read session.

    With ``refresh``, stale figures of the token's jobs on this host are first sampled again
    (see :func:`refresh_samples`) and the status is read once more; the plain path stays one read.
    """
    from moreh_tools import identity

    host = identity.host_name()
    with store.reading() as s:
        status, jobs = _collect(s, token)
        # Only a job of the token holding GPUs on this host can have figures to refresh here.
        here = any(j.host == host and j.status in _ACTIVE for j in jobs)
        stale = refresh and here and samples_stale(s, token, host)
    if stale and refresh_samples(store, host):
        with store.reading() as s:
            status = collect_status(s, token)
    return status


def samples_stale(s: Session, token: str, host: str) -> bool:
    """Whether the token has a job holding GPUs on ``host`` whose figures are missing or old."""
    row = s.one(
        "SELECT count(*), count(d.sampled_at), "
        "coalesce(max(epoch(now()::TIMESTAMP) - epoch(d.sampled_at)), 0) "
        "FROM jobs j JOIN job_devices jd ON jd.job_id = j.id "
        "JOIN devices d ON d.backend_id = jd.backend_id AND d.idx = jd.device_index "
        "WHERE j.token = ? AND j.host = ? AND j.status IN ('SUBMITTED', 'RUNNING')",
        [token, host],
    )
    if row is None or not row[0]:
        return False
    return bool(row[1] != row[0] or float(row[2]) > SAMPLE_MAX_AGE_S)


class _Job(NamedTuple):
    """What the status shows of one of the token's jobs."""

    id: int
    sda_id: int
    status: str
    host: str
    pid: int | None
    launcher_pid: int | None
    process_name: str


def collect_status(s: Session, token: str) -> SmiStatus:
    """Gather the token's devices, jobs and GPU figures from one session (reads only)."""
    return _collect(s, token)[0]


def _collect(s: Session, token: str) -> tuple[SmiStatus, list[_Job]]:
    # Queries shaped for this view rather than the repositories' records: `watch moreh-smi` pays
    # for each query and each imported module at every start.
    owner = s.one(
        "SELECT current_sda, max_sda, (SELECT version FROM versions WHERE latest LIMIT 1) FROM tokens WHERE value = ?",
        [token],
    )
    if owner is None:
        raise unknown_token()
    current_sda, max_sda, latest = owner
    jobs = [
        _Job(*row)
        for row in s.all(
            "SELECT id, sda_id, status, host, pid, launcher_pid, process_name FROM jobs WHERE token = ? ORDER BY id",
            [token],
        )
    ]
    gpus = _gpus(s, token)
    sdas = s.all(
        "SELECT s.id, s.reserved, m.name, m.devices, g.name FROM sdas s "
        "LEFT JOIN sda_models m ON m.id = s.model_id LEFT JOIN model_groups g ON g.id = s.model_group_id "
        "WHERE s.token = ? ORDER BY s.id",
        [token],
    )
    devices = tuple(
        _device(sda, current_sda, [j for j in jobs if j.sda_id == sda[0]], gpus.get(sda[0], ())) for sda in sdas
    )
    active = [j for j in jobs if j.status in _ACTIVE]
    queued = [j for j in jobs if j.status == "QUEUED"]
    status = SmiStatus(
        token=token,
        current_version=__version__,
        latest_version=latest or "",
        max_devices=max_sda,
        current_device=current_sda,
        devices=devices,
        processes=tuple(_processes(s, active)),
        waiting=tuple(_waiting(s, queued)),
    )
    return status, jobs


def _device(sda: tuple[Any, ...], current: int | None, jobs: list[_Job], gpus: tuple[GpuStatus, ...]) -> DeviceStatus:
    sda_id, reserved, model_name, model_devices, group_name = sda
    statuses = {j.status for j in jobs}
    if "RUNNING" in statuses:
        state = "running"
    elif "SUBMITTED" in statuses:
        state = "preparing"
    elif "QUEUED" in statuses:
        state = "waiting"
    else:
        state = "idle"
    return DeviceStatus(
        id=sda_id,
        current=sda_id == current,
        name=DEVICE_NAME,
        model=model_name if model_name is not None else "-",
        model_group=group_name,
        model_devices=model_devices if model_devices is not None else 0,
        reserved=reserved,
        state=state,
        job_ids=tuple(j.id for j in jobs),
        gpus=gpus,
    )


def _gpus(s: Session, token: str) -> dict[int, tuple[GpuStatus, ...]]:
    """The GPUs behind each of the token's SDAs (those it reserves and those its jobs hold), in device order."""
    rows = s.all(
        "SELECT x.sda_id, d.backend_id, b.host, d.idx, coalesce(d.name, ''), d.memory_total_mib, d.memory_used_mib, "
        "d.util_gpu, d.util_mem, d.temp_gpu, d.temp_mem FROM ("
        "SELECT sda_id, backend_id, device_index FROM sda_reservations UNION ALL "
        "SELECT j.sda_id, jd.backend_id, jd.device_index FROM job_devices jd JOIN jobs j ON j.id = jd.job_id"
        ") x JOIN sdas s ON s.id = x.sda_id JOIN devices d ON d.backend_id = x.backend_id AND d.idx = x.device_index "
        "JOIN backends b ON b.id = d.backend_id WHERE s.token = ? ORDER BY 1, 2, 4",
        [token],
    )
    # UNION ALL is cheaper than UNION; a reserved device that a job holds comes twice and is kept once.
    unique = {(r[0], r[1], r[3]): GpuStatus(*r[1:]) for r in rows}
    by_sda: dict[int, list[GpuStatus]] = {}
    for (sda_id, _, _), gpu in unique.items():
        by_sda.setdefault(sda_id, []).append(gpu)
    return {sda_id: tuple(gpus) for sda_id, gpus in by_sda.items()}


def _processes(s: Session, active: list[_Job]) -> list[ProcessStatus]:
    if not active:
        return []
    by_id = {j.id: j for j in active}
    rows = s.all(
        f"SELECT job_id, pid, any_value(name), sum(memory_mib) FROM job_processes "
        f"WHERE job_id IN ({', '.join('?' for _ in by_id)}) GROUP BY job_id, pid ORDER BY job_id, pid",
        list(by_id),
    )
    sampled: dict[int, list[ProcessStatus]] = {}
    for job_id, pid, name, memory in rows:
        job = by_id[int(job_id)]
        # The job's own process is shown with its command line, as the real tool does.
        shown = job.process_name if pid == job.pid and job.process_name else str(name)
        sampled.setdefault(job.id, []).append(ProcessStatus(job.sda_id, job.id, int(pid), shown, int(memory)))
    out: list[ProcessStatus] = []
    for job in sorted(active, key=lambda j: (j.sda_id, j.id)):
        out.extend(sampled.get(job.id) or [ProcessStatus(job.sda_id, job.id, job.pid, job.process_name, None)])
    return out


def _waiting(s: Session, queued: list[_Job]) -> list[WaitingJob]:
    if not queued:
        return []
    from state.queue import queue_positions

    reasons = _waiting_reasons(s)
    positions = queue_positions(s)
    return [
        WaitingJob(
            device=job.sda_id,
            job_id=job.id,
            pid=job.launcher_pid,
            process=job.process_name,
            position=positions.get(job.id),
            reason=reasons.get(job.id, "devices are free; it starts at the next scheduling pass"),
        )
        for job in sorted(queued, key=lambda j: (j.sda_id, j.id))
    ]


def _waiting_reasons(s: Session) -> dict[int, str]:
    """Why each queued job waits, by asking the scheduler the question without applying its answer."""
    from scheduler_core.scheduling import schedule
    from state.queue import scheduling_inputs

    try:
        backends, queue, active, reserved = scheduling_inputs(s)
        return dict(schedule(backends, queue, active, reserved).waiting)
    except Exception:
        # The reason is a courtesy; a scheduler fault must not hide the user's status.
        if os.environ.get("MOREH_DEBUG"):
            raise
        return {}


def refresh_samples(store: StateStore, host: str) -> bool:
    """Sample this host's GPUs and job processes into the state, unless a daemon does it.

    Only called when figures are stale, which keeps the plain ``moreh-smi`` free of NVML and
    psutil. Returns whether it sampled.
    """
    from moreh_tools.jobs.control import daemon_running

    if daemon_running(store.home):
        return False
    from moreh_tools.gpus import GpuUnavailableError, get_provider
    from moreh_tools.gpus.local import sample_into_state

    try:
        provider = get_provider()
    except GpuUnavailableError as exc:
        print(f"moreh-smi: GPU figures not refreshed: {exc}", file=sys.stderr)
        return False
    try:
        sample_into_state(store, provider, host=host)
    finally:
        provider.close()
    return True
