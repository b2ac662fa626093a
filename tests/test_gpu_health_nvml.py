"""The NVML provider's health read against a fake ``pynvml``: Xid events, ECC, retired pages,
remapped rows, lost GPUs and NVML failing, so every branch runs without a GPU (the real-GPU
checks are in test_nvml.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moreh_tools.gpus import GpuHealthEvent, GpuProvider, NvmlGpuProvider
from moreh_tools.gpus.nvml import MAX_EVENTS_PER_READ
from scheduler_core.gpu_health import (
    HEALTH_KINDS,
    ecc_event,
    remapped_rows_event,
    retired_pages_event,
    xid_event,
)

XID_EVENT = 0x8
DBE_EVENT = 0x2
LOST, RESET, UNKNOWN, NOT_SUPPORTED, TIMEOUT, UNINITIALIZED = 15, 16, 999, 3, 10, 1
MESSAGES = {15: "GPU is lost", 16: "GPU requires restart", 999: "Unknown Error", 3: "Not Supported", 10: "Timeout"}


class FakeNvml:
    """A stand-in ``pynvml`` whose devices' answers and failures each test sets."""

    def __init__(self, count: int = 2) -> None:
        self.module = module = ModuleType("pynvml")

        class NVMLError(Exception):
            def __init__(self, value: int) -> None:
                self.value = value
                super().__init__(MESSAGES.get(value, f"NVML error {value}"))

        self.error = NVMLError
        module.NVMLError = NVMLError  # type: ignore[attr-defined]
        self.count = count
        self.count_error: int | None = None
        self.init_error: int | None = None
        self.handle_error: dict[int, int] = {}
        self.fail: dict[tuple[int, str], int] = {}  # (device, function) -> error
        self.lost: set[int] = set()
        self.ecc: dict[int, int] = {}
        self.pending_pages: dict[int, int] = {}
        self.rows: dict[int, tuple[int, int, int, int]] = {}
        self.supported = {index: XID_EVENT | DBE_EVENT for index in range(8)}
        self.queue: list[SimpleNamespace] = []
        self.wait_error: int | None = None
        self.registered: list[tuple[int, int]] = []
        self.calls: list[str] = []
        self.procs: dict[int, list[SimpleNamespace]] = {}
        self.handles = [SimpleNamespace(index=index) for index in range(8)]
        self.stranger = SimpleNamespace(index=9)  # a device this provider never listed
        self.nameless = SimpleNamespace(index=-1)  # a device whose UUID cannot be read
        for name, value in {
            "NVML_SUCCESS": 0,
            "NVML_TEMPERATURE_GPU": 0,
            "NVML_MEMORY_ERROR_TYPE_UNCORRECTED": 1,
            "NVML_VOLATILE_ECC": 0,
            "NVML_FEATURE_ENABLED": 1,
            "nvmlEventTypeXidCriticalError": XID_EVENT,
        }.items():
            setattr(module, name, value)
        functions: dict[str, Callable[..., Any]] = {
            "nvmlInit": self._init,
            "nvmlShutdown": lambda: self.calls.append("shutdown"),
            "nvmlSystemGetNVMLVersion": lambda: "12.550.54",
            "nvmlSystemGetDriverVersion": lambda: "550.54.15",
            "nvmlDeviceGetCount": self._count,
            "nvmlDeviceGetHandleByIndex": self._handle,
            "nvmlDeviceGetUUID": self._uuid,
            "nvmlDeviceGetName": self._query("name", lambda h: "NVIDIA H200"),
            "nvmlDeviceGetMemoryInfo": self._query("memory", lambda h: SimpleNamespace(total=2**37, used=2**30)),
            "nvmlDeviceGetUtilizationRates": self._query("util", lambda h: SimpleNamespace(gpu=50, memory=10)),
            "nvmlDeviceGetTemperature": self._query("temp", lambda h, sensor: 40),
            "nvmlDeviceGetComputeRunningProcesses_v3": self._query("procs", lambda h: self.procs.get(h.index, [])),
            "nvmlDeviceGetTotalEccErrors": self._query("ecc", self._ecc),
            "nvmlDeviceGetRetiredPagesPendingStatus": self._query("pages", self._pages),
            "nvmlDeviceGetRemappedRows": self._query("rows", self._rows),
            "nvmlDeviceGetSupportedEventTypes": self._query("supported", lambda h: self.supported[h.index]),
            "nvmlDeviceRegisterEvents": self._query("register", self._register),
            "nvmlEventSetCreate": lambda: self.calls.append("create") or "event-set",
            "nvmlEventSetWait_v2": self._wait,
            "nvmlEventSetFree": lambda event_set: self.calls.append(f"free {event_set}"),
        }
        for name, function in functions.items():
            setattr(module, name, function)

    def _init(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise self.error(self.init_error)

    def _count(self) -> int:
        if self.count_error is not None:
            raise self.error(self.count_error)
        return self.count

    def _handle(self, index: int) -> SimpleNamespace:
        if index in self.handle_error:
            raise self.error(self.handle_error[index])
        return self.handles[index]

    def _uuid(self, handle: SimpleNamespace) -> str:
        if handle is self.nameless or (handle.index, "uuid") in self.fail:
            raise self.error(self.fail.get((handle.index, "uuid"), UNKNOWN))
        return f"GPU-{handle.index}"

    def _query(self, what: str, answer: Callable[..., Any]) -> Callable[..., Any]:
        def query(handle: SimpleNamespace, *args: Any) -> Any:
            if handle.index in self.lost:
                raise self.error(LOST)
            if (handle.index, what) in self.fail:
                raise self.error(self.fail[(handle.index, what)])
            return answer(handle, *args)

        return query

    def _ecc(self, handle: SimpleNamespace, error_type: int, counter: int) -> int:
        assert (error_type, counter) == (1, 0)  # uncorrected, volatile
        if handle.index not in self.ecc:
            raise self.error(NOT_SUPPORTED)
        return self.ecc[handle.index]

    def _pages(self, handle: SimpleNamespace) -> int:
        if handle.index not in self.pending_pages:
            raise self.error(NOT_SUPPORTED)
        return self.pending_pages[handle.index]

    def _rows(self, handle: SimpleNamespace) -> tuple[int, int, int, int]:
        if handle.index not in self.rows:
            raise self.error(NOT_SUPPORTED)
        return self.rows[handle.index]

    def _register(self, handle: SimpleNamespace, mask: int, event_set: str) -> None:
        assert event_set == "event-set"
        self.registered.append((handle.index, mask))

    def _wait(self, event_set: str, timeout_ms: int) -> SimpleNamespace:
        assert (event_set, timeout_ms) == ("event-set", 0)  # never blocks the daemon
        if self.wait_error is not None:
            raise self.error(self.wait_error)
        if not self.queue:
            raise self.error(TIMEOUT)
        return self.queue.pop(0)

    def xid(self, device: SimpleNamespace | int, code: int, event_type: int = XID_EVENT) -> None:
        handle = self.handles[device] if isinstance(device, int) else device
        self.queue.append(SimpleNamespace(device=handle, eventType=event_type, eventData=code))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml.module)
    return nvml


@pytest.fixture
def provider(fake: FakeNvml) -> NvmlGpuProvider:
    return NvmlGpuProvider().open()


def kinds(events: list[GpuHealthEvent]) -> list[tuple[int | None, str, int | None]]:
    return [(event.device, event.kind, event.code) for event in events]


def test_healthy_gpus_register_xid_events_once(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    assert isinstance(provider, GpuProvider)
    assert provider.snapshot()
    assert fake.registered == []  # snapshots alone never register anything
    for _ in range(3):
        assert provider.health() == []
    assert fake.registered == [(0, XID_EVENT), (1, XID_EVENT)]
    assert fake.calls.count("create") == 1
    assert provider.warnings() == []
    provider.close()
    assert fake.calls[-2:] == ["free event-set", "shutdown"]


def test_critical_xids_once_application_xids_never(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    assert provider.health() == []
    fake.xid(1, 79)
    fake.xid(0, 13)  # application error
    fake.xid(0, 48)
    fake.xid(0, 0, event_type=DBE_EVENT)  # not an Xid event
    fake.xid(fake.stranger, 79)  # a GPU this provider does not know: ignored, as the device plugin does
    fake.xid(fake.nameless, 74)  # the GPU cannot be named: every GPU is suspect
    assert provider.health() == [xid_event(1, 79), xid_event(0, 48), xid_event(None, 74)]
    assert provider.health() == []


def test_events_are_drained_a_bounded_number_per_read(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    provider.health()
    for _ in range(MAX_EVENTS_PER_READ + 4):
        fake.xid(0, 79)
    assert len(provider.health()) == MAX_EVENTS_PER_READ
    assert len(provider.health()) == 4


def test_ecc_retired_pages_and_remapped_rows_are_conditions(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    fake.ecc = {0: 2, 1: 0}
    fake.pending_pages = {0: 0, 1: 1}
    fake.rows = {0: (3, 1, 1, 0), 1: (0, 0, 0, 1)}
    expected = [
        ecc_event(0, 2),
        remapped_rows_event(0, failed=False),
        retired_pages_event(1),
        remapped_rows_event(1, failed=True),
    ]
    assert provider.health() == expected
    assert provider.health() == expected
    fake.ecc, fake.pending_pages, fake.rows = {}, {}, {}  # not supported (e.g. no ECC): nothing to say
    assert provider.health() == []


def test_a_lost_gpu_is_reported_and_left_out_of_snapshots(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    fake.ecc = {1: 5}
    fake.lost = {1}
    assert [snap.index for snap in provider.snapshot()] == [0]
    events = provider.health()
    assert kinds(events) == [(1, "lost", LOST)]  # its other checks are moot
    assert "GPU is lost" in events[0].cause
    assert kinds(provider.health()) == [(1, "lost", LOST)]


def test_a_loss_seen_by_a_snapshot_is_reported_by_the_next_health_read(
    fake: FakeNvml, provider: NvmlGpuProvider
) -> None:
    fake.lost = {0}
    assert [snap.index for snap in provider.snapshot()] == [1]
    fake.lost = set()
    assert kinds(provider.health()) == [(0, "lost", LOST)]
    assert provider.health() == []


def test_reset_required_counts_as_lost(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    fake.fail[(0, "ecc")] = RESET
    assert kinds(provider.health()) == [(0, "lost", RESET)]


def test_other_query_failures_are_tolerated(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    fake.fail[(0, "ecc")] = UNKNOWN
    fake.fail[(1, "rows")] = UNINITIALIZED
    fake.pending_pages = {1: 1}
    assert provider.health() == [retired_pages_event(1)]


def test_a_gpu_nvml_no_longer_lists_or_opens_is_lost(fake: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = NvmlGpuProvider().open()
    fake.count = 1
    (event,) = provider.health()
    assert (event.device, event.kind) == (1, "lost")
    assert "NVML lists 1 GPUs, it listed 2" in event.cause
    fresh_fake = FakeNvml()
    fresh_fake.handle_error = {1: LOST}
    monkeypatch.setitem(sys.modules, "pynvml", fresh_fake.module)
    fresh = NvmlGpuProvider().open()
    assert [snap.index for snap in fresh.snapshot()] == [0]
    assert kinds(fresh.health()) == [(1, "lost", LOST)]


def test_nvml_failing_is_one_host_event_never_an_exception(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    fake.count_error = UNKNOWN
    assert kinds(provider.health()) == [(None, "nvml", UNKNOWN)]
    assert provider.snapshot() == []
    fake.count_error = None
    provider.health()
    fake.wait_error = UNKNOWN
    fake.ecc = {0: 1}
    events = provider.health()
    assert kinds(events) == [(None, "nvml", UNKNOWN)]
    assert "waiting for Xid events failed" in events[0].cause
    provider.close()
    fake.init_error = 9
    (event,) = provider.health()
    assert (event.device, event.kind) == (None, "nvml")
    assert "cannot be used" in event.cause


def test_an_unexpected_error_in_the_bindings_fails_the_host_closed(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    def broken(handle: Any) -> Any:
        raise OSError("libnvidia-ml.so.1: bad ELF")

    fake.module.nvmlDeviceGetRemappedRows = broken  # type: ignore[attr-defined]
    (event,) = provider.health()
    assert (event.device, event.kind) == (None, "nvml")
    assert "OSError: libnvidia-ml.so.1: bad ELF" in event.cause


def test_gpus_without_xid_events_are_said_once(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    fake.supported[1] = DBE_EVENT
    fake.fail[(0, "register")] = NOT_SUPPORTED
    fake.ecc = {1: 1}
    assert provider.health() == [ecc_event(1, 1)]  # the other checks still run
    assert provider.warnings() == ["NVML: Xid errors are not watched on GPU 0 (Not Supported), 1 (not supported)"]
    provider.health()
    assert provider.warnings() == []


def test_a_pynvml_without_event_sets_still_checks_the_rest(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    del fake.module.nvmlEventSetCreate
    fake.ecc = {0: 1}
    assert provider.health() == [ecc_event(0, 1)]
    (warning,) = provider.warnings()
    assert "Xid errors are not watched" in warning


def test_after_close_a_health_read_starts_again(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    provider.health()
    provider.close()
    fake.xid(0, 79)
    assert provider.health() == [xid_event(0, 79)]
    assert fake.calls.count("create") == 2
    assert fake.calls.count("init") == 2


def test_processes_carry_their_owner(fake: FakeNvml, provider: NvmlGpuProvider) -> None:
    fake.procs = {0: [SimpleNamespace(pid=os.getpid(), usedGpuMemory=2**30)]}
    (proc,) = provider.snapshot()[0].processes
    assert (proc.pid, proc.used_memory_mib, proc.uid) == (os.getpid(), 1024, os.getuid())
    assert proc.user is not None or os.getuid() != 0


ERRORS = st.sampled_from([LOST, RESET, UNKNOWN, NOT_SUPPORTED, UNINITIALIZED, 4, 9, 13])
FUNCTIONS = st.sampled_from(["memory", "ecc", "pages", "rows", "supported", "register", "uuid"])


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(st.tuples(st.integers(0, 1), FUNCTIONS), ERRORS, max_size=6),
    st.one_of(st.none(), ERRORS),
    st.dictionaries(st.integers(0, 1), ERRORS, max_size=2),
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 200)), max_size=5),
)
def test_health_never_raises_and_its_events_are_well_formed(
    fake: FakeNvml,
    failures: dict[tuple[int, str], int],
    wait_error: int | None,
    handle_errors: dict[int, int],
    xids: list[tuple[int, int]],
) -> None:
    fake.fail, fake.wait_error, fake.handle_error = dict(failures), wait_error, dict(handle_errors)
    fake.ecc, fake.pending_pages, fake.rows = {0: 1}, {1: 1}, {0: (0, 0, 1, 0)}
    provider = NvmlGpuProvider().open()
    for _ in range(2):
        for device, code in xids:
            fake.xid(device, code)
        events = provider.health()
        for event in events:
            assert event.kind in HEALTH_KINDS
            assert event.device is None or event.device in (0, 1)
            assert event.cause
            assert "\n" not in event.cause
        provider.snapshot()
        assert all("\n" not in line for line in provider.warnings())
    provider.close()
