"""Backfill with reservations, reason codes and expected starts (``schedule(..., policy=BACKFILL)``).

The property tests run the ``scheduler`` Hypothesis profile of ``tests/test_scheduler_core.py``
(bounded). To search harder:
``HYPOTHESIS_PROFILE=scheduler-long .venv/bin/python -m pytest tests/test_scheduler_backfill.py``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.scheduler_sim import Cluster, SimJob, simulate
from scheduler_core.reasons import REASON_CODES, split_code
from scheduler_core.scheduling import (
    BACKFILL,
    STRICT,
    BackendState,
    Decision,
    DeviceKey,
    DeviceState,
    Policy,
    QueuedJob,
    Reservation,
    RunningJob,
    schedule,
)
from tests.test_scheduler_core import PROFILE, backend, given_to, job, on

REPLAY = PROFILE
NOW = 100_000.0


def timed(jid: int, count: int = 1, limit: float | None = None, **kw: object) -> QueuedJob:
    """A queued job with a time limit (seconds, None: unlimited)."""
    return QueuedJob(**{**job(jid, count, **kw).__dict__, "time_limit": limit})  # type: ignore[arg-type]


def runs(jid: int, devices: Sequence[DeviceKey], *, started: float = NOW, limit: float | None = None) -> RunningJob:
    """A running job of its own SDA."""
    return RunningJob(jid, f"tok{jid}", jid, 0, tuple(devices), started, limit)


def busy_backend(bid: int, size: int, running: Sequence[RunningJob], **kw: object) -> BackendState:
    """A backend whose devices held by ``running`` are PROCESSING."""
    held = sorted(i for r in running for b, i in r.devices if b == bid)
    return backend(bid, size, busy=held, **kw)  # type: ignore[arg-type]


# -- the issue's scenario ----------------------------------------------------------------------------


def test_backfill_scenario_of_the_issue() -> None:
    a = runs(1, on(1, 0), started=NOW - 10, limit=60)  # job A: 1 GPU, limit 60 s, ends at NOW + 50
    queue = [timed(2, 8, limit=3600), timed(3, 1, limit=20), timed(4, 1, limit=600)]  # B, C, D
    decision = schedule([busy_backend(1, 8, [a])], queue, running=[a], now=NOW, policy=BACKFILL)
    assert [x.job_id for x in decision.allocations] == [3]  # C starts in the same pass
    assert decision.reason_codes == {2: "Resources", 4: "ReservedForJob:2"}
    assert decision.expected_start[2] == NOW + 50
    assert decision.expected_start[4] == NOW + 50 + 3600  # after B, on B's devices
    assert decision.reservations[0].job_id == 2
    assert decision.reservations[0].devices == on(1, *range(8))
    assert decision.waiting[2] == "waiting for 8 device(s) on backend group 0: 7 idle; expected to start in 00:00:50"
    assert "held for job 2 (planned to start in 00:00:50)" in decision.waiting[4]
    assert "00:10:00, which would delay it" in decision.waiting[4]

    # A ends (C ended long before): B starts, D waits behind it.
    later = schedule([backend(1, 8)], [queue[0], queue[2]], now=NOW + 50, policy=BACKFILL)
    assert given_to(later) == {2: on(1, *range(8))}
    assert later.reason_codes == {4: "Resources"}


def test_strict_makes_the_same_jobs_wait_with_the_old_sentences() -> None:
    a = runs(1, on(1, 0), started=NOW - 10, limit=60)
    queue = [timed(2, 8, limit=3600), timed(3, 1, limit=20), timed(4, 1, limit=600)]
    decision = schedule([busy_backend(1, 8, [a])], queue, running=[a], now=NOW, policy=STRICT)
    assert decision.allocations == ()
    assert decision.waiting == {
        2: "waiting for 8 device(s) on backend group 0: 7 idle",
        3: "behind job 2 (priority 0) in backend group 0",
        4: "behind job 2 (priority 0) in backend group 0",
    }
    assert decision.reason_codes == {2: "Resources", 3: "Priority", 4: "Priority"}
    assert decision.expected_start == {2: None, 3: None, 4: None}
    assert decision.reservations == ()


def test_a_job_without_a_limit_only_backfills_where_no_reservation_is_planned() -> None:
    a = runs(1, on(1, 0), limit=60)
    backends = [busy_backend(1, 4, [a]), backend(2, 2)]
    # Job 2 needs backend 1 whole; job 3 (no limit) may not use backend 1's idle devices but may use backend 2's.
    queue = [timed(2, 4, limit=100, allowed={1}), timed(3, 2), timed(4, 1)]
    decision = schedule(backends, queue, running=[a], now=NOW, policy=BACKFILL)
    assert given_to(decision) == {3: on(2, 0, 1)}
    assert decision.reason_codes[4] == "ReservedForJob:2"
    assert "has no time limit" in decision.waiting[4]


def test_a_plan_that_depends_on_a_job_without_a_limit_has_no_expected_start_and_holds_the_queue() -> None:
    forever = runs(1, on(1, 0))  # no limit: never ends, as far as plans go
    queue = [timed(2, 8, limit=100), timed(3, 1, limit=10)]
    decision = schedule([busy_backend(1, 8, [forever])], queue, running=[forever], now=NOW, policy=BACKFILL)
    assert decision.expected_start[2] is None
    assert decision.reason_codes == {2: "Resources", 3: "Priority"}  # strict for what cannot be planned
    assert decision.waiting[3] == "behind job 2 (priority 0) in backend group 0"


def test_busy_devices_without_a_known_job_count_as_busy_forever() -> None:
    decision = schedule(
        [backend(1, 2, busy=[0])], [timed(1, 2, limit=60), timed(2, 1, limit=5)], now=NOW, policy=BACKFILL
    )
    assert decision.expected_start[1] is None
    assert decision.reason_codes[2] == "Priority"


def test_a_job_past_its_limit_counts_as_ending_now() -> None:
    late = runs(1, on(1, 0), started=NOW - 500, limit=60)
    decision = schedule([busy_backend(1, 2, [late])], [timed(2, 2, limit=60)], running=[late], now=NOW, policy=BACKFILL)
    assert decision.expected_start[2] == NOW


def test_the_backfill_depth_bounds_how_many_jobs_get_a_plan() -> None:
    a = runs(1, on(1, 0, 1, 2, 3), limit=100)
    queue = [timed(j, 4, limit=50) for j in range(2, 8)]
    decision = schedule([busy_backend(1, 4, [a])], queue, running=[a], now=NOW, policy=Policy(backfill_depth=3))
    assert [r.job_id for r in decision.reservations] == [2, 3, 4]
    assert [decision.expected_start[j] for j in (2, 3, 4)] == [NOW + 100, NOW + 150, NOW + 200]
    assert decision.expected_start[5] is None  # past the depth: no plan, and it holds up the rest
    assert decision.reason_codes[6] == "Priority"
    assert (
        schedule([busy_backend(1, 4, [a])], queue, running=[a], now=NOW, policy=Policy(backfill_depth=0)).reservations
        == ()
    )


def test_a_short_job_fills_the_devices_a_reservation_needs_before_the_free_ones() -> None:
    # Backend 1 frees at +100 for job 2 (8 devices); backend 2 is free and unreserved.
    a = runs(1, on(1, *range(4)), limit=100)
    backends = [busy_backend(1, 8, [a]), backend(2, 2)]
    queue = [timed(2, 8, limit=1000, allowed={1}), timed(3, 2, limit=50), timed(4, 2)]
    decision = schedule(backends, queue, running=[a], now=NOW, policy=BACKFILL)
    assert given_to(decision) == {3: on(1, 4, 5), 4: on(2, 0, 1)}  # the short one in the hole, the long one outside


def test_reservations_are_kept_across_jobs_of_other_groups_and_backends() -> None:
    a = runs(1, on(1, 0), limit=30)
    backends = [busy_backend(1, 2, [a]), backend(2, 2, group=1)]
    queue = [timed(2, 2, limit=10), timed(3, 2, limit=10, group=1)]
    decision = schedule(backends, queue, running=[a], now=NOW, policy=BACKFILL)
    assert given_to(decision) == {3: on(2, 0, 1)}
    assert decision.expected_start == {2: NOW + 30}


def test_backfill_packs_like_strict() -> None:
    backends = [backend(1, 8, busy=[0, 1]), backend(2, 8, busy=range(5))]  # 6 and 3 free
    for policy in (STRICT, BACKFILL):
        assert given_to(schedule(backends, [timed(1, 3)], policy=policy)) == {1: on(2, 5, 6, 7)}


def test_a_job_keeps_the_devices_of_its_previous_plan() -> None:
    a = runs(1, on(1, 0, 1) + on(2, 0, 1), limit=100)
    backends = [busy_backend(1, 4, [a]), busy_backend(2, 4, [a])]
    queue = [timed(2, 6, limit=50), timed(3, 1, limit=500)]
    fresh = schedule(backends, queue, running=[a], now=NOW, policy=BACKFILL)
    assert fresh.reservations[0].devices == on(1, 0, 1, 2, 3) + on(2, 0, 1)
    other = Reservation(2, NOW + 100, on(1, 0, 1) + on(2, 0, 1, 2, 3))  # as feasible, chosen differently before
    kept = schedule(backends, queue, running=[a], now=NOW, policy=BACKFILL, previous=[other])
    assert kept.reservations[0] == other
    assert given_to(kept) == {3: on(1, 2)}  # job 3 backfills outside the kept plan
    # a plan whose start moved, or whose devices are no longer feasible, is made afresh
    stale = Reservation(2, NOW + 90, other.devices)
    assert schedule(backends, queue, running=[a], now=NOW, policy=BACKFILL, previous=[stale]) == fresh
    # when its time has come, the job starts on its planned devices
    due = schedule([backend(1, 4), backend(2, 4)], queue, now=NOW + 100, policy=BACKFILL, previous=[other])
    assert given_to(due)[2] == other.devices


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="time limit"):
        schedule([backend(1)], [timed(1, 1, limit=0)])
    with pytest.raises(ValueError, match="both queued and running"):
        schedule([backend(1, busy=[0])], [timed(1)], running=[runs(1, on(1, 0))])
    with pytest.raises(ValueError, match="running job ids"):
        schedule([backend(1)], [], running=[runs(1, on(1, 0)), runs(1, on(1, 1))])
    with pytest.raises(ValueError, match="unknown scheduling mode"):
        Policy(mode="fifo")
    with pytest.raises(ValueError, match="backfill_depth"):
        Policy(backfill_depth=-1)


# -- properties ----------------------------------------------------------------------------------------

Scenario = tuple[list[BackendState], list[QueuedJob], list[RunningJob], set[DeviceKey]]


@st.composite
def clusters(draw: st.DrawFn) -> Scenario:
    """Backends of two groups, running jobs with and without limits, a few reserved devices, and a queue."""
    backends: list[BackendState] = []
    running: list[RunningJob] = []
    next_id = 1000
    for bid in range(1, draw(st.integers(1, 4)) + 1):
        size = draw(st.integers(1, 6))
        group = draw(st.integers(0, 1))
        statuses = ["IDLE"] * size
        free = list(range(size))
        while free and draw(st.booleans()):
            take = draw(st.lists(st.sampled_from(free), min_size=1, max_size=len(free), unique=True))
            free = [i for i in free if i not in take]
            kind = draw(st.sampled_from(("job", "job", "job", "unknown")))
            for i in take:
                statuses[i] = "PROCESSING" if kind == "job" else "PREPARING"
            if kind == "job":
                limit = draw(st.one_of(st.none(), st.integers(1, 4000).map(float)))
                started = NOW - draw(st.integers(0, 5000))
                running.append(
                    RunningJob(next_id, "r", next_id, 0, tuple((bid, i) for i in sorted(take)), started, limit, group)
                )
                next_id += 1
        for i in free:
            if draw(st.integers(0, 9)) == 0:
                statuses[i] = "SHUTDOWN"
        backends.append(
            BackendState(
                bid,
                f"n{bid}",
                group,
                draw(st.integers(0, 7)) > 0,
                tuple(DeviceState(bid, i, s) for i, s in enumerate(statuses)),
            )
        )
    all_idle = [(b.id, d.index) for b in backends for d in b.devices if d.status == "IDLE"]
    reserved = set(draw(st.lists(st.sampled_from(all_idle), max_size=2, unique=True))) if all_idle else set()
    ids = [b.id for b in backends]
    queue = [
        QueuedJob(
            id=jid,
            token=f"t{jid}",
            sda_id=draw(st.integers(1, 8)),
            priority=draw(st.integers(-1, 1)),
            request_time=float(draw(st.integers(0, 5))),
            device_count=draw(st.integers(0, 8)),
            backend_group_id=draw(st.integers(0, 1)),
            sda_limit=draw(st.integers(0, 2)),
            allowed_backends=draw(
                st.one_of(st.none(), st.none(), st.frozensets(st.sampled_from([*ids, 99]), max_size=2))
            ),
            time_limit=draw(st.one_of(st.none(), st.integers(1, 4000).map(float))),
        )
        for jid in draw(st.lists(st.integers(1, 60), max_size=12, unique=True))
    ]
    return backends, queue, running, reserved


def _end(limit: float | None) -> float:
    return math.inf if limit is None else NOW + limit


def check_decision(scenario: Scenario, decision: Decision) -> None:
    """What every backfill decision must satisfy: each device once, codes and plans consistent, no delayed plan."""
    backends, queue, running, reserved = scenario
    jobs = {j.id: j for j in queue}
    status = {(b.id, d.index): d.status for b in backends for d in b.devices}
    active = {b.id for b in backends if b.active}
    held = set(reserved) | {d for j in queue for d in j.reserved_devices}
    # when each device is free for planning: its running job's end, or now when idle
    free_at: dict[DeviceKey, float] = {d: NOW for d, s in status.items() if s == "IDLE"}
    for r in running:
        for d in r.devices:
            free_at[d] = max(NOW, r.end_time)
    seen: set[DeviceKey] = set()
    for a in decision.allocations:
        j = jobs[a.job_id]
        assert len(a.devices) == j.device_count
        for d in a.devices:
            assert d not in seen, f"device {d} given twice"
            seen.add(d)
            assert status[d] == "IDLE"
            assert d[0] in active
            assert d not in held
            assert j.allowed_backends is None or d[0] in j.allowed_backends
            free_at[d] = _end(j.time_limit)

    waiting = set(decision.waiting)
    assert set(decision.reason_codes) == waiting
    assert set(decision.expected_start) == waiting
    assert waiting | {a.job_id for a in decision.allocations} == set(jobs)
    for code in decision.reason_codes.values():
        name, other = split_code(code)
        assert name in REASON_CODES
        if other is not None:
            assert other in {r.job_id for r in decision.reservations}

    planned = {r.job_id: r for r in decision.reservations}
    for jid, start in decision.expected_start.items():
        assert (start is not None) == (jid in planned)
        if start is not None:
            assert start == planned[jid].start
            assert start >= NOW
            assert math.isfinite(start)
    booked: dict[DeviceKey, list[tuple[float, float]]] = {}
    for r in decision.reservations:
        j = jobs[r.job_id]
        assert len(r.devices) == j.device_count == len(set(r.devices))
        for d in r.devices:
            # every device is free by the planned start: nothing started now runs past it
            assert free_at.get(d, math.inf) <= r.start, (
                f"job {r.job_id}'s plan at {r.start} needs {d}, busy until {free_at.get(d)}"
            )
            assert d[0] in active
            assert d not in held
            assert j.allowed_backends is None or d[0] in j.allowed_backends
            booked.setdefault(d, []).append((r.start, _end(j.time_limit) - NOW + r.start))
    for spans in booked.values():
        spans.sort()
        for (_, first_end), (second_start, _) in itertools.pairwise(spans):
            assert first_end <= second_start, f"two plans overlap on one device: {spans}"


@PROFILE
@given(clusters())
def test_property_backfill_decisions_are_consistent_and_never_delay_a_plan(scenario: Scenario) -> None:
    backends, queue, running, reserved = scenario
    decision = schedule(backends, queue, reserved=reserved, running=running, now=NOW, policy=BACKFILL)
    check_decision(scenario, decision)


@PROFILE
@given(clusters())
def test_property_every_waiting_job_has_one_code_under_strict_too(scenario: Scenario) -> None:
    backends, queue, running, reserved = scenario
    decision = schedule(backends, queue, reserved=reserved, running=running, now=NOW)
    assert set(decision.reason_codes) == set(decision.waiting) == set(decision.expected_start)
    assert all(v is None for v in decision.expected_start.values())
    for jid, reason in decision.waiting.items():
        code = decision.reason_codes[jid]
        assert code in REASON_CODES
        if reason.startswith("behind job"):
            assert code == "Priority"
        if reason.startswith("waiting for") and "reserved" not in reason:
            assert code == "Resources"


@PROFILE
@given(clusters())
def test_property_strict_ignores_running_jobs_and_now(scenario: Scenario) -> None:
    """The plain call and a strict call with the new inputs decide the same (quotas aside)."""
    backends, queue, running, reserved = scenario
    old = schedule(backends, queue, {}, reserved)
    new = schedule(backends, queue, {}, reserved, running=running, now=NOW, policy=STRICT)
    assert new == old
    assert dict(new.reason_codes) == dict(old.reason_codes)


@PROFILE
@given(clusters(), st.randoms(use_true_random=False))
def test_property_backfill_does_not_depend_on_input_order(scenario: Scenario, rnd: random.Random) -> None:
    backends, queue, running, reserved = scenario
    first = schedule(backends, queue, reserved=reserved, running=running, now=NOW, policy=BACKFILL)
    shuffled = [
        BackendState(b.id, b.host, b.group_id, b.active, tuple(rnd.sample(b.devices, len(b.devices))))
        for b in rnd.sample(backends, len(backends))
    ]
    second = schedule(
        shuffled,
        rnd.sample(queue, len(queue)),
        reserved=set(rnd.sample(sorted(reserved), len(reserved))),
        running=[
            RunningJob(**{**r.__dict__, "devices": tuple(rnd.sample(r.devices, len(r.devices)))})
            for r in rnd.sample(running, len(running))
        ],
        now=NOW,
        policy=BACKFILL,
    )
    assert second == first
    assert dict(second.reason_codes) == dict(first.reason_codes)
    assert dict(second.expected_start) == dict(first.expected_start)


# -- replays: plans that hold ----------------------------------------------------------------------------


@st.composite
def traces(draw: st.DrawFn, exact: bool) -> tuple[Cluster, list[SimJob]]:
    """A tiny cluster and jobs that all arrive at once; exact: each runs to its limit."""
    cluster = Cluster(draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    jobs: list[SimJob] = []
    for jid in range(1, draw(st.integers(1, 12)) + 1):
        gpus = draw(st.integers(1, cluster.gpus))
        limit = float(draw(st.integers(1, 30)) * 10)
        runtime = limit if exact else float(draw(st.integers(1, int(limit))))
        host = draw(st.one_of(st.none(), st.integers(1, cluster.backends))) if gpus <= cluster.per_backend else None
        jobs.append(SimJob(jid, 0.0, gpus, runtime, limit, priority=draw(st.integers(0, 1)), host=host))
    return cluster, jobs


@REPLAY
@given(traces(exact=True))
def test_property_with_exact_limits_and_no_arrivals_no_job_starts_after_its_first_estimate(
    trace: tuple[Cluster, list[SimJob]],
) -> None:
    cluster, jobs = trace
    result = simulate(jobs, cluster, BACKFILL)
    for record in result.records.values():
        assert record.start is not None
        if record.first_estimate is not None:
            assert record.start <= record.first_estimate, record


@REPLAY
@given(traces(exact=True))
def test_property_with_exact_limits_the_head_starts_no_later_than_under_strict(
    trace: tuple[Cluster, list[SimJob]],
) -> None:
    cluster, jobs = trace
    backfill = simulate(jobs, cluster, BACKFILL)
    strict = simulate(jobs, cluster, STRICT)
    heads = [r for r in backfill.records.values() if r.head_estimate is not None]
    if not heads:
        return
    head = min(heads, key=lambda r: r.head_estimate or 0.0)  # the first job the plan had to reserve for
    started_strict = strict.records[head.job.id].start
    assert head.start is not None
    assert started_strict is not None
    assert head.start <= started_strict


@REPLAY
@given(traces(exact=False))
def test_property_jobs_ending_early_never_push_the_head_past_its_plan(trace: tuple[Cluster, list[SimJob]]) -> None:
    cluster, jobs = trace
    result = simulate(jobs, cluster, BACKFILL)
    for record in result.records.values():
        if record.head_estimate is not None:
            assert record.start is not None
            assert record.start <= record.head_estimate, record
