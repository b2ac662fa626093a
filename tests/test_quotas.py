"""Group quotas, borrowing and reclaim, fair share and quota requests end to end (issue 13).

The 8-GPU scenario of the issue runs with real moreh-run launchers and a real sdamanager (short grace and no
minimum run time, so it takes seconds); fair share and quota requests run through the services and the
console in this process, with the services' clock moved forward instead of waiting for days.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests import test_moreh_run as launcher_tests
from tests.conftest import BIN, Smc, dump_state, id_of, ok
from tests.test_moreh_run import PY, start, wait_for_stderr, wait_until

SMI = str(BIN / "moreh-smi")
SDAMANAGER = str(BIN / "sdamanager")
TICK = 0.5
GRACE = 1.0

simulated_host = launcher_tests.simulated_host
no_leftovers = launcher_tests.no_leftovers
registered = launcher_tests.registered

# Appends its job id to argv[2], then holds its devices until the file argv[1] exists.
WORKER = """
import os, sys, time
with open(sys.argv[2], "a") as f:
    f.write(os.environ["MOREH_JOB_ID"] + "\\n")
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
"""

_daemons: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def no_leftover_daemon() -> Iterator[None]:
    yield
    while _daemons:
        proc = _daemons.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_daemon() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [SDAMANAGER, "--interval", str(TICK)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _daemons.append(proc)
    wait_for_stderr(proc, "running (pid")
    return proc


def group_token(smc: Smc, name: str, model: int = 1, duplicable: bool = True) -> tuple[str, int]:
    """A token with an SDA of ``model`` (and any number of processes on it), alone in a new user group."""
    token = ok(smc(f"create token {name}")).out.strip().rsplit(" ", 1)[-1].rstrip(")")
    group = id_of(ok(smc(f"create usergroup {name}-group {token}")))
    models = id_of(ok(smc(f"create sdamodelgroup {name}-models 0 {model}")))
    ok(smc(f"add membership {group} {models}"))  # a token in a user group uses the models its groups reach
    ok(smc(f"create sda {token} {name}-sda {model}"))
    if duplicable:
        ok(smc(f"update token duplicable {token} 0"))
    return token, group


def lines(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def history(smc: Smc) -> dict[int, dict[str, Any]]:
    return {e["id"]: e for e in ok(smc("show history", json=True)).json}


def jobs(smc: Smc) -> dict[int, dict[str, Any]]:
    return {j["id"]: j for j in ok(smc("show job", json=True)).json}


# -- borrowing and reclaim with real processes -------------------------------------------------------------


@pytest.fixture
def quota_cluster(smc: Smc, registered: None, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Group A (nominal 4, borrow 4) and group B (nominal 4, borrow 0) on this host's 8 GPUs, and a daemon."""
    monkeypatch.setenv("MOREH_PREEMPT_GRACE", str(GRACE))
    monkeypatch.setenv("MOREH_PREEMPT_MIN_RUNTIME", "0")
    a, group_a = group_token(smc, "team-a")
    b, group_b = group_token(smc, "team-b")
    ok(smc(f"update usergroup quota {group_a} 0 4 4"))
    ok(smc(f"update usergroup quota {group_b} 0 4"))
    start_daemon()
    return a, b


def run_group_a(a: str, tmp_path: Path, *options: str) -> list[subprocess.Popen[bytes]]:
    """A starts 8 one-GPU jobs, one after the other (4 within its quota, then 4 borrowed)."""
    launchers = []
    for n in range(8):
        launchers.append(start(*options, "--", PY, "-c", WORKER, str(tmp_path / "stop-a"), str(tmp_path / "a.log"), token=a))
        wait_until(lambda: len(lines(tmp_path / "a.log")) == len(launchers), what=f"A's job {n + 1} to start")
    return launchers


def test_a_group_within_its_quota_reclaims_exactly_the_newest_borrowed_gpus(
    smc: Smc, quota_cluster: tuple[str, str], tmp_path: Path
) -> None:
    a, b = quota_cluster
    launchers = run_group_a(a, tmp_path)
    a_jobs = lines(tmp_path / "a.log")
    [quota_a, _] = ok(smc("show quota", json=True)).json
    assert (quota_a["used"], quota_a["borrowed"]) == (8, 4)
    assert set(jobs(smc)) == set(a_jobs)  # every A job runs

    asked = time.time()
    b_launchers = [
        start("--", PY, "-c", WORKER, str(tmp_path / "stop-b"), str(tmp_path / "b.log"), token=b) for _ in range(2)
    ]
    wait_until(lambda: len(lines(tmp_path / "b.log")) == 2, timeout=15, what="B's two jobs to start")
    ended = history(smc)
    victims = sorted(ended)
    assert victims == a_jobs[-2:], (victims, a_jobs)  # exactly two, A's newest (borrowed) jobs
    for victim in victims:
        assert ended[victim]["end_reason"] == "preempted"
        assert ended[victim]["end_detail"].startswith("preempted for job ")
        took = datetime.fromisoformat(ended[victim]["end_time"]).timestamp() - asked
        assert took <= GRACE + 2 * TICK + 1.0, took  # within the grace and two ticks (and a second of start-up)
    running = jobs(smc)
    assert set(a_jobs[:6]) <= set(running)  # the 4 jobs within A's quota, and 2 borrowed ones, keep running
    assert len(running) == 8
    assert all(j["status"] in ("SUBMITTED", "RUNNING") for j in running.values())  # B's may not have said RUNNING
    [quota_a, quota_b] = ok(smc("show quota", json=True)).json
    assert (quota_a["used"], quota_a["borrowed"], quota_b["used"]) == (6, 2, 2)
    assert "|  PREEMPTED  |" in ok(smc("show history")).out

    # The preempted launchers said so in one line and exited as a signalled job does.
    for launcher in launchers[-2:]:
        assert launcher.wait(timeout=10) == 128 + signal.SIGTERM
        assert launcher.stderr is not None
        said = [line for line in launcher.stderr.read().decode().splitlines() if "preempted" in line]
        assert len(said) == 1, said
        assert said[0].startswith("moreh-run: job ")
    (tmp_path / "stop-a").touch()
    (tmp_path / "stop-b").touch()
    for launcher in launchers[:-2] + b_launchers:
        assert launcher.wait(timeout=15) == 0


def test_preempted_jobs_with_requeue_go_back_to_the_queue_and_run_again(
    smc: Smc, quota_cluster: tuple[str, str], tmp_path: Path
) -> None:
    a, b = quota_cluster
    launchers = run_group_a(a, tmp_path, "--requeue")
    first_run = lines(tmp_path / "a.log")
    requested = {j: info["request_time"] for j, info in jobs(smc).items()}
    for _ in range(2):
        start("--", PY, "-c", WORKER, str(tmp_path / "stop-b"), str(tmp_path / "b.log"), token=b)
    wait_until(lambda: len(lines(tmp_path / "b.log")) == 2, timeout=15, what="B's two jobs to start")
    victims = sorted(history(smc))
    assert victims == first_run[-2:]
    # Each victim's launcher queued it again, keeping its request time: two new jobs wait for devices.
    wait_until(lambda: len(jobs(smc)) == 10, what="the requeued jobs to be queued")  # 6 of A, 2 of B, 2 again
    waiting = [j for j in jobs(smc).values() if j["status"] == "QUEUED"]
    assert sorted(j["request_time"] for j in waiting) == sorted(requested[v] for v in victims)
    for launcher in launchers[-2:]:
        assert launcher.stderr is not None
        wait_for_stderr(launcher, "(--requeue)")

    (tmp_path / "stop-b").touch()  # B is done: the requeued jobs get the GPUs back (as borrowed work)
    wait_until(lambda: len(lines(tmp_path / "a.log")) == 10, timeout=15, what="the requeued jobs to run again")
    again = lines(tmp_path / "a.log")[8:]
    assert sorted(again) == sorted(j["id"] for j in waiting)
    (tmp_path / "stop-a").touch()
    for launcher in launchers:
        assert launcher.wait(timeout=15) == 0  # the requeued run finished normally
    ended = history(smc)
    assert [ended[j]["end_reason"] for j in sorted(ended) if j in again] == ["finished", "finished"]


# -- fair share -------------------------------------------------------------------------------------------------


def _submit(s: Any, token: str, backend_id: int) -> int:
    sda = s.sdas.of_token(token)[0].id
    return int(s.jobs.submit(token, sda, backend_id=backend_id, launcher_pid=1, launcher_create_time=0.0,
                             process_name="train").id)


@pytest.mark.parametrize("heavy_first", [True, False])
def test_the_group_that_used_less_starts_first(
    smc: Smc, registered: None, tmp_path: Path, heavy_first: bool
) -> None:
    from moreh_tools.services import scheduling
    from state.store import StateStore

    heavy, heavy_group = group_token(smc, "heavy", model=4, duplicable=False)
    light, _ = group_token(smc, "light", model=4, duplicable=False)
    holder, _ = group_token(smc, "holder", model=4, duplicable=False)
    with StateStore().transaction("test: 100 GPU-hours for the heavy group") as s:
        s.fairshare.set(heavy_group, 100 * 3600.0, time.time())
        backend_id = s.backends.local_id(os.environ["MOREH_HOSTNAME"])
        assert backend_id is not None
        hold = _submit(s, holder, backend_id)
        assert [a.job_id for a in scheduling.run_pass(s).allocations] == [hold]
        first, second = (heavy, light) if heavy_first else (light, heavy)
        ids = {first: _submit(s, first, backend_id)}
        time.sleep(0.01)  # distinct request times: the heavy job may be the older one
        ids[second] = _submit(s, second, backend_id)
        assert scheduling.run_pass(s).allocations == ()
    started = ok(smc("show job --start", json=True)).json
    assert [j["id"] for j in started] == [ids[light], ids[heavy]]  # fair share orders equal priorities
    assert [j["position"] for j in started] == [1, 2]
    assert [j["id"] for j in ok(smc("show job", json=True)).json] == [hold, ids[light], ids[heavy]]
    done = smi(light, "--json")
    assert json.loads(done.stdout)["waiting"][0]["position"] == 1
    factors = {r["user_group"]: r["factor"] for r in ok(smc("show fairshare", json=True)).json}
    assert factors["light-group"] == 1.0
    assert factors["heavy-group"] < 0.5
    with StateStore().transaction("test: the holder ends") as s:
        s.jobs.mark_cleaning(hold)
        scheduling.finish_job(s, hold, 0, "finished")
        assert [a.job_id for a in scheduling.run_pass(s).allocations] == [ids[light]]


def test_usage_accrues_when_a_job_ends_and_decays_with_the_half_life(
    smc: Smc, registered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moreh_tools.services import scheduling, settings
    from state.store import StateStore

    monkeypatch.setenv("MOREH_FAIRSHARE_HALFLIFE", "3600")
    token, group = group_token(smc, "user", model=3, duplicable=False)  # 4 GPUs
    with StateStore().transaction("test: a job") as s:
        backend_id = s.backends.local_id(os.environ["MOREH_HOSTNAME"])
        assert backend_id is not None
        job = _submit(s, token, backend_id)
        scheduling.run_pass(s)
    ended_at = time.time() + 100.0
    monkeypatch.setattr(settings, "now", lambda: ended_at)
    with StateStore().transaction("test: it ends") as s:
        submitted = s.jobs.get(job).submit_time
        assert submitted is not None
        scheduling.finish_job(s, job, 0, "finished")
    expected = 4 * (ended_at - submitted.timestamp())
    [row] = ok(smc("show fairshare", json=True)).json
    assert row["usage_gpu_seconds"] == pytest.approx(expected, rel=1e-3)
    monkeypatch.setattr(settings, "now", lambda: ended_at + 3600.0)  # one half-life later
    [row] = ok(smc("show fairshare", json=True)).json
    assert row["usage_gpu_seconds"] == pytest.approx(expected / 2, rel=1e-3)
    assert row["user_group_id"] == group


# -- quota requests -------------------------------------------------------------------------------------------


def smi(token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMI, *args], env=dict(os.environ, MOREH_SDA_TOKEN=token), capture_output=True, text=True, timeout=30
    )


def test_an_approved_request_raises_the_quota_at_once_and_lowers_it_at_expiry(
    smc: Smc, registered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moreh_tools.services import scheduling, settings
    from state.store import StateStore

    token, group = group_token(smc, "asker", model=3, duplicable=False)  # its jobs need 4 GPUs
    ok(smc(f"update usergroup quota {group} 0 2"))
    sent = smi(token, "quota", "--request", "2", "--days", "3", "--reason", "paper deadline")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("Quota request 1 sent: 2 more GPU(s) for 3 day(s)")
    [pending] = ok(smc("show quota request", json=True)).json
    assert (pending["status"], pending["gpus"], pending["token"]) == ("PENDING", 2, token)
    with StateStore().transaction("test: a job above the quota") as s:
        backend_id = s.backends.local_id(os.environ["MOREH_HOSTNAME"])
        assert backend_id is not None
        job = _submit(s, token, backend_id)
        decision = scheduling.run_pass(s)
    assert decision.reason_codes[job] == "QuotaExceeded"

    approved = ok(smc("approve quota request 1", json=True)).json
    assert approved["status"] == "APPROVED"
    [quota] = ok(smc("show quota", json=True)).json
    assert (quota["nominal"], quota["granted"], quota["effective_nominal"]) == (2, 2, 4)
    assert jobs(smc)[job]["status"] == "SUBMITTED"  # the approval's pass started it at once
    mine = smi(token, "quota")
    assert mine.returncode == 0
    assert "APPROVED" in mine.stdout

    real_now = time.time()
    monkeypatch.setattr(settings, "now", lambda: real_now + 3 * 86400 + 60)  # three days and a minute later
    [quota] = ok(smc("show quota", json=True)).json
    assert (quota["granted"], quota["effective_nominal"]) == (0, 2)
    assert ok(smc("show quota request", json=True)).json[0]["status"] == "EXPIRED"
    with StateStore().transaction("test: a pass after the expiry") as s:
        scheduling.run_pass(s)
    events = [e for e in ok(smc("show eventlog 100", json=True)).json if "QUOTA" in e["action"]]
    assert [e["action"] for e in events] == [
        "UPDATE_USERGROUP_QUOTA", "REQUEST_QUOTA", "APPROVE_QUOTA_REQUEST", "QUOTA_REQUEST_EXPIRED",
    ]
    # The job started within the raised quota keeps running: only borrowed work is ever preempted.
    assert jobs(smc)[job]["status"] == "SUBMITTED"


def test_rejected_and_repeated_decisions_change_nothing(smc: Smc, registered: None) -> None:
    token, group = group_token(smc, "asker")
    ok(smc(f"update usergroup quota {group} 0 2 2"))
    assert smi(token, "quota", "--request", "1", "--days", "1", "--reason", "x").returncode == 0
    ok(smc("reject quota request 1"))
    [quota] = ok(smc("show quota", json=True)).json
    assert (quota["granted"], quota["effective_nominal"]) == (0, 2)
    before = dump_state()
    for line in ("approve quota request 1", "reject quota request 1"):
        result = smc(line)
        assert result.code == 1
        assert result.err == "Error: Quota request 1 is already REJECTED; a request is decided once.\n"
    assert dump_state() == before


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--request", "0", "--days", "1", "--reason", "x"], 1, "at least 1 GPU"),
        (["--request", "1", "--days", "0", "--reason", "x"], 1, "1 to 365 days"),
        (["--request", "9", "--days", "1", "--reason", "x"], 1, "at most 8 GPU(s)"),
        (["--request", "1", "--days", "1", "--reason", " "], 1, "Give a reason"),
        (["--request", "two", "--days", "1", "--reason", "x"], 2, "whole number"),
        (["--request", "-1", "--days", "1", "--reason", "x"], 2, "whole number"),
        (["--request", "1", "--reason", "x"], 2, "needs --days N and --reason TEXT"),
        (["--days", "1"], 2, "go with --request"),
        (["--request", "1", "--days", "1", "--reason", "x", "-t"], 2, "quota goes alone"),
    ],
)
def test_bad_quota_requests_are_one_line_and_change_nothing(
    smc: Smc, registered: None, args: list[str], code: int, needle: str
) -> None:
    token, group = group_token(smc, "asker")
    ok(smc(f"update usergroup quota {group} 0 2"))
    before = dump_state()
    done = smi(token, "quota", *args)
    assert done.returncode == code, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert needle in done.stderr, done.stderr
    assert dump_state() == before


def test_a_request_needs_a_quota_to_raise(smc: Smc, registered: None) -> None:
    token, _ = group_token(smc, "unlimited")
    before = dump_state()
    done = smi(token, "quota", "--request", "1", "--days", "1", "--reason", "x")
    assert done.returncode == 1
    assert "nothing to raise" in done.stderr
    assert dump_state() == before


@pytest.mark.parametrize(
    ("line", "code", "needle"),
    [
        ("update usergroup quota 1 0 -1", 1, "below zero"),
        ("update usergroup quota 1 0 2 -1", 1, "below zero"),
        ("update usergroup quota 1 0 9", 1, "above the 8 device(s)"),
        ("update usergroup quota 1 0 4 5", 1, "above the 8 device(s)"),
        ("update usergroup quota 1 0 null 2", 1, "needs a nominal quota"),
        ("update usergroup quota 1 0 0 2", 1, "needs a nominal quota"),
        ("update usergroup quota 99 0 1", 1, "not found"),
        ("update usergroup quota 1 99 1", 1, "not found"),
        ("update usergroup quota one 0 1", 2, "must be an integer"),
        ("update usergroup quota 1 0 many", 2, "must be an integer"),
        ("update usergroup quota 1 0", 2, "takes 3 to 4 argument(s)"),
        ("approve quota request 7", 1, "Quota request 7 not found"),
        ("reject quota request x", 2, "must be an integer"),
        ("show quota request WAITING", 2, "Unknown request status"),
    ],
)
def test_bad_quota_commands_change_nothing(
    smc: Smc, registered: None, rejects: Callable[..., str], line: str, code: int, needle: str
) -> None:
    group_token(smc, "team")
    ok(smc("update usergroup quota 1 0 2 2"))
    rejects(line, code, needle)
