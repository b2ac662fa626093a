"""Simulated GPU faults (MOREH_FAKE_GPU_FAULTS): health events, lost GPUs, NVML failing, foreign
processes, fixed figures, and how the file is re-read and its bad lines reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from moreh_tools.gpus import GpuHealthEvent, GpuProvider, get_provider
from moreh_tools.gpus.base import user_name
from moreh_tools.gpus.simulated import FaultLineError, SimProcess, SimulatedGpuProvider, parse_fault_line
from scheduler_core.gpu_health import (
    ForeignVerdict,
    ecc_event,
    find_foreign,
    judge_foreign,
    lost_event,
    nvml_event,
    parse_foreign_policy,
    remapped_rows_event,
    retired_pages_event,
    xid_event,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOREH_HOSTNAME", "gpuhost")
    monkeypatch.delenv("MOREH_FAKE_GPUS", raising=False)
    monkeypatch.delenv("MOREH_FAKE_GPU_FAULTS", raising=False)


@pytest.fixture
def faults(tmp_path: Path) -> Path:
    return tmp_path / "faults.jsonl"


def append(path: Path, *lines: Any) -> None:
    with path.open("a", encoding="utf-8") as out:
        for line in lines:
            out.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def provider_with(path: Path, count: int = 8, **kwargs: Any) -> SimulatedGpuProvider:
    kwargs.setdefault("processes", list)
    kwargs.setdefault("home", "")
    return SimulatedGpuProvider(count, 8192, hostname="h", faults=path, **kwargs)


@pytest.fixture
def sleeper() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        child = subprocess.Popen(["sleep", "60"])
        started.append(child)
        return child

    yield spawn
    for child in started:
        child.kill()
        child.wait()


# -- health events ------------------------------------------------------------------------------------


def test_a_critical_xid_is_reported_once_and_an_application_xid_never(faults: Path) -> None:
    append(faults, {"gpu": 3, "xid": 79}, {"gpu": 4, "xid": 13})
    provider = provider_with(faults)
    assert isinstance(provider, GpuProvider)
    assert provider.health() == [xid_event(3, 79)]
    assert provider.health() == []
    assert provider.warnings() == []
    assert [d.index for d in provider.snapshot()] == list(range(8))  # an Xid alone does not hide the GPU


def test_a_line_appended_while_the_provider_is_open_applies_at_the_next_call(faults: Path) -> None:
    faults.write_text("")
    provider = provider_with(faults)
    assert provider.health() == []
    assert provider.snapshot()[2].processes == ()
    append(faults, {"gpu": 6, "xid": 79})
    assert provider.health() == [xid_event(6, 79)]
    append(faults, {"gpu": 1, "lost": True}, {"gpu": 2, "util": 0, "memory_mib": 100})
    snapshots = provider.snapshot()
    assert [d.index for d in snapshots] == [0, 2, 3, 4, 5, 6, 7]
    assert (snapshots[1].util_gpu, snapshots[1].memory_used_mib) == (0, 100)
    append(faults, {"gpu": 6, "xid": 79})  # the same Xid again, on a new line: a new event
    assert provider.health() == [lost_event(1, "simulated: it fell off the bus", 15), xid_event(6, 79)]


def test_conditions_last_while_on(faults: Path) -> None:
    append(
        faults,
        {"gpu": 5, "ecc_uncorrectable": 1},
        {"gpu": 5, "ecc_uncorrectable": 2},
        {"gpu": 2, "retired_pages_pending": True},
        {"gpu": 3, "remapped_rows_pending": True},
        {"gpu": 4, "remapped_rows_pending": True, "remapped_rows_failure": True},
        {"gpu": 0, "ecc_uncorrectable": 0},
    )
    provider = provider_with(faults)
    expected = [
        retired_pages_event(2),
        remapped_rows_event(3, failed=False),
        remapped_rows_event(4, failed=True),
        ecc_event(5, 3),
    ]
    assert provider.health() == expected
    assert provider.health() == expected  # conditions, not one-off events
    append(faults, {"gpu": 2, "retired_pages_pending": False}, {"gpu": 3, "remapped_rows_pending": False})
    assert provider.health() == [remapped_rows_event(4, failed=True), ecc_event(5, 3)]


def test_the_file_rewritten_replaces_the_conditions(faults: Path) -> None:
    append(faults, {"gpu": 5, "ecc_uncorrectable": 1}, {"gpu": 1, "lost": True})
    provider = provider_with(faults)
    assert len(provider.health()) == 2
    faults.write_text(json.dumps({"gpu": 7, "ecc_uncorrectable": 4}) + "\n")
    assert provider.health() == [ecc_event(7, 4)]
    assert len(provider.snapshot()) == 8


def test_a_lost_gpu_leaves_the_snapshots_until_it_comes_back(faults: Path) -> None:
    env = {"MOREH_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "0,1"}
    provider = provider_with(faults, count=2, processes=lambda: [SimProcess(4242, 0.0, env)])
    append(faults, {"gpu": 1, "lost": True})
    (only,) = provider.snapshot()
    assert only.index == 0
    assert [p.pid for p in only.processes] == [4242]
    assert provider.device_count() == 2  # NVML still counts a lost GPU
    events = provider.health()
    assert [(e.device, e.kind, e.code) for e in events] == [(1, "lost", 15)]
    assert provider.health() == events
    append(faults, {"gpu": 1, "lost": False})
    assert [d.index for d in provider.snapshot()] == [0, 1]
    assert provider.health() == []


def test_nvml_failing_fails_the_whole_host_closed(faults: Path) -> None:
    append(faults, {"gpu": 3, "xid": 79}, {"nvml_failure": "Driver Not Loaded"})
    provider = provider_with(faults)
    assert provider.snapshot() == []
    assert provider.device_count() == 0
    assert provider.health() == [nvml_event("Driver Not Loaded")]
    assert provider.health() == [nvml_event("Driver Not Loaded")]
    append(faults, {"nvml_failure": False})
    assert provider.device_count() == 8
    assert provider.health() == [xid_event(3, 79)]  # held back while NVML could not deliver it
    append(faults, {"nvml_failure": True})
    (event,) = provider.health()
    assert (event.device, event.kind) == (None, "nvml")
    assert "Unknown Error" in event.cause


# -- bad lines --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"gpu": 3, "xid": 79', "not valid JSON"),
        ("[3, 79]", "not a JSON object"),
        ('{"gpu": 3, "xdi": 79}', "unknown key 'xdi'"),
        ('{"gpu": 8, "xid": 79}', "gpu 8 is out of range: this host has 8 simulated GPUs (0-7)"),
        ('{"gpu": -1, "xid": 79}', "gpu -1 is negative"),
        ('{"gpu": 1, "ecc_uncorrectable": -2}', "ecc_uncorrectable -2 is negative"),
        ('{"gpu": 1, "memory_mib": -1}', "memory_mib -1 is negative"),
        ('{"gpu": 1, "memory_mib": 9000}', "the GPUs have 8192 MiB"),
        ('{"gpu": 1, "util": 101}', "use 0 to 100 %"),
        ('{"gpu": 1, "util": 50.5}', "util must be a whole number"),
        ('{"gpu": true, "xid": 79}', "gpu must be a whole number"),
        ('{"gpu": "1", "xid": 79}', "gpu must be a whole number"),
        ('{"gpu": 1, "lost": 1}', "lost must be true or false"),
        ('{"gpu": 1, "xid": NaN}', "not valid JSON"),
        ('{"gpu": 1}', "names no fault"),
        ('{"xid": 79}', "names no GPU"),
        ('{"gpu": 1, "user": "eve"}', "add one"),
        ('{"gpu": 1, "foreign_pid": 0}', "foreign_pid 0 is below 1"),
        ('{"gpu": 1, "foreign_pid": 5, "user": ""}', "user must be a non-empty single-line text"),
        ('{"gpu": 1, "nvml_failure": true}', "concerns the whole host"),
        ('{"nvml_failure": 7}', "nvml_failure must be a non-empty single-line text"),
    ],
)
def test_a_malformed_line_is_reported_once_and_the_rest_applies(faults: Path, line: str, reason: str) -> None:
    append(faults, {"gpu": 0, "ecc_uncorrectable": 1}, line, {"gpu": 7, "xid": 79})
    provider = provider_with(faults)
    assert provider.health() == [ecc_event(0, 1), xid_event(7, 79)]
    (warning,) = provider.warnings()
    assert warning.startswith(f"MOREH_FAKE_GPU_FAULTS: {faults} line 2 skipped: ")
    assert reason in warning
    assert "\n" not in warning
    append(faults, {"gpu": 6, "ecc_uncorrectable": 1})  # the file changes and is read again
    assert provider.health() == [ecc_event(0, 1), ecc_event(6, 1)]
    assert provider.warnings() == []


def test_parse_fault_line_never_raises_anything_else() -> None:
    for text in ["", "{", "null", '{"gpu": 1e400, "xid": 1}', '{"gpu": 1, "xid": 99999999999}', "[" * 100000]:
        with pytest.raises(FaultLineError):
            parse_fault_line(text, 8, 8192)


def test_comments_blank_lines_and_a_line_still_being_written(faults: Path) -> None:
    faults.write_text('# a comment\n\n{"gpu": 1, "xid": 79}\n{"gpu": 2, "xi')
    provider = provider_with(faults)
    assert provider.health() == [xid_event(1, 79)]
    assert provider.warnings() == []  # the unterminated last line may still be being written
    with faults.open("a") as out:
        out.write('d": 79}\n')
    assert provider.health() == [xid_event(2, 79)]
    assert provider.warnings() == []


def test_a_missing_file_is_said_once_and_applies_once_it_exists(faults: Path) -> None:
    provider = provider_with(faults)
    assert provider.health() == []
    (warning,) = provider.warnings()
    assert "does not exist" in warning
    assert provider.health() == []
    assert provider.warnings() == []
    append(faults, {"gpu": 0, "xid": 48})
    assert provider.health() == [xid_event(0, 48)]


def test_an_unreadable_fault_path_is_a_warning(tmp_path: Path) -> None:
    provider = provider_with(tmp_path)  # a directory
    assert provider.health() == []
    assert len(provider.snapshot()) == 8
    (warning,) = provider.warnings()
    assert "cannot read" in warning


def test_get_provider_takes_the_fault_file_from_the_environment(faults: Path) -> None:
    append(faults, {"gpu": 1, "xid": 79})
    provider = get_provider({"MOREH_FAKE_GPUS": "2:1024", "MOREH_FAKE_GPU_FAULTS": str(faults)})
    assert provider.health() == [xid_event(1, 79)]
    assert get_provider({"MOREH_FAKE_GPUS": "2:1024"}).health() == []


def test_without_a_fault_file_all_is_well() -> None:
    provider = SimulatedGpuProvider(2, 1024, processes=list)
    assert provider.health() == []
    assert provider.warnings() == []


# -- foreign processes and fixed figures ---------------------------------------------------------------


def test_a_foreign_process_is_on_its_gpu_while_it_lives(
    faults: Path, sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    stranger = sleeper()
    append(faults, {"gpu": 2, "foreign_pid": stranger.pid, "memory_mib": 2048, "user": "mallory"})
    provider = provider_with(faults, count=4)
    device = provider.snapshot()[2]
    (proc,) = device.processes
    assert (proc.pid, proc.used_memory_mib, proc.user, proc.uid) == (stranger.pid, 2048, "mallory", os.getuid())
    assert device.memory_used_mib == 2048
    findings = find_foreign([p for d in provider.snapshot() for p in d.device_processes()], {2: 1}, {1: {99}})
    assert [(f.device, f.pid, f.user, f.memory_mib, f.kind, f.device_job) for f in findings] == [
        (2, stranger.pid, "mallory", 2048, "foreign", 1)
    ]
    stranger.kill()  # not reaped yet: a zombie holds no GPU
    deadline = time.monotonic() + 5
    while provider.snapshot()[2].processes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert provider.snapshot()[2].processes == ()
    assert provider.snapshot()[2].memory_used_mib == 0


def test_a_foreign_process_owner_defaults_to_the_live_process(
    faults: Path, sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    stranger = sleeper()
    append(faults, {"gpu": 0, "foreign_pid": stranger.pid}, {"gpu": 1, "foreign_pid": stranger.pid, "uid": 0})
    provider = provider_with(faults, count=2)
    first, second = provider.snapshot()
    assert [(p.pid, p.used_memory_mib, p.uid, p.user) for p in first.processes] == [
        (stranger.pid, 0, os.getuid(), user_name(os.getuid()))
    ]
    assert [(p.uid, p.user) for p in second.processes] == [(0, user_name(0))]


def test_a_fictional_pid_shows_only_while_said_alive(faults: Path) -> None:
    living = {4321}
    append(faults, {"gpu": 1, "foreign_pid": 4321, "memory_mib": 10, "user": "eve", "uid": 1234})
    provider = provider_with(faults, count=2, alive=lambda pid: pid in living)
    assert [(p.pid, p.user, p.uid) for p in provider.snapshot()[1].processes] == [(4321, "eve", 1234)]
    living.clear()
    assert provider.snapshot()[1].processes == ()
    living.add(99)
    append(faults, {"gpu": 1, "foreign_pid": 99, "memory_mib": 20, "util": 3})
    device = provider.snapshot()[1]
    assert [(p.pid, p.used_memory_mib) for p in device.processes] == [(99, 20)]
    assert (device.util_gpu, device.memory_used_mib) == (3, 20)  # util pins the GPU; memory is the process's


def test_fixed_figures_pin_utilisation_and_memory(faults: Path) -> None:
    env = {"MOREH_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "0,1", "MOREH_FAKE_GPU_MEMORY_MIB": "3000"}
    provider = provider_with(faults, count=2, processes=lambda: [SimProcess(77, 0.0, env, 1000)])
    dynamic = provider.snapshot()[0]
    assert dynamic.memory_used_mib == 3000
    append(faults, {"gpu": 0, "util": 0, "memory_mib": 0})
    pinned, other = provider.snapshot()
    assert (pinned.util_gpu, pinned.memory_used_mib, pinned.util_mem) == (0, 0, 0)
    assert [p.pid for p in pinned.processes] == [77]  # the job's process is still listed
    assert [(p.uid, p.user) for p in pinned.processes] == [(1000, user_name(1000))]
    assert other.memory_used_mib == 3000
    append(faults, {"gpu": 0, "util": 90})
    again = provider.snapshot()[0]
    assert (again.util_gpu, again.memory_used_mib) == (90, 0)


def test_health_events_are_frozen_and_one_line(faults: Path) -> None:
    append(faults, {"gpu": 0, "xid": 95}, {"gpu": 1, "ecc_uncorrectable": 1}, {"gpu": 1, "lost": True})
    for event in provider_with(faults).health():
        assert isinstance(event, GpuHealthEvent)
        assert "\n" not in event.cause
        with pytest.raises(AttributeError):
            event.code = 1  # type: ignore[misc]


def test_importing_the_guardian_module_stays_light() -> None:
    code = "import sys, scheduler_core.gpu_health; print(sorted({'pynvml', 'psutil'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_guardian_loop_kills_a_foreign_process_after_its_grace(
    faults: Path, sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    """How the daemon is meant to wire the pieces: snapshot -> find_foreign -> judge_foreign -> kill."""
    stranger = sleeper()
    provider = provider_with(faults, count=4)
    policy = parse_foreign_policy({"MOREH_FOREIGN_POLICY": "kill", "MOREH_FOREIGN_GRACE": "10"})
    allocation, job_pids = {2: 1}, {1: {os.getpid()}}

    def look(now: float, first_seen: Mapping[int, float]) -> ForeignVerdict:
        processes = [proc for snap in provider.snapshot() for proc in snap.device_processes()]
        return judge_foreign(find_foreign(processes, allocation, job_pids), first_seen, policy, now)

    assert look(0.0, {}).first_seen == {}
    append(faults, {"gpu": 2, "foreign_pid": stranger.pid, "memory_mib": 2048, "user": "mallory"})
    seen = look(100.0, {})
    assert [(f.device, f.pid, f.user, f.device_job) for f in seen.new] == [(2, stranger.pid, "mallory", 1)]
    assert seen.kill == ()
    due = look(110.0, seen.first_seen)
    assert due.kill == (stranger.pid,)
    os.kill(stranger.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while look(111.0, due.first_seen).first_seen and time.monotonic() < deadline:
        time.sleep(0.02)
    after = look(111.0, due.first_seen)
    assert (dict(after.first_seen), after.kill) == ({}, ())
