"""``sdamanager`` end to end: one instance, reconciling lost jobs, waking launchers, sampling GPUs, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests import test_moreh_run as launcher_tests
from tests.conftest import BIN, Smc, ok
from tests.test_moreh_run import HOST, PY, SLEEPER, gone, history, queue, start, wait_for_stderr, wait_until

SDAMANAGER = str(BIN / "sdamanager")

# The launcher tests' fixtures: 8 simulated GPUs on a fixed host, users with SDAs, no leftover launchers.
simulated_host = launcher_tests.simulated_host
no_leftovers = launcher_tests.no_leftovers
user = launcher_tests.user


_daemons: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def no_leftover_daemon() -> Iterator[None]:
    yield
    while _daemons:
        proc = _daemons.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_daemon(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start sdamanager and return it once it says it runs (with what it said)."""
    proc = subprocess.Popen([SDAMANAGER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _daemons.append(proc)
    return proc, wait_for_stderr(proc, "running (pid")


def once() -> subprocess.CompletedProcess[str]:
    return subprocess.run([SDAMANAGER, "--once"], capture_output=True, text=True, timeout=30)


def running_pid(token: str) -> int | None:
    """The pid recorded for the token's job once the job is RUNNING (None before)."""
    from state.store import StateStore

    with StateStore().reading() as s:
        jobs = s.jobs.of_token(token)
    return jobs[0].pid if len(jobs) == 1 and jobs[0].status == "RUNNING" else None


def orphan_job(token: str, pids: Path) -> tuple[int, int]:
    """Start a job, then SIGKILL its guardian and its moreh-run: nobody is left to end it. Return its pids."""
    launcher = start(PY, "-c", SLEEPER, str(pids), token=token)
    wait_until(pids.exists, what="the job's command to start")
    child, grandchild = map(int, pids.read_text().split())
    # moreh-run records the job RUNNING (with the command's pid) only after the command started, so the pid
    # file can come first; killed before that record, moreh-run would leave a SUBMITTED job behind.
    wait_until(lambda: running_pid(token) == child, what="moreh-run to record the job RUNNING")
    [guardian] = [p for p in psutil.Process(launcher.pid).children() if p.pid != child]
    guardian.kill()
    launcher.kill()
    launcher.wait(5)
    return child, grandchild


def test_one_daemon_per_state_and_sigterm_stops_it(moreh_home: Path) -> None:
    daemon, said = start_daemon("--interval", "0.2")
    assert f"running (pid {daemon.pid}" in said
    assert (moreh_home / "sdamanager.pid").read_text().strip() == str(daemon.pid)

    second = subprocess.run([SDAMANAGER], capture_output=True, text=True, timeout=30)
    assert (second.returncode, second.stdout) == (1, "")
    assert second.stderr == f"sdamanager is already running (pid {daemon.pid})\n"
    assert once().returncode == 1

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    assert daemon.stderr is not None
    assert "stopped (SIGTERM)" in daemon.stderr.read().decode()
    assert not (moreh_home / "sdamanager.pid").exists()
    assert once().returncode == 0  # the lock went with it


def test_a_tick_registers_the_host_and_samples_its_gpus(smc: Smc) -> None:
    result = once()
    assert result.returncode == 0, result.stderr
    [backend] = ok(smc("show backend", json=True)).json
    assert backend["name"] == HOST
    assert len(backend["devices"]) == 8
    from state.store import StateStore

    with StateStore().reading() as s:
        rows = s.all("SELECT memory_total_mib, sampled_at FROM devices ORDER BY idx")
    assert all(total == 81920 and sampled is not None for total, sampled in rows), rows


def test_daemon_ends_an_orphaned_job_as_lost(smc: Smc, user: Callable[..., str], tmp_path: Path) -> None:
    child, grandchild = orphan_job(user(model=4), tmp_path / "pids")
    [lost] = queue(smc)
    assert lost["status"] == "RUNNING"

    daemon, said = start_daemon("--interval", "0.2")
    wait_until(lambda: gone(child) and gone(grandchild), timeout=10, what="the orphan's processes to end")
    wait_until(lambda: not queue(smc), timeout=10, what="the orphan to leave the queue")
    entry = history(smc, lost["id"])
    assert (entry["end_reason"], entry["exit_code"]) == ("lost", None)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    assert daemon.stderr is not None
    assert f"job {lost['id']} ended as lost" in said + daemon.stderr.read().decode()


def test_without_a_daemon_the_next_job_ends_an_orphan_before_it_is_scheduled(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    # Launcher and guardian killed together (a session or cgroup kill) with no daemon running: the devices must
    # not stay held until someone's wait times out; the next launcher on this host ends the orphan first.
    child, grandchild = orphan_job(user(model=4), tmp_path / "pids")
    [lost] = queue(smc)
    began = time.monotonic()
    done = subprocess.run([str(BIN / "moreh-run"), "--", PY, "-c", "pass"], env={**os.environ,
                          "MOREH_SDA_TOKEN": user(model=4)}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "waits in the queue" not in done.stderr  # it got the devices at once
    assert time.monotonic() - began < 10
    assert gone(child)
    assert gone(grandchild)
    entry = history(smc, lost["id"])
    assert (entry["end_reason"], entry["exit_code"]) == ("lost", None)


def test_a_reused_launcher_pid_does_not_keep_a_job_alive(smc: Smc, user: Callable[..., str]) -> None:
    from conftest import ensure_local_backend

    from moreh_tools.gpus import get_provider
    from moreh_tools.jobs.processes import create_time
    from state.store import StateStore

    store = StateStore()
    ensure_local_backend(store, get_provider())
    me, my_start = os.getpid(), create_time(os.getpid())
    assert my_start is not None
    a, b = user(model=4), user(model=4)
    with store.transaction("test: two queued jobs") as s:
        live = s.jobs.submit(
            a, s.sdas.of_token(a)[0].id, backend_id=s.backends.local_id(HOST), launcher_pid=me, launcher_create_time=my_start, process_name="live"
        )
        # Same pid, but the process that queued this job started long before: the pid was reused.
        reused = s.jobs.submit(
            b,
            s.sdas.of_token(b)[0].id,
            backend_id=s.backends.local_id(HOST),
            launcher_pid=me,
            launcher_create_time=my_start - 1000,
            process_name="reused",
        )

    assert once().returncode == 0

    assert [j["id"] for j in queue(smc)] == [live.id]
    assert history(smc, reused.id)["end_reason"] == "lost"


def test_bad_interval_is_one_line() -> None:
    result = subprocess.run([SDAMANAGER, "--interval", "0"], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "sdamanager: interval 0 is out of range: use 0.05 to 3600 seconds\n"


def test_stops_within_a_tick_on_sigterm_even_with_a_long_interval() -> None:
    daemon, _ = start_daemon("--interval", "3600")
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
