"""Simulated GPUs that behave like NVML, for machines without an NVIDIA GPU.

A process is "on" simulated device ``i`` when it is alive, works on the same state
(``MOREH_HOME``) as the provider, and its own environment has ``MOREH_JOB_ID`` set and
``CUDA_VISIBLE_DEVICES`` listing ``i`` (or the device's UUID). Children inherit the environment,
so each child counts as its own process, as NVML shows each CUDA process. The ``MOREH_HOME``
rule keeps simulated hosts of different states (e.g. tests running side by side) apart: the
simulated GPUs belong to the state their backend is registered in.

Memory per process is deterministic: ``MOREH_FAKE_GPU_MEMORY_MIB`` in the process's environment
declares it; otherwise it starts at a CUDA-context-like 512 MiB and grows by 30 % of the
device over the first 20 s of the process's life, capped at ``total / number of processes on
the device``. Utilisation and temperatures are derived from the pids, the memory in use and the
time, so tests can pin them with ``now``.

Faults. ``MOREH_FAKE_GPU_FAULTS`` names a file (passed as ``faults``; :func:`moreh_tools.gpus.get_provider`
reads the variable) of JSON objects, one a line, that make the simulated GPUs misbehave. Blank lines
and lines starting with ``#`` are skipped. Each line is one of (keys of one line may be combined where
they concern one GPU):

* ``{"gpu": 3, "xid": 79}``: an Xid on GPU 3, reported once by :meth:`SimulatedGpuProvider.health`
  (application Xids such as 13 are consumed and yield nothing, as on real GPUs);
* ``{"gpu": 5, "ecc_uncorrectable": 1}``: adds to GPU 5's volatile uncorrectable ECC count (reported
  while it is above 0);
* ``{"gpu": 2, "retired_pages_pending": true}``, ``{"gpu": 2, "remapped_rows_pending": true}``,
  ``{"gpu": 2, "remapped_rows_failure": true}``: conditions reported while on (``false`` turns them off);
* ``{"gpu": 1, "lost": true}``: GPU 1 is lost: it leaves the snapshots and health reports it
  (``false`` brings it back, which a real GPU does only after a reset);
* ``{"gpu": 2, "foreign_pid": 4321, "memory_mib": 2048, "user": "mallory", "uid": 1001}``: process
  4321 is on GPU 2 with 2048 MiB (default 0), *while a process of that pid is alive* (not a zombie):
  a pid that ends, e.g. because the guardian killed it, leaves the GPU, as with NVML. ``user`` and
  ``uid`` default to the live process's owner;
* ``{"gpu": 0, "util": 0, "memory_mib": 0}``: fixed utilisation (%) and/or memory in use (MiB) for
  GPU 0, whatever its processes (for idle tests); a later line for the same GPU replaces them (on a
  ``foreign_pid`` line, ``memory_mib`` is the process's, ``util`` still the GPU's);
* ``{"nvml_failure": "Driver Not Loaded"}`` (or ``true``): NVML fails for the whole host: snapshots
  are empty, ``device_count()`` is 0, health reports one host-level ``nvml`` event; ``false`` ends it.

The file is read again whenever its size, modification time or inode changes, at the next
:meth:`snapshot` or :meth:`health`; the conditions are those of its current content, and an Xid line
(identified by its line number and text) is reported once. A malformed line (bad JSON, an unknown
key, a GPU out of range, a negative or out-of-range number, a wrong type) is skipped and reported
once through :meth:`warnings`; the rest of the file still applies. An unterminated last line that is
not yet valid JSON is taken as still being written and waits for the next change.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from moreh_tools import identity
from moreh_tools.gpus.base import (
    HOME_VAR,
    JOB_ID_VAR,
    GpuHealthEvent,
    GpuProcess,
    GpuSnapshot,
    process_owner,
    same_state_home,
    user_name,
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

SIMULATED_GPU_NAME = "Simulated GPU (moreh-tools)"
VISIBLE_DEVICES_VAR = "CUDA_VISIBLE_DEVICES"
MEMORY_VAR = "MOREH_FAKE_GPU_MEMORY_MIB"

CONTEXT_MIB = 512
RAMP_SECONDS = 20.0
RAMP_FRACTION = 0.30


@dataclass(frozen=True)
class SimProcess:
    """What the simulation needs to know about one live process."""

    pid: int
    create_time: float
    environ: Mapping[str, str]
    uid: int | None = None


ProcessSource = Callable[[], Iterable[SimProcess]]


def _proc_owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def scan_processes(uid: int | None = None) -> list[SimProcess]:
    """Live processes of user ``uid`` (all users when ``None``) that carry ``MOREH_JOB_ID``.

    Reads each candidate's environment once; processes that vanish, are zombies or deny access are
    skipped. On Linux the owner comes from ``/proc/<pid>`` (one ``stat``), elsewhere from psutil.
    """
    use_proc = os.path.isdir("/proc/self")
    found: list[SimProcess] = []
    for proc in psutil.process_iter():
        try:
            owner: int | None = None
            if uid is not None:
                owner = _proc_owner(proc.pid) if use_proc else proc.uids().real
                if owner != uid:
                    continue
            environ = proc.environ()
            if JOB_ID_VAR not in environ:
                continue
            if owner is None:
                owner = _proc_owner(proc.pid) if use_proc else proc.uids().real
            found.append(SimProcess(proc.pid, proc.create_time(), environ, owner))
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def current_user_processes() -> list[SimProcess]:
    """The default process source: every job process this user may inspect.

    Root sees every user's processes, as NVML does; anyone else only their own (the environment
    of other users' processes cannot be read anyway, so skipping them early saves time).
    """
    if not hasattr(os, "geteuid"):
        return scan_processes(None)
    return scan_processes(None if os.geteuid() == 0 else os.getuid())


def simulated_uuid(hostname: str, index: int) -> str:
    """``GPU-SIM-<32 hex>``, stable for one (hostname, index)."""
    digest = hashlib.sha256(f"moreh-tools:{hostname}:{index}".encode()).hexdigest()
    return f"GPU-SIM-{digest[:32]}"


def visible_devices(value: str, uuids: Mapping[str, int]) -> set[int]:
    """Indexes named by a ``CUDA_VISIBLE_DEVICES`` value: comma-separated indexes or simulated UUIDs."""
    indexes: set[int] = set()
    for item in value.split(","):
        item = item.strip()
        if item.isascii() and item.isdigit():
            indexes.add(int(item))
        elif item in uuids:
            indexes.add(uuids[item])
    return indexes


def _declared_memory(environ: Mapping[str, str]) -> int | None:
    raw = environ.get(MEMORY_VAR, "").strip()
    if not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw)


FAULTS_VAR = "MOREH_FAKE_GPU_FAULTS"

_MAX_U32 = 2**32 - 1
_MAX_PID = 2**31 - 1
_BOOL_KEYS = ("retired_pages_pending", "remapped_rows_pending", "remapped_rows_failure", "lost")
_GPU_KEYS = ("gpu", "xid", "ecc_uncorrectable", *_BOOL_KEYS, "foreign_pid", "memory_mib", "user", "uid", "util")
_HOST_KEY = "nvml_failure"
_DEFAULT_NVML_FAILURE = "Unknown Error"


class FaultLineError(ValueError):
    """Why one fault-file line is skipped (one line). ``incomplete``: the text is not valid JSON."""

    def __init__(self, message: str, *, incomplete: bool = False) -> None:
        super().__init__(message)
        self.incomplete = incomplete


@dataclass(frozen=True)
class FaultLine:
    """One valid line of the fault file (see the module docstring); None: the key is absent.

    ``nvml_failure`` is the cause text while NVML fails, ``""`` to end a failure, None when absent.
    """

    gpu: int | None = None
    xid: int | None = None
    ecc_uncorrectable: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    lost: bool | None = None
    foreign_pid: int | None = None
    memory_mib: int | None = None
    user: str | None = None
    uid: int | None = None
    util: int | None = None
    nvml_failure: str | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _whole(obj: Mapping[str, Any], key: str, low: int, high: int, what: str = "") -> int | None:
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultLineError(f"{key} must be a whole number, not {json.dumps(value)}")
    if value < low:
        raise FaultLineError(f"{key} {value} is negative" if value < 0 <= low else f"{key} {value} is below {low}")
    if value > high:
        raise FaultLineError(f"{key} {value} is out of range: {what or f'at most {high}'}")
    return value


def _flag(obj: Mapping[str, Any], key: str) -> bool | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, bool):
        raise FaultLineError(f"{key} must be true or false, not {json.dumps(value)}")
    return value


def _one_line_text(value: Any, key: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise FaultLineError(f"{key} must be a non-empty single-line text of at most {limit} characters")
    return value.strip()


def parse_fault_line(text: str, count: int, memory_mib: int) -> FaultLine:
    """Validate one fault-file line for ``count`` GPUs of ``memory_mib`` MiB; :class:`FaultLineError` if it is malformed."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise FaultLineError(f"not valid JSON ({exc})", incomplete=True) from None
    if not isinstance(obj, dict):
        raise FaultLineError("not a JSON object")
    if _HOST_KEY in obj:
        if len(obj) != 1:
            raise FaultLineError(f"{_HOST_KEY} concerns the whole host: put no other key on its line")
        value = obj[_HOST_KEY]
        if value is True:
            return FaultLine(nvml_failure=_DEFAULT_NVML_FAILURE)
        if value is False:
            return FaultLine(nvml_failure="")
        return FaultLine(nvml_failure=_one_line_text(value, _HOST_KEY, 200))
    unknown = sorted(set(obj) - set(_GPU_KEYS))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise FaultLineError(f"unknown key {names} (use {', '.join(_GPU_KEYS)} or {_HOST_KEY})")
    if "gpu" not in obj:
        raise FaultLineError('names no GPU: add "gpu": <index>')
    gpu = _whole(
        obj, "gpu", 0, count - 1, f"this host has {count} simulated GPU{'s' if count != 1 else ''} (0-{count - 1})"
    )
    if len(obj) == 1:
        raise FaultLineError("names no fault")
    foreign_pid = _whole(obj, "foreign_pid", 1, _MAX_PID)
    if foreign_pid is None and ("user" in obj or "uid" in obj):
        raise FaultLineError("user and uid describe a foreign_pid: add one")
    return FaultLine(
        gpu=gpu,
        xid=_whole(obj, "xid", 0, _MAX_U32),
        ecc_uncorrectable=_whole(obj, "ecc_uncorrectable", 0, _MAX_U32),
        retired_pages_pending=_flag(obj, "retired_pages_pending"),
        remapped_rows_pending=_flag(obj, "remapped_rows_pending"),
        remapped_rows_failure=_flag(obj, "remapped_rows_failure"),
        lost=_flag(obj, "lost"),
        foreign_pid=foreign_pid,
        memory_mib=_whole(obj, "memory_mib", 0, memory_mib, f"the GPUs have {memory_mib} MiB"),
        user=_one_line_text(obj["user"], "user", 64) if "user" in obj else None,
        uid=_whole(obj, "uid", 0, _MAX_U32 - 1),
        util=_whole(obj, "util", 0, 100, "use 0 to 100 %"),
    )


LineKey = tuple[int, str]
"""A fault-file line: (line number, stripped text)."""


@dataclass
class FaultState:
    """What the fault file says now: the conditions, and the Xid lines in file order."""

    xids: list[tuple[LineKey, int, int]] = field(default_factory=list)  # (line, gpu, xid)
    ecc: dict[int, int] = field(default_factory=dict)
    flags: dict[tuple[int, str], bool] = field(default_factory=dict)  # (gpu, one of _BOOL_KEYS) -> on
    foreign: dict[tuple[int, int], FaultLine] = field(default_factory=dict)  # (gpu, pid) -> its line
    util: dict[int, int] = field(default_factory=dict)
    memory: dict[int, int] = field(default_factory=dict)
    nvml_failure: str = ""

    def apply(self, key: LineKey, line: FaultLine) -> None:
        """Fold one valid line in (later lines override earlier ones; ECC counts add up)."""
        if line.nvml_failure is not None:
            self.nvml_failure = line.nvml_failure
            return
        gpu = line.gpu
        if gpu is None:
            return
        if line.xid is not None:
            self.xids.append((key, gpu, line.xid))
        if line.ecc_uncorrectable is not None:
            self.ecc[gpu] = self.ecc.get(gpu, 0) + line.ecc_uncorrectable
        for name in _BOOL_KEYS:
            value = getattr(line, name)
            if value is not None:
                self.flags[(gpu, name)] = value
        if line.util is not None:
            self.util[gpu] = line.util
        if line.foreign_pid is not None:
            self.foreign[(gpu, line.foreign_pid)] = line  # its memory_mib is the process's
        elif line.memory_mib is not None:
            self.memory[gpu] = line.memory_mib

    def flag(self, gpu: int, name: str) -> bool:
        """Whether condition ``name`` is on for ``gpu``."""
        return self.flags.get((gpu, name), False)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.AccessDenied:
        return True
    except (psutil.Error, OSError, ValueError):
        return False


class SimulatedGpuProvider:
    """``count`` simulated devices of ``memory_mib`` MiB each.

    ``now`` (a clock) and ``processes`` (a process source) are injectable so tests are
    deterministic; by default they are ``time.time`` and a scan of the current user's processes.
    ``reason`` explains, in :attr:`description`, why real GPUs are not used. ``home`` is the
    ``MOREH_HOME`` whose job processes count (default: this process's); ``hostname`` seeds the
    UUIDs (default: :func:`moreh_tools.identity.host_name`). ``faults`` is the fault file (see the
    module docstring; None: no faults) and ``alive`` tells whether a foreign pid is alive.
    """

    simulated = True

    def __init__(
        self,
        count: int,
        memory_mib: int,
        *,
        reason: str | None = None,
        now: Callable[[], float] = time.time,
        processes: ProcessSource = current_user_processes,
        hostname: str | None = None,
        home: str | None = None,
        faults: str | os.PathLike[str] | None = None,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        if count < 1 or memory_mib < 1:
            raise ValueError("a simulated provider needs at least one device and 1 MiB")
        self.count = count
        self.memory_mib = memory_mib
        self.reason = reason
        self._now = now
        self._processes = processes
        self._alive = alive
        self.home = os.environ.get(HOME_VAR, "") if home is None else home
        host = hostname if hostname is not None else identity.host_name()
        self._uuids = [simulated_uuid(host, index) for index in range(count)]
        self._index_of_uuid = {uuid: index for index, uuid in enumerate(self._uuids)}
        self.faults_path = Path(faults) if faults is not None and str(faults).strip() else None
        self._faults = FaultState()
        self._faults_signature: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._reported_xids: set[LineKey] = set()
        self._warned: set[object] = set()
        self._warnings: list[str] = []

    @property
    def description(self) -> str:
        """``simulated: 8 GPUs x 81920 MiB``, with the reason first when there is one."""
        size = f"{self.count} GPU{'s' if self.count != 1 else ''} x {self.memory_mib} MiB"
        if self.reason:
            return f"simulated: {self.reason}; {size}"
        return f"simulated: {size}"

    def device_count(self) -> int:
        """Number of simulated devices (0 while a simulated NVML failure lasts, as NVML cannot count then)."""
        with self._lock:
            self._refresh_faults()
            return 0 if self._faults.nvml_failure else self.count

    def close(self) -> None:
        """Nothing to release."""

    # -- faults ---------------------------------------------------------------------------------

    def warnings(self) -> list[str]:
        """The notices collected since the last call (malformed fault lines, an unreadable file), once each."""
        with self._lock:
            self._refresh_faults()
            pending, self._warnings = self._warnings, []
            return pending

    def _warn_once(self, key: object, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warnings.append(f"{FAULTS_VAR}: {message}")

    def _refresh_faults(self) -> None:
        """Read the fault file again if it changed since the last read (call with the lock held)."""
        path = self.faults_path
        if path is None:
            return
        try:
            info = path.stat()
        except FileNotFoundError:
            self._warn_once(("missing", str(path)), f"{path} does not exist (yet): no simulated faults until it does")
            self._faults, self._faults_signature = FaultState(), None
            return
        except OSError as exc:
            self._warn_once(("unreadable", str(exc)), f"cannot read {path}: {exc.strerror or exc}")
            return
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
        if signature == self._faults_signature:
            return
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            self._warn_once(("unreadable", str(exc)), f"cannot read {path}: {exc.strerror or exc}")
            return
        self._faults_signature = signature
        self._faults = self._parse_faults(path, text)

    def _parse_faults(self, path: Path, text: str) -> FaultState:
        state = FaultState()
        lines = text.split("\n")
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                fault = parse_fault_line(line, self.count, self.memory_mib)
            except FaultLineError as exc:
                if number == len(lines) and exc.incomplete:
                    continue  # unterminated and not yet JSON: still being written
                shown = line if len(line) <= 80 else line[:77] + "..."
                self._warn_once((number, line), f"{path} line {number} skipped: {exc}: {shown}")
                continue
            state.apply((number, line), fault)
        return state

    # -- queries --------------------------------------------------------------------------------

    def health(self) -> list[GpuHealthEvent]:
        """The simulated faults: Xids once each, conditions while on, one ``nvml`` event while NVML fails."""
        with self._lock:
            self._refresh_faults()
            faults = self._faults
            if faults.nvml_failure:
                return [nvml_event(faults.nvml_failure)]
            new_xids: dict[int, list[int]] = {}
            for key, gpu, xid in faults.xids:
                if key not in self._reported_xids:
                    self._reported_xids.add(key)
                    new_xids.setdefault(gpu, []).append(xid)
        events: list[GpuHealthEvent] = []
        for gpu in range(self.count):
            events.extend(xid_event(gpu, xid) for xid in new_xids.get(gpu, []) if is_critical_xid(xid))
            if faults.ecc.get(gpu, 0) > 0:
                events.append(ecc_event(gpu, faults.ecc[gpu]))
            if faults.flag(gpu, "retired_pages_pending"):
                events.append(retired_pages_event(gpu))
            if faults.flag(gpu, "remapped_rows_failure"):
                events.append(remapped_rows_event(gpu, failed=True))
            elif faults.flag(gpu, "remapped_rows_pending"):
                events.append(remapped_rows_event(gpu, failed=False))
            if faults.flag(gpu, "lost"):
                events.append(lost_event(gpu, "simulated: it fell off the bus", 15))
        return events

    def snapshot(self) -> list[GpuSnapshot]:
        """All devices that answer, from one scan of the processes and one reading of the clock."""
        with self._lock:
            self._refresh_faults()
            faults = self._faults
        if faults.nvml_failure:
            return []
        now = self._now()
        on_device: list[list[SimProcess]] = [[] for _ in range(self.count)]
        for proc in self._processes():
            if JOB_ID_VAR not in proc.environ or not same_state_home(proc.environ, self.home):
                continue
            for index in visible_devices(proc.environ.get(VISIBLE_DEVICES_VAR, ""), self._index_of_uuid):
                if index < self.count:
                    on_device[index].append(proc)
        foreign = self._foreign_processes(faults)
        return [
            self._device(index, procs, now, faults, foreign.get(index, []))
            for index, procs in enumerate(on_device)
            if not faults.flag(index, "lost")
        ]

    def _foreign_processes(self, faults: FaultState) -> dict[int, list[GpuProcess]]:
        found: dict[int, list[GpuProcess]] = {}
        alive: dict[int, bool] = {}
        for (gpu, pid), line in sorted(faults.foreign.items()):
            if pid not in alive:
                alive[pid] = self._alive(pid)
            if not alive[pid]:
                continue
            uid, user = line.uid, line.user
            if uid is None:
                uid, owner_name = process_owner(pid)
                user = owner_name if user is None else user
            elif user is None:
                user = user_name(uid)
            found.setdefault(gpu, []).append(GpuProcess(pid, line.memory_mib or 0, uid, user))
        return found

    def _process_memory(self, proc: SimProcess, peers: int, now: float) -> int:
        declared = _declared_memory(proc.environ)
        if declared is not None:
            return min(declared, self.memory_mib)
        age = min(max(now - proc.create_time, 0.0), RAMP_SECONDS)
        ramp = int(self.memory_mib * RAMP_FRACTION * age / RAMP_SECONDS)
        return min(CONTEXT_MIB + ramp, self.memory_mib // peers)

    def _device(
        self, index: int, procs: list[SimProcess], now: float, faults: FaultState, foreign: list[GpuProcess]
    ) -> GpuSnapshot:
        procs = sorted({proc.pid: proc for proc in procs}.values(), key=lambda proc: proc.pid)
        by_pid = {
            proc.pid: GpuProcess(
                proc.pid,
                self._process_memory(proc, len(procs), now),
                proc.uid,
                user_name(proc.uid) if proc.uid is not None else None,
            )
            for proc in procs
        }
        for stranger in foreign:
            by_pid.setdefault(stranger.pid, stranger)
        processes = tuple(by_pid[pid] for pid in sorted(by_pid))
        used = min(sum(proc.used_memory_mib for proc in processes), self.memory_mib)
        used = faults.memory.get(index, used)
        if processes:
            phase = sum(proc.pid for proc in processes) % 997 + index
            util_gpu = round(69.5 + 29.5 * math.sin(now / 7.0 + phase))
        else:
            util_gpu = 0
        util_gpu = faults.util.get(index, util_gpu)
        util_mem = round(100 * used / self.memory_mib)
        temp_gpu = int(30 + util_gpu * 0.5)
        return GpuSnapshot(
            index=index,
            uuid=self._uuids[index],
            name=SIMULATED_GPU_NAME,
            memory_total_mib=self.memory_mib,
            memory_used_mib=used,
            util_gpu=util_gpu,
            util_mem=util_mem,
            temp_gpu=temp_gpu,
            temp_mem=temp_gpu + 5,
            processes=processes,
        )
