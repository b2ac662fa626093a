"""What the tools show of the GPU guardian for one token (``moreh-smi``'s flags and idle lines).

Apart from :mod:`moreh_tools.services.guardian`, which judges hosts and jobs: ``moreh-smi`` pays for every import
at each start, and only needs to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from moreh_tools.services.records import IdleStatus

if TYPE_CHECKING:
    from state.records import DeviceFlag
    from state.session import Session


def token_guard(
    s: Session, token: str, gpus: Sequence[tuple[int, int]], running: Sequence[tuple[int, int]]
) -> tuple[tuple[DeviceFlag, ...], tuple[IdleStatus, ...]]:
    """What moreh-smi shows of the guardian for ``token``.

    ``gpus``: (backend, index) of the GPUs behind its devices; ``running``: (device id, job id) of its running jobs.
    Returns the flags on those GPUs and on the hosts its jobs run or wait on (a foreign process there may be
    why a job waits), and its idle jobs with the time left before the reclaim.
    """
    g = s.guardian
    if g.quiet():
        return (), ()
    wanted = set(gpus)
    backends = set(g.backends_of_token(token))
    flags = tuple(
        f
        for f in g.flags(backends | {b for b, _ in wanted})
        if (f.backend_id, f.index) in wanted or f.backend_id in backends
    )
    idle: list[IdleStatus] = []
    bookkeeping = g.idle_of(job for _, job in running)
    busy = {job: state for job, state in bookkeeping.items() if state.idle_since is not None and not state.reclaimed}
    if busy:
        windows = _windows(s, list(busy))
        for device, job in running:
            state = busy.get(job)
            window = windows.get(job)
            if state is None or window is None or state.seconds_left is None:
                continue
            idle.append(IdleStatus(device, job, max(window - state.seconds_left, 0.0), state.seconds_left, window))
    return flags, tuple(idle)


def _windows(s: Session, job_ids: Sequence[int]) -> dict[int, float]:
    """Job id -> the window of the idle policy that covers it."""
    policies = {(p.scope, p.target): p for p in s.guardian.idle_policies()}
    out: dict[int, float] = {}
    for job_id in job_ids:
        job = s.jobs.find(job_id)
        if job is None:
            continue
        row = policies.get(("token", job.token)) or policies.get(("sdamodel", str(s.sdas.get(job.sda_id).model_id)))
        if row is not None:
            out[job_id] = row.window_s
    return out
