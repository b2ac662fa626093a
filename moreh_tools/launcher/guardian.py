"""The guardian: a small process that cleans up after a launcher that died without finishing its job.

The launcher forks the guardian before it opens the state (a fork must not copy an open DuckDB
connection) and keeps the write end of a pipe; the guardian keeps the read end. The launcher
writes what the guardian needs to know as it goes:

* ``submitting <launcher start time>``: a job may exist from now on (found by the launcher's identity);
* ``job <id>``: the job's id;
* ``child <pid> <create time>``: the job's command started;
* ``requeue``: the job ended (preempted) and the launcher submits it again: forget its id and command until
  the next ``job``;
* ``done``: the launcher recorded the job's end itself; nothing to do.

The kernel closes the write end when the launcher dies however it dies (``kill -9`` included), so
the guardian reads end-of-file. Without ``done`` first, it terminates the job's processes and ends the
job as ``lost`` through the port (the state file, the local daemon or the master), so the devices come
back at once instead of at the next daemon tick. If the guardian dies with its launcher (a session or
cgroup kill), the next scheduling pass on this host ends the job instead (the job records both pids).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heard:
    """What the guardian has learnt from its launcher."""

    submitting: bool = False
    launcher_create_time: float | None = None
    job_id: int | None = None
    child_pid: int | None = None
    child_create_time: float | None = None
    done: bool = False

    def hear(self, line: str) -> None:
        """Take in one message line; malformed lines are ignored (the launcher is the only writer)."""
        word, _, rest = line.strip().partition(" ")
        args = rest.split()
        try:
            if word == "submitting":
                self.submitting = True
                if args:
                    self.launcher_create_time = float(args[0])
            elif word == "job" and args:
                self.job_id = int(args[0])
            elif word == "child" and len(args) == 2:
                self.child_pid, self.child_create_time = int(args[0]), float(args[1])
            elif word == "requeue":
                self.job_id = self.child_pid = self.child_create_time = None
            elif word == "done":
                self.done = True
        except ValueError:
            pass


class Guardian:
    """The launcher's end of the pipe to its guardian."""

    def __init__(self, write_fd: int, pid: int) -> None:
        """Wrap the pipe's write end (close-on-exec, so the job's command never inherits it)."""
        self.fd = write_fd
        self.pid = pid

    def tell(self, message: str) -> None:
        """Send one message line; a guardian that is gone is no reason to fail the job."""
        with contextlib.suppress(OSError):
            os.write(self.fd, (message + "\n").encode())

    def done(self) -> None:
        """Say the job's end is recorded, and let the guardian go."""
        self.tell("done")
        with contextlib.suppress(OSError):
            os.close(self.fd)


def start(home: Path, token: str, machine_id: str, host: str) -> Guardian:
    """Fork the guardian (before any connection is open); return the launcher's end of the pipe."""
    read_fd, write_fd = os.pipe()  # both close-on-exec (PEP 446)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # the guardian
        code = 0
        try:
            os.close(write_fd)
            _detach(read_fd)
            _watch(read_fd, Launcher(home, token, machine_id, host, os.getppid()))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(read_fd)
    return Guardian(write_fd, pid)


def _detach(read_fd: int) -> None:
    """Leave the launcher's session and terminal, so the user's Ctrl-C or a group kill spares the guardian."""
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):  # not the launcher's forwarding handlers
        signal.signal(sig, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # a test capturing the launcher's output must not wait for the guardian
        os.dup2(null, fd)
    os.close(null)
    os.closerange(3, read_fd)
    os.closerange(read_fd + 1, 1024)


@dataclass(frozen=True)
class Launcher:
    """Who the guardian cleans up after: the launcher's state directory, token, machine, host and pid."""

    home: Path
    token: str
    machine_id: str
    host: str
    pid: int


def _watch(read_fd: int, launcher: Launcher) -> None:
    heard = Heard()
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        pending += chunk
        *lines, rest = pending.split(b"\n")
        pending = rest
        for line in lines:
            heard.hear(line.decode(errors="replace"))
    if heard.done or not heard.submitting:
        return
    clean_up(heard, launcher)


def clean_up(heard: Heard, launcher: Launcher) -> None:
    """End the dead launcher's job: kill its processes here, record it as lost wherever the state is."""
    from moreh_tools.jobs import processes
    from moreh_tools.port import open_port, ops

    port = open_port(launcher.token, tool="moreh-run (guardian)")
    if heard.job_id is None:
        # The launcher died while submitting: its job, if the submission got through, names the launcher.
        started = heard.launcher_create_time  # the launcher is gone: its start time is known from its report only
        if started is None:
            return
        port.call(
            ops.JOB_ABANDONED,
            machine_id=launcher.machine_id,
            host=launcher.host,
            launcher_pid=launcher.pid,
            launcher_create_time=started,
        )
        return
    processes.end_job_processes(
        heard.job_id, heard.child_pid, heard.child_create_time, str(launcher.home), processes.release_grace()
    )
    port.call(
        ops.JOB_FINISH, job_id=heard.job_id, exit_code=None, reason="lost", detail="its moreh-run died"
    )
