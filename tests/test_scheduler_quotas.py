"""Group GPU quotas with borrowing and reclaim, and fair-share order (``schedule(..., quotas=..., fairshare=...)``).

The property tests run the ``scheduler`` Hypothesis profile of ``tests/test_scheduler_core.py``
(bounded). To search harder:
``HYPOTHESIS_PROFILE=scheduler-long .venv/bin/python -m pytest tests/test_scheduler_quotas.py``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler_core.fairshare import fairshare_factors
from scheduler_core.scheduling import (
    BACKFILL,
    STRICT,
    BackendState,
    Decision,
    DeviceKey,
    DeviceState,
    Policy,
    QueuedJob,
    Quota,
    RunningJob,
    charged_group,
    queue_order,
    schedule,
)
from tests.test_scheduler_core import PROFILE, backend, given_to, on

NOW = 50_000.0
A, B, C = 10, 20, 30  # user groups
HOUR = 3600.0


def qjob(
    jid: int, count: int = 1, group: int | None = A, *, priority: int = 0, at: float | None = None, **kw: object
) -> QueuedJob:
    """A queued job of its own SDA, charged to ``group``."""
    return QueuedJob(
        **{  # type: ignore[arg-type]
            "id": jid,
            "token": f"tok{jid}",
            "sda_id": jid,
            "priority": priority,
            "request_time": float(jid) if at is None else at,
            "device_count": count,
            "backend_group_id": 0,
            "charged_group": group,
            **kw,
        }
    )


def rjob(
    jid: int,
    devices: Sequence[DeviceKey],
    group: int | None = A,
    *,
    borrowed: bool = False,
    started: float = NOW - HOUR,
    priority: int = 0,
    **kw: object,
) -> RunningJob:
    """A running job charged to ``group``."""
    return RunningJob(
        **{  # type: ignore[arg-type]
            "id": jid,
            "token": f"tok{jid}",
            "sda_id": jid,
            "priority": priority,
            "devices": tuple(devices),
            "start_time": started,
            "charged_group": group,
            "borrowed": borrowed,
            **kw,
        }
    )


def cluster_of(size: int, running: Sequence[RunningJob]) -> list[BackendState]:
    """One backend whose devices held by ``running`` are PROCESSING."""
    return [backend(1, size, busy=sorted(i for r in running for _, i in r.devices))]


def apply(
    decision: Decision, running: Sequence[RunningJob], queue: Sequence[QueuedJob]
) -> tuple[list[RunningJob], list[QueuedJob]]:
    """What the state does with a decision: allocations run, victims are marked as being preempted."""
    jobs = {j.id: j for j in queue}
    victims = {p.victim_id: p.for_job for p in decision.preemptions}
    after = [
        RunningJob(**{**r.__dict__, "preempting": True, "preempted_for": victims[r.id]}) if r.id in victims else r
        for r in running
    ]
    for a in decision.allocations:
        j = jobs[a.job_id]
        after.append(
            RunningJob(
                j.id,
                j.token,
                j.sda_id,
                j.priority,
                a.devices,
                NOW,
                j.time_limit,
                j.backend_group_id,
                j.charged_group,
                a.borrowed,
            )
        )
    started = {a.job_id for a in decision.allocations}
    return after, [j for j in queue if j.id not in started]


QUOTAS = {(A, 0): Quota(4, 4), (B, 0): Quota(4, 0)}


# -- the issue's scenario ----------------------------------------------------------------------------


def test_reclaim_scenario_of_the_issue() -> None:
    # A runs 8 one-GPU jobs: the first 4 within its quota, the 4 newest borrowed.
    running = [rjob(100 + k, on(1, k), A, borrowed=k >= 4, started=NOW - HOUR + k * 60) for k in range(8)]
    queue = [qjob(1, 1, B), qjob(2, 1, B)]
    for policy in (STRICT, BACKFILL):
        decision = schedule(cluster_of(8, running), queue, running=running, now=NOW, policy=policy, quotas=QUOTAS)
        assert [(p.victim_id, p.for_job) for p in decision.preemptions] == [(107, 1), (106, 2)]  # the newest two
        assert decision.reason_codes == {1: "Preempting", 2: "Preempting"}
        assert decision.expected_start == {1: NOW, 2: NOW}
        assert decision.allocations == ()
        assert "user group 20" in decision.preemptions[0].reason

        # The next pass, with nothing changed but the victims being stopped, preempts nothing more.
        after, left = apply(decision, running, queue)
        again = schedule(cluster_of(8, after), left, running=after, now=NOW + 5, policy=policy, quotas=QUOTAS)
        assert again.preemptions == ()
        assert again.reason_codes == {1: "Preempting", 2: "Preempting"}
        assert "borrowed job(s) 107 to stop" in again.waiting[1]

        # The victims are gone: B's jobs get exactly their devices.
        gone = [r for r in after if r.id not in (106, 107)]
        done = schedule(
            cluster_of(8, gone),
            left,
            running=gone,
            now=NOW + 30,
            policy=policy,
            quotas=QUOTAS,
            previous=again.reservations,
        )
        assert given_to(done) == {1: on(1, 7), 2: on(1, 6)}
        assert done.borrowed == ()


def test_a_job_that_started_within_its_quota_is_never_preempted() -> None:
    running = [
        rjob(100 + k, on(1, k), A, borrowed=False) for k in range(8)
    ]  # all in quota (quota raised, then lowered)
    decision = schedule(
        cluster_of(8, running), [qjob(1, 1, B)], running=running, now=NOW, policy=BACKFILL, quotas=QUOTAS
    )
    assert decision.preemptions == ()
    assert decision.reason_codes[1] == "Resources"


def test_young_borrowed_jobs_are_not_preempted() -> None:
    running = [rjob(100 + k, on(1, k), A, borrowed=k >= 4, started=NOW - 60) for k in range(8)]
    decision = schedule(
        cluster_of(8, running), [qjob(1, 1, B)], running=running, now=NOW, policy=BACKFILL, quotas=QUOTAS
    )
    assert decision.preemptions == ()
    shorter = Policy(preempt_min_runtime=30)
    decision = schedule(
        cluster_of(8, running), [qjob(1, 1, B)], running=running, now=NOW, policy=shorter, quotas=QUOTAS
    )
    assert [p.victim_id for p in decision.preemptions] == [107]


def test_lowest_priority_goes_first_and_as_few_as_free_enough() -> None:
    running = [
        rjob(100, on(1, 0, 1, 2, 3), A),  # in quota
        rjob(101, on(1, 4, 5), A, borrowed=True, priority=5, started=NOW - 3 * HOUR),
        rjob(102, on(1, 6), A, borrowed=True, priority=1, started=NOW - 2 * HOUR),
        rjob(103, on(1, 7), A, borrowed=True, priority=1, started=NOW - 1 * HOUR),
    ]
    one = schedule(cluster_of(8, running), [qjob(1, 1, B)], running=running, now=NOW, policy=BACKFILL, quotas=QUOTAS)
    assert [p.victim_id for p in one.preemptions] == [103]  # lowest priority, newest start
    two = schedule(cluster_of(8, running), [qjob(1, 2, B)], running=running, now=NOW, policy=BACKFILL, quotas=QUOTAS)
    assert sorted(p.victim_id for p in two.preemptions) == [102, 103]
    # 3 devices: the greedy pick 103, 102, 101 frees 4; dropping 102 or 103 still leaves 3... as few as needed
    three = schedule(cluster_of(8, running), [qjob(1, 3, B)], running=running, now=NOW, policy=BACKFILL, quotas=QUOTAS)
    assert sorted(p.victim_id for p in three.preemptions) in ([101, 103], [101, 102])
    assert len(three.preemptions) == 2


def test_a_group_is_not_reclaimed_from_below_its_nominal_quota() -> None:
    # A holds 5 with nominal 4: only 1 device of it is borrowed, whatever the flags say.
    running = [rjob(100 + k, on(1, k), A, borrowed=k >= 2) for k in range(5)] + [rjob(200, on(1, 5, 6, 7), C)]
    decision = schedule(
        cluster_of(8, running),
        [qjob(1, 2, B)],
        running=running,
        now=NOW,
        policy=BACKFILL,
        quotas={**QUOTAS, (C, 0): Quota(3)},
    )
    assert decision.preemptions == ()  # 2 needed, only 1 borrowed device can be taken back
    one = schedule(cluster_of(8, running), [qjob(1, 1, B)], running=running, now=NOW, policy=BACKFILL, quotas=QUOTAS)
    assert [p.victim_id for p in one.preemptions] == [104]


def test_borrowing_starts_beyond_nominal_and_stops_at_nominal_plus_borrow() -> None:
    decision = schedule([backend(1, 8)], [qjob(j, 2, A) for j in range(1, 6)], policy=BACKFILL, quotas=QUOTAS)
    assert [(a.job_id, a.borrowed) for a in decision.allocations] == [(1, False), (2, False), (3, True), (4, True)]
    assert [a.job_id for a in decision.borrowed] == [3, 4]
    assert decision.reason_codes == {5: "BorrowingLimitReached"}
    assert decision.waiting[5] == (
        "user group 10 uses 8 of its quota of 4 + 4 borrowed device(s) on backend group 0; this job needs 2 more"
    )
    no_borrow = schedule([backend(1, 8)], [qjob(j, 2, B) for j in range(1, 4)], policy=BACKFILL, quotas=QUOTAS)
    assert [a.job_id for a in no_borrow.allocations] == [1, 2]
    assert no_borrow.reason_codes == {3: "QuotaExceeded"}
    assert (
        no_borrow.waiting[3]
        == "user group 20 uses 4 of its quota of 4 device(s) on backend group 0; this job needs 2 more"
    )


def test_a_job_held_back_by_its_quota_holds_no_one_up() -> None:
    running = [rjob(100, on(1, 0, 1, 2, 3), B)]
    queue = [qjob(1, 1, B, priority=9), qjob(2, 4, None)]
    decision = schedule(cluster_of(8, running), queue, running=running, policy=STRICT, quotas=QUOTAS)
    assert decision.reason_codes == {1: "QuotaExceeded"}
    assert given_to(decision) == {2: on(1, 4, 5, 6, 7)}


def test_jobs_without_a_charged_group_or_quota_are_unlimited() -> None:
    decision = schedule([backend(1, 8)], [qjob(1, 8, None), qjob(2, 1, C)], policy=BACKFILL, quotas=QUOTAS)
    assert given_to(decision) == {1: on(1, *range(8))}
    assert decision.allocations[0].borrowed is False


def test_no_borrowed_work_starts_where_devices_are_being_reclaimed() -> None:
    # 1 device idle. A's high-priority job would borrow it, but B's job (within quota) needs 2: reclaiming
    # one borrowed device and taking the idle one is cheaper than letting A take it and reclaiming two.
    running = [rjob(100 + k, on(1, k), A, borrowed=k >= 4) for k in range(7)]
    queue = [qjob(1, 1, A, priority=9), qjob(2, 2, B)]
    decision = schedule(cluster_of(8, running), queue, running=running, now=NOW, policy=BACKFILL, quotas=QUOTAS)
    assert decision.allocations == ()
    assert decision.reason_codes == {1: "Resources", 2: "Preempting"}
    assert "reclaiming devices" in decision.waiting[1]
    assert [p.victim_id for p in decision.preemptions] == [106]
    assert decision.reservations[0].devices == on(1, 6, 7)


def test_charged_group_is_the_lowest_id_group_with_a_quota_on_the_backend_group() -> None:
    quotas = {(B, 0): Quota(1), (C, 0): Quota(1), (A, 1): Quota(1)}
    assert charged_group([C, A, B], 0, quotas) == B
    assert charged_group([C, A, B], 1, quotas) == A
    assert charged_group([C, A, B], 2, quotas) is None
    assert charged_group([], 0, quotas) is None
    with pytest.raises(ValueError, match="nominal and borrow"):
        Quota(-1)


# -- fair share ----------------------------------------------------------------------------------------


@PROFILE
@given(st.floats(0, 1e6), st.floats(0, 1e6), st.integers(1, 50), st.integers(51, 100), st.booleans())
def test_property_the_group_that_used_less_starts_first_every_time(
    first_at: float, second_at: float, low_id: int, high_id: int, swap: bool
) -> None:
    """Equal priority, equal jobs; group B has 100 decayed GPU-hours, group A none: A's job goes first."""
    factors = fairshare_factors({A: 0.0, B: 100 * HOUR}, {A: 1.0, B: 1.0})
    busy_id, idle_id = (low_id, high_id) if swap else (high_id, low_id)
    queue = [
        qjob(busy_id, 8, None, at=first_at, fairshare_group=B),
        qjob(idle_id, 8, None, at=second_at, fairshare_group=A),
    ]
    decision = schedule([backend(1, 8)], queue, policy=BACKFILL, fairshare=factors)
    assert given_to(decision) == {idle_id: on(1, *range(8))}
    assert [j.id for j in queue_order(queue, factors)] == [idle_id, busy_id]


def test_priority_stays_dominant_over_fair_share() -> None:
    factors = {A: 1.0, B: 0.01}
    queue = [
        qjob(1, group=A, at=5.0),
        qjob(2, group=B, priority=1, at=9.0),
        qjob(3, group=B, at=0.0),
        qjob(4, group=None, at=1.0),
    ]
    # priority first; then the factor (A 1.0, no group 0.5, B 0.01); then request time
    assert [j.id for j in queue_order(queue, factors)] == [2, 1, 4, 3]
    assert [j.id for j in queue_order(queue)] == [2, 3, 4, 1]  # without fair share: as before


# -- properties ----------------------------------------------------------------------------------------

Scenario = tuple[list[BackendState], list[QueuedJob], list[RunningJob], dict[tuple[int, int], Quota]]


@st.composite
def quota_clusters(draw: st.DrawFn) -> Scenario:
    """One or two backend groups, running jobs of three user groups (some borrowed, some being preempted), quotas."""
    groups = (A, B, C, None)
    backends: list[BackendState] = []
    running: list[RunningJob] = []
    next_id = 1000
    for bid in range(1, draw(st.integers(1, 3)) + 1):
        size = draw(st.integers(1, 6))
        bgroup = draw(st.integers(0, 1))
        statuses = ["IDLE"] * size
        free = list(range(size))
        while free and draw(st.integers(0, 3)):
            take = draw(st.lists(st.sampled_from(free), min_size=1, max_size=min(3, len(free)), unique=True))
            free = [i for i in free if i not in take]
            for i in take:
                statuses[i] = "PROCESSING"
            group = draw(st.sampled_from(groups))
            running.append(
                RunningJob(
                    next_id,
                    "r",
                    next_id,
                    draw(st.integers(-1, 1)),
                    tuple((bid, i) for i in sorted(take)),
                    NOW - draw(st.sampled_from((10.0, 400.0, 4000.0))),
                    draw(st.one_of(st.none(), st.sampled_from((600.0, 7200.0)))),
                    bgroup,
                    group,
                    group is not None and draw(st.booleans()),
                )
            )
            next_id += 1
        backends.append(
            BackendState(bid, f"n{bid}", bgroup, True, tuple(DeviceState(bid, i, s) for i, s in enumerate(statuses)))
        )
    quotas = {
        (g, bg): Quota(draw(st.integers(0, 6)), draw(st.integers(0, 4)))
        for g in (A, B, C)
        for bg in (0, 1)
        if draw(st.integers(0, 3))
    }
    queue = [
        QueuedJob(
            id=jid,
            token=f"t{jid}",
            sda_id=jid,
            priority=draw(st.integers(-1, 1)),
            request_time=float(draw(st.integers(0, 5))),
            device_count=draw(st.integers(1, 5)),
            backend_group_id=draw(st.integers(0, 1)),
            sda_limit=0,
            time_limit=draw(st.one_of(st.none(), st.sampled_from((300.0, 3000.0)))),
            charged_group=draw(st.sampled_from(groups)),
        )
        for jid in draw(st.lists(st.integers(1, 40), max_size=8, unique=True))
    ]
    # a few running jobs are already being preempted for a queued job
    if queue:
        marked = []
        for r in running:
            if r.borrowed and draw(st.integers(0, 4)) == 0:
                r = RunningJob(**{**r.__dict__, "preempting": True, "preempted_for": draw(st.sampled_from(queue)).id})
            marked.append(r)
        running = marked
    return backends, queue, running, quotas


def _usage(running: Sequence[RunningJob]) -> dict[tuple[int, int], int]:
    used: dict[tuple[int, int], int] = {}
    for r in running:
        if r.charged_group is not None:
            key = (r.charged_group, r.backend_group_id)
            used[key] = used.get(key, 0) + len(r.devices)
    return used


def check_quotas(scenario: Scenario, decision: Decision, policy: Policy) -> None:
    backends, queue, running, quotas = scenario
    jobs = {j.id: j for j in queue}
    by_id = {r.id: r for r in running}
    used = _usage(running)
    # devices: once each, only idle ones
    status = {(b.id, d.index): d.status for b in backends for d in b.devices}
    seen: set[DeviceKey] = set()
    for a in decision.allocations:
        for d in a.devices:
            assert status[d] == "IDLE"
            assert d not in seen
            seen.add(d)
    # quotas: work within quota is served first and stays within nominal; borrowed work comes after,
    # each start taking its group beyond nominal but not beyond nominal + borrow
    for sweep in (False, True):
        for a in decision.allocations:
            j = jobs[a.job_id]
            quota = quotas.get((j.charged_group, j.backend_group_id)) if j.charged_group is not None else None
            if quota is None:
                assert not a.borrowed
                continue
            if a.borrowed != sweep:
                continue
            key = (j.charged_group, j.backend_group_id)
            used[key] = used.get(key, 0) + j.device_count  # type: ignore[index]
            assert used[key] <= quota.nominal + quota.borrow  # type: ignore[index]
            assert a.borrowed == (used[key] > quota.nominal)  # type: ignore[index]
    # preemptions: each victim once, borrowed, of another group, old enough, not already stopping
    victims = [p.victim_id for p in decision.preemptions]
    assert len(victims) == len(set(victims))
    assert not set(victims) & {a.job_id for a in decision.allocations}
    for p in decision.preemptions:
        victim, beneficiary = by_id[p.victim_id], jobs[p.for_job]
        assert victim.borrowed
        assert not victim.preempting
        assert victim.charged_group != beneficiary.charged_group
        assert victim.backend_group_id == beneficiary.backend_group_id
        assert NOW - victim.start_time >= policy.preempt_min_runtime
        assert decision.reason_codes[p.for_job] == "Preempting"
        quota = quotas[(beneficiary.charged_group, beneficiary.backend_group_id)]  # type: ignore[index]
        assert quota.nominal >= beneficiary.device_count  # only work within its nominal quota reclaims
        assert "\n" not in p.reason
    # no borrowed work starts in a backend group where anything waits on reclaimed devices
    reclaiming = {jobs[j].backend_group_id for j, code in decision.reason_codes.items() if code == "Preempting"}
    for a in decision.borrowed:
        assert jobs[a.job_id].backend_group_id not in reclaiming


@PROFILE
@given(quota_clusters(), st.sampled_from((STRICT, BACKFILL)))
def test_property_quotas_and_reclaims_keep_their_rules(scenario: Scenario, policy: Policy) -> None:
    backends, queue, running, quotas = scenario
    decision = schedule(backends, queue, running=running, now=NOW, policy=policy, quotas=quotas)
    check_quotas(scenario, decision, policy)


@PROFILE
@given(quota_clusters(), st.sampled_from((STRICT, BACKFILL)))
def test_property_a_second_pass_with_no_change_preempts_nothing(scenario: Scenario, policy: Policy) -> None:
    backends, queue, running, quotas = scenario
    first = schedule(backends, queue, running=running, now=NOW, policy=policy, quotas=quotas)
    after, left = apply(first, running, queue)
    busy = {d for r in after for d in r.devices}
    later = [
        BackendState(
            b.id,
            b.host,
            b.group_id,
            b.active,
            tuple(DeviceState(b.id, d.index, "PROCESSING" if (b.id, d.index) in busy else d.status) for d in b.devices),
        )
        for b in backends
    ]
    second = schedule(later, left, running=after, now=NOW, policy=policy, quotas=quotas, previous=first.reservations)
    assert second.preemptions == ()
    assert second.allocations == ()  # nothing new became free
    for jid in {p.for_job for p in first.preemptions}:
        assert second.reason_codes[jid] == "Preempting"


@PROFILE
@given(quota_clusters(), st.randoms(use_true_random=False))
def test_property_quota_decisions_do_not_depend_on_input_order(scenario: Scenario, rnd: random.Random) -> None:
    backends, queue, running, quotas = scenario
    first = schedule(backends, queue, running=running, now=NOW, policy=BACKFILL, quotas=quotas)
    second = schedule(
        rnd.sample(backends, len(backends)),
        rnd.sample(queue, len(queue)),
        running=rnd.sample(running, len(running)),
        now=NOW,
        policy=BACKFILL,
        quotas=dict(rnd.sample(sorted(quotas.items()), len(quotas))),
    )
    assert second == first
    assert dict(second.reason_codes) == dict(first.reason_codes)


@PROFILE
@given(quota_clusters())
def test_property_without_quotas_nothing_is_borrowed_or_preempted(scenario: Scenario) -> None:
    backends, queue, running, _ = scenario
    decision = schedule(backends, queue, running=running, now=NOW, policy=BACKFILL)
    assert decision.preemptions == ()
    assert decision.borrowed == ()
    assert not {"QuotaExceeded", "BorrowingLimitReached"} & set(decision.reason_codes.values())


def test_several_reclaims_in_one_pass_never_push_a_group_below_its_nominal_quota() -> None:
    # A holds 6 with nominal 4: 2 devices are borrowed, however many of B's jobs wait.
    running = [rjob(100 + k, on(1, k), A, borrowed=k >= 2, started=NOW - HOUR + k) for k in range(6)]
    queue = [qjob(j, 1, B) for j in range(1, 5)]
    decision = schedule(cluster_of(6, running), queue, running=running, now=NOW, policy=BACKFILL, quotas=QUOTAS)
    assert [p.victim_id for p in decision.preemptions] == [105, 104]
    # job 3 cannot reclaim, and its start cannot be planned (no limits): it holds job 4 up
    assert decision.reason_codes == {1: "Preempting", 2: "Preempting", 3: "Resources", 4: "Priority"}
