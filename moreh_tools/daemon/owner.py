"""The state owner's tick: end jobs nobody will end, then run a scheduling pass and wake who got devices.

Each tick, in this order:

1. this host's GPUs and jobs' processes are sampled into the state (:class:`~moreh_tools.daemon.host.HostAgent`);
2. this host's jobs whose launcher and guardian are both gone end as ``lost`` (their processes killed);
3. jobs of hosts that stopped reporting for ``MOREH_HOST_TIMEOUT`` seconds end as ``lost``, and those hosts'
   devices leave the pool until they report again (only once the daemon itself has run that long, so a
   restarted master does not give up on hosts it simply has not heard from yet);
4. a scheduling pass; the launchers whose jobs got devices (or are preempted) are woken;
5. this host's jobs past their time limit, or preempted, whose launcher cannot end them (gone, stopped, or
   past its grace period) are ended here (SIGTERM, the grace, SIGKILL; ``timeout`` or ``preempted``), in a
   thread of their own so that a long grace period never holds the tick up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moreh_tools.daemon.host import HostAgent
    from moreh_tools.services.context import ServiceContext

DEFAULT_HOST_TIMEOUT_S = 60.0


def host_timeout() -> float:
    """Seconds of silence after which a reporting host counts as gone (``MOREH_HOST_TIMEOUT``, default 60)."""
    try:
        value = float(os.environ.get("MOREH_HOST_TIMEOUT", "") or DEFAULT_HOST_TIMEOUT_S)
    except ValueError:
        return DEFAULT_HOST_TIMEOUT_S
    return value if 1.0 <= value <= 86400.0 else DEFAULT_HOST_TIMEOUT_S


@dataclass
class Owner:
    """The daemon's periodic work on the state it owns."""

    ctx: ServiceContext
    agent: HostAgent
    log: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    timeout: float = field(default_factory=host_timeout)
    enforcer: threading.Thread | None = None

    def tick(self) -> None:
        """One round (see the module docstring)."""
        from moreh_tools.services import jobs

        self.agent.tick()
        silent = []
        if time.monotonic() - self.started >= self.timeout:
            silent = jobs.end_jobs_of_silent_hosts(self.ctx, self.timeout, keep=self.agent.backend_id)
        decision, lost = jobs.schedule(self.ctx, "sdamanager: reconcile and schedule")
        from moreh_tools.services import containment

        escaped, _ = containment.sweep(self.ctx)  # the cgroups of ended jobs: leftovers killed, groups removed
        for job_id in escaped:
            self.log(f"job {job_id} had ended, but processes were left in its cgroup: they were killed")
        for job_id in lost:
            self.log(f"job {job_id} ended as lost: its moreh-run and guardian are gone; its devices are free again")
        for job_id, host in silent:
            self.log(f"job {job_id} ended as lost: its host '{host}' stopped reporting")
        for allocation in decision.allocations:
            self.log(f"job {allocation.job_id} got devices {', '.join(f'{b}:{i}' for b, i in allocation.devices)}")
        for preemption in decision.preemptions:
            self.log(f"job {preemption.victim_id} is preempted for job {preemption.for_job}: {preemption.reason}")
        if self.enforcer is None or not self.enforcer.is_alive():
            self.enforcer = threading.Thread(target=self._enforce, name="sdamanager-enforce", daemon=True)
            self.enforcer.start()

    def _enforce(self) -> None:
        """End this host's overdue jobs (see :mod:`moreh_tools.services.enforcement`); log what ended."""
        from moreh_tools.services import enforcement

        try:
            ended = enforcement.end_overdue(self.ctx)
        except Exception as exc:  # a failed round is logged; the next tick tries again
            self.log(f"ending overdue jobs failed: {exc}")
            return
        for overdue in ended:
            self.log(f"job {overdue.job.id} ended as {overdue.reason}: {overdue.detail}")
