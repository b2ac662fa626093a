"""Real NVIDIA GPUs through NVML (package ``nvidia-ml-py``, module ``pynvml``).

``pynvml`` is imported lazily, inside the functions that need it, so importing this module (or
``moreh_tools.gpus``) never loads it. Every device query goes through :func:`nvml_query`, which
turns an unsupported or failing metric into a default value: one missing sensor never breaks a
snapshot (nvitop's ``nvmlQuery``).

Indexes are NVML indexes, which follow PCI bus order. CUDA numbers devices the same way only when
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (its default is "fastest first"), so the launcher sets that
variable before it passes these indexes in ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from moreh_tools.gpus.base import MIB, GpuProcess, GpuSnapshot, GpuUnavailableError

log = logging.getLogger(__name__)

# Process listings in order of preference; older drivers lack the newer versioned entry points.
_COMPUTE_PROCS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)
_GRAPHICS_PROCS = (
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v2",
    "nvmlDeviceGetGraphicsRunningProcesses",
)


def import_pynvml() -> ModuleType:
    """Import ``pynvml``, or raise :class:`GpuUnavailableError` saying it is not installed."""
    try:
        import pynvml
    except ImportError as exc:
        reason = "pynvml is not installed (pip install nvidia-ml-py)"
        raise GpuUnavailableError(f"NVML cannot be used: {reason}", reason=reason) from exc
    return pynvml


def _tolerated_errors(pynvml: ModuleType) -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [pynvml.NVMLError]
    mismatch = getattr(pynvml, "NVMLLibraryMismatchError", None)  # not an NVMLError subclass
    if isinstance(mismatch, type) and issubclass(mismatch, BaseException):
        errors.append(mismatch)
    return tuple(errors)


def nvml_query(fn: Callable[..., Any] | str, *args: Any, default: Any = None) -> Any:
    """Call one NVML function and return ``default`` if the device cannot answer.

    ``fn`` is a ``pynvml`` function or its name; a name this ``pynvml`` does not have also yields
    ``default``. Any ``NVMLError`` (NotSupported, NotFound, NoPermission, GpuIsLost,
    FunctionNotFound, Unknown, ...) and a library version mismatch yield ``default``; the failure is
    logged at debug level. ``bytes`` results are decoded to ``str`` (older ``pynvml`` returns bytes).
    """
    import pynvml

    if isinstance(fn, str):
        func = getattr(pynvml, fn, None)
        if func is None:
            log.debug("pynvml has no %s", fn)
            return default
    else:
        func = fn
    try:
        result = func(*args)
    except _tolerated_errors(pynvml) as exc:
        log.debug("%s failed: %s", getattr(func, "__name__", func), exc)
        return default
    if isinstance(result, bytes):
        return result.decode(errors="replace")
    return result


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


class NvmlGpuProvider:
    """Snapshots of the NVIDIA GPUs on this host.

    NVML is initialised once, on first use (or by :meth:`open`), under a lock, and shut down by
    :meth:`close`. Collecting a snapshot after :meth:`close` initialises it again.
    """

    simulated = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml: ModuleType | None = None
        self._handles: dict[int, Any] = {}
        self._description = "NVML (not initialised)"

    # -- lifetime -------------------------------------------------------------------------------

    def open(self) -> NvmlGpuProvider:
        """Initialise NVML if needed; raise :class:`GpuUnavailableError` (one line) if it cannot be used."""
        self._ensure()
        return self

    def _ensure(self) -> ModuleType:
        with self._lock:
            if self._nvml is not None:
                return self._nvml
            pynvml = import_pynvml()
            try:
                pynvml.nvmlInit()
            except (pynvml.NVMLError, OSError) as exc:  # OSError: a libnvml that cannot be loaded
                reason = str(exc) or type(exc).__name__
                raise GpuUnavailableError(f"NVML cannot initialise: {reason}", reason=reason) from exc
            nvml_version = nvml_query(pynvml.nvmlSystemGetNVMLVersion, default="?")
            driver_version = nvml_query(pynvml.nvmlSystemGetDriverVersion, default="?")
            self._description = f"NVML {_text(nvml_version)} (driver {_text(driver_version)})"
            self._handles = {}
            self._nvml = pynvml
            return pynvml

    def close(self) -> None:
        """Shut NVML down (safe to call more than once)."""
        with self._lock:
            pynvml, self._nvml = self._nvml, None
            self._handles = {}
            if pynvml is not None:
                nvml_query(pynvml.nvmlShutdown)

    def __enter__(self) -> NvmlGpuProvider:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- queries --------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        """``NVML <version> (driver <version>)``, once NVML is initialised."""
        return self._description

    def device_count(self) -> int:
        """Number of devices NVML sees (0 if it cannot say)."""
        pynvml = self._ensure()
        count = nvml_query(pynvml.nvmlDeviceGetCount, default=0)
        return int(count)

    def _handle(self, pynvml: ModuleType, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = nvml_query(pynvml.nvmlDeviceGetHandleByIndex, index)
            if handle is not None:
                self._handles[index] = handle
        return handle

    def snapshot(self) -> list[GpuSnapshot]:
        """Every device NVML can reach, in index order; a lost device is left out."""
        pynvml = self._ensure()
        snapshots = []
        for index in range(self.device_count()):
            handle = self._handle(pynvml, index)
            if handle is None:
                continue
            snapshots.append(device_snapshot(pynvml, index, handle))
        return snapshots


def device_snapshot(pynvml: ModuleType, index: int, handle: Any) -> GpuSnapshot:
    """Collect one device's snapshot; each metric the device does not support becomes ``None``."""
    uuid = nvml_query(pynvml.nvmlDeviceGetUUID, handle, default="")
    name = nvml_query(pynvml.nvmlDeviceGetName, handle, default="NVIDIA GPU")
    memory = nvml_query(pynvml.nvmlDeviceGetMemoryInfo, handle)
    rates = nvml_query(pynvml.nvmlDeviceGetUtilizationRates, handle)
    temp = nvml_query("nvmlDeviceGetTemperature", handle, getattr(pynvml, "NVML_TEMPERATURE_GPU", 0))
    return GpuSnapshot(
        index=index,
        uuid=_text(uuid),
        name=_text(name),
        memory_total_mib=int(memory.total) // MIB if memory is not None else 0,
        memory_used_mib=int(memory.used) // MIB if memory is not None else 0,
        util_gpu=_int_or_none(getattr(rates, "gpu", None)),
        util_mem=_int_or_none(getattr(rates, "memory", None)),
        temp_gpu=_int_or_none(temp),
        temp_mem=memory_temperature(pynvml, handle),
        processes=device_processes(pynvml, handle),
    )


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def memory_temperature(pynvml: ModuleType, handle: Any) -> int | None:
    """HBM temperature in °C from field ``NVML_FI_DEV_MEMORY_TEMP``, or ``None`` where unsupported.

    GPUs without a memory sensor either fail the field or report 0; both read as ``None``.
    """
    field = getattr(pynvml, "NVML_FI_DEV_MEMORY_TEMP", None)
    if field is None:
        return None
    values = nvml_query("nvmlDeviceGetFieldValues", handle, [field])
    if not values:
        return None
    value = values[0]
    if getattr(value, "nvmlReturn", 0) != getattr(pynvml, "NVML_SUCCESS", 0):
        return None
    raw = _field_value(pynvml, value)
    if raw is None or raw <= 0:
        return None
    return int(raw)


def _field_value(pynvml: ModuleType, value: Any) -> float | None:
    kind = getattr(value, "valueType", None)
    union = value.value
    by_type = {
        getattr(pynvml, "NVML_VALUE_TYPE_DOUBLE", -1): "dVal",
        getattr(pynvml, "NVML_VALUE_TYPE_UNSIGNED_INT", -1): "uiVal",
        getattr(pynvml, "NVML_VALUE_TYPE_UNSIGNED_LONG", -1): "ulVal",
        getattr(pynvml, "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", -1): "ullVal",
        getattr(pynvml, "NVML_VALUE_TYPE_SIGNED_LONG_LONG", -1): "sllVal",
        getattr(pynvml, "NVML_VALUE_TYPE_SIGNED_INT", -1): "siVal",
        getattr(pynvml, "NVML_VALUE_TYPE_UNSIGNED_SHORT", -1): "usVal",
    }
    attribute = by_type.get(kind, "uiVal")
    raw = getattr(union, attribute, None)
    return float(raw) if raw is not None else None


def _process_list(pynvml: ModuleType, names: tuple[str, ...], handle: Any) -> list[Any]:
    """The first listing this driver supports; an empty list if none is."""
    candidates = (
        getattr(pynvml, "NVMLError_FunctionNotFound", None),
        getattr(pynvml, "NVMLLibraryMismatchError", None),
    )
    older_driver = tuple(error for error in candidates if isinstance(error, type) and issubclass(error, Exception))
    for name in names:
        func = getattr(pynvml, name, None)
        if func is None:
            continue
        try:
            return list(func(handle))
        except older_driver:
            continue  # this driver lacks the entry point: try the next, older one
        except pynvml.NVMLError as exc:
            log.debug("%s failed: %s", name, exc)
            return []
    return []


def device_processes(pynvml: ModuleType, handle: Any) -> tuple[GpuProcess, ...]:
    """Compute and graphics processes on one device, one entry per pid, sorted by pid.

    ``usedGpuMemory`` may be ``None`` (not available, e.g. without permission) and counts as 0.
    The pids are those of the PID namespace NVML runs in (the host's, inside most containers).
    """
    memory_by_pid: dict[int, int] = {}
    for names in (_COMPUTE_PROCS, _GRAPHICS_PROCS):
        for info in _process_list(pynvml, names, handle):
            pid = getattr(info, "pid", None)
            if pid is None:
                continue
            used = getattr(info, "usedGpuMemory", None)
            # None or NVML_VALUE_NOT_AVAILABLE (all ones) when the driver cannot tell.
            used_mib = int(used) // MIB if isinstance(used, int) and 0 <= used < 2**63 else 0
            memory_by_pid[int(pid)] = max(used_mib, memory_by_pid.get(int(pid), 0))
    return tuple(GpuProcess(pid, used) for pid, used in sorted(memory_by_pid.items()))
