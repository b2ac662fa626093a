"""Real NVIDIA GPUs through NVML (package ``nvidia-ml-py``, module ``pynvml``).

``pynvml`` is imported lazily, inside the functions that need it, so importing this module (or
``moreh_tools.gpus``) never loads it. Every device query goes through :func:`nvml_query`, which
turns an unsupported or failing metric into a default value: one missing sensor never breaks a
snapshot (nvitop's ``nvmlQuery``).

Health (:meth:`NvmlGpuProvider.health`) follows the NVIDIA device plugin: critical Xids come from an
NVML event set (``nvmlEventTypeXidCriticalError``) registered once, on the first health read, and
drained without waiting (timeout 0) on each one; application Xids are ignored
(:func:`scheduler_core.gpu_health.is_critical_xid`). Each read also checks, per device, that it still
answers (``NVML_ERROR_GPU_IS_LOST`` or ``RESET_REQUIRED`` on any query: ``lost``), its volatile
uncorrectable ECC count, pending retired pages and pending or failed row remapping; a check the
device does not support is skipped. NVML failing as a whole (it cannot initialise, count the devices
or wait for events) is one host-level ``nvml`` event.

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

from moreh_tools.gpus.base import (
    MIB,
    GpuHealthEvent,
    GpuProcess,
    GpuSnapshot,
    GpuUnavailableError,
    process_owner,
)
from scheduler_core.gpu_health import (
    ecc_event,
    is_critical_xid,
    lost_event,
    nvml_event,
    remapped_rows_event,
    retired_pages_event,
    xid_event,
)

log = logging.getLogger(__name__)

#: NVML return codes (stable across versions; pynvml names them NVML_ERROR_*).
ERROR_NOT_SUPPORTED = 3
ERROR_NO_PERMISSION = 4
ERROR_TIMEOUT = 10
ERROR_FUNCTION_NOT_FOUND = 13
ERROR_GPU_IS_LOST = 15
ERROR_RESET_REQUIRED = 16
#: Errors that mean the device no longer answers.
LOST_ERRORS = frozenset({ERROR_GPU_IS_LOST, ERROR_RESET_REQUIRED})
#: Errors that mean a check does not apply to this device or driver: skipped silently.
UNSUPPORTED_ERRORS = frozenset({ERROR_NOT_SUPPORTED, ERROR_NO_PERMISSION, ERROR_FUNCTION_NOT_FOUND})
XID_CRITICAL_EVENT = 0x8  # nvmlEventTypeXidCriticalError
#: At most this many events are taken from the event set per health read (the rest wait for the next).
MAX_EVENTS_PER_READ = 256

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
        self._health_lock = threading.Lock()
        self._known_count = 0  # devices NVML listed when it was initialised
        self._events: Any = None  # the Xid event set, once registered
        self._events_registered = False
        self._uuid_index: dict[str, int] = {}
        self._lost_seen: dict[int, str] = {}  # lost devices noticed by snapshots since the last health read
        self._warnings: list[str] = []

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
            self._known_count = int(nvml_query(pynvml.nvmlDeviceGetCount, default=0))
            self._nvml = pynvml
            return pynvml

    def close(self) -> None:
        """Shut NVML down (safe to call more than once)."""
        with self._health_lock, self._lock:
            pynvml, self._nvml = self._nvml, None
            self._handles = {}
            events, self._events = self._events, None
            self._events_registered = False
            self._uuid_index = {}
            self._lost_seen = {}
            if pynvml is not None:
                if events is not None:
                    nvml_query("nvmlEventSetFree", events)
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
        """Every device NVML can reach, in index order; a lost device is left out (and reported by
        the next :meth:`health`)."""
        pynvml = self._ensure()
        snapshots = []
        for index in range(self.device_count()):
            handle, error = self._checked_handle(pynvml, index)
            if handle is None:
                if error is not None and _code(error) in LOST_ERRORS:
                    self._note_lost(index, _error_text(error))
                continue
            probe = NvmlProbe(pynvml)
            memory = probe.call("nvmlDeviceGetMemoryInfo", handle)
            if probe.lost is not None:
                self._note_lost(index, probe.lost)
                continue
            snapshots.append(device_snapshot(pynvml, index, handle, memory=memory))
        return snapshots

    def _note_lost(self, index: int, detail: str) -> None:
        with self._health_lock:
            self._lost_seen.setdefault(index, detail)

    def _checked_handle(self, pynvml: ModuleType, index: int) -> tuple[Any, BaseException | None]:
        """The device's handle (cached), or (None, the NVML error) when NVML cannot open it."""
        handle = self._handles.get(index)
        if handle is not None:
            return handle, None
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except _tolerated_errors(pynvml) as exc:
            log.debug("nvmlDeviceGetHandleByIndex(%d) failed: %s", index, exc)
            return None, exc
        self._handles[index] = handle
        return handle, None

    # -- health ---------------------------------------------------------------------------------

    def warnings(self) -> list[str]:
        """Notices since the last call, e.g. a GPU whose driver does not deliver Xid events (once each)."""
        with self._health_lock:
            pending, self._warnings = self._warnings, []
            return pending

    def health(self) -> list[GpuHealthEvent]:
        """What is wrong now, or since the last call for Xids; never raises (see the module docstring).

        A device that NVML listed when it was initialised and lists no more is ``lost``. Anything
        else going wrong in the read (an unexpected error from the bindings) fails the host closed:
        one ``nvml`` event.
        """
        try:
            pynvml = self._ensure()
        except GpuUnavailableError as exc:
            return [nvml_event(f"it cannot be used ({exc.reason})")]
        try:
            return self._health(pynvml)
        except Exception as exc:
            log.debug("health read failed", exc_info=True)
            return [nvml_event(f"the health read failed ({type(exc).__name__}: {_error_text(exc)})")]

    def _health(self, pynvml: ModuleType) -> list[GpuHealthEvent]:
        with self._health_lock:
            try:
                count = int(pynvml.nvmlDeviceGetCount())
            except _tolerated_errors(pynvml) as exc:
                return [nvml_event(f"it cannot count the GPUs ({_error_text(exc)})", _code(exc))]
            if not self._events_registered:
                self._register_xid_events(pynvml, count)
            events = self._drain_xid_events(pynvml)
            if any(event.device is None for event in events):
                return events
            for index in range(max(count, self._known_count)):
                if index >= count:
                    events.append(lost_event(index, f"NVML lists {count} GPUs, it listed {self._known_count}"))
                    continue
                handle, error = self._checked_handle(pynvml, index)
                if handle is None:
                    detail = _error_text(error) if error is not None else "no handle"
                    events.append(lost_event(index, f"NVML cannot open it: {detail}", _code(error)))
                    continue
                found = device_health(pynvml, index, handle)
                if not any(event.kind == "lost" for event in found) and index in self._lost_seen:
                    found.append(lost_event(index, self._lost_seen[index], ERROR_GPU_IS_LOST))
                events.extend(found)
            self._lost_seen.clear()
            return events

    def _register_xid_events(self, pynvml: ModuleType, count: int) -> None:
        """Create the event set and register every device that supports critical-Xid events (once)."""
        self._events_registered = True
        create = getattr(pynvml, "nvmlEventSetCreate", None)
        if create is None:
            self._warnings.append("NVML: this pynvml has no event sets: Xid errors are not watched")
            return
        try:
            self._events = create()
        except _tolerated_errors(pynvml) as exc:
            self._warnings.append(f"NVML: cannot create an event set ({_error_text(exc)}): Xid errors are not watched")
            return
        mask = int(getattr(pynvml, "nvmlEventTypeXidCriticalError", XID_CRITICAL_EVENT))
        unwatched: list[str] = []
        for index in range(count):
            handle, _error = self._checked_handle(pynvml, index)
            if handle is None:
                continue  # reported as lost by the health read
            uuid = nvml_query(pynvml.nvmlDeviceGetUUID, handle, default="")
            if uuid:
                self._uuid_index[_text(uuid)] = index
            try:
                supported = int(pynvml.nvmlDeviceGetSupportedEventTypes(handle))
                if not supported & mask:
                    unwatched.append(f"{index} (not supported)")
                    continue
                pynvml.nvmlDeviceRegisterEvents(handle, mask, self._events)
            except _tolerated_errors(pynvml) as exc:
                unwatched.append(f"{index} ({_error_text(exc)})")
        if unwatched:
            self._warnings.append(f"NVML: Xid errors are not watched on GPU {', '.join(unwatched)}")

    def _drain_xid_events(self, pynvml: ModuleType) -> list[GpuHealthEvent]:
        """The critical Xids delivered since the last read, without waiting."""
        if self._events is None:
            return []
        wait = getattr(pynvml, "nvmlEventSetWait_v2", None) or getattr(pynvml, "nvmlEventSetWait", None)
        if wait is None:
            return []
        mask = int(getattr(pynvml, "nvmlEventTypeXidCriticalError", XID_CRITICAL_EVENT))
        events: list[GpuHealthEvent] = []
        for _ in range(MAX_EVENTS_PER_READ):
            try:
                data = wait(self._events, 0)
            except _tolerated_errors(pynvml) as exc:
                if _code(exc) == ERROR_TIMEOUT:
                    break
                # The device plugin's rule: an event set that fails can no longer be trusted for any GPU.
                events.append(nvml_event(f"waiting for Xid events failed ({_error_text(exc)})", _code(exc)))
                break
            if int(getattr(data, "eventType", 0)) != mask:
                continue
            xid = _int_or_none(getattr(data, "eventData", None))
            if xid is None or not is_critical_xid(xid):
                continue
            try:
                uuid = _text(pynvml.nvmlDeviceGetUUID(data.device))
            except _tolerated_errors(pynvml):
                events.append(xid_event(None, xid))  # the device cannot be named: every device is suspect
                continue
            index = self._uuid_index.get(uuid)
            if index is None:
                log.debug("Xid %d on a GPU this provider does not know (%s): ignored", xid, uuid)
                continue
            events.append(xid_event(index, xid))
        return events


class NvmlProbe:
    """Calls NVML functions for one device, noting whether any said the device is lost.

    ``call`` returns the result, or None when the function is missing, not supported, or failed
    (other failures are logged at debug level); after a lost answer every further call returns None.
    """

    def __init__(self, pynvml: ModuleType) -> None:
        self.pynvml = pynvml
        self.lost: str | None = None
        self.lost_code: int | None = None

    def call(self, name: str, *args: Any) -> Any:
        """``pynvml.<name>(*args)``, or None (see the class docstring)."""
        func = getattr(self.pynvml, name, None)
        if func is None or self.lost is not None:
            return None
        try:
            return func(*args)
        except _tolerated_errors(self.pynvml) as exc:
            code = _code(exc)
            if code in LOST_ERRORS:
                self.lost, self.lost_code = f"{name}: {_error_text(exc)}", code
            elif code not in UNSUPPORTED_ERRORS:
                log.debug("%s failed: %s", name, exc)
            return None


def device_health(pynvml: ModuleType, index: int, handle: Any) -> list[GpuHealthEvent]:
    """The conditions of one device now: lost, uncorrectable ECC errors, retired pages, remapped rows.

    A lost device yields only its ``lost`` event; each check the device does not support is skipped.
    """
    probe = NvmlProbe(pynvml)
    probe.call("nvmlDeviceGetMemoryInfo", handle)  # every GPU answers this: a liveness probe
    uncorrected = getattr(pynvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1)
    volatile = getattr(pynvml, "NVML_VOLATILE_ECC", 0)
    ecc = _int_or_none(probe.call("nvmlDeviceGetTotalEccErrors", handle, uncorrected, volatile))
    pending_pages = _int_or_none(probe.call("nvmlDeviceGetRetiredPagesPendingStatus", handle))
    rows = probe.call("nvmlDeviceGetRemappedRows", handle)
    if probe.lost is not None:
        return [lost_event(index, probe.lost, probe.lost_code)]
    events: list[GpuHealthEvent] = []
    if ecc is not None and ecc > 0:
        events.append(ecc_event(index, ecc))
    if pending_pages == getattr(pynvml, "NVML_FEATURE_ENABLED", 1):
        events.append(retired_pages_event(index))
    if isinstance(rows, tuple | list) and len(rows) >= 4:
        _corrected, _uncorrected, pending, failure = rows[:4]
        if failure:
            events.append(remapped_rows_event(index, failed=True))
        elif pending:
            events.append(remapped_rows_event(index, failed=False))
    return events


def _code(error: BaseException | None) -> int | None:
    """The NVML return code of an ``NVMLError`` (None for other errors)."""
    value = getattr(error, "value", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_text(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


_UNSET: Any = object()


def device_snapshot(pynvml: ModuleType, index: int, handle: Any, *, memory: Any = _UNSET) -> GpuSnapshot:
    """Collect one device's snapshot; each metric the device does not support becomes ``None``.

    ``memory`` is the device's ``nvmlDeviceGetMemoryInfo`` when the caller already has it.
    """
    uuid = nvml_query(pynvml.nvmlDeviceGetUUID, handle, default="")
    name = nvml_query(pynvml.nvmlDeviceGetName, handle, default="NVIDIA GPU")
    if memory is _UNSET:
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
    The pids are those of the PID namespace NVML runs in (the host's, inside most containers); the
    owner (uid, user) is looked up in this process's ``/proc`` and is None when the pid is not there.
    Inside a container whose PID namespace is not the host's, a pid may name an unrelated local
    process: never act on a pid without checking it.
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
    return tuple(GpuProcess(pid, used, *process_owner(pid)) for pid, used in sorted(memory_by_pid.items()))
