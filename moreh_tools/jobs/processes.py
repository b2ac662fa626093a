"""Process identity and termination: PID-reuse-safe liveness checks and killing a job's whole tree."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # psutil costs ~12 ms to import; the launcher's path to its command avoids it
    import psutil

JOB_ENV = "MOREH_JOB_ID"

_boot_time: float | None = None


def _proc_create_time(pid: int) -> float | None:
    """psutil's create time, computed from /proc as psutil does it; None where /proc cannot say."""
    global _boot_time
    try:
        if _boot_time is None:
            with open("/proc/stat", "rb") as f:
                _boot_time = next(float(line.split()[1]) for line in f if line.startswith(b"btime"))
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK") + _boot_time
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def create_time(pid: int) -> float | None:
    """Return the process start time used to tell a PID from a reused one, or None if it is gone."""
    fast = _proc_create_time(pid)
    if fast is not None:
        return fast
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def release_grace() -> float:
    """Seconds between SIGTERM and SIGKILL when a job is stopped (MOREH_RELEASE_GRACE, default 10)."""
    try:
        value = float(os.environ.get("MOREH_RELEASE_GRACE", "10"))
    except ValueError:
        return 10.0
    return value if 0.0 <= value <= 3600.0 else 10.0


def _proc_state(pid: int) -> bytes | None:
    """The one-letter state of ``pid`` from /proc (``Z`` for a zombie); None when /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return None


def is_alive(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` still runs and is the same process that started at ``started``.

    Read from /proc where it can be (tens of microseconds: a scheduling pass checks every job of its host),
    through psutil elsewhere.
    """
    if not pid:
        return False
    state = _proc_state(pid)
    if state is not None:
        if state == b"Z":
            return False
        now = _proc_create_time(pid)
        return now is not None and (started is None or abs(now - started) < 0.05)
    if not os.path.isdir("/proc/self"):
        return _is_alive_psutil(pid, started)
    return False  # /proc exists but has no such process


def can_act(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` is alive (see :func:`is_alive`) and not stopped (SIGSTOP, Ctrl-Z): it can still do its work."""
    if not is_alive(pid, started):
        return False
    assert pid is not None
    return _proc_state(pid) not in (b"T", b"t")


def _is_alive_psutil(pid: int, started: float | None) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 0.05
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def carries_job_tag(pid: int, job_id: int) -> bool | None:
    """Whether process ``pid`` carries ``MOREH_JOB_ID=job_id``; None when it is gone or its environment unreadable.

    A pid reported over the API is only a claim: this is how a host tells a job's command from anyone's process.
    """
    import psutil

    try:
        return psutil.Process(pid).environ().get(JOB_ENV) == str(job_id)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def job_processes(job_id: int, home: str | None = None) -> list[psutil.Process]:
    """Every live process of this user tagged with the job id (children inherit the tag)."""
    import psutil

    wanted = str(job_id)
    found: list[psutil.Process] = []
    me = os.getuid()
    for proc in psutil.process_iter(["uids"]):
        try:
            uids = proc.info["uids"]
            if uids is None or (me != 0 and uids.real != me):
                continue
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if env.get(JOB_ENV) == wanted and (home is None or env.get("MOREH_HOME") == home):
            found.append(proc)
    return found


def terminate(pids_or_procs: list[psutil.Process], grace: float) -> int:
    """SIGTERM every process, SIGKILL those still alive after ``grace`` seconds; return how many were hit."""
    import psutil

    procs = [p for p in pids_or_procs if p.pid != os.getpid()]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(signal.SIGTERM)
    alive = _wait_dead(procs, grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()
    _wait_dead(alive, 2.0)
    return len(procs)


def _wait_dead(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; return those still running after ``timeout`` seconds.

    A zombie counts as dead: it holds no GPU memory, and its parent (often a slow-reaping PID 1 in a
    container) may take seconds to reap it, which ``psutil.wait_procs`` would wait out in full.
    """
    import psutil

    deadline = time.monotonic() + timeout
    alive = list(procs)
    while True:
        still: list[psutil.Process] = []
        for proc in alive:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    still.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        alive = still
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def tree(pid: int, started: float | None) -> list[psutil.Process]:
    """The process ``pid`` (if it is still the same process) and all its descendants."""
    import psutil

    if not is_alive(pid, started):
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def end_job_processes(job_id: int, pid: int | None, started: float | None, home: str | None, grace: float) -> int:
    """Terminate a job's process tree, every straggler tagged with its id, and everything in its cgroup.

    The cgroup (where the launcher could make one, see :mod:`moreh_tools.jobs.contain`) also holds the
    processes that left the job's session and dropped ``MOREH_JOB_ID``; it is frozen while it is signalled
    and removed once empty. Both sets get the same grace period, at the same time.
    """
    from moreh_tools.jobs import contain

    procs = {p.pid: p for p in tree(pid, started)} if pid else {}
    for proc in job_processes(job_id, home):
        procs.setdefault(proc.pid, proc)
    group = contain.probe(home).find(job_id) if home is not None else None
    if group is None or home is None:
        return terminate(list(procs.values()), grace) if procs else 0
    if not procs:
        hit = group.kill_all(grace)
        if group.remove(timeout=0.5):
            contain.remove_parent(home)
        return hit
    import threading

    counted: list[int] = []
    tagged = threading.Thread(target=lambda: counted.append(terminate(list(procs.values()), grace)), daemon=True)
    tagged.start()
    hit = group.kill_all(grace)
    tagged.join()
    if group.remove(timeout=0.5):
        contain.remove_parent(home)
    return hit + sum(counted)


def end_jobs(jobs: list[tuple[int, int | None, float | None]], home: str | None, grace: float) -> int:
    """End several jobs' processes at once ((job id, pid, pid start time) each): one grace period for all."""
    if not jobs:
        return 0
    if len(jobs) == 1:
        job_id, pid, started = jobs[0]
        return end_job_processes(job_id, pid, started, home, grace)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(jobs), 32)) as pool:
        return sum(pool.map(lambda job: end_job_processes(job[0], job[1], job[2], home, grace), jobs))


def wait_gone(pid: int, started: float | None, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for a process to end; return whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid, started):
            return True
        time.sleep(0.05)
    return not is_alive(pid, started)
