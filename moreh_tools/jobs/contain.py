"""Job containment as the launcher, the guardian, release and the daemon use it (cgroups: :mod:`.containment`).

Each state gets its own parent group, ``moreh/s-<hash of the state>`` (the state directory, or the remote
master's address), so two states on one machine (their job ids overlap) never share a job group; a job's
group is ``<parent>/job-<id>``.

* The launcher makes the job's group with the device restriction before the command exists and starts the
  command inside it (:func:`create`, then ``with group.entered(): spawn``); where no cgroup is writable
  (a non-root launcher, most often) the command runs in its own process group with ``MOREH_JOB_ID`` as
  before, and :func:`create`'s result says so (``describe()``, reported per job to ``moreh-smi -p``).
* Whoever ends a job's processes (the launcher at its end, the guardian, a release, the daemon for jobs
  whose launcher died) also kills everything in the job's group, found by its id
  (``processes.end_job_processes``): a process that left the session and dropped ``MOREH_JOB_ID`` is
  still in the group. The state's parent group goes once its last job group is removed.
* The daemon's tick removes the groups of jobs that are no longer in the state, killing what is left
  in them first (:func:`sweep`).

Nothing here raises on a kernel or permission failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Collection, Iterable
from pathlib import Path

from moreh_tools.jobs.containment import DEFAULT_PARENT, DEFAULT_ROOT, Containment, JobCgroup, nvidia_minors

#: Tests point this at a private parent (``MOREH_CGROUP_PARENT``); the state's hash goes below it.
PARENT_ENV = "MOREH_CGROUP_PARENT"
#: ``0`` turns cgroup containment off (the process-group fallback only).
CONTAIN_ENV = "MOREH_CGROUPS"


def state_key(home: Path | str) -> str:
    """What names the state a job belongs to: the master's address in remote mode, else the state directory."""
    from moreh_tools.port import master_address

    address = master_address()
    return f"remote:{address}" if address else f"local:{os.path.realpath(home)}"


def parent(home: Path | str) -> str:
    """The parent group of this state's job groups: ``moreh/s-<12 hex digits>``."""
    base = os.environ.get(PARENT_ENV, "").strip("/") or DEFAULT_PARENT
    digest = hashlib.sha256(state_key(home).encode()).hexdigest()[:12]
    return f"{base}/s-{digest}"


def probe(home: Path | str) -> Containment:
    """What this process can use for the jobs of the state in ``home`` (inactive, with its reason, if nothing)."""
    if os.environ.get(CONTAIN_ENV, "").strip() == "0":
        return Containment(DEFAULT_ROOT, parent(home), (), (), f"turned off by {CONTAIN_ENV}=0")
    return Containment.probe(DEFAULT_ROOT, parent(home))


def create(home: Path | str, job_id: int, gpu_indexes: Iterable[int]) -> JobCgroup:
    """The job's group, made with its GPUs (NVML indexes) as the only NVIDIA devices it may open.

    Tried again when a hierarchy was left out: another launcher of the state may have removed the (then
    empty) parent group between our making it and making the job's group in it.
    """
    containment = probe(home)
    minors = nvidia_minors(gpu_indexes)
    group = containment.create(job_id, minors)
    for _ in range(2):
        if len(group.dirs) == len(containment.hierarchies):
            break
        group = containment.create(job_id, minors)
    return group


def remove_parent(home: Path | str) -> None:
    """Remove this state's parent group where it is empty (the last job of the state here ended)."""
    containment = probe(home)
    for hierarchy in containment.hierarchies:
        with contextlib.suppress(OSError):  # not empty (another job runs), or not ours to remove
            os.rmdir(os.path.join(hierarchy.mountpoint, containment.parent))


def sweep(home: Path | str, keep: Collection[int], grace: float) -> tuple[list[int], list[int]]:
    """End and remove the groups of jobs not in ``keep`` (every job the state still holds).

    Returns (jobs whose leftover processes were killed, jobs whose group was removed).
    """
    containment = probe(home)
    killed = []
    for job_id in sorted(containment.job_ids() - set(keep)):
        found = containment.find(job_id)
        if found is not None and found.pids() - {os.getpid()}:
            found.kill_all(grace)
            if not found.pids() - {os.getpid()}:  # not ours to kill (a non-root daemon): not said to be
                killed.append(job_id)
    return killed, containment.remove_stale(keep)
