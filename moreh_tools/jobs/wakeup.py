"""How a waiting launcher learns that its devices are ready without polling the state.

Each waiting job owns a FIFO ``$MOREH_HOME/run/job-<id>.wake``. Whoever allocates devices (or
releases a queued job) writes one byte to the job's FIFO; the launcher sleeps in ``select`` on it,
with a long timeout as a safety net. No lock is held while waiting.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
from pathlib import Path


def wake_dir(home: Path) -> Path:
    """The directory holding the FIFOs."""
    return home / "run"


def wake_path(home: Path, job_id: int) -> Path:
    """The FIFO of one job."""
    return wake_dir(home) / f"job-{job_id}.wake"


class WakeUp:
    """The reading end of a job's FIFO, owned by the launcher waiting for that job."""

    def __init__(self, home: Path, job_id: int) -> None:
        """Create the FIFO and open it (read-write, so select blocks until someone writes)."""
        self.path = wake_path(home, job_id)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout`` seconds pass; return whether woken."""
        try:
            ready, _, _ = select.select([self.fd], [], [], timeout)
        except InterruptedError:
            return True
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.fd, 4096):
                    pass
        return bool(ready)

    def close(self) -> None:
        """Close and remove the FIFO."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            self.path.unlink()


def wake(home: Path, job_id: int) -> bool:
    """Wake the launcher waiting for ``job_id``; return False when nobody waits."""
    try:
        fd = os.open(wake_path(home, job_id), os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENXIO, errno.EACCES):
            return False
        raise
    try:
        os.write(fd, b"!")
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def claim_turn(home: Path, name: str, min_interval: float) -> bool:
    """Whether this process may do a shared chore now: True at most once per ``min_interval`` s across processes.

    A time stamp file in the FIFO directory says when someone last did it; claiming it touches the stamp.
    """
    import time

    stamp = wake_dir(home) / name
    try:
        if time.time() - stamp.stat().st_mtime < min_interval:
            return False
    except OSError:
        pass
    try:
        stamp.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp.touch()
    except OSError:
        return True  # the chore is still worth doing; others just cannot see that it was done
    return True
