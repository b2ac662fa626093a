"""What this host's GPU guardian sees in one look: the providers' health events, and every process on the GPUs
with the job it belongs to as far as this host can tell (its own ``MOREH_JOB_ID`` or an ancestor's, of this
state's ``MOREH_HOME``) and its ancestors' pids (the master ties them to jobs' command pids: the job's process
tree, also for processes whose environment may not be read here).

The judgement (which processes are foreign, which GPUs fail) is the master's
(:func:`moreh_tools.services.guardian.observe`); this module only reads.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from moreh_tools.gpus.base import HOME_VAR, JOB_ID_VAR, GpuSnapshot, same_state_home
from moreh_tools.services.records import GpuProcessSample, HealthSample, HostWatch
from scheduler_core.gpu_health import NVML

if TYPE_CHECKING:
    from moreh_tools.gpus.base import GpuProvider

#: How far up the process tree a GPU process's job tag is looked for.
MAX_ANCESTORS = 32


def look(
    provider: GpuProvider, snapshots: Sequence[GpuSnapshot], home: str, *, ignore_pids: Collection[int] = ()
) -> HostWatch:
    """One look: ``provider``'s health events and the processes of ``snapshots`` (taken from it just before).

    While NVML fails for the whole host the snapshots say nothing about processes: ``processes`` is None then.
    """
    events = provider.health()
    health = tuple(HealthSample(e.device, e.kind, e.code, e.cause) for e in events)
    if any(e.kind == NVML for e in events):
        return HostWatch(health, None)
    return HostWatch(health, tuple(processes_on(snapshots, home, ignore_pids=ignore_pids)))


def processes_on(
    snapshots: Sequence[GpuSnapshot],
    home: str | None = None,
    *,
    indexes: Collection[int] | None = None,
    ignore_pids: Collection[int] = (),
) -> list[GpuProcessSample]:
    """Every process on the GPUs of ``snapshots`` (only ``indexes`` when given), with its job tag and ancestors."""
    wanted_home = os.environ.get(HOME_VAR, "") if home is None else home
    known: dict[int, tuple[int | None, tuple[int, ...]]] = {}
    found: list[GpuProcessSample] = []
    for snap in sorted(snapshots, key=lambda s: s.index):
        if indexes is not None and snap.index not in indexes:
            continue
        for proc in snap.processes:
            if proc.pid in ignore_pids:
                continue
            if proc.pid not in known:
                known[proc.pid] = owner_of(proc.pid, wanted_home)
            job_id, ancestors = known[proc.pid]
            found.append(
                GpuProcessSample(snap.index, proc.pid, proc.used_memory_mib, proc.user, proc.uid, job_id, ancestors)
            )
    return found


def owner_of(pid: int, home: str) -> tuple[int | None, tuple[int, ...]]:
    """(the job id ``pid`` or its nearest tagged ancestor carries for the state at ``home``, its ancestors' pids).

    A process that is gone, or whose environment (and its ancestors') may not be read, gives (None, what is known).
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        chain = [proc, *proc.parents()[:MAX_ANCESTORS]]
    except (psutil.Error, OSError):
        return None, ()
    ancestors = tuple(p.pid for p in chain[1:])
    for member in chain:
        if member.pid <= 1:
            break
        try:
            environ = member.environ()
        except (psutil.Error, OSError):
            continue
        raw = environ.get(JOB_ID_VAR, "").strip()
        if raw.isascii() and raw.isdigit() and len(raw) < 19 and same_state_home(environ, home):
            return int(raw), ancestors
    return None, ancestors
