"""Soak: 20 concurrent ``moreh-run`` jobs over 8 simulated GPUs while ``moreh-smi`` and ``show backend`` poll.

The soak itself lives in ``benchmarks/bench_soak.py`` (which runs 100 jobs and reports lock wait,
lock hold and scheduling pass percentiles); here it runs small and every check must hold: each
launch ran exactly once and exited 0, the history holds exactly one finished entry per job, no
device served two jobs at once, every poll answered, every device is IDLE at the end and the
state breaks no invariant. The state lock's fairness, which the soak made necessary, is tested
at the end. Bigger soaks::

    MOREH_SOAK_JOBS=100 /tmp/venv/bin/python -m pytest tests/test_soak.py
    /tmp/venv/bin/python -m benchmarks soak          # 100 jobs, with the figures
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from invariants import check

from benchmarks.bench_soak import GPUS, Soak, figures, overlaps, problems, run_soak
from state.errors import StateBusyError
from state.store import StateStore

JOBS = int(os.environ.get("MOREH_SOAK_JOBS", "20"))


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> tuple[Soak, Path]:
    """One soak run shared by the checks below."""
    root = tmp_path_factory.mktemp("soak")
    return run_soak(root, JOBS, timeout_s=240), root / "state"


def test_every_job_ran_exactly_once_on_its_own_devices(soak: tuple[Soak, Path]) -> None:
    result, _ = soak
    assert problems(result) == []
    assert sorted(result.markers) == list(range(JOBS))
    assert result.exit_codes == [0] * JOBS
    devices_seen = {d for runs in result.markers.values() for _, devices, _, _ in runs for d in devices.split(",")}
    assert devices_seen <= {str(i) for i in range(GPUS)}
    assert len(devices_seen) > 1, "the jobs never spread over the GPUs"


def test_the_state_is_sound_and_idle_after_the_soak(soak: tuple[Soak, Path]) -> None:
    _, home = soak
    store = StateStore(home)
    check(store)
    with store.reading() as s:
        assert s.all("SELECT count(*) FROM jobs") == [(0,)]
        assert s.all("SELECT DISTINCT status FROM devices") == [("IDLE",)]


def test_the_pollers_answered_and_the_measurements_were_taken(soak: tuple[Soak, Path]) -> None:
    result, _ = soak
    assert result.polls["moreh-smi"], "moreh-smi never ran during the soak"
    assert result.polls["show backend"], "show backend never ran during the soak"
    assert result.poll_failures == []
    kinds = [kind for kind, _, _, _ in result.stats]
    assert kinds.count("wait") >= 3 * JOBS  # submit, start, clean, finish: at least 3 per job
    assert kinds.count("wait") == kinds.count("hold")
    assert "pass" in kinds, "no scheduling pass was timed"
    programs = {program for _, _, program, _ in result.stats}
    assert {"moreh-run", "moreh-smi", "moreh_smclient"} <= programs, programs
    names = [f.name for f in figures(result)]
    assert any("lock wait p99" in n for n in names)
    assert any("scheduling pass p99" in n for n in names)


def test_the_overlap_check_catches_a_device_given_twice() -> None:
    """The checker itself: two jobs on device 3 at once must be reported."""
    spans = {"3": [(0.0, 2.0, 1), (1.5, 3.0, 2)], "4": [(0.0, 1.0, 3), (1.0, 2.0, 4)]}
    assert overlaps(spans) == ["device 3: job 2 started 0.500 s before job 1 ended"]


# -- the state lock under contention (what the soak changed in state/store.py) --------------------

HOLDER = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def hold_lock(home: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the state lock for ``seconds``; returns once it holds it."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home / "state.lock"), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    assert holder.stdout.readline() == "locked\n"
    return holder


def lock_is_free(home: Path) -> bool:
    fd = os.open(home / "state.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_waiter_that_gives_up_leaves_the_lock_free(moreh_home: Path) -> None:
    """The helper still queued in the kernel when its caller timed out hands the lock straight back."""
    StateStore(moreh_home).schema_version()
    holder = hold_lock(moreh_home, 1.5)
    started = time.monotonic()
    with pytest.raises(StateBusyError, match=r"stayed locked for 0\.3 s"), StateStore(moreh_home, lock_timeout=0.3).reading():
        pass
    assert time.monotonic() - started < 1.4
    holder.wait(timeout=30)
    deadline = time.monotonic() + 5
    while not lock_is_free(moreh_home):
        assert time.monotonic() < deadline, "an abandoned waiter kept the state lock"
        time.sleep(0.02)
    with StateStore(moreh_home, lock_timeout=1).reading() as s:
        assert s.schema_version() >= 1


# Takes the lock again and again, 20 ms at a time with 0.1 ms between: a waiter that polled for the
# lock (every 50 ms) would almost never find it free; one queued in the kernel is woken at each release.
HOG = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "end = time.monotonic() + float(sys.argv[2])\n"
    "print('hogging', flush=True)\n"
    "while time.monotonic() < end:\n"
    "    try:\n"
    "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "    except BlockingIOError:\n"
    "        time.sleep(0.0001)\n"
    "        continue\n"
    "    time.sleep(0.02)\n"
    "    fcntl.flock(fd, fcntl.LOCK_UN)\n"
    "    time.sleep(0.0001)\n"
)


def test_a_waiter_is_not_starved_by_a_process_that_keeps_taking_the_lock(moreh_home: Path) -> None:
    """Found by the soak: moreh-smi waited up to 15 s while 100 launchers took turns with the lock."""
    StateStore(moreh_home).schema_version()
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(moreh_home / "state.lock"), "6"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout is not None
        assert hog.stdout.readline() == "hogging\n"
        time.sleep(0.2)
        store = StateStore(moreh_home, lock_timeout=4)
        with store.reading() as s:
            assert s.schema_version() >= 1
        assert hog.poll() is None, "the hog stopped before the waiter got its turn"
        # Polling, the waiter needed 1.3 s, 3.7 s and over 4 s in three tries; queued, about 10 ms.
        assert store.lock_wait_s < 1.0, f"the waiter waited {store.lock_wait_s:.2f} s for its turn"
    finally:
        hog.kill()
        hog.wait()
