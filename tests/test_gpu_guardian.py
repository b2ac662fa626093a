"""The GPU guardian end to end: a real ``sdamanager`` (short ``--interval``), real ``moreh-run`` launchers and the
console, on 8 simulated GPUs whose faults come from ``MOREH_FAKE_GPU_FAULTS``.

* Health: Xid 79 on GPU 3 makes it UNHEALTHY within a tick (the running job hears of it, in the event log and on its
  launcher's stderr) and no job gets it until an admin clears it; Xid 13 changes nothing; NVML failing closes the host.
* Foreign processes: a process of this test named by PID in the fault file is flagged within a tick and the next job
  gets another GPU; with ``MOREH_FOREIGN_POLICY=kill`` it gets SIGTERM after the grace; a job's process on a GPU its
  job was not given is reported too; without a daemon, the launcher's own check sends a job back to the queue.
* Idle reclaim: an idle job under a short window is told, warned and released as IDLE; a busy one never is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_moreh_run as launcher_tests
from tests.conftest import BIN, Smc, ok
from tests.test_moreh_run import HOST, PY, history, queue, start, wait_for_stderr, wait_until

SDAMANAGER = str(BIN / "sdamanager")
TICK = 0.3

simulated_host = launcher_tests.simulated_host
no_leftovers = launcher_tests.no_leftovers
user = launcher_tests.user

_spawned: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def fault_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty fault file every tool of the test reads (the daemon picks up lines added later)."""
    path = tmp_path / "faults.jsonl"
    path.write_text("")
    monkeypatch.setenv("MOREH_FAKE_GPU_FAULTS", str(path))
    monkeypatch.delenv("MOREH_FOREIGN_POLICY", raising=False)
    monkeypatch.delenv("MOREH_FOREIGN_GRACE", raising=False)
    return path


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    yield
    while _spawned:
        proc = _spawned.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def spawn(*argv: str) -> subprocess.Popen[bytes]:
    """A process of this test (killed at the end)."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _spawned.append(proc)
    return proc


def add_fault(path: Path, **line: Any) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


class Daemon:
    """A running ``sdamanager`` whose stderr (its log) is collected in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = tmp_path / f"sdamanager-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [SDAMANAGER, "--interval", str(TICK)], stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **(env or {})}
            )
        _spawned.append(self.proc)
        wait_until(lambda: "running (pid" in self.log(), timeout=20, what="sdamanager to start")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=40)  # open long polls (a watcher's lasts up to 25 s) may hold it up
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"sdamanager ignored SIGTERM: {self.log()}") from None
        assert code == 0, self.log()
        assert "Traceback" not in self.log(), self.log()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(**env: str) -> Daemon:
        daemon = Daemon(tmp_path, env)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.stop()


def devices(smc: Smc) -> list[dict[str, Any]]:
    [backend] = ok(smc("show backend", json=True)).json
    assert backend["name"] == HOST
    return list(backend["devices"])


def device(smc: Smc, index: int) -> dict[str, Any]:
    return next(d for d in devices(smc) if d["index"] == index)


def events(smc: Smc, action: str) -> list[dict[str, Any]]:
    return [e for e in ok(smc("show eventlog 200", json=True)).json if e["action"] == action]


def job_of(smc: Smc, token: str) -> dict[str, Any]:
    [job] = [j for j in queue(smc) if j["token"] == token]
    return job


def gpus_of(job: dict[str, Any]) -> list[int]:
    return [d["index"] for d in job["devices"]]


def recorder(path: Path, hold: Path | None = None) -> list[str]:
    """A command that writes its CUDA_VISIBLE_DEVICES to ``path`` (then waits for ``hold`` to exist, if given)."""
    script = f"import os, time\nopen({str(path)!r}, 'w').write(os.environ['CUDA_VISIBLE_DEVICES'])\n"
    if hold is not None:
        script += f"while not os.path.exists({str(hold)!r}): time.sleep(0.05)\n"
    return [PY, "-c", script]


def within_ticks(check: Callable[[], bool], ticks: float, what: str) -> None:
    """``check`` holds within ``ticks`` daemon ticks (plus slack for console reads on a loaded machine)."""
    wait_until(check, timeout=ticks * TICK + 5.0, what=what)


# -- health --------------------------------------------------------------------------------------------------


def test_xid_79_makes_gpu_3_unhealthy_within_a_tick_and_no_job_gets_it_until_an_admin_clears_it(
    smc: Smc, user: Callable[..., str], fault_file: Path, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory()
    four = user(model=3)  # four GPUs: the first job takes 0-3
    launcher = start(*recorder(tmp_path / "four", hold=tmp_path / "stop-four"), token=four)
    wait_until((tmp_path / "four").exists, what="the 4-GPU job to start")
    job = job_of(smc, four)
    assert gpus_of(job) == [0, 1, 2, 3]

    with fault_file.open("a") as out:
        out.write('{"gpu": 5, "xid": 13}\n{"gpu": 3, "xid": 79\n{"gpu": 3, "xid": 79}\n')
    within_ticks(lambda: device(smc, 3)["status"] == "UNHEALTHY", 2, "GPU 3 to become UNHEALTHY")
    assert device(smc, 5)["status"] == "IDLE"  # an application Xid changes nothing
    assert [f["kind"] for f in device(smc, 3)["flags"]] == ["unhealthy"]
    assert device(smc, 3)["flags"][0]["cause"] == "Xid 79: GPU has fallen off the bus"

    # The running job: an event-log entry under its token, and a line on its launcher's stderr.
    [event] = events(smc, "DEVICE_UNHEALTHY")
    assert event["token"] == four
    assert f"device=3 was=PROCESSING job={job['id']} cause=Xid 79: GPU has fallen off the bus" in event["detail"]
    said = wait_for_stderr(launcher, f"GPU {HOST}:3 of job {job['id']} is UNHEALTHY (Xid 79: GPU has fallen off the bus)")
    assert said.startswith("[warning] GPU "), said
    assert "Xid 13" not in said, said
    # The malformed fault line: one log line; the rest of the file still applied.
    assert daemon.log().count("skipped") == 1, daemon.log()
    assert "line 2 skipped" in daemon.log()
    text = ok(smc("show backend")).out
    assert "  backend 1 device 3: UNHEALTHY since " in text
    assert "Xid 79: GPU has fallen off the bus (clear with 'update device 1 3 IDLE')" in text

    (tmp_path / "stop-four").touch()
    assert launcher.wait(timeout=15) == 0
    wait_until(lambda: not queue(smc), what="the job to end")
    assert device(smc, 3)["status"] == "UNHEALTHY"  # the end of its job does not clear it

    # An 8-GPU job cannot start while GPU 3 is out; it starts once an admin clears GPU 3.
    eight = user(model=4)
    waiting = start(*recorder(tmp_path / "eight"), token=eight)
    wait_for_stderr(waiting, "waits in the queue")
    time.sleep(4 * TICK)
    assert job_of(smc, eight)["status"] == "QUEUED"
    ok(smc("update device 1 3 IDLE"), "Update Device Status success.")
    assert waiting.wait(timeout=20) == 0
    assert (tmp_path / "eight").read_text() == "0,1,2,3,4,5,6,7"
    [cleared] = [e for e in events(smc, "UPDATE_DEVICE") if "device=3" in e["detail"]]
    assert cleared["detail"] == "backend=1 device=3 status=IDLE was_unhealthy[3]=Xid 79: GPU has fallen off the bus"
    assert "GPU guardian" not in ok(smc("show backend")).out


def test_a_1_gpu_job_never_gets_an_unhealthy_gpu(
    smc: Smc, user: Callable[..., str], fault_file: Path, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon_factory()
    add_fault(fault_file, gpu=0, ecc_uncorrectable=2)
    add_fault(fault_file, gpu=1, lost=True)
    within_ticks(lambda: [d["status"] for d in devices(smc)][:2] == ["UNHEALTHY", "UNHEALTHY"], 2, "GPUs 0, 1 to fail")
    token = user(model=1)
    done = launcher_tests.moreh_run(*recorder(tmp_path / "one"), token=token)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "one").read_text() == "2"
    causes = {d["index"]: d["flags"][0]["cause"] for d in devices(smc) if "flags" in d}
    assert causes == {
        0: "2 uncorrectable ECC errors since the driver loaded",
        1: "the GPU is lost (simulated: it fell off the bus)",
    }


def test_nvml_failing_on_the_host_closes_it_and_says_why(
    smc: Smc, user: Callable[..., str], fault_file: Path, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory()
    add_fault(fault_file, nvml_failure="Driver Not Loaded")
    within_ticks(lambda: "gpu_failure" in ok(smc("show backend", json=True)).json[0], 2, "the host to be closed")
    assert ok(smc("show backend", json=True)).json[0]["gpu_failure"] == "NVML fails on this host: Driver Not Loaded"
    assert "no device is handed out since" in ok(smc("show backend")).out
    token = user(model=1)
    waiting = start(*recorder(tmp_path / "one"), token=token)
    wait_for_stderr(waiting, "waits in the queue")
    time.sleep(4 * TICK)
    assert job_of(smc, token)["status"] == "QUEUED"
    smi = subprocess.run([str(BIN / "moreh-smi")], env={**os.environ, "MOREH_SDA_TOKEN": token}, capture_output=True,
                         text=True, timeout=30)
    assert f"host {HOST}: no GPU is handed out since" in smi.stdout, smi.stdout
    assert [d["status"] for d in devices(smc)] == ["IDLE"] * 8  # closed, not UNHEALTHY: nothing for an admin to clear
    add_fault(fault_file, nvml_failure=False)
    assert waiting.wait(timeout=20) == 0
    assert "NVML works again" in daemon.log()


# -- foreign processes -------------------------------------------------------------------------------------------


def test_a_foreign_process_on_gpu_2_is_flagged_within_a_tick_and_the_next_job_gets_another_gpu(
    smc: Smc, user: Callable[..., str], fault_file: Path, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon_factory()
    holders = []
    for n in range(2):  # GPUs 0 and 1 busy: without the guardian the next job would get GPU 2
        token = user(model=1)
        holders.append(start(*recorder(tmp_path / f"h{n}", hold=tmp_path / "stop"), token=token))
        wait_until((tmp_path / f"h{n}").exists, what=f"holder {n} to start")
    assert sorted((tmp_path / f"h{n}").read_text() for n in range(2)) == ["0", "1"]

    stranger = spawn("sleep", "120")
    add_fault(fault_file, gpu=2, foreign_pid=stranger.pid, memory_mib=2048, user="mallory")
    within_ticks(lambda: "flags" in device(smc, 2), 2, "GPU 2 to be flagged")
    [flag] = device(smc, 2)["flags"]
    assert (flag["kind"], flag["pid"], flag["user"], flag["memory_mib"]) == ("foreign", stranger.pid, "mallory", 2048)
    assert device(smc, 2)["status"] == "IDLE"  # flagged, not UNHEALTHY: it comes back when the process is gone
    assert f"pid {stranger.pid} (user mallory, 2048 MiB) is not part of any job" in ok(smc("show backend")).out
    assert ok(smc("show guardian", json=True)).json[0]["pid"] == stranger.pid

    token = user(model=1)
    third = start(*recorder(tmp_path / "third", hold=tmp_path / "stop"), token=token)
    wait_until((tmp_path / "third").exists, what="the next job to start")
    assert (tmp_path / "third").read_text() == "3"
    smi = subprocess.run([str(BIN / "moreh-smi")], env={**os.environ, "MOREH_SDA_TOKEN": token}, capture_output=True,
                         text=True, timeout=30)
    assert f"GPU {HOST}:2 is not handed out since" in smi.stdout, smi.stdout
    assert events(smc, "FOREIGN_PROCESS")[0]["detail"].startswith("backend=1 device=2 kind=foreign cause=pid ")

    stranger.kill()  # under the default policy (warn) only its end gives GPU 2 back
    stranger.wait()
    within_ticks(lambda: "flags" not in device(smc, 2), 2, "the flag to go with the process")
    (tmp_path / "stop").touch()
    for proc in (*holders, third):
        assert proc.wait(timeout=15) == 0


def test_with_policy_kill_the_foreign_process_gets_sigterm_after_the_grace(
    smc: Smc, fault_file: Path, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(MOREH_FOREIGN_POLICY="kill", MOREH_FOREIGN_GRACE="1.5")
    got = tmp_path / "got-sigterm"
    trap = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(got)!r}, 'w').write(str(time.time())), sys.exit(0)))\n"
        "time.sleep(120)\n"
    )
    stranger = spawn(PY, "-c", trap)
    time.sleep(0.3)  # its handler in place
    add_fault(fault_file, gpu=2, foreign_pid=stranger.pid, memory_mib=512)
    within_ticks(lambda: "flags" in device(smc, 2), 2, "GPU 2 to be flagged")
    flagged = time.time()
    assert stranger.wait(timeout=10) == 0
    assert float(got.read_text()) - flagged >= 0.5  # not before the grace (the daemon saw it a little before the test)
    assert f"foreign process {stranger.pid} on the GPUs killed (SIGTERM)" in daemon.log()
    within_ticks(lambda: "flags" not in device(smc, 2), 2, "the flag to go with the process")


def test_a_job_process_on_a_gpu_not_given_to_its_job_is_reported(
    smc: Smc, user: Callable[..., str], daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon_factory()
    token = user(model=1)
    escape = "import os, subprocess, time\nsubprocess.Popen(['sleep', '60'], env={**os.environ, 'CUDA_VISIBLE_DEVICES': '6'})\ntime.sleep(60)\n"
    launcher = start(PY, "-c", escape, token=token)
    wait_until(lambda: bool(queue(smc)) and queue(smc)[0]["status"] == "RUNNING", what="the job to run")
    job = job_of(smc, token)
    assert gpus_of(job) == [0]
    within_ticks(lambda: "flags" in device(smc, 6), 3, "GPU 6 to be flagged")
    [flag] = device(smc, 6)["flags"]
    assert (flag["kind"], flag["job"]) == ("escaped", job["id"])
    said = wait_for_stderr(launcher, f"of job {job['id']} uses a GPU that job {job['id']} was not given")
    assert f"[warning] GPU {HOST}:6: pid {flag['pid']}" in said
    ok(smc(f"release {job['id']}"))
    assert launcher.wait(timeout=20) != 0


def test_without_a_daemon_the_launchers_own_check_sends_the_job_back_instead_of_starting_on_a_busy_gpu(
    smc: Smc, user: Callable[..., str], fault_file: Path, tmp_path: Path
) -> None:
    stranger = spawn("sleep", "120")
    add_fault(fault_file, gpu=0, foreign_pid=stranger.pid, memory_mib=1024, user="mallory")
    token = user(model=1)
    done = launcher_tests.moreh_run(*recorder(tmp_path / "one"), token=token)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "one").read_text() == "1"
    assert (
        f"[warning] Job 1 went back to the queue instead of starting: GPU {HOST}:0: pid {stranger.pid} "
        "(user mallory, 1024 MiB) is not part of any job." in done.stderr
    )
    [requeued] = events(smc, "REQUEUE_JOB")
    assert requeued["detail"].startswith(f"id=1 reason=GPU {HOST}:0: pid {stranger.pid}")
    # The GPU stays out of use while the process lives (until a report says otherwise, or a minute without one).
    second = launcher_tests.moreh_run(*recorder(tmp_path / "two"), token=token)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "two").read_text() == "1"
    assert "went back to the queue" not in second.stderr


# -- idle reclaim ----------------------------------------------------------------------------------------------


def test_an_idle_job_is_warned_and_released_as_idle_and_a_busy_one_never_is(
    smc: Smc, user: Callable[..., str], fault_file: Path, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon_factory()
    add_fault(fault_file, gpu=0, util=0, memory_mib=0)  # the idle job's GPU
    add_fault(fault_file, gpu=1, util=90, memory_mib=4000)  # the busy job's GPU
    ok(smc("update sdamodel idle 1 5 1024 6s"), "Update Idle Policy success.")  # covers both jobs (model 1)
    idle_token, busy_token = user(model=1), user(model=1)
    idle = start(*recorder(tmp_path / "idle", hold=tmp_path / "never"), token=idle_token)
    wait_until((tmp_path / "idle").exists, what="the idle job to start")
    busy = start(*recorder(tmp_path / "busy", hold=tmp_path / "stop-busy"), token=busy_token)
    wait_until((tmp_path / "busy").exists, what="the busy job to start")
    assert ((tmp_path / "idle").read_text(), (tmp_path / "busy").read_text()) == ("0", "1")
    job = job_of(smc, idle_token)["id"]

    said = wait_for_stderr(idle, f"[info] job {job} is idle (GPU utilisation below 5 % and memory below 1024 MiB)")
    assert "its devices are reclaimed in" in said
    smi = subprocess.run(
        [str(BIN / "moreh-smi")], env={**os.environ, "MOREH_SDA_TOKEN": idle_token}, capture_output=True, text=True,
        timeout=30,
    )
    assert f"Idle: job {job} on device " in smi.stdout, smi.stdout
    assert "reclaimed in" in smi.stdout, smi.stdout
    said = wait_for_stderr(idle, f"[warning] job {job} has been idle for", timeout=10)
    said += wait_for_stderr(idle, "was stopped: reclaimed after being idle for 6 s", timeout=10)
    assert idle.wait(timeout=20) != 0
    entry = history(smc, job)
    assert entry["end_reason"] == "idle"
    [line] = [row for row in ok(smc(f"get history feid {job}")).lines if row.startswith("|  Status")]
    assert "IDLE" in line
    assert events(smc, "IDLE_RECLAIM")[0]["token"] == idle_token

    time.sleep(6 + 4 * TICK)  # a whole window more: the busy job is never reclaimed
    assert job_of(smc, busy_token)["status"] == "RUNNING"
    (tmp_path / "stop-busy").touch()
    assert busy.wait(timeout=15) == 0
    assert history(smc, job + 1)["end_reason"] == "finished"


def test_a_job_with_no_process_on_its_gpus_counts_as_idle(
    smc: Smc, user: Callable[..., str], daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon_factory()
    token = user(model=1)
    ok(smc(f"update token idle {token} 0 0 2"))  # thresholds 0: only "no process on its GPUs" is idle
    # The command gives up its GPU (a simulated GPU holds the processes whose CUDA_VISIBLE_DEVICES name it) and
    # waits: nothing of the job is on its GPU.
    leave = "import os\nos.execve('/bin/sleep', ['sleep', '60'], {**os.environ, 'CUDA_VISIBLE_DEVICES': ''})"
    launcher = start(PY, "-c", leave, token=token)
    wait_until(lambda: bool(queue(smc)) and queue(smc)[0]["status"] == "RUNNING", what="the job to run")
    job = job_of(smc, token)["id"]
    wait_for_stderr(launcher, "was stopped: reclaimed after being idle for 2 s", timeout=15)
    launcher.wait(timeout=20)
    assert history(smc, job)["end_reason"] == "idle"


def test_a_launcher_that_sleeps_through_a_release_still_says_who_stopped_its_job(
    smc: Smc, user: Callable[..., str], daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    # The releaser ends the command itself and, the launcher not answering (stopped here), records the end;
    # the launcher wakes to a dead command and an ended job: it must still say who stopped it, not nothing.
    daemon_factory()
    launcher = start("sleep", "60", token=user(model=1))
    wait_until(lambda: bool(queue(smc)) and queue(smc)[0]["status"] == "RUNNING", what="the job to run")
    [job] = queue(smc)
    launcher.send_signal(signal.SIGSTOP)
    try:
        ok(smc(f"release {job['id']}"))
        assert history(smc, job["id"])["end_reason"] == "released"
    finally:
        launcher.send_signal(signal.SIGCONT)
    wait_for_stderr(launcher, f"moreh-run: job {job['id']} was stopped: released by an admin.", timeout=15)
    assert launcher.wait(timeout=20) == 128 + signal.SIGTERM


# -- bad input ---------------------------------------------------------------------------------------------------


def test_bad_idle_settings_are_one_line_and_change_nothing(
    smc: Smc, user: Callable[..., str], rejects: Callable[..., str]
) -> None:
    token = user(model=1)
    rejects(f"update token idle {token} 500 1024 60", 1, "utilisation threshold 500.0: use 0 to 100 %")
    rejects(f"update token idle {token} 5 -1 60", 1, "memory threshold -1.0")
    rejects(f"update token idle {token} 5 1024 1", 1, "shorter than the daemon's tick of 2 s")
    rejects(f"update token idle {token} 5 1024 31d", 1, "Invalid idle window")
    rejects(f"update token idle {token} 5 1024 soon", 1, "use seconds (60), or 90s, 30m, 2h, 1d")
    rejects(f"update token idle {token} five 1024 60", 1, "give a number of percent")
    rejects(f"update token idle {token} nan 1024 60", 1, "utilisation threshold")
    rejects(f"update token idle {token} 5 1024 60 -5", 1, "Invalid idle grace")
    rejects("update token idle nosuchtoken 5 1024 60", 1, "not found")
    rejects("update sdamodel idle 999 5 1024 60", 1, "SDA model 999 not found")
    rejects("update sdamodel idle small 5 1024 60", 1, "SDA model 'small' not found")
    rejects(f"delete token idle {token}", 1, "has no idle policy")
    rejects(f"update token idle {token} 5 1024", 2)
    ok(smc(f"update token idle {token} 5 1024 90s 1m"))
    [policy] = ok(smc("show idle", json=True)).json
    assert (policy["scope"], policy["window_s"], policy["grace_s"]) == ("token", 90.0, 60.0)
    ok(smc(f"delete token idle {token}"), "Delete Idle Policy success.")
    assert ok(smc("show idle", json=True)).json == []


def test_a_malformed_foreign_policy_stops_sdamanager_with_one_line() -> None:
    for env, needle in (
        ({"MOREH_FOREIGN_POLICY": "shoot"}, "invalid MOREH_FOREIGN_POLICY='shoot': use warn or kill"),
        ({"MOREH_FOREIGN_GRACE": "-3"}, "invalid MOREH_FOREIGN_GRACE='-3'"),
    ):
        done = subprocess.run([SDAMANAGER, "--once"], env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.count("\n") == 1, done.stderr
        assert needle in done.stderr, done.stderr


def test_the_idle_window_must_last_a_tick_of_the_running_daemon(
    smc: Smc, user: Callable[..., str], daemon_factory: Callable[..., Daemon]
) -> None:
    token = user(model=1)
    daemon = daemon_factory()
    ok(smc(f"update token idle {token} 5 1024 1"))  # the daemon ticks every 0.3 s
    daemon.stop()
    done = subprocess.run([SDAMANAGER, "--interval", "5", "--once"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "shorter than the daemon's tick of 5 s" in smc(f"update token idle {token} 5 1024 4").err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
