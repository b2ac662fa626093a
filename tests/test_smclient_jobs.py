"""The admin console's job queue commands: show/get job, priority, release, history, usage, resv_sda.

Jobs are built through the state API the way ``moreh-run`` builds them; a running job is a real
child process (a shell that learns its job id on stdin and then carries it in MOREH_JOB_ID), so
``release`` has a real process tree to terminate.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import pytest

from state.store import StateStore
from tests.conftest import Result, Smc, dump_state, fails, ok

HOST = "jobhost"
SMALL, MEDIUM, LARGE = 1, 2, 3  # seeded SDA models: 1, 2 and 4 devices

# Stand-ins for moreh-run and its job: read the job id, carry it in MOREH_JOB_ID, report ready.
# LAUNCHER is one process; STUBBORN_JOB is a tree (shell + 2 children) that ignores SIGTERM.
LAUNCHER = "read id; export MOREH_JOB_ID=$id; exec sh -c 'echo ready; exec sleep 60'"
STUBBORN_JOB = 'read id; export MOREH_JOB_ID=$id; trap "" TERM; sleep 60 & sleep 60 & echo ready; wait'


@dataclass
class RunningJob:
    """A job and the process standing for it."""

    id: int
    proc: subprocess.Popen[str]

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def store(moreh_home: Path, monkeypatch: pytest.MonkeyPatch) -> StateStore:
    """A state with this host registered as backend ``jobhost`` with 8 GPUs."""
    monkeypatch.setenv("MOREH_HOSTNAME", HOST)
    monkeypatch.setenv("MOREH_RELEASE_GRACE", "1")
    st = StateStore()
    with st.transaction("test setup") as s:
        s.backends.register_local(HOST, "127.0.0.1", [(f"GPU-{i}", "Fake GPU", 81920) for i in range(8)])
    return st


def make_token(store: StateStore, description: str = "user@gmail.com_vm", priority: int = 0) -> str:
    with store.transaction("test") as s:
        return s.tokens.create(description, priority)


def make_sda(store: StateStore, token: str, model: int = MEDIUM, *, reserved: bool = False) -> int:
    with store.transaction("test") as s:
        s.tokens.update_max_sda(token, 8)
        return s.sdas.create(token, "", model, reserved=reserved)


class Jobs:
    """Queues and starts jobs whose launchers are real processes tagged with their job id."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.procs: list[subprocess.Popen[str]] = []

    def _spawn(self, script: str) -> subprocess.Popen[str]:
        env = {**os.environ, "MOREH_HOME": str(self.store.home)}
        proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.procs.append(proc)
        return proc

    def launch(self, token: str, sda: int, name: str = "python train.py -b 32", script: str = LAUNCHER) -> RunningJob:
        """Submit a job for a fresh launcher process, run a scheduling pass, hand the launcher its id."""
        proc = self._spawn(script)
        with self.store.transaction("test") as s:
            job = s.jobs.submit(
                token,
                sda,
                backend_id=s.backends.local_id(HOST),
                launcher_pid=proc.pid,
                launcher_create_time=psutil.Process(proc.pid).create_time(),
                process_name=name,
                client_version="moreh-run 0.1.0",
            )
            s.jobs.run_scheduling_pass()
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(f"{job.id}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ready"
        return RunningJob(job.id, proc)

    def queue(self, token: str, sda: int, name: str = "python train.py -b 32") -> int:
        """Queue a job (it may be allocated devices at once) and return its id."""
        return self.launch(token, sda, name).id

    def start(self, token: str, sda: int, script: str = LAUNCHER, name: str = "python train.py -b 32") -> RunningJob:
        """Queue a job that gets devices at once and mark its process RUNNING."""
        job = self.launch(token, sda, name, script)
        with self.store.transaction("test") as s:
            assert s.jobs.get(job.id).status == "SUBMITTED"
            s.jobs.mark_running(job.id, job.proc.pid, psutil.Process(job.proc.pid).create_time())
        return job

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                proc.kill()
            proc.wait()


@pytest.fixture
def jobs(store: StateStore) -> Iterator[Jobs]:
    """Job launchers for one test; whatever is left running is killed."""
    made = Jobs(store)
    yield made
    made.cleanup()


def device_statuses(store: StateStore) -> list[str]:
    with store.reading() as s:
        return [str(r[0]) for r in s.all("SELECT status FROM devices ORDER BY backend_id, idx")]


def cells(line: str) -> list[str]:
    """The cells of one grid line, padding kept."""
    return line.split("|")[1:-1]


def table_rows(result: Result) -> list[list[str]]:
    """The data rows of a grid, stripped."""
    return [[c.strip() for c in cells(line)] for line in result.lines[3:-1]]


def name_values(result: Result) -> dict[str, str]:
    return {row[0]: row[1] for row in table_rows(result)}


def wait_until(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d\d$")


# -- show job ---------------------------------------------------------------------------------


def test_show_job_prints_the_seed_table_with_numbers_right_aligned(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    running = jobs.start(token, make_sda(store, token), name="python train.py --save-model model.pt")
    waiting = jobs.queue(token, make_sda(store, token, LARGE), "python big.py")
    jobs.queue(token, make_sda(store, token, LARGE), "python bigger.py")
    out = ok(smc("show job"))
    header = out.lines[1]
    assert [c.strip() for c in cells(header)] == [
        "FeID",
        "Token",
        "PRY",
        "Status",
        "PID",
        "Process Name",
        "Start Time",
    ]
    assert out.lines[0] == out.lines[-1] == "+" + "-" * (len(header) - 2) + "+"
    assert out.lines[2] == "+" + "=" * (len(header) - 2) + "+"
    rows = out.lines[3:-1]
    assert len(rows) == 3
    first = cells(rows[0])
    # FeID, PRY and PID are right-aligned with two spaces of padding, as in the seed.
    assert first[0] == "  " + str(running.id).rjust(len(first[0]) - 4) + "  "
    assert first[2] == "    0  "
    assert first[4].endswith(f"{running.proc.pid}  ")
    assert first[4].startswith("  ")
    assert first[1].strip() == token
    assert first[1].startswith("  " + token)
    assert first[3].strip() == "RUNNING"
    assert first[5].strip() == "python train.py --save-model model.pt"
    assert TIME.match(first[6].strip())
    second = [c.strip() for c in cells(rows[1])]
    assert second[0] == str(waiting)
    # 2 + 4 devices are taken; the second 4-device job waits for the 2 left.
    statuses = [cells(r)[3].strip() for r in rows]
    assert statuses == ["RUNNING", "SUBMITTED", "QUEUED"]
    assert [c.strip() for c in cells(rows[2])][6] == ""


def test_show_job_filters_by_status_and_accepts_the_seed_spelling(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    allocated = jobs.queue(token, make_sda(store, token, LARGE))
    jobs.queue(token, make_sda(store, token, LARGE))
    waiting = jobs.queue(token, make_sda(store, token, LARGE))
    for word in ("SUMMITED", "summited", "SUBMITTED"):
        rows = table_rows(ok(smc(f"show job {word}")))
        assert [r[0] for r in rows] == [str(allocated), str(allocated + 1)]
    assert [r[0] for r in table_rows(ok(smc("show job queued")))] == [str(waiting)]
    assert table_rows(ok(smc("show job RUNNING"))) == []
    before = dump_state()
    fails(smc("show job DONE"), 1, "DONE", "QUEUED")
    assert dump_state() == before


def test_show_job_json_has_every_field(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    job = jobs.start(token, make_sda(store, token))
    records = ok(smc("show job", json=True)).json
    assert len(records) == 1
    record = records[0]
    assert record["id"] == job.id
    assert record["token"] == token
    assert record["status"] == "RUNNING"
    assert record["pid"] == job.proc.pid
    assert record["device_count"] == 2
    assert record["devices"] == [
        {"backend_id": 1, "host": HOST, "index": 0},
        {"backend_id": 1, "host": HOST, "index": 1},
    ]
    assert datetime.fromisoformat(record["start_time"]) >= datetime.fromisoformat(record["request_time"])
    assert ok(smc("show job queued", json=True)).json == []


# -- get job ------------------------------------------------------------------------------------


def test_get_job_feid_prints_name_value_rows_and_host_rows(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store, "user@gmail.com_promo-vm-16")
    make_sda(store, token, SMALL)  # takes GPU 0, so the next job gets 1..4
    first = jobs.start(token, 1)
    job = jobs.start(token, make_sda(store, token, LARGE), name="python train_moreh.py --cfg x")
    out = ok(smc(f"get job feid {job.id}"))
    assert [c.strip() for c in cells(out.lines[1])] == ["Name", "Value"]
    values = name_values(out)
    assert list(values) == [
        "Frontend ID",
        "Token",
        "Token name",
        "SDA",
        "Priority",
        "Status",
        "Client",
        "Client PID",
        "Process name",
        "Backend Group",
        "Request time",
        "Start time",
        "Version",
        "Device count",
        HOST,
    ]
    assert values["Frontend ID"] == str(job.id)
    assert values["Token"] == token
    assert values["Token name"] == "user@gmail.com_promo-vm-16"
    assert values["Status"] == "RUNNING"
    assert values["Client"] == "moreh-run 0.1.0"
    assert values["Version"] == "0.1.0"
    assert values["Client PID"] == str(job.proc.pid)
    assert values["Process name"] == "python train_moreh.py --cfg x"
    assert values["Backend Group"] == "default_backend_group"
    assert TIME.match(values["Request time"])
    assert TIME.match(values["Start time"])
    assert values["Device count"] == "4"
    assert values[HOST] == "1,2,3,4"
    record = ok(smc(f"get job feid {first.id}", json=True)).json[0]
    assert record["token_name"] == "user@gmail.com_promo-vm-16"
    assert record["devices"][0]["index"] == 0


def test_get_job_feid_of_a_queued_job_has_no_start_time_and_no_host_rows(
    smc: Smc, store: StateStore, jobs: Jobs
) -> None:
    token = make_token(store)
    for _ in range(2):
        jobs.queue(token, make_sda(store, token, LARGE))
    waiting = jobs.launch(token, make_sda(store, token, SMALL))
    values = name_values(ok(smc(f"get job feid {waiting.id}")))
    assert values["Status"] == "QUEUED"
    assert values["Start time"] == ""
    assert values["Client PID"] == str(waiting.proc.pid)  # the launcher waiting for devices
    assert HOST not in values


def test_get_job_token_prints_one_grid_per_job(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    other = make_token(store, "someone_else")
    ids = [jobs.queue(token, make_sda(store, token, SMALL)) for _ in range(2)]
    jobs.queue(other, make_sda(store, other, SMALL))
    out = ok(smc(f"get job token {token}"))
    grids = out.out.strip().split("\n\n")
    assert len(grids) == 2
    for grid, job_id in zip(grids, ids, strict=True):
        assert re.search(rf"^\|  Frontend ID +\|  {job_id} +\|$", grid, re.MULTILINE)
        assert grid.splitlines()[0].startswith("+-")
        assert grid.splitlines()[2].startswith("+=")
    assert [r["id"] for r in ok(smc(f"get job token {token}", json=True)).json] == ids


def test_get_job_errors(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    job = jobs.start(token, make_sda(store, token))
    ok(smc(f"release {job.id}"))
    lonely = make_token(store, "no_jobs")
    before = dump_state()
    fails(smc("get job feid 999"), 1, "999", "show job")
    fails(smc(f"get job feid {job.id}"), 1, "ended", f"get history feid {job.id}")
    fails(smc("get job feid abc"), 2, "frontend id", "integer")
    fails(smc("get job feid"), 2, "get job feid {frontend id}")
    fails(smc(f"get job token {lonely}"), 1, lonely, "no job")
    fails(smc("get job token nosuchtoken"), 1, "nosuchtoken", "show token")
    assert dump_state() == before


# -- update job priority ------------------------------------------------------------------------


def test_update_job_priority_reorders_the_queue(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    holder = jobs.queue(token, make_sda(store, token, LARGE))
    jobs.queue(token, make_sda(store, token, LARGE))
    early = jobs.queue(token, make_sda(store, token, LARGE))
    late = jobs.queue(token, make_sda(store, token, LARGE))
    ok(smc(f"update job priority {late} 5"), "Update Job Priority success.")
    rows = {r[0]: r for r in table_rows(ok(smc("show job")))}
    assert rows[str(late)][2] == "5"
    # The freed devices go to the higher priority job, though it was queued later.
    ok(smc(f"release {holder}"))
    assert {r[0]: r[3] for r in table_rows(ok(smc("show job")))} == {
        str(holder + 1): "SUBMITTED",
        str(early): "QUEUED",
        str(late): "SUBMITTED",
    }


def test_lowering_the_head_of_the_queue_lets_smaller_jobs_start_at_once(
    smc: Smc, store: StateStore, jobs: Jobs
) -> None:
    token = make_token(store)
    jobs.queue(token, make_sda(store, token, LARGE))
    jobs.queue(token, make_sda(store, token, MEDIUM))
    head = jobs.queue(token, make_sda(store, token, LARGE))  # 4 wanted, 2 idle: holds the group up
    small = jobs.queue(token, make_sda(store, token, SMALL))
    assert {r[0]: r[3] for r in table_rows(ok(smc("show job queued")))} == {str(head): "QUEUED", str(small): "QUEUED"}
    ok(smc(f"update job priority {head} -1"))
    statuses = {r[0]: r[3] for r in table_rows(ok(smc("show job")))}
    assert statuses[str(small)] == "SUBMITTED"
    assert statuses[str(head)] == "QUEUED"


def test_update_job_priority_errors_change_nothing(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    running = jobs.start(token, make_sda(store, token))
    before = dump_state()
    fails(smc(f"update job priority {running.id} 3"), 1, "RUNNING", "QUEUED")
    fails(smc("update job priority 999 3"), 1, "999")
    fails(smc(f"update job priority {running.id} 100"), 1, "100")
    fails(smc(f"update job priority {running.id} high"), 2, "priority", "integer")
    fails(smc("update job priority 1"), 2, "update job priority {frontend id} {priority}")
    assert dump_state() == before


# -- release -------------------------------------------------------------------------------------


def test_release_a_queued_job_takes_it_out_of_the_queue(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    for _ in range(2):
        jobs.queue(token, make_sda(store, token, LARGE))
    waiting = jobs.queue(token, make_sda(store, token, SMALL))
    devices_before = device_statuses(store)
    ok(smc(f"release {waiting}"), f"Release Device success. (job : {waiting})")
    assert str(waiting) not in [r[0] for r in table_rows(ok(smc("show job")))]
    assert device_statuses(store) == devices_before
    row = table_rows(ok(smc("show history")))[-1]
    assert row[0] == str(waiting)
    assert row[3] == "RELEASED"
    assert row[6] == ""


def test_release_a_running_job_ends_its_process_tree_and_frees_the_devices(
    smc: Smc, store: StateStore, jobs: Jobs
) -> None:
    token = make_token(store)
    job = jobs.start(token, make_sda(store, token, LARGE), STUBBORN_JOB)  # ignores SIGTERM
    tree = job.tree()
    assert len(tree) == 3
    assert device_statuses(store)[:4] == ["PROCESSING"] * 4
    began = time.monotonic()
    ok(smc(f"release {job.id}"), f"Release Device success. (job : {job.id})")
    assert time.monotonic() - began < 4.0  # SIGKILL after MOREH_RELEASE_GRACE=1
    assert wait_until(lambda: all(gone(p) for p in tree), 2.0)
    assert device_statuses(store) == ["IDLE"] * 8
    assert table_rows(ok(smc("show job"))) == []
    entry = ok(smc(f"get history feid {job.id}", json=True)).json[0]
    assert entry["end_reason"] == "released"
    assert name_values(ok(smc(f"get history feid {job.id}")))["Status"] == "RELEASED"


def test_release_by_token_and_sda(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    other = make_token(store, "other")
    sda_a, sda_b = make_sda(store, token, SMALL), make_sda(store, token, SMALL)
    a = jobs.start(token, sda_a)
    b = jobs.start(token, sda_b)
    c = jobs.start(other, make_sda(store, other, SMALL))
    ok(smc(f"release {token} {sda_b}"), f"Release Device success. (job : {b.id})")
    assert wait_until(lambda: b.proc.poll() is not None)
    assert a.proc.poll() is None
    assert c.proc.poll() is None
    ok(smc(f"release {token}"), f"Release Device success. (job : {a.id})")
    assert wait_until(lambda: a.proc.poll() is not None)
    assert [r[0] for r in table_rows(ok(smc("show job")))] == [str(c.id)]
    assert c.proc.poll() is None


def test_release_all_ends_every_job(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    running = [jobs.start(token, make_sda(store, token, LARGE)) for _ in range(2)]
    waiting = jobs.queue(token, make_sda(store, token, SMALL))
    ids = ", ".join(str(i) for i in [*(j.id for j in running), waiting])
    result = ok(smc("release all", json=True)).json
    assert result == {
        "message": f"Release All Device success. (jobs : {ids})",
        "released": [r.id for r in running] + [waiting],
    }
    assert wait_until(lambda: all(j.proc.poll() is not None for j in running))
    assert device_statuses(store) == ["IDLE"] * 8
    assert {r[3] for r in table_rows(ok(smc("show history")))} == {"RELEASED"}
    ok(smc("release all"), "Release All Device success. (no job to release)")


def test_release_events_carry_the_whole_line_and_no_exit_none(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    running, _ = (jobs.start(token, make_sda(store, token, LARGE)) for _ in range(2))  # every device taken
    waiting = jobs.queue(token, make_sda(store, token, SMALL))
    for job_id in (waiting, running.id):
        ok(smc(f"release  {job_id}   # typed by the admin"))
    events = ok(smc("show eventlog 100", json=True)).json
    ended = [(e["action"], e["command"], e["detail"]) for e in events if e["action"] in ("RELEASE_JOB", "END_JOB")]
    assert ended == [
        ("RELEASE_JOB", f"release {waiting}", f"id={waiting} status=QUEUED"),
        ("END_JOB", f"release {waiting}", f"id={waiting} reason=released"),
        ("RELEASE_JOB", f"release {running.id}", f"id={running.id} status=RUNNING"),
        ("END_JOB", f"release {running.id}", f"id={running.id} reason=released"),
    ]
    assert not [e for e in events if "None" in e["detail"]]
    shown = "\n".join(ok(smc("show eventlog 4")).lines)
    assert f"|  release {running.id}  |" in shown
    assert "exit=None" not in shown


def test_release_errors_change_nothing(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    other = make_token(store, "other")
    sda = make_sda(store, token)
    job = jobs.start(token, sda)
    other_sda = make_sda(store, other, SMALL)
    idle_sda = make_sda(store, token, SMALL)
    before = dump_state()
    fails(smc("release 999"), 1, "999", "show job")
    fails(smc("release nosuchtoken"), 1, "nosuchtoken")
    fails(smc(f"release {other}"), 1, other, "nothing to release")
    fails(smc(f"release {token} {other_sda}"), 1, str(other_sda), "does not belong")
    fails(smc(f"release {token} {idle_sda}"), 1, f"SDA {idle_sda}", "nothing to release")
    fails(smc(f"release {token} 999"), 1, "SDA 999")
    fails(smc(f"release {token} x"), 2, "SDA ID", "integer")
    fails(smc(f"release {job.id} {sda}"), 2, f"release {job.id}")
    fails(smc("release"), 2, "release {[token | fronend id]}")
    fails(smc("release all now"), 2, "release all")
    assert dump_state() == before
    assert job.proc.poll() is None
    ok(smc(f"release {job.id}"))
    fails(smc(f"release {job.id}"), 1, "already ended", f"get history feid {job.id}")


# -- running SDAs and tokens agree with the job table --------------------------------------------


def test_show_sda_and_token_running_follow_the_jobs(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    other = make_token(store, "other")
    sda = make_sda(store, token)
    jobs.queue(other, make_sda(store, other, SMALL))  # SUBMITTED, not running
    assert table_rows(ok(smc("show sda running"))) == []
    assert table_rows(ok(smc("show token running"))) == []
    job = jobs.start(token, sda)
    sda_rows = table_rows(ok(smc("show sda running")))
    assert [(r[0], r[1], r[4], r[5]) for r in sda_rows] == [(str(sda), token, "1", "1,2")]
    assert [r[0] for r in table_rows(ok(smc("show token running")))] == [token]
    running = {r[1] for r in table_rows(ok(smc("show job RUNNING")))}
    assert running == {token}
    ok(smc(f"release {job.id}"))
    assert table_rows(ok(smc("show sda running"))) == []
    assert table_rows(ok(smc("show token running"))) == []


# -- history ---------------------------------------------------------------------------------------


def finish(store: StateStore, job_id: int, exit_code: int | None, reason: str) -> None:
    with store.transaction("test") as s:
        s.jobs.finish(job_id, exit_code, reason)


def test_history_tables(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    other = make_token(store, "other")
    done = jobs.start(token, make_sda(store, token, SMALL), name="python ok.py")
    crashed = jobs.start(other, make_sda(store, other, MEDIUM), name="python crash.py")
    finish(store, done.id, 0, "finished")
    finish(store, crashed.id, 3, "failed")
    out = ok(smc("show history"))
    assert [c.strip() for c in cells(out.lines[1])] == [
        "FeID",
        "Token",
        "PRY",
        "Status",
        "PID",
        "Process Name",
        "Start Time",
        "End Time",
        "Exit Code",
    ]
    rows = table_rows(out)
    assert [r[:6] for r in rows] == [
        [str(done.id), token, "0", "FINISHED", str(done.proc.pid), "python ok.py"],
        [str(crashed.id), other, "0", "FAILED", str(crashed.proc.pid), "python crash.py"],
    ]
    assert [r[8] for r in rows] == ["0", "3"]
    assert all(TIME.match(r[6]) and TIME.match(r[7]) and r[6] <= r[7] for r in rows)
    assert cells(out.lines[3])[8] == "          0  "  # exit codes right-aligned
    assert table_rows(ok(smc("show history 1"))) == rows[1:]
    assert table_rows(ok(smc(f"get history token {token}"))) == rows[:1]
    assert table_rows(ok(smc(f"get history token {other} 5"))) == rows[1:]

    device_rows = table_rows(ok(smc("show history device")))
    assert [c.strip() for c in cells(ok(smc("show history device")).lines[1])] == [
        "FeID",
        "Token",
        "Status",
        "Devices",
        "Backend",
        "Device_ID",
        "Start Time",
        "End Time",
    ]
    assert [r[:6] for r in device_rows] == [
        [str(done.id), token, "FINISHED", "1", HOST, "0"],
        [str(crashed.id), other, "FAILED", "2", HOST, "1,2"],
    ]
    assert len(table_rows(ok(smc("show history device 1")))) == 1

    values = name_values(ok(smc(f"get history feid {crashed.id}")))
    assert values["Status"] == "FAILED"
    assert values["Exit code"] == "3"
    assert values["Device count"] == "2"
    assert values[HOST] == "1,2"
    assert values["Token name"] == "other"
    assert TIME.match(values["End time"])
    records = ok(smc("show history", json=True)).json
    assert [(r["id"], r["end_reason"], r["exit_code"]) for r in records] == [
        (done.id, "finished", 0),
        (crashed.id, "failed", 3),
    ]
    assert records[1]["devices"] == [
        {"backend_id": 1, "host": HOST, "index": 1},
        {"backend_id": 1, "host": HOST, "index": 2},
    ]


def test_history_errors(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    waiting_for_nothing = jobs.queue(token, make_sda(store, token, SMALL))
    before = dump_state()
    for line in ("show history 0", "show history -3", "show history device 0", f"get history token {token} 0"):
        fails(smc(line), 2, "at least 1")
    fails(smc("show history many"), 2, "integer")
    fails(smc("get history feid 999"), 1, "999", "show history")
    fails(smc(f"get history feid {waiting_for_nothing}"), 1, "not ended", f"get job feid {waiting_for_nothing}")
    fails(smc("get history feid x"), 2, "frontend id")
    fails(smc("get history token nosuchtoken"), 1, "nosuchtoken")
    fails(smc("show history 1 2"), 2, "show history {count of history : optional}")
    assert dump_state() == before
    assert table_rows(ok(smc("show history"))) == []


# -- usage ------------------------------------------------------------------------------------------


def window(begin: datetime, end: datetime) -> str:
    return f"{begin:%Y-%m-%d %H:%M:%S} {end:%Y-%m-%d %H:%M:%S}"


def test_usage_counts_device_seconds_per_token(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    small = make_token(store, "small_user")
    large = make_token(store, "large_user")
    a = jobs.start(small, make_sda(store, small, MEDIUM))
    b = jobs.start(large, make_sda(store, large, LARGE))
    with store.reading() as s:
        starts = [s.jobs.get(a.id).start_time, s.jobs.get(b.id).start_time]
    began = max(t for t in starts if t is not None)
    # A whole-second window inside both running spans: exactly devices x 1 s each.
    inside = began.replace(microsecond=0) + timedelta(seconds=1)
    assert wait_until(lambda: datetime.now() >= inside + timedelta(seconds=1.2), 4.0)
    out = ok(smc(f"show usage {window(inside, inside + timedelta(seconds=1))}"))
    assert [c.strip() for c in cells(out.lines[1])] == ["Token", "Description", "Jobs", "Device Seconds"]
    assert table_rows(out) == [[large, "large_user", "1", "4.00"], [small, "small_user", "1", "2.00"]]
    assert cells(out.lines[3])[3].endswith("  4.00  ")
    only = ok(smc(f"show usage {window(inside, inside + timedelta(seconds=1))} {small}", json=True)).json
    assert [(r["token"], r["jobs"], r["device_seconds"]) for r in only] == [(small, 1, 2.0)]

    # A finished job counts its whole span once; an empty period prints an empty table.
    finish(store, a.id, 0, "finished")
    with store.reading() as s:
        entry = s.jobs.history_entry(a.id)
    assert entry is not None
    assert entry.start_time is not None
    span = (entry.end_time - entry.start_time).total_seconds()
    wide = window(entry.start_time - timedelta(hours=1), datetime.now() + timedelta(hours=1))
    record = ok(smc(f"show usage {wide} {small}", json=True)).json[0]
    assert math.isclose(record["device_seconds"], 2 * span, abs_tol=0.01)
    ancient = window(datetime(2020, 1, 1), datetime(2020, 1, 2))
    assert table_rows(ok(smc(f"show usage {ancient}"))) == []


def test_usage_errors_name_the_expected_format(smc: Smc, store: StateStore) -> None:
    token = make_token(store)
    before = dump_state()
    fails(smc("show usage 2024/01/01 00:00:00 2024-01-02 00:00:00"), 2, "begin date", "YYYY-MM-DD")
    fails(smc("show usage 2024-01-01 24:00:00 2024-01-02 00:00:00"), 2, "begin time", "hh:mm:ss")
    fails(smc("show usage 2024-01-01 00:00:00 2024-02-30 00:00:00"), 2, "end date", "YYYY-MM-DD")
    fails(smc("show usage 2024-01-01 00:00:00 2024-01-02 noon"), 2, "end time", "hh:mm:ss")
    fails(smc("show usage 2024-01-02 00:00:00 2024-01-01 00:00:00"), 1, "end", "after")
    fails(smc("show usage 2024-01-01 00:00:00 2024-01-02 00:00:00 nosuchtoken"), 1, "nosuchtoken")
    fails(smc("show usage 2024-01-01 00:00:00"), 2, "{begin date [YYYY-MM-DD]}")
    assert dump_state() == before
    ok(smc(f"show usage 2024-01-01 00:00:00 2024-01-02 00:00:00 {token}"))


# -- reserved SDAs ------------------------------------------------------------------------------------


def test_resv_sda_holds_its_devices_from_creation_to_deletion(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    ok(smc(f"update token sda max {token} 8"))
    ok(smc(f"create resv_sda {token} reserved {LARGE}"), "Create SDA success.")
    reserved = table_rows(ok(smc(f"get sda {token}")))
    assert [(r[3], r[4], r[5]) for r in reserved] == [("True", "1", "0,1,2,3")]
    sda = int(reserved[0][0])
    # Ordinary jobs never get the reserved devices, even while they are idle.
    user = make_token(store, "user")
    first = jobs.queue(user, make_sda(store, user, LARGE))
    second = jobs.queue(user, make_sda(store, user, SMALL))
    statuses = {r[0]: r[3] for r in table_rows(ok(smc("show job")))}
    assert statuses == {str(first): "SUBMITTED", str(second): "QUEUED"}
    assert name_values(ok(smc(f"get job feid {first}")))[HOST] == "4,5,6,7"
    # The reserved SDA's own job starts at once, on exactly its devices.
    own = jobs.queue(token, sda)
    assert name_values(ok(smc(f"get job feid {own}")))[HOST] == "0,1,2,3"
    fails(smc(f"create resv_sda {token} more {SMALL}"), 1, "reserve", "idle")
    ok(smc(f"release {own}"))
    ok(smc(f"delete sda {token} {sda}"), "Delete SDA success.")
    with store.transaction("test") as s:
        s.jobs.run_scheduling_pass()
    assert table_rows(ok(smc(f"get sda {token}"))) == []
    assert {r[0]: r[3] for r in table_rows(ok(smc("show job")))} == {str(first): "SUBMITTED", str(second): "SUBMITTED"}


def test_resv_sda_fails_when_the_group_has_too_few_idle_devices(smc: Smc, store: StateStore, jobs: Jobs) -> None:
    token = make_token(store)
    ok(smc(f"update token sda max {token} 8"))
    user = make_token(store, "user")
    jobs.queue(user, make_sda(store, user, LARGE))
    jobs.queue(user, make_sda(store, user, MEDIUM))  # 6 of 8 busy
    before = dump_state()
    fails(smc(f"create resv_sda {token} big {LARGE}"), 1, "4 device(s)", "only 2 idle")
    assert dump_state() == before
    assert table_rows(ok(smc(f"get sda {token}"))) == []
    ok(smc(f"create resv_sda {token} fits {MEDIUM}"))
    assert [(r[4], r[5]) for r in table_rows(ok(smc(f"get sda {token}")))] == [("1", "6,7")]
