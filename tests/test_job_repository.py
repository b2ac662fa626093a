"""The state side of the job queue, in-process through StateStore: submit, schedule, run, finish, usage."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from state.errors import ConflictError, InvalidValueError, NotFoundError, StateError
from state.records import Job
from state.session import Session
from state.store import StateStore

HOST = "node1"


@dataclass
class Setup:
    store: StateStore
    token: str
    sda: int
    backend: int


def gpus(count: int, host: str = HOST) -> list[tuple[str, str, int]]:
    return [(f"GPU-{host}-{i:04d}", "Simulated GPU", 81920) for i in range(count)]


def submit(s: Session, token: str, sda: int, host: str = HOST, priority: int | None = None) -> Job:
    return s.jobs.submit(
        token,
        sda,
        backend_id=s.backends.local_id(host) or 999,
        launcher_pid=os.getpid(),
        launcher_create_time=0.0,
        process_name="python",
        priority=priority,
    )


def new_sda(s: Session, devices: int, name: str | None = None, priority: int = 0) -> tuple[str, int]:
    """A fresh token with one SDA of a new ``devices``-device model."""
    token = s.tokens.create("user@example.com", priority)
    model = s.models.create(name or f"model_{token[:6]}_{devices}", devices)
    return token, s.sdas.create(token, "", model)


@pytest.fixture
def setup() -> Setup:
    """A 4-GPU local backend and a token whose SDA needs 2 devices."""
    store = StateStore()
    with store.transaction("setup") as s:
        backend = s.backends.register_local(HOST, "10.0.0.1", gpus(4))
        token, sda = new_sda(s, 2, "two")
    return Setup(store, token, sda, backend)


def device_statuses(store: StateStore, backend: int) -> list[str]:
    with store.reading() as s:
        return [d.status for d in s.backends.get(backend).devices]


def queued(store: StateStore) -> list[Job]:
    with store.reading() as s:
        return s.jobs.all()


def refused(store: StateStore, error: type[StateError], *needles: str, **kwargs: object) -> str:
    """Submit in a transaction that must fail with ``error``; assert one clear line and nothing queued."""
    with pytest.raises(error) as caught, store.transaction("moreh-run") as s:
        submit(s, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert queued(store) == []
    return message


# -- submit refuses what could never run ---------------------------------------------------------------


def test_submit_queues_a_job_with_the_tokens_priority_and_the_models_device_count(setup: Setup) -> None:
    with setup.store.transaction("moreh-run") as s:
        s.tokens.update_priority(setup.token, 7)
        job = submit(s, setup.token, setup.sda)
    assert (job.status, job.priority, job.device_count, job.host, job.devices) == ("QUEUED", 7, 2, HOST, ())
    with setup.store.reading() as s:
        assert s.jobs.queue_position(job.id) == 1
        assert [(e.action, e.command) for e in s.events.tail(1)] == [("CREATE_JOB", "moreh-run")]


def test_submit_refuses_an_unknown_token(setup: Setup) -> None:
    refused(setup.store, NotFoundError, token="nosuchtoken", sda=setup.sda)


def test_submit_refuses_an_sda_of_another_token(setup: Setup) -> None:
    with setup.store.transaction("setup") as s:
        other = s.tokens.create("other@example.com")
    refused(setup.store, NotFoundError, f"SDA {setup.sda} does not belong", token=other, sda=setup.sda)
    refused(setup.store, NotFoundError, "SDA 999", token=setup.token, sda=999)


def test_submit_refuses_a_model_the_token_may_no_longer_use(setup: Setup) -> None:
    with setup.store.transaction("setup") as s:
        s.user_groups.create("team", "", [setup.token])  # in a user group without memberships: no model allowed
    refused(setup.store, ConflictError, "may not use SDA model", token=setup.token, sda=setup.sda)


def test_submit_refuses_a_host_that_is_not_a_backend(setup: Setup) -> None:
    refused(
        setup.store,
        NotFoundError,
        "Backend 999 is not registered",
        token=setup.token,
        sda=setup.sda,
        host="elsewhere",
    )


def test_submit_refuses_a_model_bigger_than_the_hosts_usable_devices(setup: Setup) -> None:
    with setup.store.transaction("setup") as s:
        big_token, big_sda = new_sda(s, 5)
    refused(setup.store, ConflictError, "needs 5 device(s)", "has 4 usable", token=big_token, sda=big_sda)
    with setup.store.transaction("admin") as s:
        s.backends.update_device(setup.backend, 0, "SHUTDOWN")
        s.backends.update_device(setup.backend, 1, "SHUTDOWN")
        s.backends.update_device(setup.backend, 2, "SHUTDOWN")
    refused(setup.store, ConflictError, "needs 2 device(s)", "has 1 usable", token=setup.token, sda=setup.sda)


def test_submit_does_not_count_devices_reserved_by_another_sda(setup: Setup) -> None:
    with setup.store.transaction("admin") as s:
        _other, other_sda = new_sda(s, 3)
        s.execute(
            "INSERT INTO sda_reservations VALUES (?, ?, 0), (?, ?, 1), (?, ?, 2)",
            [other_sda, setup.backend] * 3,
        )
    refused(setup.store, ConflictError, "has 1 usable", token=setup.token, sda=setup.sda)


def test_submit_refuses_a_host_outside_the_sdas_backend_group(setup: Setup) -> None:
    with setup.store.transaction("admin") as s:
        group = s.backend_groups.create("elsewhere")
        model_group = s.model_groups.create("far", group, [s.sdas.get(setup.sda).model_id])
        token = s.tokens.create("far@example.com")
        sda = s.sdas.create(token, "", s.sdas.get(setup.sda).model_id, model_group)
    refused(setup.store, ConflictError, f"backend group {group}", token=token, sda=sda)


def test_submit_refuses_a_priority_out_of_range(setup: Setup) -> None:
    refused(setup.store, InvalidValueError, token=setup.token, sda=setup.sda, priority=100)


# -- the scheduling pass ---------------------------------------------------------------------------------


def test_a_pass_allocates_devices_and_marks_them_preparing(setup: Setup) -> None:
    with setup.store.transaction("moreh-run") as s:
        job = submit(s, setup.token, setup.sda)
    with setup.store.transaction("schedule") as s:
        decision = s.jobs.run_scheduling_pass()
    assert [(a.job_id, a.devices) for a in decision.allocations] == [(job.id, ((setup.backend, 0), (setup.backend, 1)))]
    with setup.store.reading() as s:
        now = s.jobs.get(job.id)
        rows = s.all("SELECT job_id, backend_id, device_index FROM job_devices ORDER BY 3")
        assert s.jobs.queue_position(job.id) is None
    assert now.status == "SUBMITTED"
    assert now.submit_time is not None
    assert [(d.backend_host, d.index) for d in now.devices] == [(HOST, 0), (HOST, 1)]
    assert rows == [(job.id, setup.backend, 0), (job.id, setup.backend, 1)]
    assert device_statuses(setup.store, setup.backend) == ["PREPARING", "PREPARING", "IDLE", "IDLE"]


def test_a_second_job_of_the_same_sda_waits_for_the_first(setup: Setup) -> None:
    with setup.store.transaction("moreh-run") as s:
        first = submit(s, setup.token, setup.sda)
        second = submit(s, setup.token, setup.sda)
    with setup.store.transaction("schedule") as s:
        decision = s.jobs.run_scheduling_pass()
    assert [a.job_id for a in decision.allocations] == [first.id]
    assert decision.waiting[second.id] == f"SDA {setup.sda} already runs 1 job (one process per SDA)"
    with setup.store.transaction("schedule") as s:  # the first job still holds the SDA in the next pass
        again = s.jobs.run_scheduling_pass()
        assert s.jobs.get(second.id).status == "QUEUED"
    assert again.allocations == ()


def test_a_duplicable_token_runs_several_jobs_of_one_sda(setup: Setup) -> None:
    with setup.store.transaction("admin") as s:
        s.tokens.update_duplicable(setup.token, 0)
        jobs = [submit(s, setup.token, setup.sda) for _ in range(3)]
    with setup.store.transaction("schedule") as s:
        decision = s.jobs.run_scheduling_pass()
    assert [a.job_id for a in decision.allocations] == [jobs[0].id, jobs[1].id]
    assert "waiting for 2 device(s)" in decision.waiting[jobs[2].id]


def test_a_job_only_gets_devices_of_the_host_it_was_launched_on(setup: Setup) -> None:
    with setup.store.transaction("setup") as s:
        small = s.backends.register_local("node2", "10.0.0.2", gpus(2, "node2"))  # the best fit for 2 devices
        job = submit(s, setup.token, setup.sda)
        s.jobs.run_scheduling_pass()
        assert {d.backend_id for d in s.jobs.get(job.id).devices} == {setup.backend}
    assert device_statuses(setup.store, small) == ["IDLE", "IDLE"]


def test_a_job_keeps_its_host_when_an_admin_renames_the_backend(setup: Setup) -> None:
    with setup.store.transaction("moreh-run") as s:
        job = submit(s, setup.token, setup.sda)
        s.backends.update_device(setup.backend, None, "SHUTDOWN")
    with setup.store.transaction("admin") as s:
        s.backends.update_host(setup.backend, "renamed")
        s.backends.update_device(setup.backend, None, "IDLE")
        decision = s.jobs.run_scheduling_pass()
    assert [a.job_id for a in decision.allocations] == [job.id]
    assert {b for a in decision.allocations for b, _ in a.devices} == {setup.backend}


def test_a_job_whose_backend_was_deleted_waits_with_a_reason(setup: Setup) -> None:
    with setup.store.transaction("moreh-run") as s:
        job = submit(s, setup.token, setup.sda)
        s.backends.update_device(setup.backend, None, "SHUTDOWN")
    with setup.store.transaction("admin") as s:
        s.backends.delete(setup.backend)
        decision = s.jobs.run_scheduling_pass()
    assert decision.allocations == ()
    assert "none of them an ACTIVE backend" in decision.waiting[job.id]


def test_a_higher_priority_job_overtakes_in_the_queue(setup: Setup) -> None:
    with setup.store.transaction("setup") as s:
        s.backends.update_device(setup.backend, 2, "SHUTDOWN")
        s.backends.update_device(setup.backend, 3, "SHUTDOWN")
        low = submit(s, setup.token, setup.sda)
        token, sda = new_sda(s, 2)
        high = submit(s, token, sda)
        s.jobs.update_priority(high.id, 50)
        assert s.jobs.queue_position(high.id) == 1
        decision = s.jobs.run_scheduling_pass()
    assert [a.job_id for a in decision.allocations] == [high.id]
    assert decision.waiting[low.id].startswith("waiting for 2 device(s)")


def test_update_priority_checks_range_and_status(setup: Setup) -> None:
    with setup.store.transaction("moreh-run") as s:
        job = submit(s, setup.token, setup.sda)
    with pytest.raises(InvalidValueError), setup.store.transaction("admin") as s:
        s.jobs.update_priority(job.id, -100)
    with setup.store.transaction("admin") as s:
        s.jobs.update_priority(job.id, -99)
        assert s.jobs.get(job.id).priority == -99
        s.jobs.run_scheduling_pass()
    with pytest.raises(ConflictError, match="only a QUEUED job"), setup.store.transaction("admin") as s:
        s.jobs.update_priority(job.id, 5)
    with pytest.raises(NotFoundError), setup.store.transaction("admin") as s:
        s.jobs.update_priority(12345, 5)


# -- running, finishing, releasing ---------------------------------------------------------------------


def started(setup: Setup) -> Job:
    with setup.store.transaction("moreh-run") as s:
        job = submit(s, setup.token, setup.sda)
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(job.id, 4242, 1.5)
        return s.jobs.get(job.id)


def test_mark_running_records_the_process_and_devices_processing(setup: Setup) -> None:
    job = started(setup)
    assert (job.status, job.pid, job.pid_create_time) == ("RUNNING", 4242, 1.5)
    assert job.start_time is not None
    assert device_statuses(setup.store, setup.backend) == ["PROCESSING", "PROCESSING", "IDLE", "IDLE"]
    with setup.store.reading() as s:
        assert s.sdas.running() == [setup.sda]
    with setup.store.transaction("moreh-run") as s:
        s.jobs.mark_cleaning(job.id)
    assert device_statuses(setup.store, setup.backend) == ["CLEANING", "CLEANING", "IDLE", "IDLE"]


def test_finish_moves_the_job_to_history_and_frees_its_devices(setup: Setup) -> None:
    job = started(setup)
    with setup.store.transaction("moreh-run") as s:
        entry = s.jobs.finish(job.id, 3, "failed")
        assert s.jobs.finish(job.id, 0, "finished") is None  # already gone
    assert entry is not None
    assert (entry.id, entry.exit_code, entry.end_reason, entry.pid, entry.device_count) == (
        job.id,
        3,
        "failed",
        4242,
        2,
    )
    assert json.loads(entry.devices) == [
        {"host": HOST, "backend_id": setup.backend, "index": 0},
        {"host": HOST, "backend_id": setup.backend, "index": 1},
    ]
    assert entry.start_time == job.start_time
    assert entry.start_time is not None
    assert entry.end_time >= entry.start_time
    assert device_statuses(setup.store, setup.backend) == ["IDLE"] * 4
    with setup.store.reading() as s:
        assert s.jobs.find(job.id) is None
        assert s.all("SELECT count(*) FROM job_devices") == [(0,)]
        assert s.all("SELECT job_id, token, backend_id, device_index FROM device_usage ORDER BY 4") == [
            (job.id, setup.token, setup.backend, 0),
            (job.id, setup.token, setup.backend, 1),
        ]
        assert [h.id for h in s.jobs.history()] == [job.id]
        assert [h.id for h in s.jobs.history(token=setup.token)] == [job.id]


def test_a_job_that_never_started_records_no_usage(setup: Setup) -> None:
    with setup.store.transaction("moreh-run") as s:
        job = submit(s, setup.token, setup.sda)
        s.jobs.run_scheduling_pass()
        entry = s.jobs.finish(job.id, None, "lost")
        assert s.all("SELECT count(*) FROM device_usage") == [(0,)]
    assert entry is not None
    assert (entry.end_reason, entry.exit_code, entry.start_time) == ("lost", None, None)
    assert device_statuses(setup.store, setup.backend) == ["IDLE"] * 4


def test_finish_refuses_an_unknown_reason(setup: Setup) -> None:
    job = started(setup)
    with pytest.raises(InvalidValueError, match="end reason"), setup.store.transaction("moreh-run") as s:
        s.jobs.finish(job.id, 0, "exploded")
    with setup.store.reading() as s:
        assert s.jobs.get(job.id).status == "RUNNING"


def test_releasing_a_queued_job_removes_it_at_once(setup: Setup) -> None:
    with setup.store.transaction("moreh-run") as s:
        job = submit(s, setup.token, setup.sda)
    with setup.store.transaction("admin") as s:
        s.jobs.request_release(job.id)
    assert queued(setup.store) == []
    with setup.store.reading() as s:
        entry = s.jobs.history_entry(job.id)
    assert entry is not None
    assert entry.end_reason == "released"


def test_a_released_running_job_ends_as_released_whatever_its_exit(setup: Setup) -> None:
    job = started(setup)
    with setup.store.transaction("admin") as s:
        s.jobs.request_release(job.id)
        assert s.jobs.get(job.id).release_requested
        assert s.jobs.get(job.id).status == "RUNNING"  # the launcher ends the process tree, then finishes
    with setup.store.transaction("moreh-run") as s:
        entry = s.jobs.finish(job.id, -15, "failed")
    assert entry is not None
    assert (entry.end_reason, entry.exit_code) == ("released", -15)
    with pytest.raises(NotFoundError), setup.store.transaction("admin") as s:
        s.jobs.request_release(job.id)


# -- usage ---------------------------------------------------------------------------------------------


def test_usage_counts_device_seconds_clipped_to_the_window(setup: Setup) -> None:
    job = started(setup)
    with setup.store.transaction("test clock") as s:
        # pretend the job started 1,000 s ago (the database clock is the one that counts)
        start = s.one("SELECT (now() - INTERVAL 1000 SECOND)::TIMESTAMP")
        assert start is not None
        began: datetime = start[0]
        s.execute("UPDATE jobs SET start_time = ? WHERE id = ?", [began, job.id])
    with setup.store.transaction("moreh-run") as s:
        s.jobs.finish(job.id, 0, "finished")
        usage = s.jobs.usage(began + timedelta(seconds=100), began + timedelta(seconds=400))
        assert [(u.token, u.description, u.device_seconds, u.jobs) for u in usage] == [
            (setup.token, "user@example.com", pytest.approx(600.0), 1)
        ]
        head = s.jobs.usage(began - timedelta(seconds=500), began + timedelta(seconds=100))
        assert [u.device_seconds for u in head] == [pytest.approx(200.0)]
        assert s.jobs.usage(began - timedelta(days=1), began - timedelta(seconds=1)) == []
        whole = s.jobs.usage(began - timedelta(days=1), began + timedelta(days=1), setup.token)
        assert whole[0].device_seconds == pytest.approx(2000.0, abs=20.0)


def test_usage_counts_running_jobs_up_to_now_and_filters_by_token(setup: Setup) -> None:
    job = started(setup)
    with setup.store.transaction("setup") as s:
        other, _other_sda = new_sda(s, 1)
        row = s.one("SELECT (now() - INTERVAL 100 SECOND)::TIMESTAMP")
        assert row is not None
        began: datetime = row[0]
        s.execute("UPDATE jobs SET start_time = ? WHERE id = ?", [began, job.id])
    with setup.store.reading() as s:
        usage = s.jobs.usage(began + timedelta(seconds=50), began + timedelta(days=1))
        assert [u.token for u in usage] == [setup.token]
        assert usage[0].device_seconds == pytest.approx(100.0, abs=20.0)  # 2 devices x ~50 s so far
        assert s.jobs.usage(began, began + timedelta(days=1), other) == []
        with pytest.raises(InvalidValueError, match="end of the period"):
            s.jobs.usage(began, began)
        with pytest.raises(NotFoundError):
            s.jobs.usage(began, began + timedelta(seconds=1), "nosuchtoken")


# -- max SDA -------------------------------------------------------------------------------------------


def test_a_token_may_own_up_to_its_max_sda(setup: Setup) -> None:
    with setup.store.reading() as s:
        model = s.sdas.get(setup.sda).model_id
    with pytest.raises(ConflictError, match="max SDA"), setup.store.transaction("admin") as s:
        s.sdas.create(setup.token, "", model)
    with setup.store.transaction("admin") as s:
        s.tokens.update_max_sda(setup.token, 3)
        s.sdas.create(setup.token, "", model)
        s.sdas.create(setup.token, "", model)
    with pytest.raises(ConflictError, match="already holds 3 SDA"), setup.store.transaction("admin") as s:
        s.sdas.create(setup.token, "", model)
    with setup.store.reading() as s:
        assert len(s.sdas.of_token(setup.token)) == 3


# -- reserved SDAs -------------------------------------------------------------------------------------


def test_a_reserved_sda_job_runs_on_its_reserved_devices_and_others_never_get_them(setup: Setup) -> None:
    with setup.store.transaction("admin") as s:
        token = s.tokens.create("vip@example.com")
        resv = s.sdas.create(token, "", s.models.create("one", 1), reserved=True)
        held = s.all("SELECT backend_id, device_index FROM sda_reservations WHERE sda_id = ?", [resv])
        assert len(held) == 1
        big_token, big_sda = new_sda(s, 4)
    refused(setup.store, ConflictError, "has 3 usable", token=big_token, sda=big_sda)
    with setup.store.transaction("moreh-run") as s:
        first = submit(s, setup.token, setup.sda)
        mine = submit(s, token, resv)
        decision = s.jobs.run_scheduling_pass()
        given = {a.job_id: a.devices for a in decision.allocations}
    assert given[mine.id] == tuple(held)
    assert not set(given[first.id]) & set(held)


def test_a_reserved_sda_job_must_run_on_the_host_holding_its_devices(setup: Setup) -> None:
    with setup.store.transaction("admin") as s:
        token = s.tokens.create("vip@example.com")
        resv = s.sdas.create(token, "", s.models.create("one", 1), reserved=True)
        s.backends.register_local("node2", "10.0.0.2", gpus(2, "node2"))
    refused(setup.store, ConflictError, f"reserves devices on host '{HOST}'", token=token, sda=resv, host="node2")
