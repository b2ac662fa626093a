"""What every GPU provider returns: frozen snapshots, health events, the provider protocol and its one error.

The scheduler, ``moreh-smi`` and the daemon read only these dataclasses, so every test can run
without a GPU by fabricating snapshots (STYLE lesson 4, nvitop's ``Device.as_snapshot()``).
:class:`GpuHealthEvent` and the guardian's decisions live in the pure module
``scheduler_core.gpu_health``; this module re-exports the event.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from scheduler_core.gpu_health import DeviceProcess, GpuHealthEvent

#: Device count and memory of the simulated GPUs used when no NVIDIA GPU is usable.
DEFAULT_FAKE_GPU_COUNT = 8
DEFAULT_FAKE_GPU_MEMORY_MIB = 81920

#: Bounds accepted in ``MOREH_FAKE_GPUS=N`` / ``N:MiB``.
MAX_FAKE_GPU_COUNT = 64
MAX_FAKE_GPU_MEMORY_MIB = 1048576

MIB = 1024 * 1024

JOB_ID_VAR = "MOREH_JOB_ID"
HOME_VAR = "MOREH_HOME"


def same_state_home(environ: Mapping[str, str], home: str) -> bool:
    """Whether a process whose environment is ``environ`` works on the state at ``home``.

    ``home`` is a ``MOREH_HOME`` value ("" when unset). Two spellings of one directory match.
    """
    other = environ.get(HOME_VAR, "")
    if other == home:
        return True
    if not other or not home:
        return False
    return os.path.realpath(os.path.expanduser(other)) == os.path.realpath(os.path.expanduser(home))


class GpuUnavailableError(Exception):
    """No GPU provider can be used; the message is the one line the user sees.

    ``reason`` is the bare cause (e.g. ``NVML Shared Library Not Found``), for messages that
    embed it; it defaults to the message.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


@dataclass(frozen=True)
class GpuProcess:
    """One process holding memory on a device, as NVML reports it.

    ``uid`` and ``user`` name the process's owner, looked up in this host's ``/proc`` by pid; None
    when unknown (the process is gone, or NVML reports pids of another PID namespace).
    """

    pid: int
    used_memory_mib: int
    uid: int | None = None
    user: str | None = None


@functools.lru_cache(maxsize=256)
def user_name(uid: int) -> str | None:
    """The login name of ``uid``, or None if it has none (or there is no password database)."""
    try:
        import pwd
    except ImportError:  # not on Windows
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def process_owner(pid: int) -> tuple[int | None, str | None]:
    """(uid, user name) of process ``pid`` from ``/proc/<pid>``; (None, None) if it cannot be told."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except (OSError, ValueError):
        return None, None
    return uid, user_name(uid)


@dataclass(frozen=True)
class GpuSnapshot:
    """One device at one moment.

    ``index`` is the NVML index (PCI bus order): the number ``CUDA_VISIBLE_DEVICES`` takes when
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. Metrics a device does not support are ``None``.
    """

    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int
    util_gpu: int | None
    util_mem: int | None
    temp_gpu: int | None
    temp_mem: int | None
    processes: tuple[GpuProcess, ...]

    @property
    def memory_percent(self) -> int:
        """Memory in use as a whole percentage of the total (0 when the total is unknown)."""
        if self.memory_total_mib <= 0:
            return 0
        return round(100 * self.memory_used_mib / self.memory_total_mib)

    def device_processes(self) -> tuple[DeviceProcess, ...]:
        """This device's processes as the guardian's :func:`scheduler_core.gpu_health.find_foreign` takes them."""
        return tuple(
            DeviceProcess(self.index, proc.pid, proc.used_memory_mib, proc.user, proc.uid) for proc in self.processes
        )


@runtime_checkable
class GpuProvider(Protocol):
    """A source of GPU snapshots: real (NVML) or simulated."""

    @property
    def simulated(self) -> bool:
        """True for simulated GPUs: every UI must label them as such."""
        ...

    @property
    def description(self) -> str:
        """One line naming the source, e.g. ``NVML 12.550.54 (driver 550.54.15)``."""
        ...

    def device_count(self) -> int:
        """Number of devices."""
        ...

    def snapshot(self) -> list[GpuSnapshot]:
        """All devices that answer, collected in one pass, ordered by index; a lost device is left out.

        While NVML fails for the whole host (``health()`` reports a ``nvml`` event) the list may be
        empty: that says nothing about the jobs' processes.
        """
        ...

    def health(self) -> list[GpuHealthEvent]:
        """What is wrong now (conditions: ECC, retired pages, remapped rows, lost GPUs, NVML failing) or
        since the last call (critical Xids, each reported once). Never raises: a failure of NVML itself
        is an event of kind ``nvml`` with ``device`` None. Empty when all is well."""
        ...

    def warnings(self) -> list[str]:
        """One-line notices collected since the last call (e.g. a malformed fault-file line, a GPU
        without Xid events), each reported once; the caller logs them."""
        ...

    def close(self) -> None:
        """Release the library (safe to call more than once)."""
        ...
