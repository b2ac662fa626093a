"""The state owner's tick: end jobs nobody will end, then run a scheduling pass and wake who got devices.

Each tick, in this order:

1. this host's GPUs and jobs' processes are sampled into the state (:class:`~moreh_tools.daemon.host.HostAgent`);
2. this host's jobs whose launcher and guardian are both gone end as ``lost`` (their processes killed);
3. jobs of hosts that stopped reporting for ``MOREH_HOST_TIMEOUT`` seconds end as ``lost``, and those hosts'
   devices leave the pool until they report again (only once the daemon itself has run that long, so a
   restarted master does not give up on hosts it simply has not heard from yet);
4. a scheduling pass; the launchers whose jobs got devices are woken.
"""

from __future__ import annotations

import os
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
