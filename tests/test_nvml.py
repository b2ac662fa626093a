"""The NVML provider against real NVIDIA GPUs, checked against ``nvidia-smi``.

These tests need an NVIDIA GPU, its driver and ``nvidia-smi``; elsewhere they are skipped with
the reason. The process test also needs the CUDA driver library (``libcuda.so.1``, part of the
driver): it opens a CUDA context from a child through ctypes, so no CUDA toolkit is needed.
The health read is checked against ``nvidia-smi``'s ECC, retired-page and row-remapping fields;
its branches (Xids, lost GPUs, NVML failing) are exercised with a fake ``pynvml`` in
test_gpu_health_nvml.py, since a healthy GPU cannot be made to fail here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from conftest import ensure_local_backend, sample_into_state

from moreh_tools.gpus import GpuProcess, GpuUnavailableError, NvmlGpuProvider, get_provider
from moreh_tools.gpus.base import user_name
from scheduler_core.gpu_health import HEALTH_KINDS, find_foreign
from state.store import StateStore


@pytest.fixture
def nvml() -> Iterator[NvmlGpuProvider]:
    """An open NVML provider, or a skip that says why there is none."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no nvidia-smi here: the real-NVML tests need an NVIDIA GPU and its driver")
    try:
        provider = NvmlGpuProvider().open()
    except GpuUnavailableError as exc:
        pytest.skip(f"NVML is not usable here: {exc}")
    if provider.device_count() < 1:
        provider.close()
        pytest.skip("NVML works but sees no GPU")
    yield provider
    provider.close()


def smi(*query: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --query-...=... --format=csv,noheader,nounits``."""
    out = subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]


def test_devices_match_nvidia_smi(nvml: NvmlGpuProvider) -> None:
    rows = smi("--query-gpu=index,uuid,name,memory.total,memory.used")
    snapshots = nvml.snapshot()
    assert nvml.device_count() == len(rows) == len(snapshots)
    for row, snap in zip(rows, snapshots, strict=True):
        index, uuid, name, total, used = row
        assert (snap.index, snap.uuid, snap.name) == (int(index), uuid, name)
        assert abs(snap.memory_total_mib - int(total)) <= 1
        assert abs(snap.memory_used_mib - int(used)) <= 1024  # moves while jobs run; same order of magnitude
        for metric in (snap.util_gpu, snap.util_mem):
            assert metric is None or 0 <= metric <= 100
        assert snap.temp_gpu is None or 0 < snap.temp_gpu < 130
        assert snap.temp_mem is None or 0 < snap.temp_mem < 130
    assert nvml.description.startswith("NVML ")
    assert "driver" in nvml.description


def test_get_provider_picks_nvml_and_the_local_backend_gets_the_real_gpus(
    nvml: NvmlGpuProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOREH_HOSTNAME", "nvml-host")
    for env in ({}, {"MOREH_FAKE_GPUS": "0"}):
        provider = get_provider(env)
        try:
            assert provider.simulated is False
            assert provider.device_count() == nvml.device_count()
        finally:
            provider.close()
    store = StateStore()
    ensure_local_backend(store, nvml)
    sample_into_state(store, nvml)
    with store.reading() as s:
        (backend,) = s.backends.all()
    rows = smi("--query-gpu=uuid,name,memory.total")
    assert [(d.uuid, d.name) for d in backend.devices] == [(uuid, name) for uuid, name, _ in rows]
    assert all(d.memory_total_mib is not None and d.memory_total_mib > 0 for d in backend.devices)


CUDA_CONTEXT = textwrap.dedent(
    """
    import ctypes, sys, time
    cuda = ctypes.CDLL("libcuda.so.1")
    device, context = ctypes.c_int(), ctypes.c_void_p()
    for step, result in (
        ("cuInit", cuda.cuInit(0)),
        ("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(device), 0)),
        ("cuCtxCreate", cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device)),
    ):
        if result != 0:
            print(f"{step} failed: CUresult {result}", flush=True)
            sys.exit(3)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_a_process_with_a_cuda_context_shows_up_with_its_memory(nvml: NvmlGpuProvider) -> None:
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}
    child = subprocess.Popen([sys.executable, "-c", CUDA_CONTEXT], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if line != "ready":
            pytest.skip(f"cannot open a CUDA context here ({line or 'libcuda.so.1 did not load'})")
        deadline = time.monotonic() + 10
        mine: list[GpuProcess] = []
        while not mine and time.monotonic() < deadline:
            mine = [p for p in nvml.snapshot()[0].processes if p.pid == child.pid]
            time.sleep(0.1)
        # Inside a container NVML may report host PIDs; then the child cannot be matched by PID.
        if not mine:
            reported = {p.pid for p in nvml.snapshot()[0].processes}
            pytest.skip(f"NVML lists pids {sorted(reported)}, not the child's {child.pid} (another PID namespace)")
        assert mine[0].used_memory_mib > 0
        assert (mine[0].uid, mine[0].user) == (os.getuid(), user_name(os.getuid()))
        smi_pids = {int(pid) for _, pid in smi("--query-compute-apps=gpu_uuid,pid")}
        assert child.pid in smi_pids
        # No job holds GPU 0: the child is a foreign process, with the owner the guardian needs to act.
        findings = find_foreign(nvml.snapshot()[0].device_processes(), {}, {}, ignore_pids={os.getpid()})
        (found,) = [f for f in findings if f.pid == child.pid]
        assert (found.device, found.kind, found.uid, found.job, found.device_job) == (
            0,
            "foreign",
            os.getuid(),
            None,
            None,
        )
    finally:
        child.kill()
        child.wait()


def smi_field(field: str) -> list[str] | None:
    """One ``--query-gpu`` field per GPU, or None when this nvidia-smi does not know the field."""
    try:
        return [row[0] for row in smi(f"--query-gpu={field}")]
    except subprocess.CalledProcessError:
        return None


def _smi_number(value: str) -> int | None:
    return int(value) if value.isdigit() else None  # "[N/A]", "N/A", "[Not Supported]"


def test_health_agrees_with_nvidia_smi(nvml: NvmlGpuProvider) -> None:
    events = nvml.health()
    count = nvml.device_count()
    for event in events:
        assert event.kind in HEALTH_KINDS
        assert event.device is None or 0 <= event.device < count
        assert event.cause
        assert "\n" not in event.cause
    # nvidia-smi answers for every GPU, so none is lost and NVML works.
    assert [e for e in events if e.kind in ("lost", "nvml")] == []
    by_kind = {(e.device, e.kind) for e in events}
    ecc = smi_field("ecc.errors.uncorrected.volatile.total")
    if ecc is not None:
        for index, value in enumerate(ecc):
            number = _smi_number(value)
            if number is not None:
                assert ((index, "ecc") in by_kind) == (number > 0), f"GPU {index}: nvidia-smi says {value}"
    pages = smi_field("retired_pages.pending")
    if pages is not None:
        for index, value in enumerate(pages):
            if value in ("Yes", "No"):
                assert ((index, "retired_pages") in by_kind) == (value == "Yes")
    pending, failure = smi_field("remapped_rows.pending"), smi_field("remapped_rows.failure")
    if pending is not None and failure is not None:
        for index, (is_pending, failed) in enumerate(zip(pending, failure, strict=True)):
            if {is_pending, failed} <= {"Yes", "No"}:
                assert ((index, "remapped_rows") in by_kind) == ("Yes" in (is_pending, failed))


def test_xid_events_are_watched_and_reads_never_block(nvml: NvmlGpuProvider) -> None:
    started = time.monotonic()
    nvml.health()
    for _ in range(5):
        nvml.health()
    assert time.monotonic() - started < 10  # the event set is drained with timeout 0
    notices = nvml.warnings()
    assert nvml.warnings() == []  # each notice once
    unwatched = [line for line in notices if "Xid errors are not watched" in line]
    if unwatched:
        pytest.skip(f"this driver delivers no Xid events here: {unwatched[0]}")


def test_health_after_close_opens_nvml_again(nvml: NvmlGpuProvider) -> None:
    nvml.health()
    nvml.close()
    events = nvml.health()
    assert [e for e in events if e.kind in ("lost", "nvml")] == []
    assert nvml.device_count() >= 1
