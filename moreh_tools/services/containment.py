"""Job containment in the state: what each job's launcher reported, and the daemon's sweep of stale groups.

The launcher reports how its job is contained with :func:`moreh_tools.services.jobs.started`;
``moreh-smi -p`` shows it (:mod:`moreh_tools.services.status`). The daemon's tick calls :func:`sweep`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext

#: Leftovers of a job that already ended get this long between SIGTERM and SIGKILL (the tick waits for it).
SWEEP_GRACE_S = 0.5


def sweep(ctx: ServiceContext) -> tuple[list[int], list[int]]:
    """Kill what is left in the cgroups of jobs that have ended, and remove those groups (this host only).

    Returns (jobs whose leftover processes were killed, jobs whose group was removed).
    """
    from moreh_tools.jobs import contain
    from state import containment

    with ctx.read() as s:
        keep = containment.live_job_ids(s)
    return contain.sweep(ctx.home, keep, SWEEP_GRACE_S)
