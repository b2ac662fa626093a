"""Soak: 20 concurrent ``moreh-run`` jobs over 8 simulated GPUs while ``moreh-smi`` and ``show backend`` poll.

The soak itself lives in ``benchmarks/bench_soak.py`` (which runs 100 jobs and reports lock wait,
lock hold and scheduling pass percentiles); here it runs small and every check must hold: each
launch ran exactly once and exited 0, the history holds exactly one finished entry per job, no
device served two jobs at once, every poll answered, every device is IDLE at the end and the
state breaks no invariant. For the full size::

    /tmp/venv/bin/python -m benchmarks soak
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from invariants import check

from benchmarks.bench_soak import GPUS, Soak, figures, overlaps, problems, run_soak
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
