"""What a launcher and a host's daemon send and hear: submitting, waiting, releases, GPU samples and checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from state.records.jobs import Job


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
