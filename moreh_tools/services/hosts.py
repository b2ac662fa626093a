"""GPU hosts as backends: registering a host, and recording what its GPUs and its jobs' processes do.

A host is known by its machine id (:func:`moreh_tools.identity.machine_id`), not by its name: an
admin may rename a backend and a shell may set another ``MOREH_HOSTNAME``, and neither may make one
machine's GPUs a second backend. The local daemon and a remote host's daemon report the same way
(:func:`report`); a tool working on the state file alone samples this host itself
(:func:`sample_this_host`) when nobody else does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from moreh_tools.services.caller import require_host
from moreh_tools.services.records import GpuInfo, GpuSample, HostReply, HostWatch, ProcessSample, Release
from state.errors import NotFoundError
from state.records import Device

if TYPE_CHECKING:
    from moreh_tools.gpus.base import GpuProvider, GpuSnapshot
    from moreh_tools.services.context import ServiceContext
    from state.session import Session

#: Jobs whose devices are allocated: the only ones whose processes are sampled.
ACTIVE_JOB_STATUSES = ("SUBMITTED", "RUNNING")


def find_host(s: Session, machine_id: str, host: str) -> int | None:
    """The backend of the machine ``machine_id`` (else of the name ``host``, for backends an admin created)."""
    backend_id = s.backends.by_machine(machine_id)
    if backend_id is not None:
        return backend_id
    by_name = s.backends.local_id(host)
    if by_name is not None and s.backends.machine_of(by_name) in (None, machine_id):
        return by_name
    return None


def register_in(s: Session, *, host: str, ip: str, machine_id: str, gpus: Sequence[GpuInfo]) -> int:
    """Register (or refresh) a host inside an open transaction; return its backend id.

    GPUs that appeared since are added as IDLE and devices not yet described get their UUID, name and
    memory; a device whose GPU went missing is left as it is (renumbering the rest would mislabel them).
    """
    backend_id = find_host(s, machine_id, host)
    if backend_id is not None:
        known = s.backends.described_devices(backend_id)
        if s.backends.machine_of(backend_id) is None:
            s.backends.claim_machine(backend_id, machine_id)
        if all(known.get(index) == gpu.uuid for index, gpu in enumerate(gpus)) and len(known) >= len(gpus):
            return backend_id
        if len(known) > len(gpus):
            return backend_id  # a GPU went missing (lost): keep what an admin sees until it is cleared
    devices = [(gpu.uuid, gpu.name, gpu.memory_total_mib) for gpu in gpus]
    name = s.backends.get(backend_id).host if backend_id is not None else host
    return s.backends.register_local(name, ip, devices, machine_id)


def register_host(ctx: ServiceContext, *, host: str, ip: str, machine_id: str, gpus: Sequence[GpuInfo]) -> int:
    """Register the caller's host as a backend (HOST or ADMIN tokens, or the state's owner); its id."""
    require_host(ctx.caller)
    with ctx.read() as s:
        known = find_host(s, machine_id, host)
        if known is not None and len(s.backends.described_devices(known)) >= len(gpus):
            return known
    with ctx.write(f"register backend {host}") as s:
        return register_in(s, host=host, ip=ip, machine_id=machine_id, gpus=gpus)


def record_in(
    s: Session,
    backend_id: int,
    samples: Sequence[GpuSample],
    processes: Sequence[ProcessSample],
    known: set[int] | None = None,
) -> tuple[Release, ...]:
    """Record one report of a backend's GPUs and of its jobs' GPU processes; the jobs someone asked to stop.

    ``known`` is the backend's device indexes when the caller already read them (one query less per report).
    """
    if known is None:
        known = s.backends.device_indexes(backend_id)
    sampled = [
        Device(
            backend_id,
            sample.index,
            "",  # record_samples keeps the scheduling status; only the figures change
            memory_total_mib=sample.memory_total_mib,
            memory_used_mib=sample.memory_used_mib,
            util_gpu=sample.util_gpu,
            util_mem=sample.util_mem,
            temp_gpu=sample.temp_gpu,
            temp_mem=sample.temp_mem,
        )
        for sample in samples
        if sample.index in known
    ]
    if sampled:
        s.backends.record_samples(backend_id, sampled)
    s.backends.touch(backend_id)
    jobs = s.jobs.on_backend(backend_id)
    rows: dict[int, list[tuple[int, str, int, int | None, int | None]]] = {
        job.id: [] for job in jobs if job.status in ACTIVE_JOB_STATUSES
    }
    for proc in processes:
        if proc.job_id in rows:
            rows[proc.job_id].append((proc.pid, proc.name[:200], proc.memory_mib, backend_id, proc.index))
    for job_id, job_rows in rows.items():
        s.jobs.record_processes(job_id, job_rows)
    return tuple(
        Release(job.id, job.pid, job.pid_create_time)
        for job in jobs
        if job.release_requested and job.status != "QUEUED"
    )


def report(
    ctx: ServiceContext,
    *,
    host: str,
    ip: str,
    machine_id: str,
    gpus: Sequence[GpuInfo],
    samples: Sequence[GpuSample],
    processes: Sequence[ProcessSample],
    watch: HostWatch | None = None,
) -> HostReply:
    """A host's daemon reports its GPUs and its jobs' processes (registering the host the first time).

    HOST or ADMIN tokens only: the figures are what every user sees. The answer names the host's jobs
    that someone asked to stop, for the daemon to end when their launcher cannot. ``watch`` (a daemon's GPU
    guardian: health events and every GPU process) is judged too (:func:`moreh_tools.services.guardian.observe`);
    the answer then names the foreign processes on the host's GPUs.
    """
    from moreh_tools.services import guardian

    require_host(ctx.caller, "Reporting a host's GPUs")
    seen = guardian.Observed()
    with ctx.write(f"sample gpus {host}") as s:
        backend_id = find_host(s, machine_id, host)
        devices = s.backends.devices_of(backend_id) if backend_id is not None else {}
        if backend_id is None or sum(uuid is not None for uuid in devices.values()) < len(gpus):
            backend_id = register_in(s, host=host, ip=ip, machine_id=machine_id, gpus=gpus)
            devices = s.backends.devices_of(backend_id)
        if watch is not None:  # first: a job reclaimed now is among the releases below
            seen = guardian.observe(s, backend_id, samples, watch)
        releases = record_in(s, backend_id, samples, processes, set(devices))
    ctx.wake(seen.woken)
    return HostReply(backend_id, releases, seen.foreign, tuple(seen.notes))


def this_backend(ctx: ServiceContext) -> int:
    """The backend of the machine this process runs on; NotFoundError while it is not registered."""
    with ctx.read() as s:
        backend_id = find_host(s, ctx.machine_id, ctx.host)
    if backend_id is None:
        raise NotFoundError(f"This host '{ctx.host}' is not a registered backend yet.")
    return backend_id


def sample_this_host(ctx: ServiceContext) -> bool:
    """Sample this host's GPUs and job processes into the state, unless a daemon does it; whether it sampled.

    Called by a tool working on the state file alone when figures are stale (only then do NVML and psutil
    load). A GPU provider that cannot be used is not an error here: stale figures stay stale.
    """
    if ctx.daemon_running:
        return False
    from moreh_tools.gpus import GpuUnavailableError, get_provider

    try:
        provider = get_provider()
    except GpuUnavailableError:
        return False
    try:
        sample_with(ctx, provider)
    finally:
        provider.close()
    return True


def sample_with(ctx: ServiceContext, provider: GpuProvider) -> HostReply:
    """Read ``provider`` once and report this host's GPUs and its jobs' processes (registering it if new)."""
    gpus, samples, processes = read_gpus(provider, str(ctx.home))
    return report(
        ctx,
        host=ctx.host,
        ip=host_address(ctx.host),
        machine_id=ctx.machine_id,
        gpus=gpus,
        samples=samples,
        processes=processes,
    )


def register_with(ctx: ServiceContext, provider: GpuProvider) -> int:
    """Register this host with ``provider``'s GPUs (once; later GPUs are added); its backend id."""
    gpus = [GpuInfo(snap.uuid, snap.name, snap.memory_total_mib) for snap in sorted(provider.snapshot(), key=lambda s: s.index)]
    return register_host(ctx, host=ctx.host, ip=host_address(ctx.host), machine_id=ctx.machine_id, gpus=gpus)


def read_gpus(
    provider: GpuProvider, home: str, snapshots: Sequence[GpuSnapshot] | None = None
) -> tuple[list[GpuInfo], list[GpuSample], list[ProcessSample]]:
    """One pass over the provider (or ``snapshots`` already taken): the GPUs (for registration), their figures, and
    the jobs' processes on them."""
    from moreh_tools.gpus.local import job_processes_on_gpus

    snapshots = sorted(provider.snapshot() if snapshots is None else snapshots, key=lambda snap: snap.index)
    gpus = [GpuInfo(snap.uuid, snap.name, snap.memory_total_mib) for snap in snapshots]
    samples = [
        GpuSample(snap.index, snap.memory_total_mib, snap.memory_used_mib, snap.util_gpu, snap.util_mem,
                  snap.temp_gpu, snap.temp_mem)
        for snap in snapshots
    ]
    processes = [
        ProcessSample(p.job_id, p.pid, p.name, p.memory_mib, p.device_index)
        for p in job_processes_on_gpus(snapshots, home)
    ]
    return gpus, samples, processes


def host_address(host: str) -> str:
    """This host's address (resolved once per process)."""
    from moreh_tools.gpus.local import ip_of

    return ip_of(host)
