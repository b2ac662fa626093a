"""Fair share: decayed GPU usage per user group and the factor that orders jobs of equal priority.

Usage is GPU-seconds (devices x seconds held). Old usage counts less and less: after one half-life
it counts half, after two a quarter (Slurm's ``PriorityDecayHalfLife``)::

    decayed = usage * 2 ** (-elapsed / halflife)

The factor of a group follows Slurm's classic fair-share formula::

    F = 2 ** (-(U / U_total) / (S / S_total))

where ``U`` is the group's decayed usage, ``S`` its share (any positive weight, e.g. its nominal
quota), and the totals run over the groups that have a share. ``F`` is 1 for a group that used
nothing, 0.5 for one that used exactly its share, and tends to 0 for one that used far more. When
nobody used anything every factor is 1; a group with no (or a non-positive) share gets 0.

The scheduler uses the factor only between jobs of equal explicit priority: priority stays
dominant (see :func:`scheduler_core.scheduling.queue_order`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

NEUTRAL_FACTOR = 0.5
"""The factor of a job whose group has none (no group, or a group missing from the mapping)."""

DEFAULT_HALFLIFE_S = 7 * 86400.0
"""The usage half-life when none is configured: 7 days (Slurm's ``PriorityDecayHalfLife`` default)."""


def decay(usage: float, elapsed: float, halflife: float) -> float:
    """Return ``usage`` decayed over ``elapsed`` seconds with the given half-life.

    Raises:
        ValueError: ``halflife`` is not positive, or ``elapsed`` is negative.
    """
    if not halflife > 0:
        raise ValueError(f"a half-life must be more than 0 seconds, not {halflife}")
    if elapsed < 0:
        raise ValueError(f"elapsed time cannot be negative ({elapsed})")
    return usage * 2.0 ** (-elapsed / halflife)


def accrue(usage: float, elapsed: float, halflife: float, added: float) -> float:
    """Decay ``usage`` over ``elapsed`` seconds, then add the GPU-seconds used meanwhile (``added``).

    Counting all of ``added`` undecayed is exact when it was used at the end of the interval and
    slightly generous otherwise; keep intervals well below the half-life (a scheduling tick is).
    """
    return decay(usage, elapsed, halflife) + added


def fairshare_factors(usage: Mapping[int, float], shares: Mapping[int, float]) -> dict[int, float]:
    """Return the fair-share factor of every group that has a share.

    Args:
        usage: group id -> decayed GPU-seconds (missing: 0).
        shares: group id -> its share (a weight; the factor depends only on ratios).

    Returns:
        group id -> factor in [0, 1], for every group in ``shares``.

    Raises:
        ValueError: some usage is negative or not finite.
    """
    for group, used in usage.items():
        if not math.isfinite(used) or used < 0:
            raise ValueError(f"usage of group {group} must be a finite number of GPU-seconds >= 0, not {used}")
    total_share = sum(s for s in shares.values() if s > 0)
    total_usage = sum(usage.get(g, 0.0) for g, s in shares.items() if s > 0)
    factors: dict[int, float] = {}
    for group, share in shares.items():
        if share <= 0:
            factors[group] = 0.0
        elif total_usage <= 0:
            factors[group] = 1.0
        else:
            factors[group] = 2.0 ** (-(usage.get(group, 0.0) / total_usage) / (share / total_share))
    return factors
