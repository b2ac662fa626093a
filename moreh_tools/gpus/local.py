"""This host's GPU processes that belong to jobs, found through their environment (``MOREH_JOB_ID``).

Read before any state is touched (psutil and NVML can be slow); the services record what is found
(:mod:`moreh_tools.services.hosts`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

from moreh_tools import identity
from moreh_tools.gpus.base import HOME_VAR, JOB_ID_VAR, GpuSnapshot, same_state_home


@dataclass(frozen=True)
class ProcessOnGpu:
    """One GPU process that belongs to a job of this state: one per (process, device)."""

    job_id: int
    pid: int
    name: str
    memory_mib: int
    device_index: int


@functools.lru_cache(maxsize=8)
def ip_of(host: str) -> str:
    """``host``'s address, resolved once per process (the daemon samples every tick)."""
    return identity.host_ip(host)


def job_processes_on_gpus(snapshots: Sequence[GpuSnapshot], home: str | None = None) -> list[ProcessOnGpu]:
    """The GPU processes of ``snapshots`` that carry ``MOREH_JOB_ID`` of this state (``MOREH_HOME``).

    A process whose environment cannot be read (another user's, or gone meanwhile) is left out:
    it cannot be tied to a job. Processes launched under another ``MOREH_HOME`` belong to
    another state and are left out too.
    """
    wanted_home = os.environ.get(HOME_VAR, "") if home is None else home
    identities: dict[int, tuple[int, str] | None] = {}
    found: list[ProcessOnGpu] = []
    for snap in snapshots:
        for gpu_process in snap.processes:
            if gpu_process.pid not in identities:
                identities[gpu_process.pid] = _job_of(gpu_process.pid, wanted_home)
            known = identities[gpu_process.pid]
            if known is not None:
                job_id, name = known
                found.append(ProcessOnGpu(job_id, gpu_process.pid, name, gpu_process.used_memory_mib, snap.index))
    return found


def _job_of(pid: int, home: str) -> tuple[int, str] | None:
    """(job id, process name) of ``pid`` from its environment, or None if it is not one of our jobs."""
    import psutil

    try:
        proc = psutil.Process(pid)
        environ = proc.environ()
        name = proc.name()
    except (psutil.Error, OSError):
        return None
    raw = environ.get(JOB_ID_VAR, "").strip()
    if not (raw.isascii() and raw.isdigit()) or not same_state_home(environ, home):
        return None
    return int(raw), name
