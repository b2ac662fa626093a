"""Whole-trace replays through the pure scheduler: strict against backfill, and quotas with fair share.

Seeded synthetic traces (``benchmarks/scheduler_sim.py``) on 60 backends of 8 GPUs: 2,000 jobs
arriving as a Poisson process at 85% offered load, 88% of them of 1-8 GPUs and 12% multi-backend
jobs of 16, 32 or 64 GPUs, lognormal run times (median 30 min), time limits 1-4x the run time
rounded up to a minute. Each trace is replayed with a simulated clock, one pass per event.

* ``host-bound``: 1-8 GPU jobs may only use the backend of the host they are launched on (drawn at
  random), as ``moreh-run`` jobs do; multi-backend jobs may use any backend.
* ``any backend``: the same jobs, all free to use any backend (what a batch scheduler usually sees).
* ``any backend, load 0.7 / 1.0``: the same mix at other loads, for how much the figures depend on it.
* ``exact limits``: every job arrives at once and runs exactly to its limit.
* ``two groups``: the ``any backend`` mix, 65% of jobs from user group 1 and 35% from group 2, at 110%
  load; each group has a nominal quota of half the GPUs and may borrow as much again; fair share
  with a one-day half-life.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from benchmarks import Figure, percentile, progress, run_standalone
from benchmarks.scheduler_sim import Cluster, SimResult, mixed_trace, simulate
from scheduler_core.scheduling import BACKFILL, STRICT, Quota

SIZES = (1, 2, 4, 8, 16, 32, 64)
FULL = {"cluster": Cluster(60, 8), "jobs": 2000, "exact_jobs": 600, "quota_jobs": 2000}
QUICK = {"cluster": Cluster(6, 8), "jobs": 150, "exact_jobs": 60, "quota_jobs": 150}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _ratio(strict: float, backfill: float) -> float:
    """strict / backfill, 1 when both are 0 (nobody waited)."""
    if backfill > 0:
        return strict / backfill
    return float("inf") if strict > 0 else 1.0


def compare(label: str, strict: SimResult, backfill: SimResult) -> list[Figure]:
    """Utilisation, waits by size, the biggest jobs and plan keeping, backfill against strict."""
    gain = round((backfill.utilisation - strict.utilisation) * 100, 3)
    figures = [
        Figure(f"sim {label}: GPU utilisation, strict", strict.utilisation * 100, "%"),
        Figure(f"sim {label}: GPU utilisation, backfill", backfill.utilisation * 100, "%"),
        Figure(f"sim {label}: utilisation gain of backfill", gain, "points", ">= 10", gain >= 10),
        Figure(
            f"sim {label}: utilisation while jobs wait, strict -> backfill ({strict.backlog_utilisation * 100:.1f} ->)",
            backfill.backlog_utilisation * 100,
            "%",
        ),
    ]
    for size in SIZES:
        s, b = strict.waits([size]), backfill.waits([size])
        if not s:
            continue
        figures.append(
            Figure(
                f"sim {label}: {size}-GPU jobs ({len(s)}), mean wait, backfill (strict {_mean(s):.0f})", _mean(b), "s"
            )
        )
        figures.append(
            Figure(
                f"sim {label}: {size}-GPU jobs, p95 wait, backfill (strict {percentile(s, 0.95):.0f})",
                percentile(b, 0.95),
                "s",
            )
        )
    s1, b1 = percentile(strict.waits([1]), 0.95), percentile(backfill.waits([1]), 0.95)
    ratio = _ratio(s1, b1)
    figures.append(Figure(f"sim {label}: p95 wait of 1-GPU jobs, strict / backfill", ratio, "x", ">= 5", ratio >= 5))
    biggest = max(size for size in SIZES if strict.waits([size]))
    worst_s, worst_b = max(strict.waits([biggest])), max(backfill.waits([biggest]))
    figures.append(
        Figure(
            f"sim {label}: longest wait of a {biggest}-GPU job, backfill (strict {worst_s:.0f})",
            worst_b,
            "s",
            f"<= {worst_s:.0f}",
            worst_b <= worst_s,
        )
    )
    longer = [
        r.wait - strict.records[r.job.id].wait
        for r in backfill.records.values()
        if r.job.gpus == biggest and r.wait > strict.records[r.job.id].wait
    ]
    figures.append(
        Figure(
            f"sim {label}: {biggest}-GPU jobs waiting longer than under strict (by at most {max(longer, default=0):.0f} s)",
            len(longer),
            "jobs",
        )
    )
    figures.append(
        Figure(
            f"sim {label}: latest start of a head job past its plan (backfill)",
            backfill.worst_head_slip(),
            "s",
            "<= 0",
            backfill.worst_head_slip() <= 0,
        )
    )
    figures.append(
        Figure(f"sim {label}: largest delay of a planned job past its first estimate", backfill.worst_slip(), "s")
    )
    for name, result in (("strict", strict), ("backfill", backfill)):
        figures.append(
            Figure(
                f"sim {label}: mean pass, {name} ({result.passes} passes)",
                result.pass_seconds / max(1, result.passes) * 1000,
                "ms",
            )
        )
    return figures


def main(quick: bool = False) -> list[Figure]:
    """Replay the traces; return the figures."""
    sizes = QUICK if quick else FULL
    cluster = sizes["cluster"]
    assert isinstance(cluster, Cluster)
    jobs, exact_jobs, quota_jobs = int(sizes["jobs"]), int(sizes["exact_jobs"]), int(sizes["quota_jobs"])  # type: ignore[call-overload]
    figures: list[Figure] = []
    for label, host_bound in (("host-bound", True), ("any backend", False)):
        trace = mixed_trace(cluster, jobs, load=0.85, host_bound=host_bound)
        runs = []
        for policy in (STRICT, BACKFILL):
            progress(f"sim {label}: {len(trace)} jobs on {cluster.backends}x{cluster.per_backend}, {policy.mode}")
            began = time.perf_counter()
            runs.append(simulate(trace, cluster, policy))
            progress(f"sim {label} {policy.mode} took {time.perf_counter() - began:.1f} s")
        figures += compare(f"{label} {cluster.backends}x{cluster.per_backend}", runs[0], runs[1])

    for load in () if quick else (0.7, 1.0):
        progress(f"sim any backend at load {load:g}")
        trace = mixed_trace(cluster, jobs, load=load, host_bound=False)
        strict, backfill = simulate(trace, cluster, STRICT), simulate(trace, cluster, BACKFILL)
        s1, b1 = percentile(strict.waits([1]), 0.95), percentile(backfill.waits([1]), 0.95)
        figures += [
            Figure(
                f"sim any backend, load {load:g}: p95 wait of 1-GPU jobs, strict / backfill ({s1:.0f} / {b1:.0f} s)",
                _ratio(s1, b1),
                "x",
            ),
            Figure(
                f"sim any backend, load {load:g}: utilisation, strict -> backfill ({strict.utilisation * 100:.1f} ->)",
                backfill.utilisation * 100,
                "%",
            ),
        ]

    for label, host_bound in (("host-bound", True), ("any backend", False)):
        progress(f"sim exact limits, {label}")
        trace = mixed_trace(cluster, exact_jobs, exact_limits=True, all_at_once=True, host_bound=host_bound, seed=7)
        result = simulate(trace, cluster, BACKFILL)
        slip = result.worst_slip()
        figures.append(
            Figure(
                f"sim exact limits, nothing arrives, {label} ({exact_jobs} jobs): latest start past first estimate",
                slip,
                "s",
                "<= 0",
                slip <= 0,
            )
        )

    progress("sim two groups with quotas and fair share")
    half = cluster.gpus // 2
    quotas = {(1, 0): Quota(half, half), (2, 0): Quota(half, half)}
    trace = mixed_trace(
        cluster, quota_jobs, load=1.1, host_bound=False, groups=(1, 2), group_weights=(0.65, 0.35), seed=13
    )
    plain = simulate(trace, cluster, BACKFILL)
    shared = simulate(trace, cluster, BACKFILL, quotas=quotas, fairshare_halflife=86400.0)
    for group, share in sorted(shared.shares_while_contended.items()):
        off = abs(share - 0.5) / 0.5 * 100
        figures.append(
            Figure(
                f"sim two groups: group {group}'s share of GPU time while both wait (nominal 50%)",
                share * 100,
                "%",
                "within 10% of 50",
                off <= 10,
            )
        )
    for group, share in sorted(plain.shares_while_contended.items()):
        figures.append(Figure(f"sim two groups: group {group}'s share without quotas", share * 100, "%"))
    span = (shared.last_end - shared.first_arrival) * cluster.gpus
    figures += [
        Figure(
            f"sim two groups: utilisation with quotas (without: {plain.utilisation * 100:.1f})",
            shared.utilisation * 100,
            "%",
            f">= {plain.utilisation * 100:.1f}",
            shared.utilisation >= plain.utilisation,
        ),
        Figure(
            f"sim two groups: useful utilisation with quotas, preempted work lost (without: {plain.utilisation * 100:.1f})",
            shared.useful_gpu_seconds / span * 100 if span else 0.0,
            "%",
        ),
        Figure("sim two groups: preemptions", sum(r.preempted for r in shared.records.values()), "jobs"),
        Figure(
            "sim two groups: mean pass with quotas and fair share",
            shared.pass_seconds / max(1, shared.passes) * 1000,
            "ms",
        ),
    ]
    return figures


if __name__ == "__main__":
    run_standalone(main, __doc__ or "")
