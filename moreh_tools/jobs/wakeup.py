"""How a waiting launcher learns that its devices are ready without polling the state.

Each waiting job owns a FIFO ``$MOREH_HOME/run/job-<id>.wake``. Whoever allocates devices (or
releases a queued job) writes one byte to the job's FIFO; the launcher sleeps in ``select`` on it,
with a long timeout as a safety net. No lock is held while waiting.

Everything here is opened relative to the checked state directory and its checked ``run/``
(:mod:`state.safety`), never through a link: a FIFO someone replaced by a link to another file is not
written. In a group-shared state directory ``run/`` is 2770 and the FIFOs and stamps 0660, so every
member's launcher can wake every other member's; elsewhere they are the owner's alone (0700, 0600).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from state.safety import Home

RUN_DIR = "run"


def wake_dir(home: Path) -> Path:
    """The directory holding the FIFOs."""
    return home / RUN_DIR


def wake_name(job_id: int) -> str:
    """The FIFO's name in :func:`wake_dir`."""
    return f"job-{job_id}.wake"


def wake_path(home: Path, job_id: int) -> Path:
    """The FIFO of one job."""
    return wake_dir(home) / wake_name(job_id)


@contextlib.contextmanager
def run_dir(home: Path) -> Iterator[Home]:
    """The state directory's ``run/``, checked and open (made if missing); StateUnavailableError if unsafe."""
    from state.safety import checked_home

    with checked_home(home) as checked:
        run = checked.subdirectory(RUN_DIR)
    try:
        yield run
    finally:
        run.close()


class WakeUp:
    """The reading end of a job's FIFO, owned by the launcher waiting for that job."""

    def __init__(self, home: Path, job_id: int) -> None:
        """Create the FIFO and open it (read-write, so select blocks until someone writes)."""
        self.path = wake_path(home, job_id)
        self.name = wake_name(job_id)
        with run_dir(home) as run:
            with contextlib.suppress(FileExistsError):
                os.mkfifo(self.name, run.file_mode, dir_fd=run.fd)
            found = run.lstat(self.name)
            if found is not None and not (stat.S_ISFIFO(found.st_mode) and found.st_uid == os.geteuid()):
                # Not ours (left by someone else, or planted): ours replaces it.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.name, dir_fd=run.fd)
                os.mkfifo(self.name, run.file_mode, dir_fd=run.fd)
            self.fd = run.open(self.name, os.O_RDWR | os.O_NONBLOCK, kind="fifo")
            mine = os.fstat(self.fd)
            self._identity = (mine.st_dev, mine.st_ino)
            if stat.S_IMODE(mine.st_mode) != run.file_mode:
                os.fchmod(self.fd, run.file_mode)  # the umask must not keep other members from waking us
            self._run = os.dup(run.fd)

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
        """Close and remove the FIFO (only if it is still ours: the name may have been reused meanwhile)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            st = os.stat(self.name, dir_fd=self._run, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.name, dir_fd=self._run)
        with contextlib.suppress(OSError):
            os.close(self._run)


def wake(home: Path, job_id: int) -> bool:
    """Wake the launcher waiting for ``job_id``; return False when nobody waits.

    Only a FIFO is ever opened (a link, a file or a device put in its place is left alone).
    """
    from state.errors import StateError

    name = wake_name(job_id)
    try:
        with run_dir(home) as run:
            found = run.lstat(name)
            if found is None or not stat.S_ISFIFO(found.st_mode):
                return False
            try:
                fd = os.open(name, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=run.fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENXIO, errno.EACCES, errno.ELOOP):
                    return False
                raise
    except StateError:
        return False  # an unsafe run/ is nobody's wake-up; the waiter says why when it makes its FIFO
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode):
            return False
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

    from state.errors import StateError

    try:
        with run_dir(home) as run:
            found = run.lstat(name)
            if found is not None and stat.S_ISREG(found.st_mode) and time.time() - found.st_mtime < min_interval:
                return False
            fd = run.open(name, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK)
            try:
                os.utime(fd)
            finally:
                os.close(fd)
    except (OSError, StateError):
        return True  # the chore is still worth doing; others just cannot see that it was done
    return True
