"""The guardian's pure decisions (scheduler_core.gpu_health): Xid policy, health events, foreign
processes and the kill policy, idle reclaim. Examples pin the documented behaviour; hypothesis
properties check it against simple reference models."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scheduler_core.gpu_health import (
    APPLICATION_XIDS,
    CRITICAL_XIDS,
    ESCAPED,
    FOREIGN,
    HEALTH_KINDS,
    KILL,
    NOT_IDLE,
    WARN,
    DeviceProcess,
    Foreign,
    ForeignPolicy,
    GpuFigures,
    GpuHealthEvent,
    IdlePolicy,
    PolicyError,
    ecc_event,
    find_foreign,
    flagged_devices,
    host_failed,
    is_critical_xid,
    is_idle_sample,
    judge_foreign,
    lost_event,
    nvml_event,
    parse_foreign_policy,
    remapped_rows_event,
    retired_pages_event,
    update_idle,
    xid_cause,
    xid_event,
)

# -- Xids and events --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [13, 31, 43, 45, 68, 109])
def test_application_xids_leave_the_gpu_healthy(code: int) -> None:
    assert not is_critical_xid(code)


@pytest.mark.parametrize("code", [48, 63, 64, 74, 79, 92, 94, 95])
def test_hardware_xids_are_critical(code: int) -> None:
    assert is_critical_xid(code)
    assert code in CRITICAL_XIDS


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_every_xid_but_the_application_ones_is_critical(code: int) -> None:
    assert is_critical_xid(code) == (code >= 0 and code not in APPLICATION_XIDS)
    cause = xid_cause(code)
    assert cause.startswith(f"Xid {code}: ")
    assert "\n" not in cause


def test_extra_ignored_xids_can_be_given() -> None:
    assert not is_critical_xid(79, ignored={79})
    assert is_critical_xid(13, ignored=set())


def test_event_constructors_say_what_and_where() -> None:
    assert xid_event(3, 79) == GpuHealthEvent(3, "xid", 79, "Xid 79: GPU has fallen off the bus")
    assert ecc_event(5, 1) == GpuHealthEvent(5, "ecc", 1, "1 uncorrectable ECC error since the driver loaded")
    assert ecc_event(5, 4).cause == "4 uncorrectable ECC errors since the driver loaded"
    assert retired_pages_event(2).kind == "retired_pages"
    assert remapped_rows_event(2, failed=False).code == 1
    assert remapped_rows_event(2, failed=True).code == 2
    assert "fell off" in lost_event(1, "fell off the bus").cause
    host = nvml_event("Driver Not Loaded", 9)
    assert (host.device, host.kind, host.code) == (None, "nvml", 9)
    assert "Driver Not Loaded" in host.cause
    with pytest.raises(ValueError, match="kind"):
        GpuHealthEvent(0, "fire", None, "on fire")


def test_flagged_devices_host_events_flag_every_device() -> None:
    events = [xid_event(1, 79), ecc_event(1, 2), xid_event(1, 79), ecc_event(9, 1)]
    assert flagged_devices(events, range(4)) == {
        1: ("Xid 79: GPU has fallen off the bus", "2 uncorrectable ECC errors since the driver loaded")
    }
    assert not host_failed(events)
    events.append(nvml_event("Unknown Error"))
    assert host_failed(events)
    flagged = flagged_devices(events, [2, 0, 1])
    assert list(flagged) == [0, 1, 2]
    assert flagged[0] == (nvml_event("Unknown Error").cause,)
    assert flagged_devices([], range(8)) == {}


events_strategy = st.lists(
    st.builds(
        GpuHealthEvent,
        st.one_of(st.none(), st.integers(0, 9)),
        st.sampled_from(sorted(HEALTH_KINDS)),
        st.one_of(st.none(), st.integers(0, 200)),
        st.sampled_from(["a", "b", "c"]),
    ),
    max_size=12,
)


@given(events_strategy, st.sets(st.integers(0, 9)))
def test_flagged_devices_are_those_named_or_all_on_a_host_event(
    events: list[GpuHealthEvent], devices: set[int]
) -> None:
    flagged = flagged_devices(events, devices)
    named = {event.device for event in events if event.device is not None}
    expected = set(devices) if host_failed(events) else named & devices
    assert set(flagged) == expected
    for device, causes in flagged.items():
        assert len(causes) == len(set(causes))
        assert set(causes) == {e.cause for e in events if e.device in (None, device)}


# -- foreign processes -------------------------------------------------------------------------------


def test_foreign_and_escaped_processes() -> None:
    processes = [
        DeviceProcess(0, 10, 1000, "alice", 1000),  # job 1's, on its own GPU
        DeviceProcess(0, 99, 2048, "mallory", 1666),  # nobody's: foreign on job 1's GPU
        DeviceProcess(1, 11, 500, "alice", 1000),  # job 1's, on a free GPU: escaped
        DeviceProcess(2, 20, 700, "bob", 1001),  # job 2's, on its own GPU
        DeviceProcess(2, 10, 300, "alice", 1000),  # job 1's, on job 2's GPU: escaped
        DeviceProcess(3, 77, 100, None, None),  # nobody's, on a free GPU, owner unknown
    ]
    findings = find_foreign(processes, {0: 1, 2: 2}, {1: {10, 11}, 2: {20}})
    assert findings == [
        Foreign(0, 99, "mallory", 2048, FOREIGN, job=None, device_job=1, uid=1666),
        Foreign(1, 11, "alice", 500, ESCAPED, job=1, device_job=None, uid=1000),
        Foreign(2, 10, "alice", 300, ESCAPED, job=1, device_job=2, uid=1000),
        Foreign(3, 77, None, 100, FOREIGN, job=None, device_job=None, uid=None),
    ]
    quiet = find_foreign(processes, {0: 1, 2: 2}, {1: {10, 11}, 2: {20}}, ignore_pids={99}, ignore_users={"alice"})
    assert [(f.device, f.pid) for f in quiet] == [(3, 77)]


device_processes = st.lists(
    st.builds(
        DeviceProcess,
        st.integers(0, 3),
        st.integers(1, 12),
        st.integers(0, 5000),
        st.sampled_from([None, "alice", "bob"]),
        st.one_of(st.none(), st.integers(0, 3)),
    ),
    max_size=16,
)
allocations = st.dictionaries(st.integers(0, 3), st.integers(1, 3), max_size=4)
job_trees = st.dictionaries(st.integers(1, 4), st.sets(st.integers(1, 12), max_size=5), max_size=4)


@given(device_processes, allocations, job_trees, st.randoms(use_true_random=False))
def test_every_unaccounted_process_is_reported_once(
    processes: list[DeviceProcess], allocation: dict[int, int], jobs: dict[int, set[int]], rnd: random.Random
) -> None:
    findings = find_foreign(processes, allocation, jobs)
    unaccounted = {
        (p.device, p.pid)
        for p in processes
        if not (p.device in allocation and p.pid in jobs.get(allocation[p.device], set()))
    }
    assert [(f.device, f.pid) for f in findings] == sorted(unaccounted)
    for finding in findings:
        owners = sorted(job for job, pids in jobs.items() if finding.pid in pids)
        assert finding.device_job == allocation.get(finding.device)
        if owners:
            assert (finding.kind, finding.job) == (ESCAPED, owners[0])
            assert finding.job != finding.device_job
        else:
            assert (finding.kind, finding.job) == (FOREIGN, None)
        same = [p for p in processes if (p.device, p.pid) == (finding.device, finding.pid)]
        assert finding.memory_mib == max(p.memory_mib for p in same)
    shuffled = list(processes)
    rnd.shuffle(shuffled)
    assert find_foreign(shuffled, allocation, jobs) == findings


# -- the kill policy ---------------------------------------------------------------------------------


def test_policy_from_the_environment() -> None:
    assert parse_foreign_policy({}) == ForeignPolicy(WARN, 60.0)
    assert parse_foreign_policy({"MOREH_FOREIGN_POLICY": " KILL ", "MOREH_FOREIGN_GRACE": "2.5"}) == ForeignPolicy(
        KILL, 2.5
    )
    assert parse_foreign_policy({"MOREH_FOREIGN_POLICY": "", "MOREH_FOREIGN_GRACE": " "}) == ForeignPolicy(WARN, 60.0)
    assert parse_foreign_policy({"MOREH_FOREIGN_GRACE": "0"}).grace_s == 0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MOREH_FOREIGN_POLICY": "nuke"}, "MOREH_FOREIGN_POLICY='nuke'"),
        ({"MOREH_FOREIGN_POLICY": "warn,kill"}, "MOREH_FOREIGN_POLICY"),
        ({"MOREH_FOREIGN_GRACE": "-1"}, "MOREH_FOREIGN_GRACE='-1'"),
        ({"MOREH_FOREIGN_GRACE": "abc"}, "MOREH_FOREIGN_GRACE='abc'"),
        ({"MOREH_FOREIGN_GRACE": "nan"}, "MOREH_FOREIGN_GRACE"),
        ({"MOREH_FOREIGN_GRACE": "inf"}, "MOREH_FOREIGN_GRACE"),
        ({"MOREH_FOREIGN_GRACE": "1e9"}, "MOREH_FOREIGN_GRACE"),
        ({"MOREH_FOREIGN_GRACE": "٣"}, "MOREH_FOREIGN_GRACE"),
        ({"MOREH_FOREIGN_GRACE": "60s"}, "MOREH_FOREIGN_GRACE"),
    ],
)
def test_bad_policy_values_are_one_line(env: dict[str, str], named: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_foreign_policy(env)
    message = str(caught.value)
    assert "\n" not in message
    assert named in message


@pytest.mark.parametrize(("action", "grace"), [("nuke", 1.0), ("kill", -1.0), ("warn", math.nan), ("kill", 1e9)])
def test_a_policy_out_of_range_cannot_be_built(action: str, grace: float) -> None:
    with pytest.raises(PolicyError):
        ForeignPolicy(action, grace)


def finding(pid: int, uid: int | None = 1000, device: int = 0) -> Foreign:
    return Foreign(device, pid, "mallory", 100, uid=uid)


def test_kill_after_the_grace_only_what_can_be_checked() -> None:
    policy = ForeignPolicy(KILL, 30.0)
    first = judge_foreign([finding(4321), finding(1), finding(555, uid=None)], {}, policy, now=100.0)
    assert dict(first.first_seen) == {4321: 100.0, 1: 100.0, 555: 100.0}
    assert [f.pid for f in first.new] == [4321, 1, 555]
    assert first.kill == ()
    early = judge_foreign([finding(4321)], first.first_seen, policy, now=129.9)
    assert (early.kill, early.new) == ((), ())
    due = judge_foreign([finding(4321), finding(1), finding(555, uid=None)], first.first_seen, policy, now=130.0)
    assert due.kill == (4321,)  # never pid 1, never an owner that cannot be checked
    assert due.new == ()
    again = judge_foreign([finding(4321)], due.first_seen, policy, now=131.0)
    assert again.kill == (4321,)  # until it is gone
    gone = judge_foreign([], again.first_seen, policy, now=132.0)
    assert (dict(gone.first_seen), gone.kill) == ({}, ())
    warn_only = judge_foreign([finding(4321)], {4321: 0.0}, ForeignPolicy(WARN, 0.0), now=1e6)
    assert warn_only.kill == ()


@settings(max_examples=200)
@given(
    st.lists(st.sets(st.integers(2, 8), max_size=4), min_size=1, max_size=20),
    st.lists(st.floats(0.1, 20.0), min_size=20, max_size=20),
    st.floats(0.0, 60.0),
    st.sampled_from([WARN, KILL]),
)
def test_a_pid_is_killed_from_the_first_tick_its_grace_is_over(
    present: list[set[int]], gaps: list[float], grace: float, action: str
) -> None:
    policy = ForeignPolicy(action, grace)
    now, first_seen, since = 1000.0, {}, {}
    for tick, pids in enumerate(present):
        now += gaps[tick]
        since = {pid: since.get(pid, now) for pid in pids}  # reference: continuously present since
        verdict = judge_foreign([finding(pid) for pid in sorted(pids)], first_seen, policy, now)
        assert dict(verdict.first_seen) == since
        assert {f.pid for f in verdict.new} == {pid for pid in pids if pid not in first_seen}
        expected = sorted(pid for pid in pids if now - since[pid] >= grace) if action == KILL else []
        assert list(verdict.kill) == expected
        first_seen = dict(verdict.first_seen)


# -- idle reclaim --------------------------------------------------------------------------------------

POLICY = IdlePolicy(util_percent=5, memory_mib=1024, window_s=3600, grace_s=600)
IDLE = [GpuFigures(0, 0), GpuFigures(4, 1023)]
BUSY = [GpuFigures(0, 0), GpuFigures(5, 0)]


@pytest.mark.parametrize(
    "values",
    [
        (-1, 0, 60, 0),
        (101, 0, 60, 0),
        (math.nan, 0, 60, 0),
        (True, 0, 60, 0),
        (5, -1, 60, 0),
        (5, 10**9, 60, 0),
        (5, math.inf, 60, 0),
        (5, 0, 0, 0),
        (5, 0, -60, 0),
        (5, 0, 10**9, 0),
        (5, 0, 60, -1),
        (5, 0, 60, 10**9),
        (5, 0, 60, math.nan),
    ],
)
def test_idle_policy_out_of_range_is_one_line(values: tuple[float, float, float, float]) -> None:
    with pytest.raises(PolicyError) as caught:
        IdlePolicy(*values)
    assert "\n" not in str(caught.value)


def test_idle_window_must_cover_a_tick() -> None:
    policy = IdlePolicy(5, 1024, 5, 0)
    with pytest.raises(PolicyError, match=r"idle window 5 s is shorter than the daemon's tick of 10 s"):
        policy.check_tick(10)
    policy.check_tick(5)


@pytest.mark.parametrize(("window", "warn_after"), [(3600, 3300), (600, 300), (599, 299.5), (300, 150), (60, 30)])
def test_warning_five_minutes_before_or_at_half_a_short_window(window: float, warn_after: float) -> None:
    assert IdlePolicy(5, 1024, window, 0).warn_after_s == warn_after


def test_idle_samples() -> None:
    assert is_idle_sample(POLICY, None)  # no process on its GPUs
    assert is_idle_sample(POLICY, IDLE)
    assert not is_idle_sample(POLICY, BUSY)
    assert not is_idle_sample(POLICY, [GpuFigures(0, 1024)])
    assert not is_idle_sample(POLICY, [])  # nothing known: never reclaim blind
    assert not is_idle_sample(POLICY, [GpuFigures(None, None)])
    assert is_idle_sample(POLICY, [GpuFigures(None, 10)])  # a GPU without utilisation: memory decides
    assert not is_idle_sample(POLICY, [GpuFigures(None, 2000)])


def test_an_idle_job_is_warned_then_reclaimed() -> None:
    start = 1000.0
    during_grace = update_idle(POLICY, None, start, None, start + 599)
    assert during_grace == NOT_IDLE
    first = update_idle(POLICY, None, start, IDLE, start + 600)
    assert (first.idle_since, first.idle_s, first.seconds_left, first.warn, first.reclaim) == (
        1600,
        0,
        3600,
        False,
        False,
    )
    later = update_idle(POLICY, first.idle_since, start, IDLE, 1600 + 3299, warned=first.warned)
    assert (later.warn, later.seconds_left) == (False, 301)
    warn = update_idle(POLICY, later.idle_since, start, None, 1600 + 3300, warned=later.warned)
    assert (warn.warn, warn.warned, warn.seconds_left, warn.reclaim) == (True, True, 300, False)
    quiet = update_idle(POLICY, warn.idle_since, start, IDLE, 1600 + 3400, warned=warn.warned)
    assert (quiet.warn, quiet.warned) == (False, True)
    reclaim = update_idle(POLICY, quiet.idle_since, start, IDLE, 1600 + 3600, warned=quiet.warned)
    assert (reclaim.reclaim, reclaim.warn, reclaim.seconds_left) == (True, False, 0)
    busy = update_idle(POLICY, quiet.idle_since, start, BUSY, 1600 + 3599, warned=True)
    assert busy == NOT_IDLE


def test_idle_since_is_kept_inside_the_job_and_the_clock() -> None:
    early = update_idle(POLICY, 0.0, 1000.0, IDLE, 2000.0)
    assert early.idle_since == 1600.0  # counted from the end of the grace
    future = update_idle(POLICY, 5000.0, 1000.0, IDLE, 2000.0)
    assert (future.idle_since, future.idle_s) == (2000.0, 0.0)


@given(
    st.one_of(st.none(), st.floats(-1e6, 1e6)),
    st.floats(-1e6, 1e6),
    st.floats(-1e6, 1e6),
    st.booleans(),
    st.booleans(),
)
def test_never_reclaimed_before_grace_and_window(
    idle_since: float | None, started: float, now: float, idle: bool, warned: bool
) -> None:
    verdict = update_idle(POLICY, idle_since, started, IDLE if idle else BUSY, now, warned=warned)
    if verdict.reclaim:
        assert now >= started + POLICY.grace_s + POLICY.window_s
    if not idle or now < started + POLICY.grace_s:
        assert verdict == NOT_IDLE
    else:
        assert verdict.idle_since is not None
        assert started + POLICY.grace_s <= verdict.idle_since <= now
        assert verdict.idle_s == now - verdict.idle_since
        assert verdict.seconds_left == max(0.0, POLICY.window_s - verdict.idle_s)
        assert not (verdict.warn and verdict.reclaim)


samples = st.lists(st.tuples(st.floats(1.0, 400.0), st.sampled_from(["idle", "busy", "none"])), max_size=60)


@settings(max_examples=300)
@given(samples, st.floats(60.0, 3600.0), st.floats(0.0, 600.0))
def test_a_sequence_of_samples_against_a_reference_model(
    ticks: list[tuple[float, str]], window: float, grace: float
) -> None:
    policy = IdlePolicy(5, 1024, window, grace)
    started = now = 0.0
    idle_since: float | None = None
    warned = False
    ref_since: float | None = None
    ref_warned = False
    for gap, kind in ticks:
        now += gap
        figures = {"idle": IDLE, "busy": BUSY, "none": None}[kind]
        verdict = update_idle(policy, idle_since, started, figures, now, warned=warned)
        counted = now >= started + grace and kind != "busy"
        if not counted:
            ref_since, ref_warned = None, False
            assert verdict == NOT_IDLE
        else:
            ref_since = now if ref_since is None else ref_since
            idle_for = now - ref_since
            assert verdict.idle_since == ref_since
            assert verdict.reclaim == (idle_for >= window)
            expected_warn = not ref_warned and not verdict.reclaim and idle_for >= policy.warn_after_s
            assert verdict.warn == expected_warn
            ref_warned = ref_warned or expected_warn
            assert verdict.warned == ref_warned
        idle_since, warned = verdict.idle_since, verdict.warned
        if verdict.reclaim:
            break


@given(st.floats(60.0, 3600.0), st.floats(1.0, 30.0))
def test_ticks_finer_than_the_warning_lead_always_warn_before_the_reclaim(window: float, tick: float) -> None:
    policy = IdlePolicy(5, 1024, window, 0)
    assume(tick <= window - policy.warn_after_s)
    now, since, warned, warnings = 0.0, None, False, 0
    while True:
        verdict = update_idle(policy, since, 0.0, None, now, warned=warned)
        warnings += verdict.warn
        if verdict.reclaim:
            break
        since, warned = verdict.idle_since, verdict.warned
        now += tick
    assert warnings == 1
    assert window <= now < window + tick
