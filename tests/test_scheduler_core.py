"""The pure scheduler (scheduler_core): who gets which devices, why the others wait, and access rules.

The property tests run a bounded number of examples so the file stays fast. To search harder, run
``HYPOTHESIS_PROFILE=scheduler-long /tmp/venv/bin/python -m pytest tests/test_scheduler_core.py``
(5,000 examples per property; ``scheduler`` is the default profile, 200 examples).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler_core.access import allowed_models, may_use, sda_quota_left
from scheduler_core.scheduling import (
    Allocation,
    BackendState,
    Decision,
    DeviceKey,
    DeviceState,
    QueuedJob,
    place,
    queue_order,
    reserve,
    schedule,
)
from state.records import ModelGroup, SDAModel, UserGroup

settings.register_profile("scheduler", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "scheduler-long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "scheduler"))

STATUSES = ("SHUTDOWN", "IDLE", "PREPARING", "PROCESSING", "CLEANING")


# -- building inputs -----------------------------------------------------------------------------


def backend(
    bid: int,
    size: int = 8,
    *,
    group: int = 0,
    active: bool = True,
    busy: Sequence[int] = (),
    shutdown: Sequence[int] = (),
) -> BackendState:
    """A backend of ``size`` devices, IDLE except the ``busy`` (PROCESSING) and ``shutdown`` indexes."""

    def status(i: int) -> str:
        if i in shutdown:
            return "SHUTDOWN"
        return "PROCESSING" if i in busy else "IDLE"

    return BackendState(bid, f"node{bid}", group, active, tuple(DeviceState(bid, i, status(i)) for i in range(size)))


def job(
    jid: int,
    count: int = 1,
    *,
    priority: int = 0,
    at: float | None = None,
    group: int = 0,
    sda: int | None = None,
    limit: int = 1,
    reserved: Sequence[DeviceKey] = (),
    allowed: set[int] | frozenset[int] | None = None,
) -> QueuedJob:
    """A queued job; its SDA defaults to its own id so jobs do not share an SDA unless told to."""
    return QueuedJob(
        id=jid,
        token=f"tok{jid}",
        sda_id=jid if sda is None else sda,
        priority=priority,
        request_time=float(jid) if at is None else at,
        device_count=count,
        backend_group_id=group,
        sda_limit=limit,
        reserved_devices=tuple(reserved),
        allowed_backends=None if allowed is None else frozenset(allowed),
    )


def given_to(decision: Decision) -> dict[int, tuple[DeviceKey, ...]]:
    return {a.job_id: a.devices for a in decision.allocations}


def on(bid: int, *indexes: int) -> tuple[DeviceKey, ...]:
    return tuple((bid, i) for i in indexes)


# -- ordering ------------------------------------------------------------------------------------


def test_queue_order_is_priority_then_request_time_then_id() -> None:
    jobs = [
        job(1, priority=0, at=5.0),
        job(2, priority=5, at=9.0),
        job(3, priority=0, at=1.0),
        job(4, priority=-3, at=0.0),
        job(5, priority=0, at=1.0),
    ]
    assert [j.id for j in queue_order(jobs)] == [2, 3, 5, 1, 4]


def test_a_later_higher_priority_job_gets_the_free_device_first() -> None:
    decision = schedule([backend(1, 2, busy=[0])], [job(1, priority=0, at=1.0), job(2, priority=10, at=2.0)])
    assert given_to(decision) == {2: on(1, 1)}
    assert "behind job 2" not in decision.waiting[1]
    assert "waiting for 1 device(s)" in decision.waiting[1]


def test_equal_priority_earlier_request_wins_then_lower_id() -> None:
    earlier = schedule([backend(1, 1)], [job(7, at=2.0), job(9, at=1.0)])
    assert given_to(earlier) == {9: on(1, 0)}
    tie = schedule([backend(1, 1)], [job(9, at=1.0), job(7, at=1.0)])
    assert given_to(tie) == {7: on(1, 0)}


def test_allocations_come_in_queue_order() -> None:
    decision = schedule([backend(1, 8)], [job(1, 1, priority=1), job(2, 2, priority=3), job(3, 1, priority=2)])
    assert [a.job_id for a in decision.allocations] == [2, 3, 1]


# -- which devices are eligible --------------------------------------------------------------------


def test_only_idle_devices_are_handed_out() -> None:
    devices = tuple(DeviceState(1, i, s) for i, s in enumerate(STATUSES))
    decision = schedule([BackendState(1, "n1", 0, True, devices)], [job(1), job(2)])
    assert given_to(decision) == {1: on(1, 1)}  # index 1 is the only IDLE one
    assert decision.waiting[2] == "waiting for 1 device(s) on backend group 0: 0 idle"


def test_devices_of_a_shut_down_backend_are_never_used() -> None:
    decision = schedule([backend(1, 8, active=False), backend(2, 1)], [job(1), job(2)])
    assert given_to(decision) == {1: on(2, 0)}
    assert 2 in decision.waiting


def test_jobs_only_get_devices_of_their_backend_group() -> None:
    backends = [backend(1, 4, group=0), backend(2, 4, group=5)]
    decision = schedule(backends, [job(1, 2, group=5), job(2, 2, group=0), job(3, 1, group=9)])
    assert given_to(decision) == {1: on(2, 0, 1), 2: on(1, 0, 1)}
    assert decision.waiting[3] == "needs 1 device(s) but backend group 9 has 0 usable"


def test_shut_down_devices_do_not_count_as_usable() -> None:
    # 4 devices, 2 of them SHUTDOWN: a 3-device job can never fit, so it waits without holding anyone up.
    decision = schedule([backend(1, 4, shutdown=[0, 1])], [job(1, 3, priority=9), job(2, 2)])
    assert decision.waiting[1] == "needs 3 device(s) but backend group 0 has 2 usable"
    assert given_to(decision) == {2: on(1, 2, 3)}


# -- packing ---------------------------------------------------------------------------------------


def test_a_job_goes_to_the_best_fitting_backend_on_its_lowest_indexes() -> None:
    backends = [backend(1, 8, busy=[0, 1, 2]), backend(2, 8, busy=[0, 1, 2, 3, 5]), backend(3, 8, busy=[1])]
    # free: backend 1 has 5, backend 2 has 3 (4, 6, 7), backend 3 has 7; a 3-device job fits best on 2.
    assert given_to(schedule(backends, [job(1, 3)])) == {1: on(2, 4, 6, 7)}
    # a 4-device job no longer fits on 2: backend 1 (5 free) beats backend 3 (7 free).
    assert given_to(schedule(backends, [job(1, 4)])) == {1: on(1, 3, 4, 5, 6)}


def test_best_fit_ties_go_to_the_lowest_backend_id() -> None:
    backends = [backend(4, 4), backend(2, 4), backend(3, 4)]
    assert given_to(schedule(backends, [job(1, 2)])) == {1: on(2, 0, 1)}


def test_a_job_larger_than_a_backend_takes_whole_backends_fully_free_first() -> None:
    backends = [backend(1, 8, busy=[0, 1]), backend(2, 8), backend(3, 8)]
    # 12 devices: whole backend 2 (fully free, lowest id), then 4 more on the best fit: backend 1 (6 free).
    decision = schedule(backends, [job(1, 12)])
    assert given_to(decision) == {1: on(1, 2, 3, 4, 5) + on(2, *range(8))}


def test_a_fully_free_backend_is_taken_whole_before_an_equally_free_partly_used_one() -> None:
    # both have 6 free; backend 2 is fully free (2 of its devices are shut down), backend 1 runs a job.
    backends = [backend(1, 8, busy=[0, 1]), backend(2, 8, shutdown=[0, 1])]
    assert place({1: range(2, 8), 2: range(2, 8)}, 10, {1: 8, 2: 6}) == on(1, 2, 3, 4, 5) + on(2, *range(2, 8))
    assert given_to(schedule(backends, [job(1, 10)])) == {1: on(1, 2, 3, 4, 5) + on(2, *range(2, 8))}


def test_place_refuses_too_few_and_empty_requests() -> None:
    assert place({1: [0, 1]}, 3, {1: 2}) is None
    with pytest.raises(ValueError, match="at least 1"):
        place({1: [0]}, 0, {1: 1})


def test_a_job_of_zero_devices_waits_with_a_reason() -> None:
    decision = schedule([backend(1, 2)], [job(1, 0), job(2, 1)])
    assert decision.waiting[1] == "asks for 0 device(s); a job needs at least 1"
    assert given_to(decision) == {2: on(1, 0)}


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="job ids"):
        schedule([backend(1)], [job(1), job(1)])
    with pytest.raises(ValueError, match="backend ids"):
        schedule([backend(1), backend(1)], [job(1)])


# -- reserved SDAs ---------------------------------------------------------------------------------


def test_a_reserved_sda_job_runs_on_exactly_its_reserved_devices_at_once() -> None:
    backends = [backend(1, 8)]
    mine = on(1, 5, 6)
    # an ordinary job ahead of it that cannot fit does not hold it up
    decision = schedule(backends, [job(1, 8, priority=9), job(2, 2, reserved=mine)], reserved=mine)
    assert given_to(decision) == {2: mine}
    assert decision.waiting[1] == "needs 8 device(s) but backend group 0 has 6 usable"


def test_ordinary_jobs_never_get_reserved_devices() -> None:
    held = on(1, 0, 1, 2)
    decision = schedule([backend(1, 4)], [job(1, 1), job(2, 1)], reserved=held)
    assert given_to(decision) == {1: on(1, 3)}
    assert decision.waiting[2] == "waiting for 1 device(s) on backend group 0: 0 idle"
    # devices named by a queued reserved job count as reserved even when not passed in ``reserved``
    decision = schedule([backend(1, 2)], [job(1, 1, reserved=on(1, 0), sda=50, limit=1), job(2, 2)])
    assert given_to(decision) == {1: on(1, 0)}
    assert decision.waiting[2] == "needs 2 device(s) but backend group 0 has 1 usable"


def test_a_reserved_job_waits_for_its_own_devices_without_blocking_others() -> None:
    mine = on(1, 0, 1)
    backends = [backend(1, 4, busy=[1])]
    decision = schedule(backends, [job(1, 2, priority=5, reserved=mine), job(2, 2)], reserved=mine)
    assert decision.waiting[1] == "waiting for the 2 reserved device(s) of SDA 1: 1 idle"
    assert given_to(decision) == {2: on(1, 2, 3)}


def test_a_reserved_job_must_ask_for_exactly_its_reservation() -> None:
    decision = schedule([backend(1, 4)], [job(1, 3, reserved=on(1, 0, 1))])
    assert decision.waiting[1] == "asks for 3 device(s) but SDA 1 reserves 2"


def test_two_duplicable_jobs_of_one_reserved_sda_cannot_share_its_devices() -> None:
    mine = on(1, 0, 1)
    decision = schedule(
        [backend(1, 4)], [job(1, 2, sda=3, limit=0, reserved=mine), job(2, 2, sda=3, limit=0, reserved=mine)]
    )
    assert given_to(decision) == {1: mine}
    assert decision.waiting[2] == "waiting for the 2 reserved device(s) of SDA 3: 0 idle"


def test_a_reserved_job_launched_on_another_host_waits_with_a_reason() -> None:
    mine = on(1, 0)
    decision = schedule([backend(1, 2), backend(2, 2)], [job(1, 1, reserved=mine, allowed={2})], reserved=mine)
    assert decision.waiting[1] == "SDA 1 reserves devices on backend(s) 1, which its host cannot use"
    ok = schedule([backend(1, 2), backend(2, 2)], [job(1, 1, reserved=mine, allowed={1})], reserved=mine)
    assert given_to(ok) == {1: mine}


def test_reserve_packs_idle_devices_of_the_group_and_skips_held_ones() -> None:
    backends = [backend(1, 8, busy=[0]), backend(2, 4), backend(3, 8, group=1)]
    assert reserve(backends, 4, 0) == on(2, 0, 1, 2, 3)  # best fit: backend 2 has exactly 4
    assert reserve(backends, 4, 0, reserved=on(2, 0)) == on(1, 1, 2, 3, 4)
    assert reserve(backends, 8, 1) == on(3, *range(8))
    assert reserve(backends, 9, 1) is None
    assert reserve(backends, 1, 7) is None  # a group without backends
    with pytest.raises(ValueError, match="at least 1"):
        reserve(backends, 0, 0)


# -- one process per SDA, duplicable tokens ---------------------------------------------------------


def test_one_process_per_sda_by_default() -> None:
    decision = schedule([backend(1, 8)], [job(1, sda=4), job(2, sda=4), job(3, sda=5)])
    assert given_to(decision) == {1: on(1, 0), 3: on(1, 1)}
    assert decision.waiting[2] == "SDA 4 already runs 1 job (one process per SDA)"
    busy = schedule([backend(1, 8)], [job(1, sda=4)], active_per_sda={4: 1})
    assert busy.allocations == ()
    assert busy.waiting[1] == "SDA 4 already runs 1 job (one process per SDA)"


def test_a_duplicable_token_runs_up_to_its_limit() -> None:
    jobs = [job(i, sda=4, limit=3) for i in range(1, 6)]
    decision = schedule([backend(1, 8)], jobs, active_per_sda={4: 1})
    assert [a.job_id for a in decision.allocations] == [1, 2]
    assert decision.waiting[3] == "SDA 4 already runs 3 jobs (duplicable limit 3)"


def test_an_unlimited_duplicable_token_runs_as_many_as_fit() -> None:
    decision = schedule([backend(1, 8)], [job(i, 2, sda=4, limit=0) for i in range(1, 6)], active_per_sda={4: 7})
    assert [a.job_id for a in decision.allocations] == [1, 2, 3, 4]
    assert decision.waiting[5] == "waiting for 2 device(s) on backend group 0: 0 idle"


def test_a_job_held_by_its_sda_limit_does_not_block_later_jobs() -> None:
    decision = schedule([backend(1, 8)], [job(1, 8, priority=9, sda=4)], active_per_sda={4: 1})
    assert 1 in decision.waiting
    both = schedule([backend(1, 8)], [job(1, 8, priority=9, sda=4), job(2, 1)], active_per_sda={4: 1})
    assert given_to(both) == {2: on(1, 0)}


# -- strict priority, never-fit jobs -----------------------------------------------------------------


def test_a_job_that_can_never_fit_does_not_block_the_queue() -> None:
    decision = schedule([backend(1, 8)], [job(1, 16, priority=9), job(2, 1)])
    assert decision.waiting[1] == "needs 16 device(s) but backend group 0 has 8 usable"
    assert given_to(decision) == {2: on(1, 0)}


def test_a_waiting_head_job_blocks_smaller_later_jobs_of_its_group_only() -> None:
    backends = [backend(1, 8, busy=[0, 1, 2, 3]), backend(2, 8, group=1)]
    decision = schedule(backends, [job(1, 8, priority=5), job(2, 1), job(3, 1, group=1)])
    assert decision.waiting[1] == "waiting for 8 device(s) on backend group 0: 4 idle"
    assert decision.waiting[2] == "behind job 1 (priority 5) in backend group 0"
    assert given_to(decision) == {3: on(2, 0)}


# -- allowed backends ---------------------------------------------------------------------------------


def test_a_job_limited_to_one_backend_gets_devices_only_there() -> None:
    backends = [backend(1, 2), backend(2, 8)]
    decision = schedule(backends, [job(1, 2, allowed={2})])
    assert given_to(decision) == {1: on(2, 0, 1)}  # backend 1 would be the best fit
    wide = schedule(backends, [job(1, 10, allowed={1, 2})])
    assert given_to(wide) == {1: on(1, 0, 1) + on(2, *range(8))}


def test_a_job_whose_host_is_not_a_backend_waits_and_blocks_no_one() -> None:
    decision = schedule([backend(1, 2)], [job(1, 1, priority=9, allowed=set()), job(2, 1)])
    assert decision.waiting[1] == "its host is not a registered backend, so no device of backend group 0 can run it"
    assert given_to(decision) == {2: on(1, 0)}


def test_a_job_whose_backend_is_shut_down_or_in_another_group_waits() -> None:
    backends = [backend(1, 2, active=False), backend(2, 2, group=1), backend(3, 2)]
    decision = schedule(backends, [job(1, 1, allowed={1}), job(2, 1, allowed={2, 99}), job(3, 1)])
    assert decision.waiting[1] == "may only use backend(s) 1, none of them an ACTIVE backend of backend group 0"
    assert decision.waiting[2] == "may only use backend(s) 2,99, none of them an ACTIVE backend of backend group 0"
    assert given_to(decision) == {3: on(3, 0)}


def test_a_job_too_big_for_its_allowed_backends_never_fits_and_blocks_no_one() -> None:
    backends = [backend(1, 8), backend(2, 8)]
    decision = schedule(backends, [job(1, 12, priority=9, allowed={1}), job(2, 8, allowed={1}), job(3, 12)])
    assert decision.waiting[1] == "needs 12 device(s) but backend(s) 1 have 8 usable"
    assert given_to(decision) == {2: on(1, *range(8))}
    assert decision.waiting[3] == "waiting for 12 device(s) on backend group 0: 8 idle"


def test_strict_priority_holds_per_candidate_backends() -> None:
    backends = [backend(1, 8, busy=[0, 1, 2, 3]), backend(2, 8)]
    jobs = [
        job(1, 8, priority=9, allowed={1}),  # 4 idle on backend 1: waits
        job(2, 2, priority=8, allowed={2}),  # disjoint from job 1: runs
        job(3, 1, priority=7, allowed={1}),  # same backend as job 1: waits behind it
        job(4, 1, priority=6),  # may use backend 1 too: waits behind job 1
        job(5, 1, priority=5, allowed={2}),  # job 4 waits and could use backend 2: waits behind job 4
    ]
    decision = schedule(backends, jobs)
    assert given_to(decision) == {2: on(2, 0, 1)}
    assert decision.waiting[1] == "waiting for 8 device(s) on backend(s) 1: 4 idle"
    assert decision.waiting[3] == "behind job 1 (priority 9) in backend group 0"
    assert decision.waiting[4] == "behind job 1 (priority 9) in backend group 0"
    assert decision.waiting[5] == "behind job 4 (priority 6) in backend group 0"


def test_a_job_behind_several_waiting_jobs_names_the_earliest() -> None:
    backends = [backend(1, 2, busy=[0]), backend(2, 2, busy=[0]), backend(3, 2)]
    for first, second in ((1, 2), (2, 1)):
        jobs = [
            job(5, 2, at=2.0, allowed={first}),
            job(9, 2, at=1.0, allowed={second}),
            job(3, 1, at=3.0, allowed={1, 2}),
        ]
        for ordered in (jobs, jobs[::-1]):
            assert schedule(backends, ordered).waiting[3] == "behind job 9 (priority 0) in backend group 0"


def test_a_waiting_unrestricted_job_holds_up_every_backend_of_its_group() -> None:
    backends = [backend(1, 4, busy=[0]), backend(2, 4), backend(3, 4, group=1)]
    decision = schedule(backends, [job(1, 8, priority=9), job(2, 1, allowed={2}), job(3, 1, group=1, allowed={3})])
    assert decision.waiting[1] == "waiting for 8 device(s) on backend group 0: 7 idle"
    assert decision.waiting[2] == "behind job 1 (priority 9) in backend group 0"
    assert given_to(decision) == {3: on(3, 0)}


def test_allowed_backends_naming_the_whole_group_behave_like_no_limit() -> None:
    backends = [backend(1, 2), backend(2, 4), backend(5, 4, active=False)]
    jobs = [job(1, 3), job(2, 2), job(3, 1)]
    limited = [job(j.id, j.device_count, allowed={1, 2, 5}) for j in jobs]
    assert schedule(backends, limited) == schedule(backends, jobs)


# -- max SDA and model access -------------------------------------------------------------------------


@pytest.mark.parametrize(("owned", "maximum", "left"), [(0, 1, 1), (1, 1, 0), (2, 5, 3), (3, 2, 0), (0, 64, 64)])
def test_sda_quota_left(owned: int, maximum: int, left: int) -> None:
    assert sda_quota_left(owned, maximum) == left


MODELS = (SDAModel(1, "small", 1), SDAModel(2, "medium", 4), SDAModel(3, "large", 8))
GROUPS = (ModelGroup(10, "cheap", 0, "default", MODELS[:2]), ModelGroup(11, "big", 1, "gpu", MODELS[1:]))


def test_a_token_in_no_user_group_may_use_every_model() -> None:
    choices = allowed_models("free", MODELS, [UserGroup(1, "team", "", ("other",))], GROUPS, [(1, 11)])
    pairs = [(c.model.id, c.group.id if c.group else None) for c in choices]
    assert pairs == [(1, 10), (2, 10), (2, 11), (3, 11)]
    ungrouped = allowed_models("free", MODELS, [], [], [])
    assert [(c.model.id, c.group) for c in ungrouped] == [(1, None), (2, None), (3, None)]


def test_a_token_in_a_user_group_may_use_only_models_its_memberships_reach() -> None:
    users = [UserGroup(1, "team", "", ("alice",)), UserGroup(2, "idle", "", ("bob",))]
    alice = allowed_models("alice", MODELS, users, GROUPS, [(1, 11)])
    assert [(c.model.id, c.group.id if c.group else None) for c in alice] == [(2, 11), (3, 11)]
    assert may_use(alice, 3, None) is not None
    assert may_use(alice, 2, 10) is None  # medium is reachable, but not through group 10
    assert may_use(alice, 1, None) is None
    assert allowed_models("bob", MODELS, users, GROUPS, [(1, 11)]) == []


# -- properties --------------------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[BackendState], list[QueuedJob], dict[int, int], set[DeviceKey]]:
    """Random backends (two groups), reserved SDAs, and a queue mixing every kind of job."""
    backend_ids = draw(st.lists(st.integers(1, 40), min_size=1, max_size=6, unique=True))
    backends = []
    for bid in backend_ids:
        statuses = draw(st.lists(st.sampled_from((*STATUSES, "IDLE", "IDLE")), max_size=8))
        devices = tuple(DeviceState(bid, i, s) for i, s in enumerate(statuses))
        backends.append(BackendState(bid, f"n{bid}", draw(st.integers(0, 1)), draw(st.booleans()), devices))
    all_devices = [(b.id, d.index) for b in backends for d in b.devices]
    reserved_pool = draw(st.lists(st.sampled_from(all_devices), unique=True, max_size=6)) if all_devices else []
    # reserved SDAs 100+: each holds a disjoint slice of the reserved devices
    reservations: dict[int, tuple[DeviceKey, ...]] = {}
    cut = 0
    for sda in (100, 101):
        take = draw(st.integers(0, max(0, len(reserved_pool) - cut)))
        if take:
            reservations[sda] = tuple(sorted(reserved_pool[cut : cut + take]))
        cut += take
    allowed_strategy = st.one_of(st.none(), st.none(), st.frozensets(st.sampled_from([*backend_ids, 99]), max_size=3))
    queue = []
    for jid in draw(st.lists(st.integers(1, 500), max_size=14, unique=True)):
        sda = draw(st.sampled_from([1, 2, 3, 4, 5, 6, *sorted(reservations)]))
        reserved = reservations.get(sda, ())
        exact: bool = draw(st.booleans())  # a reserved job usually asks for its whole reservation
        queue.append(
            QueuedJob(
                id=jid,
                token=f"t{sda}",
                sda_id=sda,
                priority=draw(st.integers(-2, 2)),
                request_time=float(draw(st.integers(0, 5))),
                device_count=len(reserved) if reserved and exact else draw(st.integers(0, 12)),
                backend_group_id=draw(st.integers(0, 2)),
                sda_limit=draw(st.integers(0, 2)),
                reserved_devices=reserved,
                allowed_backends=draw(allowed_strategy),
            )
        )
    active = draw(st.dictionaries(st.integers(1, 6), st.integers(0, 2), max_size=3))
    extra_reserved = set(draw(st.lists(st.sampled_from(reserved_pool), max_size=2))) if reserved_pool else set()
    return backends, queue, active, set(sum(reservations.values(), ())) | extra_reserved


@st.composite
def contention(draw: st.DrawFn) -> tuple[list[BackendState], list[QueuedJob], dict[int, int], set[DeviceKey]]:
    """A few half-busy backends of one group and jobs limited to one backend or none: where strict priority bites."""
    count = draw(st.integers(2, 3))
    backends = [
        BackendState(
            bid,
            f"n{bid}",
            0,
            True,
            tuple(DeviceState(bid, i, draw(st.sampled_from(("IDLE", "PROCESSING")))) for i in range(4)),
        )
        for bid in range(1, count + 1)
    ]
    allowed = st.one_of(
        st.none(), st.integers(1, count).map(lambda b: frozenset({b})), st.frozensets(st.integers(1, count), min_size=1)
    )
    queue = [
        job(jid, draw(st.integers(1, 4)), priority=draw(st.integers(0, 1)), limit=0, allowed=draw(allowed))
        for jid in range(1, draw(st.integers(2, 8)) + 1)
    ]
    return backends, queue, {}, set()


def _held(queue: Sequence[QueuedJob], reserved: set[DeviceKey]) -> set[DeviceKey]:
    return reserved | {d for j in queue for d in j.reserved_devices}


def _candidates(job: QueuedJob, backends: Sequence[BackendState]) -> set[int]:
    group = {b.id for b in backends if b.active and b.group_id == job.backend_group_id}
    return group if job.allowed_backends is None else group & job.allowed_backends


def _usable(candidates: set[int], backends: Sequence[BackendState], held: set[DeviceKey]) -> int:
    return sum(
        1
        for b in backends
        if b.id in candidates
        for d in b.devices
        if d.status != "SHUTDOWN" and (b.id, d.index) not in held
    )


def _limited(
    job: QueuedJob, ordered: Sequence[QueuedJob], given: Mapping[int, object], active: Mapping[int, int]
) -> bool:
    """Whether ``job`` waits because its SDA already runs as many jobs as it may at its turn."""
    if job.sda_limit == 0:
        return False
    before = ordered[: ordered.index(job)]
    running = active.get(job.sda_id, 0) + sum(1 for j in before if j.sda_id == job.sda_id and j.id in given)
    return running >= job.sda_limit


@PROFILE
@given(st.one_of(scenarios(), contention()))
def test_property_every_device_goes_to_at_most_one_job_and_only_if_eligible(
    scenario: tuple[list[BackendState], list[QueuedJob], dict[int, int], set[DeviceKey]],
) -> None:
    backends, queue, active, reserved = scenario
    decision = schedule(backends, queue, active, reserved)
    status = {(b.id, d.index): (d.status, b) for b in backends for d in b.devices}
    held = _held(queue, reserved)
    jobs = {j.id: j for j in queue}
    seen: set[DeviceKey] = set()
    for allocation in decision.allocations:
        j = jobs[allocation.job_id]
        assert len(allocation.devices) == j.device_count
        assert list(allocation.devices) == sorted(set(allocation.devices))
        for device in allocation.devices:
            assert device not in seen, f"device {device} given twice"
            seen.add(device)
            state, owner = status[device]
            assert state == "IDLE"
            assert owner.active
            if j.allowed_backends is not None:
                assert device[0] in j.allowed_backends
            if j.reserved_devices:
                continue
            assert device not in held
            assert owner.group_id == j.backend_group_id
        if j.reserved_devices:
            assert allocation.devices == tuple(sorted(j.reserved_devices))


@PROFILE
@given(scenarios())
def test_property_every_job_is_either_allocated_or_told_why_it_waits(
    scenario: tuple[list[BackendState], list[QueuedJob], dict[int, int], set[DeviceKey]],
) -> None:
    backends, queue, active, reserved = scenario
    decision = schedule(backends, queue, active, reserved)
    given_ids = [a.job_id for a in decision.allocations]
    assert len(given_ids) == len(set(given_ids))
    assert set(given_ids).isdisjoint(decision.waiting)
    assert set(given_ids) | set(decision.waiting) == {j.id for j in queue}
    for reason in decision.waiting.values():
        assert reason
        assert "\n" not in reason
    order = [j.id for j in queue_order(queue)]
    assert given_ids == [i for i in order if i in set(given_ids)]


@PROFILE
@given(scenarios(), st.randoms(use_true_random=False))
def test_property_the_decision_does_not_depend_on_input_order(
    scenario: tuple[list[BackendState], list[QueuedJob], dict[int, int], set[DeviceKey]],
    rnd: random.Random,
) -> None:
    backends, queue, active, reserved = scenario
    first = schedule(backends, queue, active, reserved)
    shuffled_backends = [
        BackendState(b.id, b.host, b.group_id, b.active, tuple(rnd.sample(b.devices, len(b.devices))))
        for b in rnd.sample(backends, len(backends))
    ]
    shuffled_queue = [
        QueuedJob(**{**j.__dict__, "reserved_devices": tuple(rnd.sample(j.reserved_devices, len(j.reserved_devices)))})
        for j in rnd.sample(queue, len(queue))
    ]
    shuffled_active = dict(rnd.sample(sorted(active.items()), len(active)))
    second = schedule(
        shuffled_backends, shuffled_queue, shuffled_active, list(rnd.sample(sorted(reserved), len(reserved)))
    )
    assert second.allocations == first.allocations
    assert dict(second.waiting) == dict(first.waiting)


@PROFILE
@given(st.one_of(scenarios(), contention()))
def test_property_no_job_overtakes_an_earlier_waiting_job_that_would_fit_on_shared_backends(
    scenario: tuple[list[BackendState], list[QueuedJob], dict[int, int], set[DeviceKey]],
) -> None:
    backends, queue, active, reserved = scenario
    decision = schedule(backends, queue, active, reserved)
    given = given_to(decision)
    held = _held(queue, reserved)
    ordered = queue_order(queue)
    for late in ordered:
        if late.id not in given or late.reserved_devices:
            continue
        late_candidates = _candidates(late, backends)
        for early in ordered[: ordered.index(late)]:
            if early.id in given or early.reserved_devices or early.device_count < 1:
                continue
            if early.backend_group_id != late.backend_group_id or _limited(early, ordered, given, active):
                continue
            early_candidates = _candidates(early, backends)
            would_fit = early.device_count <= _usable(early_candidates, backends, held)
            assert not (would_fit and early_candidates & late_candidates), (
                f"job {late.id} started ahead of waiting job {early.id}: {decision.waiting[early.id]}"
            )


@PROFILE
@given(scenarios())
def test_property_the_head_of_the_queue_starts_when_enough_of_its_devices_are_idle(
    scenario: tuple[list[BackendState], list[QueuedJob], dict[int, int], set[DeviceKey]],
) -> None:
    backends, queue, active, reserved = scenario
    ordinary = [j for j in queue if not j.reserved_devices]
    if not ordinary:
        return
    head = queue_order(ordinary)[0]
    decision = schedule(backends, ordinary, active, reserved)
    idle = _usable(
        _candidates(head, backends),
        [
            BackendState(b.id, b.host, b.group_id, b.active, tuple(d for d in b.devices if d.status == "IDLE"))
            for b in backends
        ],
        reserved,
    )
    startable = head.device_count >= 1 and not (head.sda_limit and active.get(head.sda_id, 0) >= head.sda_limit)
    assert (head.id in given_to(decision)) == (startable and idle >= head.device_count), decision.waiting.get(head.id)


@PROFILE
@given(
    st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=1, max_size=8),
    st.lists(st.integers(1, 20), max_size=10),
)
def test_property_the_fast_path_packs_like_place(sizes: list[tuple[int, int]], counts: list[int]) -> None:
    """Unrestricted jobs go through the scheduler's bucketed pool; it must choose what ``place`` chooses."""
    backends = [backend(bid, size, busy=range(min(busy, size))) for bid, (size, busy) in enumerate(sizes, start=1)]
    queue = [job(i, c, limit=0) for i, c in enumerate(counts, start=1)]
    decision = schedule(backends, queue)

    free = {b.id: [d.index for d in b.devices if d.status == "IDLE"] for b in backends}
    usable = {b.id: len(b.devices) for b in backends}
    expected: list[Allocation] = []
    for j in queue:
        if j.device_count > sum(usable.values()):
            continue  # never fits: skipped, holds no one up
        chosen = place(free, j.device_count, usable)
        if chosen is None:
            break  # strict priority: everyone after it waits
        expected.append(Allocation(j.id, chosen))
        for b, i in chosen:
            free[b].remove(i)
    assert list(decision.allocations) == expected
