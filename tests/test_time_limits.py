"""Time limits, backfill and estimated starts end to end (issue 12): real moreh-run processes on 8 simulated GPUs.

The scenario of the issue runs with real launchers; limits are enforced by the launcher itself (its job past
the limit ends within the grace period plus a second) and by the daemon when the launcher cannot act; every
new command and option refuses bad input in one line with the state unchanged.
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

import psutil
import pytest

from tests import test_moreh_run as launcher_tests
from tests.conftest import BIN, Smc, dump_state, ok
from tests.test_moreh_run import PY, gone, moreh_run, start, wait_for_stderr, wait_until

SMI = str(BIN / "moreh-smi")
SDAMANAGER = str(BIN / "sdamanager")

simulated_host = launcher_tests.simulated_host
no_leftovers = launcher_tests.no_leftovers
user = launcher_tests.user
registered = launcher_tests.registered

# Holds its devices until the file argv[1] exists; says it started by creating argv[1] + ".on".
HOLDER = """
import os, sys, time
open(sys.argv[1] + ".on", "w").close()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
"""
# Ignores SIGTERM, so only the SIGKILL after the grace period ends it; says it started like HOLDER.
STUBBORN = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1] + ".on", "w").close()
time.sleep(120)
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


def start_daemon(*args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([SDAMANAGER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _daemons.append(proc)
    wait_for_stderr(proc, "running (pid")
    return proc


def holder(token: str, path: Path, *options: str) -> subprocess.Popen[bytes]:
    """Start a job that holds its devices until ``path`` exists; return once its command runs."""
    proc = start(*options, "--", PY, "-c", HOLDER, str(path), token=token)
    wait_until(Path(str(path) + ".on").exists, what=f"the job of {path.name} to start")
    return proc


def smi_json(token: str) -> dict[str, Any]:
    done = subprocess.run(
        [SMI, "--json"], env=dict(os.environ, MOREH_SDA_TOKEN=token), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def job_of(smc: Smc, token: str) -> dict[str, Any]:
    """The token's one queued or running job, as ``show job --json`` shows it (through a daemon if one runs)."""
    jobs = [j for j in ok(smc("show job", json=True)).json if j["token"] == token]
    assert len(jobs) == 1, jobs
    return dict(jobs[0])


def allocated_at(smc: Smc, job_id: int) -> datetime:
    """When the job got its devices (its ALLOCATE_JOB event): the moment its limit starts counting."""
    events = ok(smc("show eventlog 1000", json=True)).json
    [event] = [e for e in events if e["action"] == "ALLOCATE_JOB" and e["detail"].startswith(f"id={job_id} ")]
    return datetime.fromisoformat(event["time"])


def ended(smc: Smc, job_id: int) -> dict[str, Any] | None:
    result = smc(f"get history feid {job_id}", json=True)
    if result.code != 0:
        return None
    entries = result.json
    return dict(entries[0] if isinstance(entries, list) else entries)


# -- the scenario ------------------------------------------------------------------------------------


def test_backfill_scenario_with_real_launchers(smc: Smc, user: Callable[..., str], tmp_path: Path) -> None:
    """8 GPUs: A (1 GPU, 60 s) runs; B (8 GPUs) waits; C (1 GPU, 20 s) starts; D (1 GPU, 10 min) waits
    ReservedForJob:B; when A ends, B starts."""
    a, b, c, d = user(model=1), user(model=4), user(model=1), user(model=1)
    stop_a, stop_b, stop_d = tmp_path / "a", tmp_path / "b", tmp_path / "d"
    holder(a, stop_a, "-t", "60s")
    job_a = job_of(smc, a)

    launcher_b = start("--", PY, "-c", HOLDER, str(stop_b), token=b)
    said_b = wait_for_stderr(launcher_b, "Estimated start")
    b_id = job_of(smc, b)["id"]
    assert f"Job {b_id} waits in the queue at position 1 (Resources)" in said_b

    # C asks for 20 s: it ends before A's limit frees the 8 GPUs B waits for, so it starts at once and cannot
    # delay B (strict priority would have kept it waiting behind B).
    done_c = moreh_run("-t", "20s", PY, "-c", "print('c ran')", token=c)
    assert (done_c.returncode, done_c.stdout) == (0, "c ran\n"), done_c.stderr
    assert "waits in the queue" not in done_c.stderr

    # D asks for 10 minutes: it would run past B's planned start, so it waits, saying for whom.
    launcher_d = start("-t", "10m", "--", PY, "-c", HOLDER, str(stop_d), token=d)
    said_d = wait_for_stderr(launcher_d, "waits in the queue")
    assert f"(ReservedForJob:{b_id})" in said_d
    d_id = job_of(smc, d)["id"]

    # Every view says the same: moreh-smi --json, show job --start.
    [waiting_d] = smi_json(d)["waiting"]
    assert waiting_d["reason_code"] == f"ReservedForJob:{b_id}"
    [waiting_b] = smi_json(b)["waiting"]
    assert waiting_b["reason_code"] == "Resources"
    planned = datetime.fromisoformat(waiting_b["expected_start"])
    a_ends = datetime.fromisoformat(job_a["submit_time"]).timestamp() + 60
    assert abs(planned.timestamp() - a_ends) <= 1.0, (planned, a_ends)
    started = ok(smc("show job --start", json=True)).json
    assert [(j["id"], j["reason_code"]) for j in started] == [
        (b_id, "Resources"),
        (d_id, f"ReservedForJob:{b_id}"),
    ]
    assert started[0]["expected_start"] == waiting_b["expected_start"]
    text = ok(smc("show job --start")).out
    assert f"ReservedForJob:{b_id}" in text
    assert "Expected Start" in text

    # A ends: B gets all 8 GPUs (D still waits, now behind a job without a limit).
    stop_a.touch()
    wait_until(Path(str(stop_b) + ".on").exists, timeout=15, what="B to start once A ended")
    assert job_of(smc, d)["status"] == "QUEUED"
    stop_b.touch()
    wait_until(Path(str(stop_d) + ".on").exists, timeout=15, what="D to start once B ended")
    stop_d.touch()
    for proc in (launcher_b, launcher_d):
        assert proc.wait(timeout=15) == 0


def test_strict_policy_keeps_the_small_job_behind_the_big_one(
    smc: Smc, user: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOREH_SCHEDULER_POLICY", "strict")
    a, b, c = user(model=1), user(model=4), user(model=1)
    holder(a, tmp_path / "a", "-t", "60s")
    launcher_b = start("--", PY, "-c", HOLDER, str(tmp_path / "b"), token=b)
    wait_for_stderr(launcher_b, "waits in the queue")
    launcher_c = start("-t", "20s", "--", PY, "-c", "pass", token=c)
    said = wait_for_stderr(launcher_c, "waits in the queue")
    assert "(Priority)" in said


# -- enforcement ---------------------------------------------------------------------------------------------


def test_a_job_past_its_limit_ends_within_the_grace_with_its_launcher_alive(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    token = user()
    done = moreh_run("-t", "2s", PY, "-c", STUBBORN, str(tmp_path / "s"), token=token)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    lines = [line for line in done.stderr.splitlines() if "time limit" in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("moreh-run: job ")
    assert lines[0].endswith("reached its time limit (00:00:02).")
    job_id = int(lines[0].split()[2])
    entry = ended(smc, job_id)
    assert entry is not None
    assert (entry["end_reason"], entry["time_limit"]) == ("timeout", 2.0)
    took = datetime.fromisoformat(entry["end_time"]) - allocated_at(smc, job_id)
    # SIGTERM at the limit is ignored; SIGKILL after MOREH_RELEASE_GRACE=1; the end is recorded within a second.
    assert 2.0 <= took.total_seconds() <= 2.0 + 1.0 + 1.0, took
    assert "|  TIMEOUT  |" in ok(smc("show history")).out


def test_the_daemon_ends_a_job_past_its_limit_whose_launcher_cannot_act(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    token = user()
    start_daemon("--interval", "0.5")
    marker = tmp_path / "s"
    launcher = start("-t", "3s", "--", PY, "-c", STUBBORN, str(marker), token=token)
    wait_until(Path(str(marker) + ".on").exists, what="the job to start")
    wait_until(lambda: job_of(smc, token)["status"] == "RUNNING", what="the job to be RUNNING")
    job = job_of(smc, token)
    command = job["pid"]
    os.kill(launcher.pid, signal.SIGSTOP)  # alive, but it cannot enforce anything now
    try:
        wait_until(lambda: ended(smc, job["id"]) is not None, timeout=15, what="the daemon to end the job")
        entry = ended(smc, job["id"])
        assert entry is not None
        assert entry["end_reason"] == "timeout", entry
        late = datetime.fromisoformat(entry["end_time"]) - allocated_at(smc, job["id"])
        # one tick (0.5 s) and the grace (1 s) after the 3 s limit, with half a second for the record itself
        assert 3.0 <= late.total_seconds() <= 3.0 + 0.5 + 1.0 + 0.5, late
        assert gone(command)
    finally:
        os.kill(launcher.pid, signal.SIGCONT)
    assert launcher.wait(timeout=15) in (128 + signal.SIGTERM, 128 + signal.SIGKILL, -signal.SIGKILL)


def test_the_daemon_ends_a_job_past_its_limit_whose_launcher_is_gone(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    token = user()
    marker = tmp_path / "s"
    launcher = start("-t", "2s", "--", PY, "-c", STUBBORN, str(marker), token=token)
    wait_until(Path(str(marker) + ".on").exists, what="the job to start")
    wait_until(lambda: job_of(smc, token)["status"] == "RUNNING", what="the job to be RUNNING")
    job = job_of(smc, token)
    [guardian] = [p for p in psutil.Process(launcher.pid).children() if p.pid != job["pid"]]
    guardian.kill()
    launcher.kill()
    launcher.wait(5)
    deadline = allocated_at(smc, job["id"]).timestamp() + 2.0
    time.sleep(max(0.0, deadline - time.time()) + 0.2)  # past its limit, with nobody to end it
    started = time.time()
    start_daemon("--interval", "0.5")
    wait_until(lambda: ended(smc, job["id"]) is not None, timeout=15, what="the daemon to end the job")
    entry = ended(smc, job["id"])
    assert entry is not None
    assert entry["end_reason"] == "timeout", entry
    assert datetime.fromisoformat(entry["end_time"]).timestamp() - started <= 0.5 + 1.0 + 1.5  # tick, grace, start-up
    assert gone(job["pid"])


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["bogus", "0", "-5", "1:99", "25:61:00", "400d", "1.5h", ""])
def test_bad_limits_on_moreh_run_queue_nothing(
    smc: Smc, user: Callable[..., str], registered: None, limit: str
) -> None:
    token = user()
    before = dump_state()
    done = moreh_run("--time", limit, "true", token=token)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "M:S, H:M:S, D-H" in done.stderr
    assert dump_state() == before


def test_a_limit_above_the_maximum_is_refused_before_anything_is_queued(
    smc: Smc, user: Callable[..., str], registered: None
) -> None:
    token = user()
    ok(smc(f"update token timelimit {token} 30m 1h"))
    before = dump_state()
    done = moreh_run("-t", "2h", "true", token=token)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "moreh-run: Job refused: the time limit 02:00:00 is above the token's maximum 01:00:00; ask for 01:00:00 "
        "or less."
    ]
    assert dump_state() == before
    # Without --time the job gets the default; the model's smaller maximum wins over the token's.
    ok(smc("update sdamodel timelimit 1 null 45m"))
    done = moreh_run("-t", "50m", "true", token=token)
    assert done.returncode == 1
    assert "SDA model's maximum 00:45:00" in done.stderr
    assert moreh_run(PY, "-c", "pass", token=token).returncode == 0
    [entry] = ok(smc("show history", json=True)).json
    assert entry["time_limit"] == 30 * 60


@pytest.mark.parametrize(
    ("line", "code", "needle"),
    [
        ("update token timelimit T bogus", 2, "is not a time limit"),
        ("update token timelimit T 0", 2, "is not a time limit"),
        ("update token timelimit T -1h", 2, "is not a time limit"),
        ("update token timelimit T 1h bogus", 2, "maximum time limit"),
        ("update token timelimit T 2h 1h", 1, "above the maximum"),
        ("update token timelimit T 400d", 2, "at most 365 days"),
        ("update token timelimit NOSUCHTOKEN 1h", 1, "not found"),
        ("update token timelimit T", 2, "takes 2 to 3 argument(s)"),
        ("update sdamodel timelimit 999 1h", 1, "SDA model 999 not found"),
        ("update sdamodel timelimit one 1h", 2, "must be an integer"),
        ("update sdamodel timelimit 1 1h 1m", 1, "above the maximum"),
        ("update sdamodel timelimit 1 1x", 2, "is not a time limit"),
    ],
)
def test_bad_time_limit_commands_change_nothing(
    smc: Smc, rejects: Callable[..., str], user: Callable[..., str], line: str, code: int, needle: str
) -> None:
    token = user()
    ok(smc("update sdamodel timelimit 2 1h 2h"))
    rejects(line.replace(" T", f" {token}", 1) if " T" in line else line, code, needle)


def test_limit_columns_appear_only_once_a_limit_is_set(smc: Smc, user: Callable[..., str]) -> None:
    token = user()
    plain_token = ok(smc(f"get token {token}")).lines
    plain_models = ok(smc("show sdamodel")).lines
    assert "Time Limit" not in plain_token[1]
    assert "Time Limit" not in plain_models[1]
    ok(smc(f"update token timelimit {token} 90 1-12"))
    header, row = ok(smc(f"get token {token}")).lines[1], ok(smc(f"get token {token}")).lines[3]
    assert header.rstrip().endswith("|  Time Limit  |  Max Time Limit  |")
    assert row.rstrip().endswith("|  01:30:00    |  1-12:00:00      |")
    assert ok(smc(f"get token {token}", json=True)).json[0]["time_limit_max"] == 36 * 3600
    ok(smc("update sdamodel timelimit 3 2h"))
    models = ok(smc("show sdamodel")).lines
    assert "Max Time Limit" in models[1]
    assert "02:00:00" in models[5]
    # null clears; with nothing set anywhere the seeds' tables come back byte for byte.
    ok(smc(f"update token timelimit {token} null null"))
    ok(smc("update sdamodel timelimit 3 null"))
    assert ok(smc(f"get token {token}")).lines == plain_token
    assert ok(smc("show sdamodel")).lines == plain_models
    logged = [e["action"] for e in ok(smc("show eventlog 100", json=True)).json]
    assert logged.count("UPDATE_TOKEN_TIMELIMIT") == 2
    assert logged.count("UPDATE_SDAMODEL_TIMELIMIT") == 2


def test_every_waiting_job_in_moreh_smi_has_a_reason_code_and_estimate_columns(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    a, b = user(model=4), user(model=1)
    holder(a, tmp_path / "a", "-t", "1h")
    launcher = start("--", PY, "-c", "pass", token=b)
    wait_for_stderr(launcher, "waits in the queue")
    done = subprocess.run([SMI], env=dict(os.environ, MOREH_SDA_TOKEN=b), capture_output=True, text=True, timeout=30)
    header = next(line for line in done.stdout.splitlines() if "Waiting for" in line)
    assert [c.strip() for c in header.strip().strip("|").split("|")][-3:] == ["Waiting for", "Reason", "Est. Start"]
    row = next(line for line in done.stdout.splitlines() if "|  Resources  |" in line)
    estimate = row.strip().strip("|").split("|")[-1].strip()
    assert datetime.strptime(estimate, "%Y-%m-%d %H:%M:%S")
    assert smi_json(a)["waiting"] == []  # A runs: no waiting table, no new columns
    mine = subprocess.run([SMI], env=dict(os.environ, MOREH_SDA_TOKEN=a), capture_output=True, text=True, timeout=30)
    assert "Waiting jobs:" not in mine.stdout
