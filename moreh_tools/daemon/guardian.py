"""This host's side of the GPU guardian in ``sdamanager``: look at the GPUs each tick, and apply the foreign-process
policy to what the master found.

``MOREH_FOREIGN_POLICY`` is ``warn`` (default: the device is flagged and kept out of new allocations while the
process lives, the job holding it is told, nothing is killed) or ``kill`` (the same, and the process gets SIGTERM
once it has been seen for ``MOREH_FOREIGN_GRACE`` seconds, default 60; SIGKILL follows ``MOREH_RELEASE_GRACE``
seconds later if it is still there). A process whose owner cannot be told, pid 1 and the daemon itself are never
killed; a pid is only signalled while it is still the process first seen (same start time).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scheduler_core.gpu_health import Foreign, ForeignPolicy, judge_foreign, parse_foreign_policy

if TYPE_CHECKING:
    from moreh_tools.gpus.base import GpuProvider, GpuSnapshot
    from moreh_tools.services.records import ForeignProcess, HostWatch


def policy_from_env(env: Mapping[str, str] | None = None) -> ForeignPolicy:
    """The foreign-process policy the environment asks for; PolicyError (one line) when it is malformed."""
    return parse_foreign_policy(os.environ if env is None else env)


@dataclass
class HostGuard:
    """The guardian's memory on this host: when each foreign pid was first seen, and what was signalled."""

    home: str
    policy: ForeignPolicy
    log: Callable[[str], None]
    clock: Callable[[], float] = time.monotonic
    first_seen: Mapping[int, float] = field(default_factory=dict)
    started: dict[int, float | None] = field(default_factory=dict)  # pid -> its start time when first seen
    signalled: dict[int, float] = field(default_factory=dict)  # pid -> when SIGTERM was sent

    def look(self, provider: GpuProvider, snapshots: Sequence[GpuSnapshot]) -> HostWatch:
        """This tick's health events and GPU processes (the provider's notices are logged, each once)."""
        from moreh_tools.gpus.watch import look

        for line in provider.warnings():
            self.log(line)
        return look(provider, snapshots, self.home, ignore_pids={os.getpid()})

    def act(self, found: Sequence[ForeignProcess]) -> list[int]:
        """Apply the policy to the foreign processes the master found this tick; the pids sent SIGTERM now."""
        from moreh_tools.jobs.processes import create_time, release_grace

        now = self.clock()
        findings = [
            Foreign(f.index, f.pid, f.user, f.memory_mib, f.kind, f.job_id, f.device_job, f.uid)
            for f in found
            if f.pid != os.getpid()
        ]
        verdict = judge_foreign(findings, self.first_seen, self.policy, now)
        for finding in verdict.new:
            if finding.pid not in self.started:
                self.started[finding.pid] = create_time(finding.pid)
        self.first_seen = verdict.first_seen
        for pid in list(self.started):
            if pid not in verdict.first_seen:  # gone: forget it
                self.started.pop(pid, None)
                self.signalled.pop(pid, None)
        sent: list[int] = []
        for pid in verdict.kill:
            if create_time(pid) != self.started.get(pid) or self.started.get(pid) is None:
                continue  # gone, or the pid now names another process
            when = self.signalled.get(pid)
            if when is None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
                    self.signalled[pid] = now
                    sent.append(pid)
                    self.log(
                        f"foreign process {pid} on the GPUs killed (SIGTERM): MOREH_FOREIGN_POLICY=kill, seen for "
                        f"{self.policy.grace_s:g} s or more"
                    )
            elif now - when >= max(release_grace(), 1.0):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    self.log(f"foreign process {pid} outlived SIGTERM: SIGKILL")
                self.signalled[pid] = float("inf")  # once
        return sent
