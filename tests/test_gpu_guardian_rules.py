"""The GPU guardian's rules one by one: the pure decisions, the state's bookkeeping, a remote host's report over the
API, the REST endpoints, and how the dashboard grid draws a flagged GPU. End to end: tests/test_gpu_guardian.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from scheduler_core.gpu_health import (
    DeviceProcess,
    GpuFigures,
    IdlePolicy,
    PolicyError,
    ecc_event,
    lost_event,
    nvml_event,
    update_idle,
    xid_event,
)
from scheduler_core.guardian import (
    before_start,
    describe_foreign,
    duration_text,
    host_failure,
    idle_notices,
    job_figures,
    job_pids,
    parse_idle_policy,
    stale_stretch,
    unhealthy_devices,
)
from tests.conftest import ApiServer, Smc, ok

# -- pure decisions ------------------------------------------------------------------------------------------------


def test_which_devices_a_health_report_marks() -> None:
    events = [xid_event(3, 79), ecc_event(3, 2), lost_event(1), nvml_event("Driver Not Loaded"), xid_event(9, 79)]
    assert unhealthy_devices(events, range(8)) == {
        1: "the GPU is lost (it no longer answers)",
        3: "Xid 79: GPU has fallen off the bus; 2 uncorrectable ECC errors since the driver loaded",
    }
    assert unhealthy_devices([xid_event(None, 48)], [0, 1]) == {0: "Xid 48: double-bit ECC error", 1: "Xid 48: double-bit ECC error"}
    assert host_failure(events) == "NVML fails on this host: Driver Not Loaded"
    assert host_failure([xid_event(3, 79)]) is None


def test_a_jobs_processes_are_its_tagged_ones_and_its_commands_tree() -> None:
    processes = [(10, 7, ()), (11, None, (10, 1)), (20, None, (15, 1)), (30, None, (1,)), (40, 8, ())]
    assert job_pids(processes, {7: None, 8: 15}) == {7: {10}, 8: {20, 40}}
    assert job_pids(processes, {7: 10}) == {7: {10, 11}}


def test_before_start_every_process_on_the_jobs_gpus_but_its_own_is_in_the_way() -> None:
    procs = [DeviceProcess(0, 100, 512, "mallory", 1001), DeviceProcess(0, 200, 10), DeviceProcess(1, 300, 10)]
    found = before_start(procs, 5, [0], tagged={200})
    assert [(f.device, f.pid, f.device_job) for f in found] == [(0, 100, 5)]
    assert describe_foreign(found[0]) == "pid 100 (user mallory, 512 MiB) is not part of job 5, which holds the GPU"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("5", "1024", "60", None), IdlePolicy(5, 1024, 60, 0)),
        (("5%", "1024MiB", "30m", "2h"), IdlePolicy(5, 1024, 1800, 7200)),
        (("0", "0", "1.5", "1d"), IdlePolicy(0, 0, 1.5, 86400)),
    ],
)
def test_idle_settings_as_typed(args: tuple[str, str, str, str | None], expected: IdlePolicy) -> None:
    assert parse_idle_policy(*args, tick_s=1.0) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("101", "1", "60", None), "invalid idle utilisation threshold 101.0: use 0 to 100 %"),
        (("5", "2000000", "60", None), "invalid idle memory threshold 2000000.0"),
        (("5", "1", "0", None), "invalid idle window 0.0"),
        (("5", "1", "1", None), "idle window 1 s is shorter than the daemon's tick of 2 s"),
        (("5", "1", "60", "1w"), "invalid idle grace '1w'"),
        (("inf", "1", "60", None), "invalid idle utilisation threshold 'inf'"),
        (("5", "1", "-60", None), "invalid idle window '-60'"),
    ],
)
def test_bad_idle_settings_are_one_line(args: tuple[str, str, str, str | None], message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_idle_policy(*args, tick_s=2.0)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_figures_of_a_job_without_a_process_on_its_gpus_say_idle() -> None:
    figures = {0: GpuFigures(0, 0), 1: GpuFigures(90, 4000)}
    assert job_figures([0], figures, used=set()) is None
    assert job_figures([0, 2], figures, used={0}) == [GpuFigures(0, 0), GpuFigures(None, None)]


def test_what_an_idle_jobs_launcher_is_told_over_one_stretch() -> None:
    policy = IdlePolicy(5, 1024, 600, 0)  # warned at 300 s idle (5 minutes before the end)
    told: list[str] = []
    state: dict[str, Any] = {"since": None, "warned": False, "notified": None}
    for now, util in ((0, 1), (10, 1), (310, 1), (320, 50), (330, 1)):
        verdict = update_idle(policy, state["since"], 0.0, [GpuFigures(util, 0)], now, warned=state["warned"])
        for notice in idle_notices(
            7, policy, was_idle=state["since"] is not None, was_warned=state["warned"], idle_s=verdict.idle_s,
            seconds_left=verdict.seconds_left, warn=verdict.warn, reclaim=verdict.reclaim,
            last_notified=state["notified"], now=now,
        ):
            told.append(notice.text)
            state["notified"] = now if notice.notified else state["notified"]
        state["since"], state["warned"] = verdict.idle_since, verdict.warned
    assert told == [
        "[info] job 7 is idle (GPU utilisation below 5 % and memory below 1024 MiB): its devices are reclaimed in "
        "10 min unless it uses them.",
        "[warning] job 7 has been idle for 5 min 10 s (GPU utilisation below 5 % and memory below 1024 MiB): its "
        "devices are reclaimed in 4 min 50 s unless it uses them.",
        "[info] job 7 is busy again: the idle countdown stopped.",
    ]  # the new stretch at 330 s is not announced again within the window


def test_an_idle_stretch_nobody_sampled_for_a_while_starts_afresh() -> None:
    assert not stale_stretch(None, 100.0, 2.0)
    assert not stale_stretch(80.0, 100.0, 2.0)  # within 30 s
    assert stale_stretch(60.0, 100.0, 2.0)
    assert not stale_stretch(60.0, 100.0, 10.0)  # within 5 ticks of 10 s


def test_durations_for_users() -> None:
    assert [duration_text(s) for s in (0, 59.6, 60, 90, 3600, 3720, 90000)] == [
        "0 s", "1 min", "1 min", "1 min 30 s", "1 h", "1 h 2 min", "1-01:00:00",
    ]


# -- the state's bookkeeping -----------------------------------------------------------------------------------


@pytest.fixture
def backend(smc: Smc) -> int:
    from state.store import StateStore

    with StateStore().transaction("test: a backend") as s:
        return s.backends.create("node", "10.0.0.1", 4)


def test_an_unhealthy_device_stays_so_through_its_jobs_life_and_until_an_admin_clears_it(
    smc: Smc, new_token: Callable[..., str], backend: int
) -> None:
    from state.store import StateStore

    token = new_token()
    ok(smc(f"create sda {token} s 1"))
    with StateStore().transaction("test") as s:
        job = s.jobs.submit(token, 1, backend_id=backend, launcher_pid=1, launcher_create_time=0.0, process_name="p")
        s.jobs.run_scheduling_pass()
        [held] = s.jobs.get(job.id).devices
        first = s.guardian.mark_unhealthy(backend, {held.index: "Xid 79: GPU has fallen off the bus"})
        assert [(u.index, u.job_id, u.token) for u in first] == [(held.index, job.id, token)]
        assert s.guardian.mark_unhealthy(backend, {held.index: "Xid 79: GPU has fallen off the bus"}) == []
        s.jobs.mark_running(job.id, 1, 0.0)
        s.jobs.mark_cleaning(job.id)
        s.jobs.finish(job.id, 0, "finished")
        assert s.backends.get(backend).devices[held.index].status == "UNHEALTHY"
        view, failing = s.guardian.scheduler_view()
        assert view == {(backend, held.index): "SHUTDOWN"}
        assert failing == set()
    ok(smc(f"update device {backend} {held.index} IDLE"))
    with StateStore().reading() as s:
        assert s.guardian.flags() == []
        [event] = s.events.find(action="UPDATE_DEVICE")
    assert event.detail.endswith(f"was_unhealthy[{held.index}]=Xid 79: GPU has fallen off the bus")
    ok(smc(f"update device {backend} 2 UNHEALTHY"))
    with StateStore().reading() as s:
        [flag] = s.guardian.flags()
    assert (flag.index, flag.kind, flag.cause) == (2, "unhealthy", "set UNHEALTHY by an admin")


def test_a_host_whose_nvml_fails_gets_no_job(smc: Smc, new_token: Callable[..., str], backend: int) -> None:
    from state.store import StateStore

    token = new_token()
    ok(smc(f"create sda {token} s 1"))
    with StateStore().transaction("test") as s:
        assert s.guardian.set_host_failure(backend, "NVML fails on this host: Driver Not Loaded") == "failed"
        assert s.guardian.set_host_failure(backend, "NVML fails on this host: Driver Not Loaded") == ""
        job = s.jobs.submit(token, 1, backend_id=backend, launcher_pid=1, launcher_create_time=0.0, process_name="p")
        assert s.jobs.run_scheduling_pass().allocations == ()
        assert s.guardian.set_host_failure(backend, None) == "recovered"
        assert [a.job_id for a in s.jobs.run_scheduling_pass().allocations] == [job.id]


def test_a_job_sent_back_keeps_its_place_and_a_reclaimed_one_ends_as_idle(
    smc: Smc, new_token: Callable[..., str], backend: int
) -> None:
    from state.store import StateStore

    token = new_token()
    ok(smc(f"create sda {token} s 1"))
    with StateStore().transaction("test") as s:
        job = s.jobs.submit(token, 1, backend_id=backend, launcher_pid=1, launcher_create_time=0.0, process_name="p")
        s.jobs.run_scheduling_pass()
        assert s.guardian.requeue(job.id, "GPU node:0: pid 9 is not part of any job")
        assert not s.guardian.requeue(job.id, "again")  # only a job that got devices and has not started
        again = s.jobs.get(job.id)
        assert (again.status, again.devices, again.request_time) == ("QUEUED", (), job.request_time)
        assert {d.status for d in s.backends.get(backend).devices} == {"IDLE"}
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(job.id, 1, 0.0)
        from state.records import JobIdle

        s.guardian.put_idle(JobIdle(job.id, 1.0, True, 0.0, True))
        s.jobs.request_release(job.id, "reclaimed after being idle for 1 min")
        ended = s.jobs.finish(job.id, 143, "failed")
    assert ended is not None
    assert (ended.end_reason, ended.end_detail) == ("idle", "reclaimed after being idle for 1 min")
    assert "IDLE" in ok(smc(f"get history feid {job.id}")).out


def test_a_remote_hosts_report_over_the_api_is_judged_and_answered(api_server: ApiServer) -> None:
    gpus = [{"uuid": f"GPU-r{i}", "name": "G", "memory_total_mib": 1000} for i in range(2)]
    watch = {
        "health": [{"device": 1, "kind": "xid", "code": 79, "cause": "Xid 79: GPU has fallen off the bus"},
                   {"device": 0, "kind": "martian", "code": None, "cause": "a kind this version does not know"}],
        "processes": [{"index": 0, "pid": 4321, "memory_mib": 2048, "user": "mallory", "uid": 1001}],
    }
    status, answer = api_server.op("host_report", host="remote-h", ip="10.1.2.3", machine_id="remote-h", gpus=gpus,
                                   samples=[], processes=[], watch=watch)
    assert status == 200, answer
    [found] = answer["result"]["foreign"]
    assert (found["index"], found["pid"], found["kind"], found["user"]) == (0, 4321, "foreign", "mallory")
    assert "GPU remote-h:1 is UNHEALTHY: Xid 79: GPU has fallen off the bus" in answer["result"]["notes"]
    with api_server.client() as client:
        flags = client.get("/api/guardian/devices").json()
    assert sorted((f["host"], f["device"], f["kind"]) for f in flags) == [
        ("remote-h", 0, "foreign"), ("remote-h", 1, "unhealthy"),
    ]
    status, answer = api_server.op("host_report", host="remote-h", ip="10.1.2.3", machine_id="remote-h", gpus=gpus,
                                   samples=[], processes=[], watch={"health": [], "processes": "x"})
    assert status == 400
    assert "watch" in answer["error"]["message"]


def test_idle_policies_through_the_rest_api(api_server: ApiServer) -> None:
    user = api_server.make_token("api-user")
    with api_server.client() as admin:
        answer = admin.put("/api/guardian/idle", params={"scope": "token", "target": user, "util": 5, "memory": 1024,
                                                         "window": 600, "grace": 60}).json()
        assert answer["code"] == "SUCCESS"
        assert answer["result"]["window"] == 600.0
        bad = admin.put("/api/guardian/idle", params={"scope": "sdamodel", "target": "1", "util": 5, "memory": 1,
                                                      "window": 0.1})
        assert bad.status_code == 400
        assert "shorter than the daemon's tick of 0.5 s" in bad.json()["details"]
        assert admin.put("/api/guardian/idle", params={"scope": "gpu", "target": "1", "util": 5, "memory": 1,
                                                       "window": 60}).status_code == 400
        assert [p["target"] for p in admin.get("/api/guardian/idle").json()] == [user]
        assert admin.delete("/api/guardian/idle", params={"scope": "token", "target": user}).json() == {"code": "SUCCESS"}
        assert admin.delete("/api/guardian/idle", params={"scope": "token", "target": user}).status_code == 404
    with api_server.client(user) as client:
        assert client.get("/api/guardian/idle").status_code == 403
        assert client.get("/api/guardian/devices").status_code == 403


def test_the_grid_draws_flagged_gpus_and_names_the_cause() -> None:
    from moreh_tools.dashboard.widgets.backend_grid import cell, guard_lines, legend
    from moreh_tools.services.records import GridBackend, GridDevice

    fine = GridDevice(0, "IDLE", 0, 100, 0, None, True)
    sick = GridDevice(1, "UNHEALTHY", None, None, None, None, True, "Xid 79: GPU has fallen off the bus")
    taken = GridDevice(2, "IDLE", 10, 100, 5, None, True, "pid 4321 (user mallory, 2048 MiB) is not part of any job")
    backends = (GridBackend(1, "node", "ACTIVE", "g", (fine, sick, taken)),)
    assert "unhealthy 1" in legend(backends).plain
    assert "foreign 1" in legend(backends).plain
    assert "unhealthy" not in legend((GridBackend(1, "node", "ACTIVE", "g", (fine,)),)).plain
    assert cell(sick).plain.strip() == "sick"
    assert [line.plain for line in guard_lines(backends)] == [
        "1 node:1 unhealthy: Xid 79: GPU has fallen off the bus",
        "1 node:2 foreign: pid 4321 (user mallory, 2048 MiB) is not part of any job",
    ]
