"""GPU guardian decisions: which health events matter, which GPU processes are foreign, when to kill
them, and when an idle job loses its devices.

Everything here is pure: frozen dataclasses and ``now`` in, verdicts out; no clock, no I/O, no
``psutil`` or ``pynvml``. The providers (``moreh_tools.gpus``) collect the facts, the daemon acts.

Xid policy (following the NVIDIA Kubernetes device plugin, ``internal/rm/health.go``): the driver
only delivers ``nvmlEventTypeXidCriticalError`` events for Xids it considers critical; of those,
the *application* Xids in :data:`APPLICATION_XIDS` are caused by a user's program, leave the GPU
healthy and are ignored. Every other Xid is critical and makes the device unhealthy (fail closed:
an Xid missing from :data:`CRITICAL_XIDS`, a list kept only to name the usual suspects in messages,
still counts). The DCGM health watches and NVIDIA's Xid catalogue
(https://docs.nvidia.com/deploy/xid-errors/) name the same hardware Xids: 48, 63, 64, 74, 79, 92,
94, 95 (and more).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

# -- health events ---------------------------------------------------------------------------------

XID = "xid"
ECC = "ecc"
RETIRED_PAGES = "retired_pages"
REMAPPED_ROWS = "remapped_rows"
LOST = "lost"
NVML = "nvml"

#: Every kind of :class:`GpuHealthEvent`.
HEALTH_KINDS = frozenset({XID, ECC, RETIRED_PAGES, REMAPPED_ROWS, LOST, NVML})

#: Xids caused by an application (its own bug or its own abort): the GPU stays healthy. The list of
#: the NVIDIA device plugin, which added 109 to the classic 13, 31, 43, 45, 68.
APPLICATION_XIDS: Mapping[int, str] = MappingProxyType(
    {
        13: "graphics engine exception",
        31: "GPU memory page fault",
        43: "GPU stopped processing",
        45: "preemptive cleanup, due to previous errors",
        68: "video processor exception",
        109: "context switch timeout",
    }
)

#: Well-known hardware/driver Xids and their meaning (any Xid outside APPLICATION_XIDS is critical).
CRITICAL_XIDS: Mapping[int, str] = MappingProxyType(
    {
        48: "double-bit ECC error",
        61: "internal micro-controller breakpoint/warning",
        62: "internal micro-controller halt",
        63: "ECC page retirement or row remapping recording event",
        64: "ECC page retirement or row remapping recording failure",
        74: "NVLink error",
        79: "GPU has fallen off the bus",
        92: "high single-bit ECC error rate",
        94: "contained ECC error",
        95: "uncontained ECC error",
        119: "GSP RPC timeout",
        120: "GSP error",
    }
)


#: The codes of APPLICATION_XIDS.
APPLICATION_XID_CODES = frozenset(APPLICATION_XIDS)


def is_critical_xid(code: int, ignored: Collection[int] = APPLICATION_XID_CODES) -> bool:
    """Whether Xid ``code`` makes its GPU unhealthy: every Xid except the application ones (``ignored``).

    Negative codes are not Xids and are not critical.
    """
    return code >= 0 and code not in ignored


def xid_cause(code: int) -> str:
    """One line naming Xid ``code``, e.g. ``Xid 79: GPU has fallen off the bus``."""
    meaning = CRITICAL_XIDS.get(code) or APPLICATION_XIDS.get(code) or "critical error (see NVIDIA's Xid catalogue)"
    return f"Xid {code}: {meaning}"


@dataclass(frozen=True)
class GpuHealthEvent:
    """Something wrong with one GPU (``device`` is its NVML index) or the whole host (``device`` None).

    ``kind`` is one of :data:`HEALTH_KINDS`:

    * ``xid``: a critical Xid (``code``: the Xid), reported once, by the health read that first sees it;
    * ``ecc``: uncorrectable ECC errors since the driver loaded (``code``: the volatile count);
    * ``retired_pages``: memory pages are waiting to be retired (``code``: None); the GPU needs a reset;
    * ``remapped_rows``: a row remapping is pending (``code`` 1) or has failed (``code`` 2);
    * ``lost``: the GPU does not answer (``code``: the NVML error, e.g. 15 GPU_IS_LOST, when known);
    * ``nvml``: NVML itself fails (``device`` None; ``code``: the NVML error when known).

    All but ``xid`` describe a condition and are reported by every health read while it lasts.
    ``cause`` is one line for logs and users.
    """

    device: int | None
    kind: str
    code: int | None
    cause: str

    def __post_init__(self) -> None:
        if self.kind not in HEALTH_KINDS:
            raise ValueError(f"unknown GPU health event kind {self.kind!r}")


def xid_event(device: int | None, code: int) -> GpuHealthEvent:
    """A critical Xid on ``device`` (None: a device NVML could not name, which means every device)."""
    return GpuHealthEvent(device, XID, code, xid_cause(code))


def ecc_event(device: int, count: int) -> GpuHealthEvent:
    """``count`` (> 0) uncorrectable ECC errors on ``device`` since the driver loaded."""
    plural = "s" if count != 1 else ""
    return GpuHealthEvent(device, ECC, count, f"{count} uncorrectable ECC error{plural} since the driver loaded")


def retired_pages_event(device: int) -> GpuHealthEvent:
    """Retired pages are pending on ``device``."""
    return GpuHealthEvent(device, RETIRED_PAGES, None, "retired memory pages are pending: the GPU needs a reset")


REMAP_PENDING = 1
REMAP_FAILED = 2


def remapped_rows_event(device: int, failed: bool) -> GpuHealthEvent:
    """A row remapping is pending on ``device``, or (``failed``) one has failed."""
    if failed:
        return GpuHealthEvent(
            device, REMAPPED_ROWS, REMAP_FAILED, "a memory row remapping failed: the GPU needs service"
        )
    return GpuHealthEvent(
        device, REMAPPED_ROWS, REMAP_PENDING, "memory row remapping is pending: the GPU needs a reset"
    )


def lost_event(device: int, detail: str = "", code: int | None = None) -> GpuHealthEvent:
    """``device`` no longer answers (fell off the bus, needs a reset, or vanished)."""
    return GpuHealthEvent(device, LOST, code, f"the GPU is lost ({detail or 'it no longer answers'})")


def nvml_event(detail: str, code: int | None = None) -> GpuHealthEvent:
    """NVML fails for the whole host: no GPU of the host can be trusted."""
    return GpuHealthEvent(None, NVML, code, f"NVML fails on this host: {detail}")


def host_failed(events: Iterable[GpuHealthEvent]) -> bool:
    """Whether an event concerns the whole host (``device`` None): fail closed, trust none of its GPUs."""
    return any(event.device is None for event in events)


def flagged_devices(events: Iterable[GpuHealthEvent], devices: Iterable[int]) -> dict[int, tuple[str, ...]]:
    """Each device of ``devices`` that an event flags, with the causes (in event order, without repeats).

    A host-level event (``device`` None) flags every device of ``devices``; an event naming a device
    not in ``devices`` is left out. Devices are returned in ascending order.
    """
    wanted = sorted(set(devices))
    causes: dict[int, list[str]] = {}
    for event in events:
        targets = wanted if event.device is None else [event.device] if event.device in wanted else []
        for device in targets:
            found = causes.setdefault(device, [])
            if event.cause not in found:
                found.append(event.cause)
    return {device: tuple(causes[device]) for device in wanted if device in causes}


# -- policy values -----------------------------------------------------------------------------------


class PolicyError(ValueError):
    """A guardian setting is out of range; the message is the one line the admin sees."""


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- foreign processes -----------------------------------------------------------------------------

FOREIGN = "foreign"
ESCAPED = "escaped"

WARN = "warn"
KILL = "kill"
FOREIGN_POLICY_VAR = "MOREH_FOREIGN_POLICY"
FOREIGN_GRACE_VAR = "MOREH_FOREIGN_GRACE"
DEFAULT_FOREIGN_GRACE_S = 60.0
MAX_FOREIGN_GRACE_S = 86400.0


@dataclass(frozen=True)
class DeviceProcess:
    """One process on one GPU, as a provider reports it (``user``/``uid`` None when unknown)."""

    device: int
    pid: int
    memory_mib: int
    user: str | None = None
    uid: int | None = None


@dataclass(frozen=True)
class Foreign:
    """A process on a GPU that its job does not hold.

    ``kind`` is ``foreign`` (the process belongs to no job) or ``escaped`` (it belongs to job
    ``job``, whose devices do not include ``device``). ``device_job`` is the job the device is
    allocated to (None: the device is free): the job whose launcher to warn.
    """

    device: int
    pid: int
    user: str | None
    memory_mib: int
    kind: str = FOREIGN
    job: int | None = None
    device_job: int | None = None
    uid: int | None = None


def find_foreign(
    processes: Iterable[DeviceProcess],
    allocation: Mapping[int, int],
    job_pids: Mapping[int, Collection[int]],
    *,
    ignore_pids: Collection[int] = (),
    ignore_users: Collection[str] = (),
) -> list[Foreign]:
    """The processes on GPUs that no job holding that GPU accounts for, sorted by (device, pid).

    Args:
        processes: every process on every GPU of the host (one per (device, pid); repeats are merged,
            keeping the largest memory, then the one with a known owner, whatever their order).
        allocation: device index -> the job it is allocated to; a device missing here is free.
        job_pids: job id -> the ids of the job's processes (its process tree).
        ignore_pids: processes never reported (e.g. the daemon itself).
        ignore_users: users whose processes are never reported (e.g. a display server's).

    Returns:
        One :class:`Foreign` per (device, pid) that is not a process of the device's job: ``escaped``
        when the pid belongs to another job (the lowest such job id), else ``foreign``.
    """
    owners: dict[int, int] = {}
    for job, pids in sorted(job_pids.items()):
        for pid in pids:
            owners.setdefault(pid, job)
    merged: dict[tuple[int, int], DeviceProcess] = {}
    for proc in processes:
        key = (proc.device, proc.pid)
        known = merged.get(key)
        if known is None or _richer(proc) > _richer(known):
            merged[key] = proc
    findings: list[Foreign] = []
    for (device, pid), proc in sorted(merged.items()):
        if pid in ignore_pids or (proc.user is not None and proc.user in ignore_users):
            continue
        device_job = allocation.get(device)
        if device_job is not None and pid in job_pids.get(device_job, ()):
            continue
        owner = owners.get(pid)
        findings.append(
            Foreign(
                device=device,
                pid=pid,
                user=proc.user,
                memory_mib=proc.memory_mib,
                kind=FOREIGN if owner is None else ESCAPED,
                job=owner,
                device_job=device_job,
                uid=proc.uid,
            )
        )
    return findings


def _richer(proc: DeviceProcess) -> tuple[int, bool, str, bool, int]:
    """Order of preference among reports of one (device, pid): more memory, then a known owner."""
    return (
        proc.memory_mib,
        proc.user is not None,
        proc.user or "",
        proc.uid is not None,
        proc.uid if proc.uid is not None else 0,
    )


@dataclass(frozen=True)
class ForeignPolicy:
    """What to do with foreign processes: ``warn`` only, or ``kill`` them ``grace_s`` seconds after first seen."""

    action: str = WARN
    grace_s: float = DEFAULT_FOREIGN_GRACE_S

    def __post_init__(self) -> None:
        if self.action not in (WARN, KILL):
            raise PolicyError(f"invalid foreign-process action {self.action!r}: use warn or kill")
        if not _finite(self.grace_s) or not 0 <= self.grace_s <= MAX_FOREIGN_GRACE_S:
            raise PolicyError(
                f"invalid foreign-process grace {self.grace_s!r}: use 0 to {MAX_FOREIGN_GRACE_S:g} seconds"
            )


def parse_foreign_policy(env: Mapping[str, str]) -> ForeignPolicy:
    """The policy ``MOREH_FOREIGN_POLICY`` (``warn`` or ``kill``, default warn) and ``MOREH_FOREIGN_GRACE``
    (seconds, 0 to 86400, default 60) ask for; unset or blank values take the default.

    Raises :class:`PolicyError` with one line naming the variable, its value and what is accepted.
    """
    raw_action = env.get(FOREIGN_POLICY_VAR, "")
    action = raw_action.strip().lower() or WARN
    if action not in (WARN, KILL):
        raise PolicyError(f"invalid {FOREIGN_POLICY_VAR}={raw_action!r}: use warn or kill")
    raw_grace = env.get(FOREIGN_GRACE_VAR, "")
    grace = _parse_seconds(raw_grace, DEFAULT_FOREIGN_GRACE_S)
    if grace is None or not 0 <= grace <= MAX_FOREIGN_GRACE_S:
        raise PolicyError(
            f"invalid {FOREIGN_GRACE_VAR}={raw_grace!r}: use a number of seconds from 0 to {MAX_FOREIGN_GRACE_S:g} "
            f"(e.g. {DEFAULT_FOREIGN_GRACE_S:g})"
        )
    return ForeignPolicy(action, grace)


def _parse_seconds(raw: str, default: float) -> float | None:
    text = raw.strip()
    if not text:
        return default
    if not text.isascii():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ForeignVerdict:
    """The outcome of one look at the foreign processes.

    ``first_seen``: pid -> when it was first seen, for the pids found now (pass it to the next call).
    ``new``: findings whose pid was not known before (warn about them once). ``kill``: pids to kill
    now (policy ``kill``, grace over, owner known), ascending; they stay in ``kill`` on every call
    until they are gone.
    """

    first_seen: Mapping[int, float] = field(hash=False)
    new: tuple[Foreign, ...]
    kill: tuple[int, ...]


def judge_foreign(
    findings: Iterable[Foreign], first_seen: Mapping[int, float], policy: ForeignPolicy, now: float
) -> ForeignVerdict:
    """Apply ``policy`` to ``findings`` at time ``now``.

    A pid is killed once ``now - first_seen >= grace_s`` under policy ``kill``, but never pid 0 or 1,
    and never a process whose owner is unknown (``uid`` None): NVML may report pids of another PID
    namespace, and a pid that cannot be checked here may name an unrelated process. A first-seen time
    later than ``now`` (a clock step back) counts as ``now``.
    """
    found = list(findings)
    seen: dict[int, float] = {}
    for finding in found:
        if finding.pid not in seen:
            previous = first_seen.get(finding.pid)
            seen[finding.pid] = now if previous is None else min(previous, now)
    new = tuple(finding for finding in found if finding.pid not in first_seen)
    kill: set[int] = set()
    if policy.action == KILL:
        for finding in found:
            if finding.pid > 1 and finding.uid is not None and now - seen[finding.pid] >= policy.grace_s:
                kill.add(finding.pid)
    return ForeignVerdict(MappingProxyType(seen), new, tuple(sorted(kill)))


# -- idle reclaim --------------------------------------------------------------------------------------

#: Bounds of an idle policy: memory per GPU (1 TiB), and the longest window or grace (30 days).
MAX_IDLE_MEMORY_MIB = 1048576
MAX_IDLE_SECONDS = 30 * 86400.0
#: The warning comes this long before the reclaim, or at half the window when the window is shorter than twice this.
IDLE_WARNING_S = 300.0


@dataclass(frozen=True)
class IdlePolicy:
    """A job is idle when every GPU it holds shows utilisation below ``util_percent`` % and memory in
    use below ``memory_mib`` MiB, or when none of its GPUs has a process. It loses its devices after
    ``window_s`` seconds of being idle without a break, counted from its first idle sample after the
    ``grace_s`` seconds that follow its start.

    Raises :class:`PolicyError` (one line) for values out of range; :meth:`check_tick` also rejects
    a window shorter than the daemon's tick.
    """

    util_percent: float
    memory_mib: float
    window_s: float
    grace_s: float

    def __post_init__(self) -> None:
        if not _finite(self.util_percent) or not 0 <= self.util_percent <= 100:
            raise PolicyError(f"invalid idle utilisation threshold {self.util_percent!r}: use 0 to 100 %")
        if not _finite(self.memory_mib) or not 0 <= self.memory_mib <= MAX_IDLE_MEMORY_MIB:
            raise PolicyError(f"invalid idle memory threshold {self.memory_mib!r}: use 0 to {MAX_IDLE_MEMORY_MIB} MiB")
        if not _finite(self.window_s) or not 0 < self.window_s <= MAX_IDLE_SECONDS:
            raise PolicyError(
                f"invalid idle window {self.window_s!r}: use more than 0 up to {MAX_IDLE_SECONDS:g} seconds"
            )
        if not _finite(self.grace_s) or not 0 <= self.grace_s <= MAX_IDLE_SECONDS:
            raise PolicyError(f"invalid idle grace {self.grace_s!r}: use 0 to {MAX_IDLE_SECONDS:g} seconds")

    def check_tick(self, tick_s: float) -> None:
        """Raise :class:`PolicyError` if the window is shorter than one daemon tick of ``tick_s`` seconds."""
        if self.window_s < tick_s:
            raise PolicyError(
                f"idle window {self.window_s:g} s is shorter than the daemon's tick of {tick_s:g} s: "
                "use a window of at least one tick"
            )

    @property
    def warn_after_s(self) -> float:
        """Idle seconds after which the job is warned: 5 minutes before the window ends, or at half a
        window shorter than 10 minutes."""
        if self.window_s >= 2 * IDLE_WARNING_S:
            return self.window_s - IDLE_WARNING_S
        return self.window_s / 2


@dataclass(frozen=True)
class GpuFigures:
    """One GPU of a job at one moment: utilisation % and memory in use (MiB); None where unknown."""

    util_percent: float | None
    memory_mib: float | None


@dataclass(frozen=True)
class IdleVerdict:
    """The outcome of one idle sample of one job.

    ``idle_since``: start of the current idle stretch (None: not idle, or still in its grace);
    ``warned``: whether this stretch was already warned about (pass both to the next call);
    ``idle_s``/``seconds_left``: how long it has been idle and how long until the reclaim (None when not idle);
    ``warn``: warn the job now (once per stretch); ``reclaim``: take its devices now.
    """

    idle_since: float | None
    warned: bool
    idle_s: float | None
    seconds_left: float | None
    warn: bool
    reclaim: bool


NOT_IDLE = IdleVerdict(None, False, None, None, False, False)


def is_idle_sample(policy: IdlePolicy, figures: Sequence[GpuFigures] | None) -> bool:
    """Whether one sample shows the job idle.

    ``figures`` None means no process is on the job's GPUs: idle. Otherwise every GPU must be below
    both thresholds; an unknown figure (None) is left out of its GPU's test, but a GPU with neither
    figure known, or an empty list, cannot show idleness and counts as busy (never reclaim blind).
    """
    if figures is None:
        return True
    if not figures:
        return False
    for gpu in figures:
        if gpu.util_percent is None and gpu.memory_mib is None:
            return False
        if gpu.util_percent is not None and not gpu.util_percent < policy.util_percent:
            return False
        if gpu.memory_mib is not None and not gpu.memory_mib < policy.memory_mib:
            return False
    return True


def update_idle(
    policy: IdlePolicy,
    idle_since: float | None,
    started_at: float,
    figures: Sequence[GpuFigures] | None,
    now: float,
    *,
    warned: bool = False,
) -> IdleVerdict:
    """Fold one sample of a job's GPUs into its idle stretch.

    Args:
        policy: the thresholds and times.
        idle_since: the previous verdict's ``idle_since`` (None at first).
        started_at: when the job started running.
        figures: its GPUs' current figures, or None when no process is on its GPUs (see :func:`is_idle_sample`).
        now: the time of the sample.
        warned: the previous verdict's ``warned``.

    Samples during the grace (``now < started_at + grace_s``) do not count: nothing is warned or
    reclaimed and the stretch cannot start before the grace ends. A busy sample ends the stretch.
    An idle sample starts it (``idle_since = now``) or continues it; the job is warned once when
    it has been idle ``policy.warn_after_s`` seconds (unless it is reclaimed in the same call) and
    reclaimed when it has been idle ``window_s`` seconds. An ``idle_since`` before the end of the
    grace counts from the end of the grace, one after ``now`` from ``now``.
    """
    grace_end = started_at + policy.grace_s
    if now < grace_end or not is_idle_sample(policy, figures):
        return NOT_IDLE
    since = now if idle_since is None else min(max(idle_since, grace_end), now)
    idle_s = now - since
    reclaim = idle_s >= policy.window_s
    warn = not warned and not reclaim and idle_s >= policy.warn_after_s
    return IdleVerdict(
        idle_since=since,
        warned=warned or warn,
        idle_s=idle_s,
        seconds_left=max(0.0, policy.window_s - idle_s),
        warn=warn,
        reclaim=reclaim,
    )
