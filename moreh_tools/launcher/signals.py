"""What a signal sent to ``moreh-run`` does, depending on how far the job has got.

* While the command runs, every forwarded signal goes to the command's process group.
* While the job waits in the queue, SIGINT, SIGTERM, SIGHUP and SIGQUIT interrupt the wait
  (:class:`Cancelled`), so the job leaves the queue and ``moreh-run`` exits 128 + the signal.
* At any other moment (submitting, starting, recording the end) such a signal is remembered and
  acted on at the next safe point, so no transaction or hand-over is cut in half.

SIGUSR1 and SIGUSR2 only mean something to the command; without one they are ignored. A signal
that ``moreh-run`` inherited as ignored (``nohup``) stays ignored, for the command too.
"""

from __future__ import annotations

import signal
from types import FrameType

from moreh_tools.launcher.child import FORWARDED, Child

CANCELLING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Cancelled(Exception):
    """A signal asked ``moreh-run`` to give up before its command started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalRouter:
    """Installs the handlers once and routes each signal by the current phase."""

    def __init__(self) -> None:
        """Take over the forwarded signals that were not inherited as ignored."""
        self.child: Child | None = None
        self.interruptible = False
        self.pending: int | None = None
        for sig in FORWARDED:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.child is not None:
            self.child.send(signum)
            return
        if signum not in CANCELLING:
            return
        if self.interruptible:
            self.interruptible = False
            raise Cancelled(signum)
        if self.pending is None:
            self.pending = signum

    def check(self) -> None:
        """At a safe point: raise :class:`Cancelled` for a signal that arrived since the last one."""
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise Cancelled(signum)

    def forward_to(self, child: Child | None) -> None:
        """Forward signals to ``child`` from now on (None: stop forwarding, remember instead)."""
        self.child = child
        if child is not None and self.pending is not None:
            signum, self.pending = self.pending, None
            child.send(signum)
