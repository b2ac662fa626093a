"""GPU providers and the local backend: MOREH_FAKE_GPUS parsing, the simulated provider against
real child processes, the NVML provider against a fake ``pynvml``, and what lands in the state."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from conftest import Smc, ensure_local_backend, ok, sample_into_state

from moreh_tools.gpus import GpuProcess as gpu_process
from moreh_tools.gpus import GpuProvider, GpuSnapshot, GpuUnavailableError, get_provider, parse_fake_gpus
from moreh_tools.gpus.base import process_owner, user_name
from moreh_tools.gpus.simulated import SIMULATED_GPU_NAME, SimProcess, SimulatedGpuProvider
from state.store import StateStore

GIB = 1024**3
MIB = 1024**2


@pytest.fixture(autouse=True)
def _host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOREH_HOSTNAME", "gpuhost")
    monkeypatch.delenv("MOREH_FAKE_GPUS", raising=False)
    monkeypatch.delenv("MOREH_FAKE_GPU_FAULTS", raising=False)


@pytest.fixture
def children() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real ``sleep`` children with extra environment; all are killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(**env: str) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(["sleep", "60"], env={**os.environ, **env})
        started.append(child)
        return child

    yield spawn
    for child in started:
        child.kill()
        child.wait()


def wait_for(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``condition`` until it returns something truthy (a child's environment appears late)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def pids_by_device(snapshots: list[GpuSnapshot]) -> dict[int, set[int]]:
    return {snap.index: {proc.pid for proc in snap.processes} for snap in snapshots}


# -- MOREH_FAKE_GPUS ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("8", (8, 81920)), ("2:4096", (2, 4096)), (" 3 ", (3, 81920)), ("64:1048576", (64, 1048576)), ("0", None)],
)
def test_fake_gpus_accepts_n_and_n_mib(value: str, expected: tuple[int, int] | None) -> None:
    assert parse_fake_gpus(value) == expected


@pytest.mark.parametrize("value", ["abc", "-1", "0:100", "65", "8:0", "8:", ":8", "8x", "1:2000000", "٣", "8, 2"])
def test_bad_fake_gpus_is_one_line_naming_the_forms(value: str) -> None:
    with pytest.raises(GpuUnavailableError) as caught:
        parse_fake_gpus(value)
    message = str(caught.value)
    assert "\n" not in message
    assert "MOREH_FAKE_GPUS" in message
    assert repr(value) in message
    assert "N:MiB" in message


def test_get_provider_simulated_is_labelled_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOREH_FAKE_GPUS", "3:2048")
    provider = get_provider()
    assert provider.simulated is True
    assert isinstance(provider, GpuProvider)
    assert provider.description == "simulated: MOREH_FAKE_GPUS=3:2048 asks for them; 3 GPUs x 2048 MiB"
    assert provider.device_count() == 3
    with pytest.raises(GpuUnavailableError, match="MOREH_FAKE_GPUS"):
        get_provider({"MOREH_FAKE_GPUS": "lots"})


def test_importing_the_package_loads_neither_pynvml_nor_psutil() -> None:
    code = "import sys, moreh_tools.gpus; print(sorted({'pynvml', 'psutil'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- the simulated provider -----------------------------------------------------------------------


def test_simulated_devices_are_stable_and_look_like_gpus() -> None:
    first = SimulatedGpuProvider(4, 1000, hostname="a", processes=list).snapshot()
    again = SimulatedGpuProvider(4, 1000, hostname="a", processes=list).snapshot()
    other_host = SimulatedGpuProvider(4, 1000, hostname="b", processes=list).snapshot()
    assert [d.uuid for d in first] == [d.uuid for d in again]
    assert len({d.uuid for d in first + other_host}) == 8
    assert [d.index for d in first] == [0, 1, 2, 3]
    for device in first:
        assert device.uuid.startswith("GPU-SIM-")
        assert device.name == SIMULATED_GPU_NAME
        assert (device.memory_total_mib, device.memory_used_mib, device.util_gpu, device.processes) == (1000, 0, 0, ())
        assert device.temp_gpu is not None
        assert device.temp_mem is not None


def test_a_job_child_is_on_exactly_its_visible_devices_until_it_dies(
    children: Callable[..., subprocess.Popen[bytes]],
) -> None:
    provider = SimulatedGpuProvider(4, 8192)
    job = children(MOREH_JOB_ID="7", CUDA_VISIBLE_DEVICES="1,3")
    declared = children(MOREH_JOB_ID="8", CUDA_VISIBLE_DEVICES="0", MOREH_FAKE_GPU_MEMORY_MIB="300")
    children(CUDA_VISIBLE_DEVICES="2")  # not a job: no MOREH_JOB_ID
    children(MOREH_JOB_ID="9", CUDA_VISIBLE_DEVICES="2", MOREH_HOME="/elsewhere")  # another state's job

    def all_seen() -> list[GpuSnapshot] | None:
        snapshots = provider.snapshot()
        return snapshots if pids_by_device(snapshots)[3] and pids_by_device(snapshots)[0] else None

    snapshots = wait_for(all_seen)
    assert snapshots is not None
    assert pids_by_device(snapshots) == {0: {declared.pid}, 1: {job.pid}, 2: set(), 3: {job.pid}}
    for index in (1, 3):
        device = snapshots[index]
        (proc,) = device.processes
        assert 512 <= proc.used_memory_mib <= 512 + 0.3 * 8192 + 50  # a fresh process: about its CUDA context
        assert device.memory_used_mib == proc.used_memory_mib
        assert device.util_gpu is not None
        assert device.util_gpu > 0
    assert snapshots[0].processes[0].used_memory_mib == 300
    assert snapshots[0].memory_used_mib == 300
    assert snapshots[2].memory_used_mib == 0

    job.kill()
    job.wait()
    after = provider.snapshot()
    assert pids_by_device(after) == {0: {declared.pid}, 1: set(), 2: set(), 3: set()}
    assert after[1].memory_used_mib == 0
    assert after[1].util_gpu == 0


def test_simulated_memory_ramps_and_shares_the_device() -> None:
    clock = [1000.0]
    env = {"MOREH_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "0"}
    procs = [SimProcess(11, 1000.0, env)]
    provider = SimulatedGpuProvider(1, 10000, now=lambda: clock[0], processes=lambda: procs, home="")
    assert provider.snapshot()[0].memory_used_mib == 512
    clock[0] = 1010.0
    assert provider.snapshot()[0].memory_used_mib == 512 + 1500
    clock[0] = 5000.0
    assert provider.snapshot()[0].memory_used_mib == 512 + 3000
    procs += [SimProcess(pid, 0.0, env) for pid in (12, 13, 14, 15)]  # five processes: 2000 MiB each at most
    device = provider.snapshot()[0]
    assert [p.used_memory_mib for p in device.processes] == [2000] * 5
    assert device.memory_used_mib == 10000
    assert device.util_mem == 100


def test_cuda_visible_devices_by_uuid_and_out_of_range() -> None:
    probe = SimulatedGpuProvider(2, 1000, hostname="h", processes=list, home="")
    uuid = probe.snapshot()[1].uuid
    env = {"MOREH_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": f"{uuid},5"}
    provider = SimulatedGpuProvider(2, 1000, hostname="h", processes=lambda: [SimProcess(5, 0.0, env)], home="")
    assert pids_by_device(provider.snapshot()) == {0: set(), 1: {5}}


def test_job_processes_carry_their_owner(children: Callable[..., subprocess.Popen[bytes]]) -> None:
    provider = SimulatedGpuProvider(2, 8192)
    job = children(MOREH_JOB_ID="7", CUDA_VISIBLE_DEVICES="1")
    snapshots = wait_for(lambda: (snaps := provider.snapshot())[1].processes and snaps)
    assert snapshots
    (proc,) = snapshots[1].processes
    assert (proc.pid, proc.uid, proc.user) == (job.pid, os.getuid(), user_name(os.getuid()))
    (row,) = snapshots[1].device_processes()
    assert (row.device, row.pid, row.memory_mib, row.uid, row.user) == (
        1,
        job.pid,
        proc.used_memory_mib,
        proc.uid,
        proc.user,
    )


def test_process_owner_of_this_process_and_of_no_process() -> None:
    assert process_owner(os.getpid()) == (os.getuid(), user_name(os.getuid()))
    assert process_owner(2**31 - 1) == (None, None)
    assert user_name(os.getuid()) is not None
    assert user_name(2**31 + 12345) is None


def test_every_provider_reads_health_and_warnings() -> None:
    provider = SimulatedGpuProvider(2, 1024, processes=list)
    assert isinstance(provider, GpuProvider)
    assert provider.health() == []
    assert provider.warnings() == []


# -- the local backend ---------------------------------------------------------------------------


def backends_of(store: StateStore) -> list[Any]:
    with store.reading() as s:
        return s.backends.all()


def test_ensure_local_backend_registers_once_and_keeps_the_admins_word(smc: Smc) -> None:
    store = StateStore()
    provider = SimulatedGpuProvider(4, 2048)
    backend_id = ensure_local_backend(store, provider)
    assert ensure_local_backend(store, provider) == backend_id
    (backend,) = backends_of(store)
    assert (backend.host, backend.status) == ("gpuhost", "ACTIVE")
    assert [(d.index, d.status, d.name, d.memory_total_mib) for d in backend.devices] == [
        (i, "IDLE", SIMULATED_GPU_NAME, 2048) for i in range(4)
    ]
    assert [d.uuid for d in backend.devices] == [d.uuid for d in provider.snapshot()]

    ok(smc(f"update backend status {backend_id} SHUTDOWN"))
    ok(smc(f"update device {backend_id} 2 SHUTDOWN"))
    assert ensure_local_backend(store, provider) == backend_id
    sample_into_state(store, provider)
    (backend,) = backends_of(store)
    assert backend.status == "SHUTDOWN"
    assert [d.status for d in backend.devices] == ["IDLE", "IDLE", "SHUTDOWN", "IDLE"]

    # GPUs that appear later are added, as IDLE, next to the admin's settings.
    assert ensure_local_backend(store, SimulatedGpuProvider(6, 2048)) == backend_id
    (backend,) = backends_of(store)
    assert [d.status for d in backend.devices] == ["IDLE", "IDLE", "SHUTDOWN", "IDLE", "IDLE", "IDLE"]
    assert backend.status == "SHUTDOWN"


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from moreh_tools.gpus import get_provider
    from moreh_tools.port import LocalPort
    from moreh_tools.services.hosts import register_with
    from state.paths import state_home

    provider = get_provider()
    context = LocalPort(state_home(), None, "racer").context()
    print("ready", flush=True)
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.002)
    print(register_with(context, provider), flush=True)
    """
)


def test_eight_processes_at_once_make_exactly_one_backend(tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "MOREH_FAKE_GPUS": "6:4096", "MOREH_HOSTNAME": "racehost"}
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(go)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None
            assert racer.stdout.readline() == "ready\n"
        go.touch()
        outputs = [racer.communicate(timeout=30) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    assert [racer.returncode for racer in racers] == [0] * 8
    ids = {out.strip() for out, _ in outputs}
    (backend,) = backends_of(StateStore())
    assert ids == {str(backend.id)}
    assert backend.host == "racehost"
    assert len(backend.devices) == 6
    with StateStore().reading() as s:
        assert s.one("SELECT count(*) FROM events WHERE action = 'CREATE_BACKEND'") == (1,)


def test_sample_into_state_records_devices_and_job_processes(
    children: Callable[..., subprocess.Popen[bytes]],
) -> None:
    store = StateStore()
    provider = SimulatedGpuProvider(4, 8192)
    backend_id = ensure_local_backend(store, provider)
    with store.transaction("set up a running job") as s:
        token = s.tokens.create("user@example.com")
        sda = s.sdas.create(token, "", 2)  # Medium: 2 devices
        job = s.jobs.submit(
            token, sda, backend_id=s.backends.local_id("gpuhost"), launcher_pid=os.getpid(), launcher_create_time=0.0, process_name="sleep"
        )
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(job.id, os.getpid(), 0.0)
        devices = [ref.index for ref in s.jobs.get(job.id).devices]
    visible = ",".join(map(str, devices))
    child = children(MOREH_JOB_ID=str(job.id), CUDA_VISIBLE_DEVICES=visible, MOREH_FAKE_GPU_MEMORY_MIB="1234")
    spare = next(index for index in range(4) if index not in devices)
    stranger = children(MOREH_JOB_ID="999", CUDA_VISIBLE_DEVICES=str(spare))  # no such job in this state
    wait_for(lambda: all(pids_by_device(provider.snapshot())[i] for i in [*devices, spare]))

    sample_into_state(store, provider)
    with store.reading() as s:
        rows = s.all(
            "SELECT pid, name, memory_mib, backend_id, device_index FROM job_processes WHERE job_id = ? "
            "ORDER BY device_index",
            [job.id],
        )
        others = s.all("SELECT job_id, pid FROM job_processes WHERE job_id <> ?", [job.id])
        (backend,) = s.backends.all()
    assert rows == [(child.pid, "sleep", 1234, backend_id, index) for index in devices]
    assert others == []
    by_index = {d.index: d for d in backend.devices}
    for index in devices:
        assert by_index[index].memory_used_mib == 1234
        assert (by_index[index].util_gpu or 0) > 0
        assert by_index[index].temp_gpu is not None
        assert by_index[index].temp_mem is not None
    assert (by_index[spare].memory_used_mib or 0) >= 512  # the stranger still uses the GPU, as NVML shows
    assert stranger.pid in pids_by_device(provider.snapshot())[spare]

    child.kill()
    child.wait()
    sample_into_state(store, provider)
    with store.reading() as s:
        assert s.all("SELECT pid FROM job_processes WHERE job_id = ?", [job.id]) == []
        (backend,) = s.backends.all()
    assert [d.memory_used_mib for d in backend.devices if d.index in devices] == [0, 0]


def test_a_backend_the_admin_created_for_this_host_is_adopted(smc: Smc) -> None:
    ok(smc("create backend gpuhost 10.0.0.7 2"))
    ok(smc("update device 1 1 SHUTDOWN"))
    store = StateStore()
    assert ensure_local_backend(store, SimulatedGpuProvider(3, 1024)) == 1
    (backend,) = backends_of(store)
    assert backend.ip == "10.0.0.7"
    assert [(d.status, d.name, d.memory_total_mib) for d in backend.devices] == [
        ("IDLE", SIMULATED_GPU_NAME, 1024),
        ("SHUTDOWN", SIMULATED_GPU_NAME, 1024),
        ("IDLE", SIMULATED_GPU_NAME, 1024),
    ]


def test_sample_into_state_registers_an_unknown_host() -> None:
    store = StateStore()
    sample_into_state(store, SimulatedGpuProvider(2, 1024), host="fresh-host")
    (backend,) = backends_of(store)
    assert backend.host == "fresh-host"
    assert [(d.memory_total_mib, d.memory_used_mib, d.util_gpu) for d in backend.devices] == [(1024, 0, 0)] * 2


# -- the NVML provider, against a fake pynvml ---------------------------------------------------


class FakeNvml:
    """Builds a stand-in ``pynvml`` module: device 0 answers everything, device 1 little."""

    def __init__(self, init_error: str | None = None) -> None:
        self.calls: list[str] = []
        self.module = module = ModuleType("pynvml")

        class NVMLError(Exception):
            pass

        class NVMLError_NotSupported(NVMLError):
            pass

        class NVMLError_FunctionNotFound(NVMLError):
            pass

        class NVMLError_LibraryNotFound(NVMLError):
            pass

        self.not_supported = NVMLError_NotSupported
        for cls in (NVMLError, NVMLError_NotSupported, NVMLError_FunctionNotFound, NVMLError_LibraryNotFound):
            setattr(module, cls.__name__, cls)
        consts = {
            "NVML_SUCCESS": 0,
            "NVML_TEMPERATURE_GPU": 0,
            "NVML_FI_DEV_MEMORY_TEMP": 82,
            "NVML_VALUE_TYPE_UNSIGNED_INT": 1,
            "NVML_VALUE_TYPE_DOUBLE": 0,
        }
        for name, value in consts.items():
            setattr(module, name, value)

        def unsupported(*_: Any) -> Any:
            raise NVMLError_NotSupported("Not Supported")

        def missing(*_: Any) -> Any:
            raise NVMLError_FunctionNotFound("Function Not Found")

        def per_device(full: Callable[..., Any], partial: Callable[..., Any]) -> Callable[..., Any]:
            return lambda handle, *args: (full if handle == 0 else partial)(handle, *args)

        def proc(pid: int, used: int | None) -> SimpleNamespace:
            return SimpleNamespace(pid=pid, usedGpuMemory=used)

        def init() -> None:
            self.calls.append("init")
            if init_error:
                raise NVMLError_LibraryNotFound(init_error)

        functions: dict[str, Callable[..., Any]] = {
            "nvmlInit": init,
            "nvmlShutdown": lambda: self.calls.append("shutdown"),
            "nvmlSystemGetNVMLVersion": lambda: "12.550.54",
            "nvmlSystemGetDriverVersion": lambda: b"550.54.15",
            "nvmlDeviceGetCount": lambda: 2,
            "nvmlDeviceGetHandleByIndex": lambda index: index,
            "nvmlDeviceGetUUID": lambda h: f"GPU-0000000{h}",
            "nvmlDeviceGetName": per_device(lambda h: "NVIDIA H100 80GB HBM3", lambda h: b"Tesla T4"),
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(total=80 * GIB, used=(3 * GIB) if h == 0 else 0),
            "nvmlDeviceGetUtilizationRates": per_device(lambda h: SimpleNamespace(gpu=87, memory=40), unsupported),
            "nvmlDeviceGetTemperature": per_device(lambda h, sensor: 61, unsupported),
            "nvmlDeviceGetFieldValues": per_device(
                lambda h, fields: [SimpleNamespace(nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=72))],
                unsupported,
            ),
            "nvmlDeviceGetComputeRunningProcesses_v3": per_device(
                lambda h: [proc(100, 2 * GIB), proc(101, None)], missing
            ),
            "nvmlDeviceGetComputeRunningProcesses_v2": lambda h: [proc(300, 512 * MIB)],
            "nvmlDeviceGetGraphicsRunningProcesses_v3": per_device(
                lambda h: [proc(200, GIB), proc(100, 2 * GIB)], unsupported
            ),
        }
        for name, function in functions.items():
            setattr(module, name, function)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    # The fake's pids (100, 200, ...) may name real processes of this host: their owners are unknown here.
    monkeypatch.setattr("moreh_tools.gpus.nvml.process_owner", lambda pid: (None, None))
    return fake


def test_nvml_snapshot_reads_every_metric_and_tolerates_unsupported_ones(fake_nvml: FakeNvml) -> None:
    provider = get_provider({"MOREH_FAKE_GPUS": "0"})
    assert provider.simulated is False
    assert provider.description == "NVML 12.550.54 (driver 550.54.15)"
    full, partial = provider.snapshot()
    assert full == GpuSnapshot(
        index=0,
        uuid="GPU-00000000",
        name="NVIDIA H100 80GB HBM3",
        memory_total_mib=81920,
        memory_used_mib=3072,
        util_gpu=87,
        util_mem=40,
        temp_gpu=61,
        temp_mem=72,
        processes=(gpu_process(100, 2048), gpu_process(101, 0), gpu_process(200, 1024)),
    )
    # Not supported: utilisation, temperatures and graphics processes; v3 missing: v2 is used.
    assert partial == GpuSnapshot(
        index=1,
        uuid="GPU-00000001",
        name="Tesla T4",
        memory_total_mib=81920,
        memory_used_mib=0,
        util_gpu=None,
        util_mem=None,
        temp_gpu=None,
        temp_mem=None,
        processes=(gpu_process(300, 512),),
    )
    provider.close()
    provider.close()
    assert fake_nvml.calls == ["init", "shutdown"]


def test_nvml_health_on_a_pynvml_without_health_functions_reports_nothing_wrong(fake_nvml: FakeNvml) -> None:
    provider = get_provider({"MOREH_FAKE_GPUS": "0"})
    assert provider.health() == []  # no ECC, retired-page, remapping or event functions: nothing to report
    (warning,) = provider.warnings()
    assert "Xid errors are not watched" in warning
    provider.close()


def test_nvml_provider_registers_the_real_devices(fake_nvml: FakeNvml) -> None:
    store = StateStore()
    provider = get_provider()
    assert provider.simulated is False
    ensure_local_backend(store, provider)
    (backend,) = backends_of(store)
    assert [(d.uuid, d.name) for d in backend.devices] == [
        ("GPU-00000000", "NVIDIA H100 80GB HBM3"),
        ("GPU-00000001", "Tesla T4"),
    ]
    provider.close()


def test_without_a_usable_nvml_a_default_install_simulates_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(init_error="NVML Shared Library Not Found")
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    provider = get_provider({})
    assert provider.simulated is True
    assert provider.device_count() == 8
    assert provider.description == (
        "simulated: no NVIDIA GPU found (NVML: NVML Shared Library Not Found); 8 GPUs x 81920 MiB"
    )
    with pytest.raises(GpuUnavailableError) as caught:
        get_provider({"MOREH_FAKE_GPUS": "0"})
    assert str(caught.value) == (
        "MOREH_FAKE_GPUS=0 asks for real NVIDIA GPUs, but none is usable (NVML: NVML Shared Library Not Found)"
    )


def test_without_pynvml_installed_the_message_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(GpuUnavailableError, match=r"pip install nvidia-ml-py"):
        get_provider({"MOREH_FAKE_GPUS": "0"})
    assert "pip install nvidia-ml-py" in get_provider({}).description
