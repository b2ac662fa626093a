"""Simulated GPUs that behave like NVML, for machines without an NVIDIA GPU.

A process is "on" simulated device ``i`` when it is alive, works on the same state
(``MOREH_HOME``) as the provider, and its own environment has ``MOREH_JOB_ID`` set and
``CUDA_VISIBLE_DEVICES`` listing ``i`` (or the device's UUID). Children inherit the environment,
so each child counts as its own process, as NVML shows each CUDA process. The ``MOREH_HOME``
rule keeps simulated hosts of different states (e.g. tests running side by side) apart: the
simulated GPUs belong to the state their backend is registered in.

Memory per process is deterministic: ``MOREH_FAKE_GPU_MEMORY_MIB`` in the process's environment
declares it; otherwise it starts at a CUDA-context-like 512 MiB and grows by 30 % of the
device over the first 20 s of the process's life, capped at ``total / number of processes on
the device``. Utilisation and temperatures are derived from the pids, the memory in use and the
time, so tests can pin them with ``now``.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import psutil

from moreh_tools import identity
from moreh_tools.gpus.base import HOME_VAR, JOB_ID_VAR, GpuProcess, GpuSnapshot, same_state_home

SIMULATED_GPU_NAME = "Simulated GPU (moreh-tools)"
VISIBLE_DEVICES_VAR = "CUDA_VISIBLE_DEVICES"
MEMORY_VAR = "MOREH_FAKE_GPU_MEMORY_MIB"

CONTEXT_MIB = 512
RAMP_SECONDS = 20.0
RAMP_FRACTION = 0.30


@dataclass(frozen=True)
class SimProcess:
    """What the simulation needs to know about one live process."""

    pid: int
    create_time: float
    environ: Mapping[str, str]


ProcessSource = Callable[[], Iterable[SimProcess]]


def _proc_owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def scan_processes(uid: int | None = None) -> list[SimProcess]:
    """Live processes of user ``uid`` (all users when ``None``) that carry ``MOREH_JOB_ID``.

    Reads each candidate's environment once; processes that vanish, are zombies or deny access are
    skipped. On Linux the owner comes from ``/proc/<pid>`` (one ``stat``), elsewhere from psutil.
    """
    use_proc = os.path.isdir("/proc/self")
    found: list[SimProcess] = []
    for proc in psutil.process_iter():
        try:
            if uid is not None:
                owner = _proc_owner(proc.pid) if use_proc else proc.uids().real
                if owner != uid:
                    continue
            environ = proc.environ()
            if JOB_ID_VAR not in environ:
                continue
            found.append(SimProcess(proc.pid, proc.create_time(), environ))
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def current_user_processes() -> list[SimProcess]:
    """The default process source: every job process this user may inspect.

    Root sees every user's processes, as NVML does; anyone else only their own (the environment
    of other users' processes cannot be read anyway, so skipping them early saves time).
    """
    if not hasattr(os, "geteuid"):
        return scan_processes(None)
    return scan_processes(None if os.geteuid() == 0 else os.getuid())


def simulated_uuid(hostname: str, index: int) -> str:
    """``GPU-SIM-<32 hex>``, stable for one (hostname, index)."""
    digest = hashlib.sha256(f"moreh-tools:{hostname}:{index}".encode()).hexdigest()
    return f"GPU-SIM-{digest[:32]}"


def visible_devices(value: str, uuids: Mapping[str, int]) -> set[int]:
    """Indexes named by a ``CUDA_VISIBLE_DEVICES`` value: comma-separated indexes or simulated UUIDs."""
    indexes: set[int] = set()
    for item in value.split(","):
        item = item.strip()
        if item.isascii() and item.isdigit():
            indexes.add(int(item))
        elif item in uuids:
            indexes.add(uuids[item])
    return indexes


def _declared_memory(environ: Mapping[str, str]) -> int | None:
    raw = environ.get(MEMORY_VAR, "").strip()
    if not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw)


class SimulatedGpuProvider:
    """``count`` simulated devices of ``memory_mib`` MiB each.

    ``now`` (a clock) and ``processes`` (a process source) are injectable so tests are
    deterministic; by default they are ``time.time`` and a scan of the current user's processes.
    ``reason`` explains, in :attr:`description`, why real GPUs are not used. ``home`` is the
    ``MOREH_HOME`` whose job processes count (default: this process's); ``hostname`` seeds the
    UUIDs (default: :func:`moreh_tools.identity.host_name`).
    """

    simulated = True

    def __init__(
        self,
        count: int,
        memory_mib: int,
        *,
        reason: str | None = None,
        now: Callable[[], float] = time.time,
        processes: ProcessSource = current_user_processes,
        hostname: str | None = None,
        home: str | None = None,
    ) -> None:
        if count < 1 or memory_mib < 1:
            raise ValueError("a simulated provider needs at least one device and 1 MiB")
        self.count = count
        self.memory_mib = memory_mib
        self.reason = reason
        self._now = now
        self._processes = processes
        self.home = os.environ.get(HOME_VAR, "") if home is None else home
        host = hostname if hostname is not None else identity.host_name()
        self._uuids = [simulated_uuid(host, index) for index in range(count)]
        self._index_of_uuid = {uuid: index for index, uuid in enumerate(self._uuids)}

    @property
    def description(self) -> str:
        """``simulated: 8 GPUs x 81920 MiB``, with the reason first when there is one."""
        size = f"{self.count} GPU{'s' if self.count != 1 else ''} x {self.memory_mib} MiB"
        if self.reason:
            return f"simulated: {self.reason}; {size}"
        return f"simulated: {size}"

    def device_count(self) -> int:
        """Number of simulated devices."""
        return self.count

    def close(self) -> None:
        """Nothing to release."""

    def snapshot(self) -> list[GpuSnapshot]:
        """All devices, from one scan of the processes and one reading of the clock."""
        now = self._now()
        on_device: list[list[SimProcess]] = [[] for _ in range(self.count)]
        for proc in self._processes():
            if JOB_ID_VAR not in proc.environ or not same_state_home(proc.environ, self.home):
                continue
            for index in visible_devices(proc.environ.get(VISIBLE_DEVICES_VAR, ""), self._index_of_uuid):
                if index < self.count:
                    on_device[index].append(proc)
        return [self._device(index, procs, now) for index, procs in enumerate(on_device)]

    def _process_memory(self, proc: SimProcess, peers: int, now: float) -> int:
        declared = _declared_memory(proc.environ)
        if declared is not None:
            return min(declared, self.memory_mib)
        age = min(max(now - proc.create_time, 0.0), RAMP_SECONDS)
        ramp = int(self.memory_mib * RAMP_FRACTION * age / RAMP_SECONDS)
        return min(CONTEXT_MIB + ramp, self.memory_mib // peers)

    def _device(self, index: int, procs: list[SimProcess], now: float) -> GpuSnapshot:
        procs = sorted({proc.pid: proc for proc in procs}.values(), key=lambda proc: proc.pid)
        processes = tuple(GpuProcess(proc.pid, self._process_memory(proc, len(procs), now)) for proc in procs)
        used = min(sum(proc.used_memory_mib for proc in processes), self.memory_mib)
        if processes:
            phase = sum(proc.pid for proc in processes) % 997 + index
            util_gpu = round(69.5 + 29.5 * math.sin(now / 7.0 + phase))
        else:
            util_gpu = 0
        util_mem = round(100 * used / self.memory_mib)
        temp_gpu = int(30 + util_gpu * 0.5)
        return GpuSnapshot(
            index=index,
            uuid=self._uuids[index],
            name=SIMULATED_GPU_NAME,
            memory_total_mib=self.memory_mib,
            memory_used_mib=used,
            util_gpu=util_gpu,
            util_mem=util_mem,
            temp_gpu=temp_gpu,
            temp_mem=temp_gpu + 5,
            processes=processes,
        )
