"""While the job's command runs, hear what happens to the job elsewhere and act on it here.

Someone asking the job to stop (an admin's ``release``, the user's ``moreh-smi -r``, the dashboard's
``x``, the GPU guardian reclaiming an idle job) reaches the launcher at once (a long poll through the
daemon or the master, or the job's FIFO without a daemon). The launcher then stops its own command
(SIGTERM to its process group, SIGKILL after ``MOREH_RELEASE_GRACE``), so a release works even where
the releaser may not signal the user's processes, and the user reads one line saying who stopped the
job. The GPU guardian's notices (the job's GPU failed, a foreign process uses it, the job is idle and
how long is left before its devices are reclaimed) are printed on stderr as they come.

The same way the launcher enforces its job's time limit (a timer: at the limit, SIGTERM, then SIGKILL
after ``MOREH_RELEASE_GRACE``; the job ends as ``timeout``) and hears a preemption (a scheduling pass
gave the job's borrowed devices back to a group within its quota: SIGTERM, then SIGKILL after
``MOREH_PREEMPT_GRACE``; the job ends as ``preempted``). :attr:`Watcher.end_reason` tells the launcher which.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moreh_tools.launcher.child import Child

#: How long one long poll of a running job lasts before the watcher asks again.
WATCH_S = 25.0


class Watcher:
    """A daemon thread watching one running job through its own port (connections are not shared)."""

    def __init__(
        self,
        token: str,
        job_id: int,
        child: Child,
        home: str,
        deadline: float | None = None,
        limit: float | None = None,
    ) -> None:
        """Watch ``job_id`` (whose command is ``child``) as ``token``; stop it at ``deadline`` (epoch s; its ``limit``)."""
        self.token = token
        self.job_id = job_id
        self.child = child
        self.home = home
        self.deadline = deadline
        self.limit = limit
        self.said = ""  # the line moreh-run prints once the command ended, when the job was stopped
        self.end_reason: str | None = None  # "timeout" or "preempted" when the job ended so; None otherwise
        self._closing = threading.Event()
        self._stopping = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching (and, with a deadline, the time limit's timer)."""
        self._thread = threading.Thread(target=self._watch, name="moreh-run-watcher", daemon=True)
        self._thread.start()
        if self.deadline is not None:
            threading.Thread(target=self._time_limit, name="moreh-run-limit", daemon=True).start()

    def _time_limit(self) -> None:
        from moreh_tools.jobs import processes
        from scheduler_core.timelimits import format_duration

        assert self.deadline is not None
        if self._closing.wait(max(0.0, self.deadline - time.time())):
            return
        limit = f" ({format_duration(self.limit)})" if self.limit is not None else ""
        self.stop_command(
            "it reached its time limit",
            grace=processes.release_grace(),
            end_reason="timeout",
            said=f"job {self.job_id} reached its time limit{limit}.",
        )

    def _watch(self) -> None:
        from moreh_tools.port import open_port, ops
        from moreh_tools.runtime import say
        from state.errors import StateError

        port = open_port(self.token, tool="moreh-run")
        seen = "running#0"  # with the GPU guardian's notices (an unhealthy GPU, a foreign process, idleness)
        try:
            while not self._closing.is_set():
                try:
                    update = port.call(ops.JOB_WAIT, job_id=self.job_id, timeout=WATCH_S, seen=seen)
                except StateError:
                    # The daemon restarting, the master unreachable: the command keeps running; look again.
                    port.close()
                    if self._closing.wait(2.0):
                        return
                    continue
                if update.state == "notice":
                    say(update.detail)
                    seen = f"running#{update.reason}"
                elif update.state == "release":
                    seen = "release"
                    self.stop_command(update.detail or "it was released")
                elif update.state == "preempt":
                    from moreh_tools.services.settings import preempt_grace

                    seen = "preempt"
                    why = update.detail or "its borrowed devices went back to a user group within its quota"
                    self.stop_command(
                        why,
                        grace=preempt_grace(),
                        end_reason="preempted",
                        said=f"job {self.job_id} was preempted: {why}.",
                    )
                elif update.state == "ended":
                    why = update.detail or f"it ended as {update.reason}"
                    self.stop_command(why)
                    return
        except Exception:  # the watcher is a courtesy: the command and its end are the launcher's
            return
        finally:
            port.close()

    def stop_command(
        self, why: str, *, grace: float | None = None, end_reason: str | None = None, said: str | None = None
    ) -> None:
        """Stop the command: SIGTERM to its group now, SIGKILL after the grace period (once).

        ``grace`` defaults to ``MOREH_RELEASE_GRACE``; ``end_reason`` (``timeout``, ``preempted``) is how the
        job then ends; ``said`` replaces the line moreh-run prints (default: "job N was stopped: WHY.").
        """
        from moreh_tools.jobs import processes

        with self._stopping:
            if self._stopped:
                return
            self._stopped = True
        if grace is None:
            grace = processes.release_grace()
        self.end_reason = end_reason
        self.said = said or f"job {self.job_id} was stopped: {why}."
        self.child.send(signal.SIGTERM)
        self.child.send(signal.SIGCONT)  # a stopped (Ctrl-Z) command must wake up to hear SIGTERM
        threading.Thread(target=self._kill_later, args=(grace,), name="moreh-run-grace", daemon=True).start()

    def _kill_later(self, grace: float) -> None:
        if self._closing.wait(grace):
            return
        with contextlib.suppress(OSError):
            self.child.send(signal.SIGKILL)

    def close(self) -> None:
        """The command ended: stop watching (the thread ends at its next answer; it is a daemon thread)."""
        self._closing.set()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the thread to end (after :meth:`close` and the job's end, it ends at once)."""
        if self._thread is not None:
            self._thread.join(timeout)
