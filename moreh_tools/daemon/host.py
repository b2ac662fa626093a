"""This host's side of ``sdamanager``: sample the GPUs and the jobs' processes, report them to a sink.

The sink is where the state lives: this daemon's own open state (:class:`StateSink`), or a remote
master's API (:class:`MasterSink`, a host of ``MOREH_SDA_MANAGER_ADDRESS``). Either way the report
registers the host the first time and answers the host's jobs that someone asked to stop; the agent
ends those jobs' processes here when their launcher cannot (it is gone, or hangs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from moreh_tools.daemon.guardian import HostGuard
    from moreh_tools.gpus.base import GpuProvider
    from moreh_tools.port import Port
    from moreh_tools.services.context import ServiceContext
    from moreh_tools.services.records import GpuInfo, GpuSample, HostReply, HostWatch, ProcessSample, Release


class Sink(Protocol):
    """Where a host's reports go."""

    def report(
        self,
        gpus: Sequence[GpuInfo],
        samples: Sequence[GpuSample],
        processes: Sequence[ProcessSample],
        watch: HostWatch | None = None,
    ) -> HostReply:
        """Record one report (with what the GPU guardian saw); the answer names this host's jobs to stop."""
        ...


class StateSink:
    """The daemon's own state: the report is recorded in process."""

    def __init__(self, ctx: ServiceContext, ip: str) -> None:
        """Report as ``ctx``'s caller (the daemon itself) for the host ``ctx.host`` at ``ip``."""
        self.ctx = ctx
        self.ip = ip

    def report(
        self,
        gpus: Sequence[GpuInfo],
        samples: Sequence[GpuSample],
        processes: Sequence[ProcessSample],
        watch: HostWatch | None = None,
    ) -> HostReply:
        """Record the report in the state."""
        from moreh_tools.services import hosts

        return hosts.report(
            self.ctx,
            host=self.ctx.host,
            ip=self.ip,
            machine_id=self.ctx.machine_id,
            gpus=gpus,
            samples=samples,
            processes=processes,
            watch=watch,
        )


class MasterSink:
    """A remote master's API, reached with this host's HOST (or ADMIN) token."""

    def __init__(self, port: Port, host: str, ip: str, machine_id: str) -> None:
        """Report to the master behind ``port`` as ``host``."""
        self.port = port
        self.host = host
        self.ip = ip
        self.machine_id = machine_id

    def report(
        self,
        gpus: Sequence[GpuInfo],
        samples: Sequence[GpuSample],
        processes: Sequence[ProcessSample],
        watch: HostWatch | None = None,
    ) -> HostReply:
        """Send the report to the master."""
        from moreh_tools.port import ops

        extra = {"watch": watch} if watch is not None else {}
        return self.port.call(
            ops.HOST_REPORT,
            host=self.host,
            ip=self.ip,
            machine_id=self.machine_id,
            gpus=list(gpus),
            samples=list(samples),
            processes=list(processes),
            **extra,
        )


class HostAgent:
    """Samples this host every tick and reports to a sink; ends released jobs whose launcher did not."""

    def __init__(
        self,
        provider: GpuProvider,
        sink: Sink,
        home: Path,
        log: Callable[[str], None],
        guard: HostGuard | None = None,
    ) -> None:
        """Sample with ``provider`` and report to ``sink``; jobs are those of the state in ``home``.

        ``guard``: the GPU guardian of this host (health, foreign processes, idle figures); None: not watched.
        """
        self.provider = provider
        self.sink = sink
        self.home = home
        self.log = log
        self.guard = guard
        self.backend_id: int | None = None
        self.releases = Releases(home, log)

    def tick(self) -> HostReply:
        """One sample and report; then the foreign-process policy on what the master found."""
        from moreh_tools.services.hosts import read_gpus

        snapshots = self.provider.snapshot()
        watch = self.guard.look(self.provider, snapshots) if self.guard is not None else None
        gpus, samples, processes = read_gpus(self.provider, str(self.home), snapshots)
        reply = self.sink.report(gpus, samples, processes, watch)
        self.backend_id = reply.backend_id
        self.releases.start(reply.release)
        for note in reply.notes:
            self.log(f"GPU guardian: {note}")
        if self.guard is not None:
            self.guard.act(reply.foreign)
        return reply


class Releases:
    """Ends the processes of this host's jobs that someone asked to stop, one thread per job.

    The job's launcher normally stops its own command first; this covers a launcher that hangs or ignores
    the request. A pid the master relays is only a claim: only a process carrying the job's
    ``MOREH_JOB_ID`` is signalled.
    """

    def __init__(self, home: Path, log: Callable[[str], None]) -> None:
        """No release in progress."""
        self.home = home
        self.log = log
        self.busy: set[int] = set()
        self.lock = threading.Lock()

    def start(self, releases: Sequence[Release]) -> None:
        """Start ending each job's processes (SIGTERM, grace, SIGKILL) unless already under way."""
        for release in releases:
            with self.lock:
                if release.job_id in self.busy:
                    continue
                self.busy.add(release.job_id)
            self.log(f"job {release.job_id} was asked to stop: ending its processes here")
            threading.Thread(target=self._end, args=(release,), daemon=True).start()

    def _end(self, release: Release) -> None:
        from moreh_tools.jobs import processes

        pid = release.pid
        if pid and processes.carries_job_tag(int(pid), release.job_id) is not True:
            pid = None
        try:
            processes.end_job_processes(
                release.job_id, pid, release.pid_create_time, str(self.home), processes.release_grace()
            )
        finally:
            with self.lock:
                self.busy.discard(release.job_id)
