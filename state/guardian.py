"""The GPU guardian's part of the state: device flags, idle policies, each running job's idle bookkeeping, and the
notices its launcher prints.

* ``device_flags``: why a device (or a whole backend) is out of use. An ``unhealthy`` flag goes with the device
  status UNHEALTHY and stays until an admin sets the device back (``update device``); ``foreign`` and ``escaped``
  flags name a process on the GPU and are replaced by each report of the device's host (a flag no report
  confirmed for :data:`FOREIGN_FLAG_TTL_S` seconds no longer counts: its host or the launcher that saw it went
  quiet); an ``nvml`` flag (``idx`` NULL) says NVML fails on the host: none of its devices is handed out.
* ``idle_policies``: per token or SDA model, the thresholds, window and grace of idle reclaim.
* ``job_idle``: per running job under a policy, since when it is idle, whether it was warned, whether it was
  reclaimed (its end reason is then ``idle``).
* ``job_notices``: lines for a job's launcher (its watcher's long poll hands them over one by one).

Times the guardian compares are the state's clock in epoch seconds (``epoch(now()::TIMESTAMP)``), so that a job's
start and the idle stretch are measured on one clock.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from state.errors import InvalidValueError, NotFoundError
from state.records import (
    FLAG_ESCAPED,
    FLAG_FOREIGN,
    IDLE_SCOPES,
    UNHEALTHY,
    DeviceFlag,
    IdlePolicyRow,
    JobIdle,
)

if TYPE_CHECKING:
    from state.session import Session

#: A foreign-process flag that no report confirmed for this long no longer keeps its device out of use.
FOREIGN_FLAG_TTL_S = 60.0
#: What the scheduler sees for a device that a foreign process uses: busy (not IDLE), but not shut down.
FLAGGED_STATUS = "FOREIGN"
#: How long the guardian assumes the daemon's tick is when no daemon recorded its interval.
DEFAULT_TICK_S = 2.0

_FLAG_COLUMNS = (
    "f.backend_id, b.host, f.idx, f.kind, f.cause, f.since, f.pid, f.user_name, f.memory_mib, f.job_id, f.device_job"
)
_PROCESS_KINDS = (FLAG_FOREIGN, FLAG_ESCAPED)


def check_scope(scope: str) -> str:
    """``token`` or ``sdamodel`` (any case); InvalidValueError otherwise."""
    lower = scope.lower()
    if lower not in IDLE_SCOPES:
        raise InvalidValueError(f"Unknown idle policy scope '{scope[:40]}': use one of {'|'.join(IDLE_SCOPES)}.")
    return lower


@dataclass(frozen=True)
class ProcessFlag:
    """A process on a GPU that its job does not account for, as the guardian records it."""

    index: int
    kind: str  # foreign | escaped
    cause: str
    pid: int
    user: str | None
    memory_mib: int
    job_id: int | None = None
    device_job: int | None = None

    @property
    def key(self) -> tuple[int, int, str]:
        """(device index, pid, kind): one flag per process per device."""
        return (self.index, self.pid, self.kind)


@dataclass(frozen=True)
class NewlyUnhealthy:
    """A device the guardian just marked UNHEALTHY, and the job holding it (if any)."""

    index: int
    cause: str
    job_id: int | None
    token: str | None


@dataclass(frozen=True)
class RunningJob:
    """A running job of a backend as the idle check reads it (``started``: epoch seconds on the state's clock)."""

    id: int
    token: str
    model_id: int
    started: float
    pid: int | None
    release_requested: bool
    devices: tuple[int, ...]


class GuardianRepository:
    """Reads and changes the guardian's tables (see the module docstring); every change records an event."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    # -- the clock and the daemon's tick -----------------------------------------------------------------

    def now(self) -> float:
        """The state's clock in epoch seconds."""
        row = self.s.one("SELECT epoch(now()::TIMESTAMP)")
        assert row is not None
        return float(row[0])

    def record_tick(self, interval_s: float) -> None:
        """Remember the running daemon's tick (idle windows shorter than it are refused)."""
        self.s.execute("DELETE FROM meta WHERE key = 'daemon_interval'")
        self.s.execute("INSERT INTO meta VALUES ('daemon_interval', ?)", [repr(float(interval_s))])

    def tick(self) -> float:
        """The daemon's tick as last recorded (:data:`DEFAULT_TICK_S` when none was)."""
        row = self.s.one("SELECT value FROM meta WHERE key = 'daemon_interval'")
        try:
            return float(row[0]) if row else DEFAULT_TICK_S
        except ValueError:
            return DEFAULT_TICK_S

    # -- flags -------------------------------------------------------------------------------------------

    def flags(self, backend_ids: Collection[int] | None = None) -> list[DeviceFlag]:
        """The flags in force (of ``backend_ids`` when given), by backend, device (host-wide first), kind, pid."""
        where = ""
        params: list[Any] = [FOREIGN_FLAG_TTL_S]
        if backend_ids is not None:
            ids = sorted({int(b) for b in backend_ids})
            if not ids:
                return []
            where = f" AND f.backend_id IN ({','.join('?' * len(ids))})"
            params.extend(ids)
        rows = self.s.all(
            f"SELECT {_FLAG_COLUMNS} FROM device_flags f JOIN backends b ON b.id = f.backend_id "
            "LEFT JOIN devices d ON d.backend_id = f.backend_id AND d.idx = f.idx "
            "WHERE ((f.kind IN ('foreign', 'escaped') AND epoch(now()::TIMESTAMP) - epoch(f.seen_at) <= ?) "
            "OR (f.kind = 'unhealthy' AND d.status = 'UNHEALTHY') OR f.kind = 'nvml')"
            f"{where} ORDER BY f.backend_id, f.idx NULLS FIRST, f.kind, f.pid",
            params,
        )
        return [DeviceFlag(*row) for row in rows]

    def quiet(self) -> bool:
        """Whether the guardian has nothing to show at all (no flag, no idle bookkeeping): one cheap query."""
        row = self.s.one("SELECT (SELECT count(*) FROM device_flags) + (SELECT count(*) FROM job_idle)")
        return row is None or int(row[0]) == 0

    def backends_of_token(self, token: str) -> list[int]:
        """The backends the token's queued and running jobs run (or wait to run) on."""
        rows = self.s.all("SELECT DISTINCT backend_id FROM jobs WHERE token = ? AND backend_id IS NOT NULL", [token])
        return sorted(int(r[0]) for r in rows)

    def scheduler_view(self) -> tuple[dict[tuple[int, int], str], set[int]]:
        """What the scheduler must not hand out: {(backend, index): status it sees instead}, and failing backends.

        UNHEALTHY devices count as shut down (no job waits for one); devices a foreign process uses count as busy
        (jobs wait for them); backends where NVML fails count as inactive (fail closed).
        """
        view: dict[tuple[int, int], str] = {
            (int(b), int(i)): FLAGGED_STATUS
            for b, i in self.s.all(
                "SELECT DISTINCT backend_id, idx FROM device_flags WHERE kind IN ('foreign', 'escaped') "
                "AND epoch(now()::TIMESTAMP) - epoch(seen_at) <= ?",
                [FOREIGN_FLAG_TTL_S],
            )
        }
        for b, i in self.s.all("SELECT backend_id, idx FROM devices WHERE status = 'UNHEALTHY'"):
            view[(int(b), int(i))] = "SHUTDOWN"
        failing = {int(r[0]) for r in self.s.all("SELECT DISTINCT backend_id FROM device_flags WHERE kind = 'nvml'")}
        return view, failing

    def mark_unhealthy(self, backend_id: int, causes: Mapping[int, str]) -> list[NewlyUnhealthy]:
        """Mark the backend's devices in ``causes`` (index -> cause) UNHEALTHY; those that were not already.

        Each change records a DEVICE_UNHEALTHY event naming the device, the cause and the job holding it (the
        event carries that job's token).
        """
        if not causes:
            return []
        rows = self.s.all("SELECT idx, status FROM devices WHERE backend_id = ?", [backend_id])
        statuses = {int(i): str(st) for i, st in rows}
        changed: list[NewlyUnhealthy] = []
        for index in sorted(causes):
            if index not in statuses or statuses[index] == UNHEALTHY:
                continue
            cause = causes[index][:500]
            self.s.execute("UPDATE devices SET status = 'UNHEALTHY' WHERE backend_id = ? AND idx = ?", [backend_id, index])
            self._replace_unhealthy_flag(backend_id, index, cause)
            holder = self.s.one(
                "SELECT j.id, j.token FROM job_devices jd JOIN jobs j ON j.id = jd.job_id "
                "WHERE jd.backend_id = ? AND jd.device_index = ?",
                [backend_id, index],
            )
            job_id, token = (int(holder[0]), str(holder[1])) if holder else (None, None)
            detail = f"backend={backend_id} device={index} was={statuses[index]}" + (
                f" job={job_id}" if job_id is not None else ""
            )
            self.s.events.record("DEVICE_UNHEALTHY", f"{detail} cause={cause}", token or "")
            changed.append(NewlyUnhealthy(index, cause, job_id, token))
        return changed

    def _replace_unhealthy_flag(self, backend_id: int, index: int, cause: str) -> None:
        self.s.execute(
            "DELETE FROM device_flags WHERE backend_id = ? AND idx = ? AND kind = 'unhealthy'", [backend_id, index]
        )
        self.s.execute(
            "INSERT INTO device_flags (backend_id, idx, kind, cause, since, seen_at) "
            "VALUES (?, ?, 'unhealthy', ?, now(), now())",
            [backend_id, index, cause],
        )

    def device_status_set(self, backend_id: int, index: int | None, status: str) -> list[tuple[int, str]]:
        """An admin set a device's status (all the backend's when ``index`` is None): keep the flags in step.

        Setting UNHEALTHY records the admin as the cause; any other status clears the unhealthy flags (and, for
        the whole backend, a host-wide NVML flag). Returns the (index, cause) of the failures cleared, for the
        event log.
        """
        params: list[Any] = [backend_id] if index is None else [backend_id, index]
        one = "" if index is None else " AND idx = ?"
        cleared = [
            (int(i), str(c))
            for i, c in self.s.all(
                "SELECT f.idx, f.cause FROM device_flags f JOIN devices d ON d.backend_id = f.backend_id AND "
                f"d.idx = f.idx WHERE f.kind = 'unhealthy' AND d.status = 'UNHEALTHY' AND f.backend_id = ?"
                f"{one.replace('idx', 'f.idx')} ORDER BY f.idx",
                params,
            )
        ]
        self.s.execute(f"DELETE FROM device_flags WHERE kind = 'unhealthy' AND backend_id = ?{one}", params)
        if status == UNHEALTHY:
            for (i,) in self.s.all(f"SELECT idx FROM devices WHERE backend_id = ?{one} ORDER BY idx", params):
                self._replace_unhealthy_flag(backend_id, int(i), "set UNHEALTHY by an admin")
            return []
        if index is None:
            self.s.execute("DELETE FROM device_flags WHERE kind = 'nvml' AND backend_id = ?", [backend_id])
        return cleared

    def set_host_failure(self, backend_id: int, cause: str | None) -> str:
        """Record that NVML fails on the backend's host (``cause``) or works again (None).

        Returns ``failed`` or ``recovered`` when that changed (an event records it), else ``""``.
        """
        known = self.s.one(
            "SELECT cause FROM device_flags WHERE backend_id = ? AND kind = 'nvml' LIMIT 1", [backend_id]
        )
        if cause is None:
            if known is None:
                return ""
            self.s.execute("DELETE FROM device_flags WHERE backend_id = ? AND kind = 'nvml'", [backend_id])
            self.s.events.record("HOST_GPUS_RECOVERED", f"backend={backend_id}")
            return "recovered"
        cause = cause[:500]
        if known is not None:
            self.s.execute(
                "UPDATE device_flags SET seen_at = now(), cause = ? WHERE backend_id = ? AND kind = 'nvml'",
                [cause, backend_id],
            )
            return ""
        self.s.execute(
            "INSERT INTO device_flags (backend_id, idx, kind, cause, since, seen_at) VALUES (?, NULL, 'nvml', ?, now(), now())",
            [backend_id, cause],
        )
        self.s.events.record("HOST_GPUS_FAILING", f"backend={backend_id} cause={cause}")
        return "failed"

    def replace_processes(
        self, backend_id: int, flags: Sequence[ProcessFlag]
    ) -> tuple[list[ProcessFlag], list[tuple[int, int, str]]]:
        """Make ``flags`` the backend's foreign/escaped flags (a report saw exactly these); (new flags, gone keys).

        A flag seen before keeps its ``since``. New and gone flags are recorded as events.
        """
        known = self._process_flags(backend_id)
        self.s.execute("DELETE FROM device_flags WHERE backend_id = ? AND kind IN ('foreign', 'escaped')", [backend_id])
        new = self._insert_processes(backend_id, flags, known)
        wanted = {f.key for f in flags}
        gone = sorted(key for key in known if key not in wanted)
        if gone:
            self.s.events.record_many(
                "FOREIGN_PROCESS_GONE", [f"backend={backend_id} device={i} pid={p} kind={k}" for i, p, k in gone]
            )
        return new, gone

    def add_processes(self, backend_id: int, flags: Sequence[ProcessFlag]) -> list[ProcessFlag]:
        """Add (or refresh) flags one look saw, keeping the others (a launcher's check before its job starts)."""
        known = self._process_flags(backend_id)
        for flag in flags:
            self.s.execute(
                "DELETE FROM device_flags WHERE backend_id = ? AND idx = ? AND pid = ? AND kind = ?",
                [backend_id, flag.index, flag.pid, flag.kind],
            )
        return self._insert_processes(backend_id, flags, known)

    def _process_flags(self, backend_id: int) -> dict[tuple[int, int, str], Any]:
        rows = self.s.all(
            "SELECT idx, pid, kind, since FROM device_flags WHERE backend_id = ? AND kind IN ('foreign', 'escaped') "
            "AND epoch(now()::TIMESTAMP) - epoch(seen_at) <= ?",
            [backend_id, FOREIGN_FLAG_TTL_S],
        )
        return {(int(i), int(p), str(k)): since for i, p, k, since in rows}

    def _insert_processes(
        self, backend_id: int, flags: Sequence[ProcessFlag], known: Mapping[tuple[int, int, str], Any]
    ) -> list[ProcessFlag]:
        unique = {f.key: f for f in flags if f.kind in _PROCESS_KINDS}
        if unique:
            self.s.executemany(
                "INSERT INTO device_flags (backend_id, idx, kind, cause, pid, user_name, memory_mib, job_id, device_job, "
                "since, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, coalesce(?, now()::TIMESTAMP), now())",
                [
                    [backend_id, f.index, f.kind, f.cause[:500], f.pid, f.user, f.memory_mib, f.job_id, f.device_job,
                     known.get(key)]
                    for key, f in sorted(unique.items())
                ],
            )
        new = [f for key, f in sorted(unique.items()) if key not in known]
        if new:
            self.s.events.record_many(
                "FOREIGN_PROCESS", [f"backend={backend_id} device={f.index} kind={f.kind} cause={f.cause}" for f in new]
            )
        return new

    # -- jobs on a backend ---------------------------------------------------------------------------------

    def allocation(self, backend_id: int) -> dict[int, int]:
        """Device index -> the job holding it, for one backend."""
        return {
            int(i): int(j)
            for i, j in self.s.all("SELECT device_index, job_id FROM job_devices WHERE backend_id = ?", [backend_id])
        }

    def active_pids(self, backend_id: int) -> dict[int, int | None]:
        """Job id -> its command's pid (None before it started), for the jobs holding devices on the backend's host."""
        rows = self.s.all(
            "SELECT id, pid FROM jobs WHERE backend_id = ? AND status IN ('SUBMITTED', 'RUNNING')", [backend_id]
        )
        return {int(j): (int(p) if p is not None else None) for j, p in rows}

    def running(self, backend_id: int) -> list[RunningJob]:
        """The RUNNING jobs of the backend's host with the devices they hold there."""
        rows = self.s.all(
            "SELECT j.id, j.token, s.model_id, epoch(j.start_time), j.pid, j.release_requested, "
            "list(jd.device_index ORDER BY jd.device_index) FROM jobs j JOIN sdas s ON s.id = j.sda_id "
            "JOIN job_devices jd ON jd.job_id = j.id AND jd.backend_id = j.backend_id "
            "WHERE j.backend_id = ? AND j.status = 'RUNNING' AND j.start_time IS NOT NULL "
            "GROUP BY j.id, j.token, s.model_id, j.start_time, j.pid, j.release_requested ORDER BY j.id",
            [backend_id],
        )
        return [
            RunningJob(int(j), str(t), int(m), float(st), p, bool(r), tuple(int(i) for i in devs))
            for j, t, m, st, p, r, devs in rows
        ]

    def requeue(self, job_id: int, reason: str) -> bool:
        """Send a job that got devices but has not started back to the queue (it keeps its place); whether it went.

        Its devices go back to IDLE (an UNHEALTHY one stays so); an event records why.
        """
        row = self.s.one("SELECT status, token FROM jobs WHERE id = ?", [job_id])
        if row is None or row[0] != "SUBMITTED":
            return False
        self.s.execute(
            "UPDATE devices SET status = 'IDLE' FROM job_devices d WHERE d.job_id = ? AND devices.backend_id = d.backend_id "
            "AND devices.idx = d.device_index AND devices.status = 'PREPARING'",
            [job_id],
        )
        self.s.execute("DELETE FROM job_devices WHERE job_id = ?", [job_id])
        self.s.execute("DELETE FROM job_processes WHERE job_id = ?", [job_id])
        self.s.execute("UPDATE jobs SET status = 'QUEUED', submit_time = NULL WHERE id = ?", [job_id])
        self.s.events.record("REQUEUE_JOB", f"id={job_id} reason={reason[:300]}", str(row[1]))
        return True

    # -- idle policies -----------------------------------------------------------------------------------------

    def set_idle_policy(
        self, scope: str, target: str, util_percent: float, memory_mib: float, window_s: float, grace_s: float
    ) -> IdlePolicyRow:
        """Set (or replace) the idle policy of a token or an SDA model; the values are checked by the caller."""
        scope = check_scope(scope)
        target = self._target(scope, target)
        self.s.execute("DELETE FROM idle_policies WHERE scope = ? AND target = ?", [scope, target])
        self.s.execute(
            "INSERT INTO idle_policies VALUES (?, ?, ?, ?, ?, ?, now())",
            [scope, target, util_percent, memory_mib, window_s, grace_s],
        )
        self.s.events.record(
            "UPDATE_IDLE_POLICY",
            f"{scope}={target if scope != 'token' else target[:8] + '...'} util<{util_percent:g}% "
            f"memory<{memory_mib:g}MiB window={window_s:g}s grace={grace_s:g}s",
            target if scope == "token" else "",
        )
        found = self.idle_policy(scope, target)
        assert found is not None
        return found

    def clear_idle_policy(self, scope: str, target: str) -> None:
        """Remove the idle policy of a token or an SDA model (NotFoundError when it has none)."""
        scope = check_scope(scope)
        target = self._target(scope, target)
        if self.idle_policy(scope, target) is None:
            what = f"token '{target[:8]}...'" if scope == "token" else f"SDA model {target}"
            raise NotFoundError(f"The {what} has no idle policy; see 'show idle'.")
        self.s.execute("DELETE FROM idle_policies WHERE scope = ? AND target = ?", [scope, target])
        self.s.execute(
            "DELETE FROM job_idle WHERE reclaimed = FALSE AND job_id IN (SELECT j.id FROM jobs j JOIN sdas s ON "
            "s.id = j.sda_id WHERE (? = 'token' AND j.token = ?) OR (? = 'sdamodel' AND CAST(s.model_id AS VARCHAR) = ?))",
            [scope, target, scope, target],
        )
        self.s.events.record(
            "DELETE_IDLE_POLICY",
            f"{scope}={target if scope != 'token' else target[:8] + '...'}",
            target if scope == "token" else "",
        )

    def _target(self, scope: str, target: str) -> str:
        if scope == "token":
            return self.s.tokens.get(target).value
        digits = target.strip()
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 9:
            raise NotFoundError(f"SDA model '{target[:40]}' not found; list them with 'show sdamodel'.")
        return str(self.s.models.get(int(digits)).id)

    def idle_policy(self, scope: str, target: str) -> IdlePolicyRow | None:
        """One policy, if set."""
        row = self.s.one(
            "SELECT scope, target, util_percent, memory_mib, window_s, grace_s, updated_at FROM idle_policies "
            "WHERE scope = ? AND target = ?",
            [scope, target],
        )
        return IdlePolicyRow(*row) if row else None

    def idle_policies(self) -> list[IdlePolicyRow]:
        """Every idle policy of an existing token or SDA model: tokens first, then models by id."""
        rows = self.s.all(
            "SELECT p.scope, p.target, p.util_percent, p.memory_mib, p.window_s, p.grace_s, p.updated_at "
            "FROM idle_policies p WHERE (p.scope = 'token' AND EXISTS (SELECT 1 FROM tokens t WHERE t.value = p.target)) "
            "OR (p.scope = 'sdamodel' AND EXISTS (SELECT 1 FROM sda_models m WHERE CAST(m.id AS VARCHAR) = p.target)) "
            "ORDER BY p.scope DESC, CASE WHEN p.scope = 'sdamodel' THEN CAST(p.target AS BIGINT) END, p.target"
        )
        return [IdlePolicyRow(*row) for row in rows]

    # -- each job's idle bookkeeping ----------------------------------------------------------------------------

    def idle_of(self, job_ids: Iterable[int]) -> dict[int, JobIdle]:
        """The idle bookkeeping of ``job_ids`` that have any."""
        ids = sorted({int(j) for j in job_ids})
        if not ids:
            return {}
        rows = self.s.all(
            "SELECT job_id, idle_since, warned, seconds_left, reclaimed, notified_at, checked_at FROM job_idle "
            f"WHERE job_id IN ({','.join('?' * len(ids))})",
            ids,
        )
        return {int(r[0]): JobIdle(int(r[0]), r[1], bool(r[2]), r[3], bool(r[4]), r[5], r[6]) for r in rows}

    def put_idle(self, state: JobIdle) -> None:
        """Store one job's idle bookkeeping."""
        self.s.execute("DELETE FROM job_idle WHERE job_id = ?", [state.job_id])
        self.s.execute(
            "INSERT INTO job_idle VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                state.job_id, state.idle_since, state.warned, state.seconds_left, state.reclaimed, state.notified_at,
                state.checked_at,
            ],
        )

    def drop_idle(self, job_ids: Iterable[int]) -> None:
        """Forget the idle bookkeeping of jobs no policy covers any more (never that of a reclaimed job)."""
        ids = sorted({int(j) for j in job_ids})
        if ids:
            self.s.execute(
                f"DELETE FROM job_idle WHERE reclaimed = FALSE AND job_id IN ({','.join('?' * len(ids))})", ids
            )

    def release_reason(self, job_id: int) -> str | None:
        """The end reason of a job someone asked to stop, when the guardian asked (``idle``); None otherwise."""
        row = self.s.one("SELECT 1 FROM job_idle WHERE job_id = ? AND reclaimed", [job_id])
        return "idle" if row else None

    # -- notices for launchers ---------------------------------------------------------------------------------

    def add_notice(self, job_id: int, text: str) -> int:
        """Queue one line for the job's launcher; its id."""
        row = self.s.one("SELECT nextval('seq_job_notice')")
        assert row is not None
        self.s.execute("INSERT INTO job_notices VALUES (?, ?, now(), ?)", [int(row[0]), job_id, text[:1000]])
        return int(row[0])

    def notice_after(self, job_id: int, after: int) -> tuple[int, str] | None:
        """The job's first notice after notice ``after``: (id, text)."""
        row = self.s.one(
            "SELECT id, text FROM job_notices WHERE job_id = ? AND id > ? ORDER BY id LIMIT 1", [job_id, after]
        )
        return (int(row[0]), str(row[1])) if row else None

    def forget_ended(self) -> None:
        """Drop the notices and idle bookkeeping of jobs that have ended."""
        self.s.execute("DELETE FROM job_notices WHERE job_id NOT IN (SELECT id FROM jobs)")
        self.s.execute("DELETE FROM job_idle WHERE job_id NOT IN (SELECT id FROM jobs)")
