"""The scheduler's settings from the environment, read here and nowhere else, and the services' clock.

| variable | default | meaning |
|---|---|---|
| ``MOREH_SCHEDULER_POLICY`` | ``backfill`` | ``backfill`` (reservations for blocked jobs, small jobs fill the gaps) or ``strict`` |
| ``MOREH_PREEMPT_MIN_RUNTIME`` | 300 | seconds a borrowed job runs before a reclaim may preempt it |
| ``MOREH_PREEMPT_GRACE`` | 30 | seconds between SIGTERM and SIGKILL when a job is preempted |
| ``MOREH_FAIRSHARE_HALFLIFE`` | 604800 (7 days) | half-life of a user group's GPU usage, in seconds |

A value that cannot be read (not a number, out of range, an unknown policy) falls back to the default: a
typo in a daemon's environment must not stop the scheduler. :func:`now` is the clock every pass, time limit
and quota grant is judged by; tests replace it to move time.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from scheduler_core.fairshare import DEFAULT_HALFLIFE_S

if TYPE_CHECKING:
    from scheduler_core.scheduling import Policy

DEFAULT_PREEMPT_MIN_RUNTIME_S = 300.0
DEFAULT_PREEMPT_GRACE_S = 30.0


def now() -> float:
    """The current time, epoch seconds."""
    return time.time()


def _seconds(name: str, default: float, low: float, high: float) -> float:
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if low <= value <= high else default


def policy() -> Policy:
    """The scheduling policy: ``MOREH_SCHEDULER_POLICY`` (strict | backfill) and ``MOREH_PREEMPT_MIN_RUNTIME``."""
    from scheduler_core.scheduling import BACKFILL_MODE, MODES, Policy

    mode = os.environ.get("MOREH_SCHEDULER_POLICY", "").strip().lower() or BACKFILL_MODE
    if mode not in MODES:
        mode = BACKFILL_MODE
    return Policy(mode=mode, preempt_min_runtime=preempt_min_runtime())


def preempt_min_runtime() -> float:
    """Seconds a borrowed job must have run before it may be preempted (``MOREH_PREEMPT_MIN_RUNTIME``, default 300)."""
    return _seconds("MOREH_PREEMPT_MIN_RUNTIME", DEFAULT_PREEMPT_MIN_RUNTIME_S, 0.0, 30 * 86400.0)


def preempt_grace() -> float:
    """Seconds between SIGTERM and SIGKILL when a job is preempted (``MOREH_PREEMPT_GRACE``, default 30)."""
    return _seconds("MOREH_PREEMPT_GRACE", DEFAULT_PREEMPT_GRACE_S, 0.0, 3600.0)


def fairshare_halflife() -> float:
    """The half-life of fair-share usage in seconds (``MOREH_FAIRSHARE_HALFLIFE``, default 7 days)."""
    return _seconds("MOREH_FAIRSHARE_HALFLIFE", DEFAULT_HALFLIFE_S, 1.0, 3650 * 86400.0)
