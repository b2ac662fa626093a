"""Driving the scheduler on this host: reconcile dead jobs, run a pass, wake the launchers it served."""

from __future__ import annotations

import fcntl
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from moreh_tools.jobs import processes, wakeup
from scheduler_core.scheduling import Decision
from state.records import Job
from state.store import StateStore

DAEMON_PID_FILE = "sdamanager.pid"
RECONCILE_INTERVAL_S = 10.0


def release_grace() -> float:
    """Seconds between SIGTERM and SIGKILL when a job is released (MOREH_RELEASE_GRACE, default 10)."""
    try:
        return max(float(os.environ.get("MOREH_RELEASE_GRACE", "10")), 0.0)
    except ValueError:
        return 10.0


def daemon_running(home: Path) -> bool:
    """Whether an sdamanager daemon holds its pid-file lock in ``home``."""
    path = home / DAEMON_PID_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@dataclass
class PassResult:
    """What one reconcile + scheduling pass did."""

    decision: Decision
    lost: list[int] = field(default_factory=list)


def dead_jobs(jobs: list[Job]) -> list[Job]:
    """Jobs whose launcher is gone (PID reuse is ruled out by the start time)."""
    return [j for j in jobs if not processes.is_alive(j.launcher_pid, j.launcher_create_time)]


def wake_allocated(home: Path, decision: Decision) -> None:
    """Wake every launcher whose job the pass allocated."""
    for allocation in decision.allocations:
        wakeup.wake(home, allocation.job_id)


def reconcile_and_schedule(store: StateStore, host: str, *, reason: str = "scheduling pass") -> PassResult:
    """End this host's jobs whose launcher died (killing their processes), then run a scheduling pass."""
    with store.reading() as s:
        orphans = dead_jobs(s.jobs.on_host(host))
    for job in orphans:  # no lock held while processes die
        processes.end_job_processes(job.id, job.pid, job.pid_create_time, str(store.home), release_grace())
    with store.transaction(reason) as s:
        lost = [j.id for j in orphans if s.jobs.finish(j.id, None, "lost") is not None]
        decision = s.jobs.run_scheduling_pass()
    wake_allocated(store.home, decision)
    return PassResult(decision, lost)


def reconcile_if_due(store: StateStore, host: str, min_interval: float = RECONCILE_INTERVAL_S) -> PassResult | None:
    """Reconcile and schedule unless someone did so in the last ``min_interval`` seconds.

    Waiting launchers call this when their wait times out and no daemon runs; the shared time stamp
    keeps a hundred of them from each taking the state lock for the same pass.
    """
    stamp = wakeup.wake_dir(store.home) / "last-reconcile"
    try:
        if time.time() - stamp.stat().st_mtime < min_interval:
            return None
    except OSError:
        pass
    stamp.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp.touch()
    return reconcile_and_schedule(store, host, reason="moreh-run: scheduling pass (no daemon)")


def schedule_and_wake(store: StateStore, *, reason: str = "scheduling pass") -> Decision:
    """Run a scheduling pass and wake the launchers it served."""
    with store.transaction(reason) as s:
        decision = s.jobs.run_scheduling_pass()
    wake_allocated(store.home, decision)
    return decision


def release_jobs(store: StateStore, jobs: list[Job], host: str) -> list[int]:
    """Release jobs: queued ones leave the queue; running ones on this host get SIGTERM, then SIGKILL.

    Returns the ids released. The lock is never held while waiting for processes to die.
    """
    released: list[int] = []
    with store.transaction("release") as s:
        # The caller read ``jobs`` earlier: act on them as they are now (ended ones skipped, queued ones
        # perhaps running by now).
        jobs = [s.jobs.request_release(j.id) for j in jobs if s.jobs.find(j.id) is not None]
        released.extend(j.id for j in jobs)
    for job in jobs:
        if job.status == "QUEUED":
            wakeup.wake(store.home, job.id)
    local = [j for j in jobs if j.status != "QUEUED" and j.host == host]
    # In parallel, so 'release all' takes one grace period, not one per job.
    with ThreadPoolExecutor(max_workers=max(1, min(len(local), 32))) as pool:
        list(
            pool.map(
                lambda job: processes.end_job_processes(
                    job.id, job.pid, job.pid_create_time, str(store.home), release_grace()
                ),
                local,
            )
        )
    # The launcher normally records the end itself; finish what no live launcher will.
    if local:
        # A launcher still alive may have started its command after the sweep above (the job was SUBMITTED
        # then) and still be waiting out its grace: end the command before its devices are handed on.
        stuck = [j for j in local if not processes.wait_gone(j.launcher_pid or 0, j.launcher_create_time, 5.0)]
        with ThreadPoolExecutor(max_workers=max(1, min(len(stuck), 32))) as pool:
            list(
                pool.map(
                    lambda job: processes.end_job_processes(job.id, None, None, str(store.home), release_grace()),
                    stuck,
                )
            )
        with store.transaction("release") as s:
            for job in local:
                s.jobs.finish(job.id, None, "released")
    schedule_and_wake(store, reason="release")
    return released
