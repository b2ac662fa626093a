"""The GPU guardian's rules on top of :mod:`scheduler_core.gpu_health`: which devices a host's health report
marks UNHEALTHY, what a foreign process is called, which idle policy applies to a job and what its GPUs'
figures say, how an admin's idle settings are read, and the lines a job's launcher is told.

Pure like the rest of ``scheduler_core``: values in, values out; no clock, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from scheduler_core.gpu_health import (
    ESCAPED,
    NVML,
    DeviceProcess,
    Foreign,
    GpuFigures,
    GpuHealthEvent,
    IdlePolicy,
    PolicyError,
    find_foreign,
)
from scheduler_core.timelimits import format_duration

# -- health ----------------------------------------------------------------------------------------------------


def host_failure(events: Iterable[GpuHealthEvent]) -> str | None:
    """The cause when NVML itself fails on the host (its devices are then not handed out), else None."""
    causes = [e.cause for e in events if e.kind == NVML]
    return "; ".join(dict.fromkeys(causes)) if causes else None


def unhealthy_devices(events: Iterable[GpuHealthEvent], devices: Collection[int]) -> dict[int, str]:
    """Device index -> why it is unhealthy (causes joined by ``; ``), for the devices of ``devices`` that failed.

    Every health event but an NVML failure marks its device: critical Xids, uncorrectable ECC errors, pending
    page retirement or row remapping, a lost GPU. An event without a device (an Xid NVML could not tie to one)
    marks every device. NVML failing marks none (see :func:`host_failure`): the host is closed while it fails.
    """
    wanted = sorted(set(devices))
    causes: dict[int, list[str]] = {}
    for event in events:
        if event.kind == NVML:
            continue
        for device in wanted if event.device is None else [event.device] if event.device in wanted else []:
            found = causes.setdefault(device, [])
            if event.cause not in found:
                found.append(event.cause)
    return {device: "; ".join(causes[device]) for device in wanted if device in causes}


# -- foreign processes ------------------------------------------------------------------------------------------


def describe_foreign(finding: Foreign) -> str:
    """One line saying who uses the GPU: ``pid 4321 (user mallory, 2048 MiB) is not part of any job``."""
    who = f"user {finding.user}" if finding.user else "user unknown"
    process = f"pid {finding.pid} ({who}, {finding.memory_mib} MiB)"
    if finding.kind == ESCAPED:
        return f"{process} of job {finding.job} uses a GPU that job {finding.job} was not given"
    if finding.device_job is not None:
        return f"{process} is not part of job {finding.device_job}, which holds the GPU"
    return f"{process} is not part of any job"


def job_pids(
    processes: Iterable[tuple[int, int | None, Sequence[int]]], job_commands: Mapping[int, int | None]
) -> dict[int, set[int]]:
    """Job id -> the pids that belong to it, from (pid, job tag, ancestor pids) of the processes on the GPUs.

    A process belongs to a job when it (or an ancestor) carries the job's ``MOREH_JOB_ID`` (``tag``), or when it
    is the job's command (``job_commands``: job id -> the command's pid) or descends from it: the process tree
    of the job, also for processes whose environment the guardian may not read.
    """
    owner_of_command = {pid: job for job, pid in job_commands.items() if pid}
    found: dict[int, set[int]] = {job: set() for job in job_commands}
    for pid, tag, ancestors in processes:
        if tag is not None and tag in found:
            found[tag].add(pid)
            continue
        for candidate in (pid, *ancestors):
            job = owner_of_command.get(candidate)
            if job is not None:
                found[job].add(pid)
                break
    return found


def before_start(
    processes: Iterable[DeviceProcess], job_id: int, devices: Collection[int], tagged: Collection[int]
) -> list[Foreign]:
    """What stands in the way of a job about to start on ``devices``: every process on them that is not the job's.

    ``tagged`` are the pids that carry the job's own id (its command may already be starting).
    """
    wanted = set(devices)
    on_devices = [p for p in processes if p.device in wanted]
    return find_foreign(on_devices, {d: job_id for d in wanted}, {job_id: set(tagged)})


# -- idle policies ------------------------------------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,3})?)([smhd]?)", re.ASCII)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_FORMS = "seconds (60), or 90s, 30m, 2h, 1d"


def parse_duration(text: str, what: str) -> float:
    """``60``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds; :class:`PolicyError` (one line) otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise PolicyError(f"invalid idle {what} {text[:40]!r}: use {DURATION_FORMS}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _number(text: str, what: str, unit: str) -> float:
    raw = text.strip()
    try:
        value = float(raw) if raw.isascii() and raw and raw.lower() not in ("nan", "inf", "-inf", "infinity") else None
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise PolicyError(f"invalid idle {what} {text[:40]!r}: give a number of {unit}")
    return value


def parse_idle_policy(util: str, memory: str, window: str, grace: str | None, tick_s: float) -> IdlePolicy:
    """An admin's idle settings as typed (``util %``, ``memory MiB``, ``window``, ``grace``) -> :class:`IdlePolicy`.

    The window must last at least one daemon tick (``tick_s``); no grace means none (idle counts from the start).
    Raises :class:`PolicyError` with one line.
    """
    policy = IdlePolicy(
        util_percent=_number(util.removesuffix("%"), "utilisation threshold", "percent (0 to 100)"),
        memory_mib=_number(memory.removesuffix("MiB"), "memory threshold", "MiB"),
        window_s=parse_duration(window, "window"),
        grace_s=parse_duration(grace, "grace") if grace is not None else 0.0,
    )
    policy.check_tick(tick_s)
    return policy


def check_idle_policy(util: float, memory: float, window: float, grace: float, tick_s: float) -> IdlePolicy:
    """The same checks for numbers already parsed (the REST API): an :class:`IdlePolicy` or :class:`PolicyError`."""
    policy = IdlePolicy(util, memory, window, grace)
    policy.check_tick(tick_s)
    return policy


def choose_policy(token_policy: IdlePolicy | None, model_policy: IdlePolicy | None) -> IdlePolicy | None:
    """The policy of a job: its token's when set (the more specific), else its SDA model's, else none."""
    return token_policy if token_policy is not None else model_policy


def job_figures(
    devices: Sequence[int], figures: Mapping[int, GpuFigures], used: Collection[int]
) -> Sequence[GpuFigures] | None:
    """What :func:`scheduler_core.gpu_health.update_idle` takes for a job on ``devices``.

    ``figures``: each device's sample; ``used``: the devices that have a process now. None (idle) when none of
    the job's devices has a process; a device without a sample counts as unknown (never idle blind).
    """
    if not any(d in used for d in devices):
        return None
    return [figures.get(d, GpuFigures(None, None)) for d in devices]


#: An idle stretch survives a gap between samples of at most this many daemon ticks (and at least 30 s).
STRETCH_GAP_TICKS = 5
MIN_STRETCH_GAP_S = 30.0


def stale_stretch(checked_at: float | None, now: float, tick_s: float) -> bool:
    """Whether a job's idle stretch must start afresh: it was last sampled too long ago (the daemon was down, its
    host silent) to know that the job stayed idle meanwhile."""
    if checked_at is None:
        return False
    return now - checked_at > max(STRETCH_GAP_TICKS * tick_s, MIN_STRETCH_GAP_S)


def describe_policy(policy: IdlePolicy) -> str:
    """``GPU utilisation below 5 % and memory below 1024 MiB``: what idle means under ``policy``."""
    return f"GPU utilisation below {policy.util_percent:g} % and memory below {policy.memory_mib:g} MiB"


def duration_text(seconds: float) -> str:
    """``45 s``, ``4 min 30 s``, ``2 h 5 min``: a short, rounded duration for users."""
    total = max(round(seconds), 0)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        minutes, secs = divmod(total, 60)
        return f"{minutes} min" + (f" {secs} s" if secs else "")
    if total >= 86400:
        return format_duration(total)
    hours, rest = divmod(total, 3600)
    return f"{hours} h" + (f" {rest // 60} min" if rest // 60 else "")


@dataclass(frozen=True)
class IdleNotice:
    """Lines the guardian tells a job's launcher about idleness (empty: nothing to say)."""

    text: str
    notified: bool  # whether this is the "idle" line (its time is remembered, to say it at most once per window)


def idle_notices(
    job_id: int,
    policy: IdlePolicy,
    *,
    was_idle: bool,
    was_warned: bool,
    idle_s: float | None,
    seconds_left: float | None,
    warn: bool,
    reclaim: bool,
    last_notified: float | None,
    now: float,
) -> list[IdleNotice]:
    """What to tell job ``job_id``'s launcher after one idle sample.

    The first idle sample of a stretch says how long is left (at most once per window, so a job that keeps
    pausing is not told every tick); the warning comes once per stretch (:attr:`IdlePolicy.warn_after_s`); a job
    that was warned and is busy again is told the countdown stopped. The reclaim itself is said by the release.
    """
    lines: list[IdleNotice] = []
    if reclaim:
        return lines
    if idle_s is not None and seconds_left is not None:
        starting = not was_idle
        due = last_notified is None or now - last_notified >= policy.window_s
        if warn:
            lines.append(
                IdleNotice(
                    f"[warning] job {job_id} has been idle for {duration_text(idle_s)} ({describe_policy(policy)}): its "
                    f"devices are reclaimed in {duration_text(seconds_left)} unless it uses them.",
                    False,
                )
            )
        elif starting and due:
            lines.append(
                IdleNotice(
                    f"[info] job {job_id} is idle ({describe_policy(policy)}): its devices are reclaimed in "
                    f"{duration_text(seconds_left)} unless it uses them.",
                    True,
                )
            )
    elif was_warned:
        lines.append(IdleNotice(f"[info] job {job_id} is busy again: the idle countdown stopped.", False))
    return lines


def reclaim_detail(policy: IdlePolicy, scope: str) -> str:
    """The release detail (what the launcher and the history say) of a job reclaimed under ``policy``."""
    return (
        f"reclaimed after being idle for {duration_text(policy.window_s)} ({describe_policy(policy)}; idle policy "
        f"of its {scope})"
    )
