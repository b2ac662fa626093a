"""Running the job's command: its own process group, the terminal's foreground, signals passed on.

The command runs in a process group of its own, so that it and everything it starts can be
signalled (and, after it ends, found and killed) as one. When ``moreh-run`` owns the terminal the
command's group becomes the foreground group, so Ctrl-C and Ctrl-Z reach it directly as they would
without ``moreh-run``; signals sent to ``moreh-run`` itself are forwarded to the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

# Python ignores these itself; the command must start with the defaults.
_RESET_FOR_CHILD = (signal.SIGPIPE, signal.SIGXFSZ)


def exit_status(wait_status: int) -> int:
    """The shell's exit status for a wait status: the code, or 128 + the signal that killed it."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def _terminal_fd() -> int | None:
    """A standard descriptor on a terminal whose foreground group is ours, else None.

    Not only stdin: with stdin redirected the command may still read the terminal (``/dev/tty``, as
    getpass does), which from a background group stops it.
    """
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
        except OSError:
            pass
    return None


def _give_terminal(fd: int, pgid: int) -> None:
    """Make ``pgid`` the terminal's foreground group (from the background too: SIGTTOU is ignored)."""
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, pgid)
    finally:
        signal.signal(signal.SIGTTOU, previous)


class Child:
    """The job's command, started in its own process group."""

    def __init__(self, path: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Start the command (``path`` is resolved already); raises OSError when it cannot be executed."""
        self.terminal = _terminal_fd()
        self.pid = os.posix_spawn(path, list(argv), dict(env), setpgroup=0, setsigdef=_RESET_FOR_CHILD)
        if self.terminal is not None:
            _give_terminal(self.terminal, self.pid)
            # Had it touched the terminal before it was handed over, it stopped on SIGTTIN/SIGTTOU.
            self.send(signal.SIGCONT)

    def send(self, sig: int) -> None:
        """Signal the command's whole process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def wait(self) -> int:
        """Wait for the command to end and return its wait status; follows Ctrl-Z / ``fg`` on a terminal."""
        while True:
            _, status = os.waitpid(self.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):
                break
            # SIGTTIN/SIGTTOU: it touched the terminal from the background ('moreh-run ... &').
            from_background = os.WSTOPSIG(status) in (signal.SIGTTIN, signal.SIGTTOU)
            if self.terminal is None and not from_background:
                continue  # stopped by someone else's SIGSTOP: whoever stopped it continues it
            # The command was stopped from the terminal: stop with it, so the shell's job control sees
            # moreh-run stopped, and resume it when the shell continues us ('fg' or 'bg').
            if self.terminal is not None:
                _give_terminal(self.terminal, os.getpgrp())
            os.kill(os.getpid(), signal.SIGSTOP)
            if self.terminal is None:
                self.terminal = _terminal_fd()  # 'fg' made us the terminal's foreground
            if self.terminal is not None and os.tcgetpgrp(self.terminal) == os.getpgrp():
                _give_terminal(self.terminal, self.pid)
            self.send(signal.SIGCONT)
        if self.terminal is not None:
            _give_terminal(self.terminal, os.getpgrp())
        return status
