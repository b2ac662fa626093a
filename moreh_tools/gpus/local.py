"""This host as a backend: registering its GPUs once and sampling their figures into the state.

Both functions query the provider (NVML or the simulation) and psutil *before* taking the state
lock, then write in one short transaction, so a slow driver never holds other tools up.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moreh_tools import identity
from moreh_tools.gpus.base import HOME_VAR, JOB_ID_VAR, GpuProvider, GpuSnapshot, same_state_home

if TYPE_CHECKING:
    from state.session import Session
    from state.store import StateStore

#: Jobs whose devices are allocated: the only ones whose processes are sampled.
_ACTIVE_JOB_STATUSES = ("SUBMITTED", "RUNNING")


@dataclass(frozen=True)
class JobProcess:
    """One GPU process that belongs to a job of this state: one row per (process, device)."""

    job_id: int
    pid: int
    name: str
    memory_mib: int
    device_index: int


@functools.lru_cache(maxsize=8)
def _ip_of(host: str) -> str:
    # Resolving the host name can take a while; the daemon samples every tick, so resolve once.
    return identity.host_ip(host)


def _device_list(snapshots: Sequence[GpuSnapshot]) -> list[tuple[str, str, int]]:
    return [(snap.uuid, snap.name, snap.memory_total_mib) for snap in sorted(snapshots, key=lambda d: d.index)]


def _described_devices(s: Session, backend_id: int) -> dict[int, str]:
    """Index -> UUID of the backend's devices already described by a provider."""
    rows = s.all("SELECT idx, uuid FROM devices WHERE backend_id = ? AND uuid IS NOT NULL", [backend_id])
    return {int(index): str(uuid) for index, uuid in rows}


def _register(s: Session, host: str, ip: str, snapshots: Sequence[GpuSnapshot]) -> int:
    """Register the host, add GPUs that appeared, refresh swapped ones; never touch an admin's statuses."""
    backend_id = s.backends.local_id(host)
    if backend_id is not None:
        known = _described_devices(s, backend_id)
        if all(known.get(snap.index) == snap.uuid for snap in snapshots):
            return backend_id
        if [snap.index for snap in snapshots] != list(range(len(snapshots))):
            return backend_id  # a device went missing (lost GPU): renumbering the rest would mislabel them
    return s.backends.register_local(host, ip, _device_list(snapshots))


def ensure_local_backend(store: StateStore, provider: GpuProvider, *, host: str | None = None) -> int:
    """Return the id of this host's backend, registering it with the provider's GPUs the first time.

    Safe to call from many processes at once: the check and the registration happen in one
    transaction under the state lock, so exactly one caller creates the backend and the others
    find it. An existing backend (also one an admin created under this host name) keeps its
    status, group and device statuses (the admin's word stands); GPUs that appeared since are
    added as IDLE, and devices not yet described get their UUID, name and memory.
    """
    host = host or identity.host_name()
    count = provider.device_count()
    with store.reading() as s:
        backend_id = s.backends.local_id(host)
        if backend_id is not None and len(_described_devices(s, backend_id)) >= count:
            return backend_id
    # Outside the lock: NVML, the process scan and name resolution can be slow.
    snapshots = provider.snapshot()
    ip = _ip_of(host)
    with store.transaction(f"register local backend {host}") as s:
        return _register(s, host, ip, snapshots)


def job_processes_on_gpus(snapshots: Sequence[GpuSnapshot], home: str | None = None) -> list[JobProcess]:
    """The GPU processes of ``snapshots`` that carry ``MOREH_JOB_ID`` of this state (``MOREH_HOME``).

    A process whose environment cannot be read (another user's, or gone meanwhile) is left out:
    it cannot be tied to a job. Processes launched under another ``MOREH_HOME`` belong to
    another state and are left out too.
    """
    wanted_home = os.environ.get(HOME_VAR, "") if home is None else home
    identities: dict[int, tuple[int, str] | None] = {}
    found: list[JobProcess] = []
    for snap in snapshots:
        for gpu_process in snap.processes:
            if gpu_process.pid not in identities:
                identities[gpu_process.pid] = _job_of(gpu_process.pid, wanted_home)
            known = identities[gpu_process.pid]
            if known is not None:
                job_id, name = known
                found.append(JobProcess(job_id, gpu_process.pid, name, gpu_process.used_memory_mib, snap.index))
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


def sample_into_state(store: StateStore, provider: GpuProvider, *, host: str | None = None) -> None:
    """Record one snapshot of this host's GPUs and of its jobs' GPU processes in the state.

    Per device: memory used/total, utilisation and temperatures. Per job launched on this host
    that holds devices: its processes' GPU memory, one row per (process, device); a job with no
    process on a GPU gets its list emptied. Registers the host first if it is not yet a backend.
    """
    from state.records import Device

    host = host or identity.host_name()
    ip = _ip_of(host)
    snapshots = provider.snapshot()
    processes = job_processes_on_gpus(snapshots)
    with store.transaction(f"sample gpus {host}") as s:
        backend_id = _register(s, host, ip, snapshots)
        s.backends.record_samples(
            backend_id,
            [
                Device(
                    backend_id,
                    snap.index,
                    "",  # record_samples keeps the scheduling status; only the figures change
                    memory_total_mib=snap.memory_total_mib,
                    memory_used_mib=snap.memory_used_mib,
                    util_gpu=snap.util_gpu,
                    util_mem=snap.util_mem,
                    temp_gpu=snap.temp_gpu,
                    temp_mem=snap.temp_mem,
                )
                for snap in snapshots
            ],
        )
        marks = ", ".join("?" for _ in _ACTIVE_JOB_STATUSES)
        active = s.all(f"SELECT id FROM jobs WHERE host = ? AND status IN ({marks})", [host, *_ACTIVE_JOB_STATUSES])
        rows: dict[int, list[tuple[int, str, int, int | None, int | None]]] = {int(r[0]): [] for r in active}
        for proc in processes:
            if proc.job_id in rows:
                rows[proc.job_id].append((proc.pid, proc.name, proc.memory_mib, backend_id, proc.device_index))
        for job_id, job_rows in rows.items():
            s.jobs.record_processes(job_id, job_rows)
