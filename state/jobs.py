"""The job queue, device allocation, history and usage.

A job moves QUEUED -> SUBMITTED (devices allocated, PREPARING) -> RUNNING (PROCESSING) and then into
``job_history`` with an end reason; its devices go CLEANING and back to IDLE. The ``job_devices``
primary key (backend, device index) makes it impossible for the database to record one device as
given to two jobs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from scheduler_core.fairshare import DEFAULT_HALFLIFE_S
from scheduler_core.scheduling import BACKFILL, Allocation, BackendState, Decision, Policy, Preemption, QueuedJob
from scheduler_core.timelimits import format_duration
from state.checks import check_priority
from state.errors import ConflictError, InvalidValueError, NotFoundError
from state.planning import SchedulingInputs, plan, save_plan, scheduling_snapshot
from state.queue import queue_positions, scheduling_inputs
from state.records import END_REASONS, JOB_STATUSES, DeviceRef, HistoryEntry, Job, TokenUsage
from state.reports import HISTORY_COLUMNS, USAGE_SPANS_SQL
from state.stats import LOCK_STATS_VAR, record_stat

if TYPE_CHECKING:
    from state.session import Session

_JOB_COLUMNS = (
    "id, token, sda_id, priority, status, host, pid, pid_create_time, launcher_pid, launcher_create_time, "
    "process_name, client_version, "
    "device_count, request_time, submit_time, start_time, release_requested, backend_id, guardian_pid, "
    "guardian_create_time, release_detail, time_limit, charged_group, fairshare_group, borrowed, preempting, "
    "preempted_for, preempt_time"
)
_JOB_FIELDS = 28


class JobRepository:
    """Reads and changes jobs; every change records an event."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    # -- reads -------------------------------------------------------------------------------

    def _devices(self, job_ids: Sequence[int] | None = None) -> dict[int, list[DeviceRef]]:
        sql = (
            "SELECT d.job_id, d.backend_id, b.host, d.device_index FROM job_devices d "
            "JOIN backends b ON b.id = d.backend_id"
        )
        params: list[Any] = []
        if job_ids is not None:
            if not job_ids:
                return {}
            sql += f" WHERE d.job_id IN ({','.join('?' * len(job_ids))})"
            params = list(job_ids)
        out: dict[int, list[DeviceRef]] = {}
        for job_id, backend_id, host, index in self.s.all(sql + " ORDER BY 1, 2, 4", params):
            out.setdefault(int(job_id), []).append(DeviceRef(backend_id, host, index))
        return out

    def _select(self, where: str = "", params: list[Any] | None = None) -> list[Job]:
        rows = self.s.all(f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY id", params)
        devices = self._devices([int(r[0]) for r in rows]) if len(rows) <= 500 else self._devices()
        return [Job(*row[:_JOB_FIELDS], devices=tuple(devices.get(int(row[0]), ()))) for row in rows]  # type: ignore[misc]

    def get(self, job_id: int) -> Job:
        """Return a queued or running job or raise NotFoundError."""
        found = self._select("WHERE id = ?", [job_id])
        if not found:
            raise NotFoundError(f"Job {job_id} is not in the queue; see 'show job' (ended jobs: 'get history feid').")
        return found[0]

    def find(self, job_id: int) -> Job | None:
        """Return the job if it is still queued or running."""
        found = self._select("WHERE id = ?", [job_id])
        return found[0] if found else None

    def all(self, status: str | None = None) -> list[Job]:
        """Return every job in the queue (optionally one status), oldest first."""
        if status is None:
            return self._select()
        upper = status.upper()
        if upper == "SUMMITED":  # the seeds' spelling
            upper = "SUBMITTED"
        if upper not in JOB_STATUSES:
            raise InvalidValueError(f"Unknown job status '{status}': use one of {'|'.join(JOB_STATUSES)}.")
        return self._select("WHERE status = ?", [upper])

    def of_token(self, token: str) -> list[Job]:
        """Return the token's jobs (the token must exist)."""
        self.s.tokens.get(token)
        return self._select("WHERE token = ?", [token])

    def on_host(self, host: str) -> list[Job]:
        """Return the jobs launched on ``host``."""
        return self._select("WHERE host = ?", [host])

    def first_on_sda(self, sda_id: int) -> Job | None:
        """The oldest job that uses (or waits for) the SDA, if any."""
        row = self.s.one("SELECT id FROM jobs WHERE sda_id = ? ORDER BY id LIMIT 1", [sda_id])
        return self.find(int(row[0])) if row else None

    def on_backend(self, backend_id: int) -> list[Job]:
        """The jobs (queued or running) whose process runs on backend ``backend_id``'s host."""
        return self._select("WHERE backend_id = ?", [backend_id])

    def queue_position(self, job_id: int) -> int | None:
        """Return the 1-based position of a QUEUED job in scheduling order."""
        return queue_positions(self.s).get(job_id)

    # -- submission ----------------------------------------------------------------------------

    def submit(
        self,
        token: str,
        sda_id: int,
        *,
        backend_id: int,
        launcher_pid: int,
        launcher_create_time: float,
        process_name: str,
        priority: int | None = None,
        client_version: str = "",
        guardian_pid: int | None = None,
        guardian_create_time: float | None = None,
        time_limit: float | None = None,
        request_time: datetime | None = None,
    ) -> Job:
        """Queue a job for one of the token's SDAs, to run on backend ``backend_id``; refuse what could never run.

        ``time_limit``: the seconds it may hold its devices (None: unlimited), decided by the caller.
        ``request_time``: when it was first asked for (a job requeued after a preemption keeps its place); now
        when not given.
        """
        owner = self.s.tokens.get(token)
        sda = self.s.sdas.get(sda_id)
        if sda.token != token:
            raise NotFoundError(f"SDA {sda_id} does not belong to this token; see 'moreh-smi device --list'.")
        self.s.sdas.choose_model(token, sda.model_id, sda.model_group_id)
        model = self.s.models.get(sda.model_id)
        job_priority = owner.priority if priority is None else check_priority(priority)
        backend = self.s.one("SELECT host, group_id FROM backends WHERE id = ?", [backend_id])
        if backend is None:
            raise NotFoundError(f"Backend {backend_id} is not registered; register this host first.")
        host, group = str(backend[0]), int(backend[1])
        wanted_group = self.backend_group_of_sda(sda_id)
        if not sda.reserved and group != wanted_group:
            raise ConflictError(
                f"SDA {sda_id} runs on backend group {wanted_group}, which does not include this host '{host}' "
                f"(group {group}); ask an admin to adjust the groups."
            )
        elsewhere = self.s.one(
            "SELECT min(b.host) FROM sda_reservations r JOIN backends b ON b.id = r.backend_id "
            "WHERE r.sda_id = ? AND b.id <> ?",
            [sda_id, backend_id],
        )
        if sda.reserved and elsewhere is not None and elsewhere[0] is not None:
            raise ConflictError(
                f"SDA {sda_id} reserves devices on host '{elsewhere[0]}', not on this host '{host}'; run the job there."
            )
        # Devices held by reserved SDAs never go to ordinary jobs, so they do not count as usable here.
        usable = self.s.one(
            "SELECT count(*) FROM devices d WHERE d.backend_id = ? AND d.status <> 'SHUTDOWN' AND NOT EXISTS "
            "(SELECT 1 FROM sda_reservations r WHERE r.backend_id = d.backend_id AND r.device_index = d.idx)",
            [backend_id],
        )
        if not sda.reserved and usable is not None and usable[0] < model.devices:
            raise ConflictError(
                f"SDA {sda_id} ({model.name}) needs {model.devices} device(s) but this host '{host}' has "
                f"{usable[0]} usable; pick a smaller model with 'moreh-switch-model'."
            )
        row = self.s.one("SELECT nextval('seq_job')")
        assert row is not None
        job_id = int(row[0])
        self.s.execute(
            "INSERT INTO jobs (id, token, sda_id, priority, status, host, launcher_pid, launcher_create_time, "
            "process_name, client_version, device_count, request_time, backend_id, guardian_pid, "
            "guardian_create_time, time_limit) "
            "VALUES (?, ?, ?, ?, 'QUEUED', ?, ?, ?, ?, ?, ?, coalesce(?, now()), ?, ?, ?, ?)",
            [
                job_id, token, sda_id, job_priority, host, launcher_pid, launcher_create_time, process_name,
                client_version, model.devices, request_time, backend_id, guardian_pid, guardian_create_time,
                time_limit,
            ],
        )
        self.s.events.record("CREATE_JOB", f"id={job_id} sda={sda_id} devices={model.devices}", token)
        return self.get(job_id)

    def of_launcher(self, backend_id: int, launcher_pid: int, launcher_create_time: float) -> int | None:
        """The id of the job (queued, running or ended) a launcher submitted, if any: a retried submit finds it."""
        row = self.s.one(
            "SELECT id FROM jobs WHERE backend_id = ? AND launcher_pid = ? AND launcher_create_time = ?",
            [backend_id, launcher_pid, launcher_create_time],
        )
        return int(row[0]) if row else None

    def backend_group_of_sda(self, sda_id: int) -> int:
        """The backend group an SDA's jobs run in: its model group's, else the default group 0."""
        row = self.s.one(
            "SELECT coalesce(g.backend_group_id, 0) FROM sdas s LEFT JOIN model_groups g ON g.id = s.model_group_id "
            "WHERE s.id = ?",
            [sda_id],
        )
        return int(row[0]) if row else 0

    # -- the scheduling pass --------------------------------------------------------------------

    def scheduling_inputs(self) -> tuple[list[BackendState], list[QueuedJob], dict[int, int], set[tuple[int, int]]]:
        """Snapshot the queue part of what the scheduler needs: backends, the queue, active jobs per SDA, reserved devices."""
        return scheduling_inputs(self.s)

    def snapshot(self, *, now: float | None = None, halflife: float = DEFAULT_HALFLIFE_S) -> SchedulingInputs:
        """Everything a pass reads at ``now`` (default: the clock): see :func:`state.planning.scheduling_snapshot`."""
        return scheduling_snapshot(self.s, now=time.time() if now is None else now, halflife=halflife)

    def plan(
        self, policy: Policy = BACKFILL, *, now: float | None = None, halflife: float = DEFAULT_HALFLIFE_S
    ) -> tuple[SchedulingInputs, Decision]:
        """The pass the scheduler would make now, without applying it (for views: reasons, estimates, order)."""
        return plan(self.s, policy, now=time.time() if now is None else now, halflife=halflife)

    def run_scheduling_pass(
        self, policy: Policy = BACKFILL, *, now: float | None = None, halflife: float = DEFAULT_HALFLIFE_S
    ) -> Decision:
        """Decide and apply one pass: allocations, preemption marks, the plan for the next pass; return the decision.

        Expired quota grants are marked first, so the quotas the pass uses are the ones in force at ``now``.
        """
        return self.scheduling_pass(policy, now=now, halflife=halflife)[1]

    def scheduling_pass(
        self, policy: Policy = BACKFILL, *, now: float | None = None, halflife: float = DEFAULT_HALFLIFE_S
    ) -> tuple[SchedulingInputs | None, Decision]:
        """:meth:`run_scheduling_pass`, also returning what it decided on (None: nothing was queued).

        The queue's order in those inputs, less the jobs the pass started, is the queue's order after it (usage,
        and so fair share, changes only when a job ends): a submit says its job's place without reading it again.
        """
        started = time.perf_counter()
        now = time.time() if now is None else now
        self.s.quotas.expire(now)
        # A pass only ever starts or preempts jobs for a queued job: with none queued (a job's end, most often)
        # there is nothing to decide, and the snapshot's twenty-odd reads are skipped.
        if self.s.one("SELECT 1 FROM jobs WHERE status = 'QUEUED' LIMIT 1") is None:
            save_plan(self.s, ())
            return None, Decision((), {})
        inputs = self.snapshot(now=now, halflife=halflife)
        if not inputs.queue:
            save_plan(self.s, ())
            return inputs, Decision((), {})
        decision = inputs.decide(policy)
        self._apply(decision.allocations, inputs)
        self._mark_preempted(decision.preemptions, now)
        save_plan(self.s, decision.reservations)
        if os.environ.get(LOCK_STATS_VAR):
            record_stat("pass", time.perf_counter() - started)
        return inputs, decision

    def _apply(self, allocations: Sequence[Allocation], inputs: SchedulingInputs | None = None) -> None:
        # One statement per table for the whole pass: per-device statements cost ~3 ms per job at
        # 1,000 backends, which made a pass starting 2,400 jobs take 8 s (benchmarks/bench_scheduler).
        if not allocations:
            return
        held = [(a.job_id, b, i) for a in allocations for b, i in a.devices]
        job_ids, backend_ids, indexes = ([h[n] for h in held] for n in range(3))
        self.s.execute(
            "INSERT INTO job_devices SELECT unnest(?), unnest(?), unnest(?)", [job_ids, backend_ids, indexes]
        )
        self.s.execute(
            "UPDATE devices SET status = 'PREPARING' FROM (SELECT unnest(?) AS b, unnest(?) AS i) AS given "
            "WHERE devices.backend_id = given.b AND devices.idx = given.i AND devices.status = 'IDLE'",
            [backend_ids, indexes],
        )
        queued = {q.id: q for q in inputs.queue} if inputs is not None else {}
        charged = [queued[a.job_id].charged_group if a.job_id in queued else None for a in allocations]
        fair = [queued[a.job_id].fairshare_group if a.job_id in queued else None for a in allocations]
        if any(g is not None for g in charged + fair) or any(a.borrowed for a in allocations):
            self.s.execute(
                "UPDATE jobs SET status = 'SUBMITTED', submit_time = now(), charged_group = given.c, "
                "fairshare_group = given.f, borrowed = given.b "
                "FROM (SELECT unnest(?::BIGINT[]) AS id, unnest(?::INTEGER[]) AS c, unnest(?::INTEGER[]) AS f, "
                "unnest(?::BOOLEAN[]) AS b) AS given WHERE jobs.id = given.id AND jobs.status = 'QUEUED'",
                [[a.job_id for a in allocations], charged, fair, [a.borrowed for a in allocations]],
            )
        else:
            self.s.execute(
                "UPDATE jobs SET status = 'SUBMITTED', submit_time = now() "
                "WHERE id IN (SELECT unnest(?)) AND status = 'QUEUED'",
                [[a.job_id for a in allocations]],
            )
        self.s.events.record_many(
            "ALLOCATE_JOB",
            [
                f"id={a.job_id} devices={','.join(f'{b}:{i}' for b, i in a.devices)}" + (" borrowed" if a.borrowed else "")
                for a in allocations
            ],
        )

    def _mark_preempted(self, preemptions: Sequence[Preemption], now: float) -> None:
        """Mark each victim as being preempted (its launcher, told, stops it; it ends as ``preempted``)."""
        for p in preemptions:
            self.s.execute(
                "UPDATE jobs SET preempting = TRUE, preempted_for = ?, preempt_time = ? "
                "WHERE id = ? AND status <> 'QUEUED' AND NOT preempting",
                [p.for_job, now, p.victim_id],
            )
            token = self.s.one("SELECT token FROM jobs WHERE id = ?", [p.victim_id])
            self.s.events.record(
                "PREEMPT_JOB", f"id={p.victim_id} for={p.for_job}: {p.reason}"[:500], str(token[0]) if token else ""
            )

    def preempting(self) -> list[Job]:
        """The jobs being preempted (marked by a pass, not yet ended)."""
        return self._select("WHERE preempting")

    # -- lifecycle --------------------------------------------------------------------------------

    def mark_running(self, job_id: int, pid: int, pid_create_time: float) -> None:
        """Record that the job's process started: devices PROCESSING."""
        self.s.execute(
            "UPDATE jobs SET status = 'RUNNING', pid = ?, pid_create_time = ?, start_time = now() WHERE id = ?",
            [pid, pid_create_time, job_id],
        )
        self.s.execute(
            "UPDATE devices SET status = 'PROCESSING' FROM job_devices d "
            "WHERE d.job_id = ? AND devices.backend_id = d.backend_id AND devices.idx = d.device_index "
            "AND devices.status <> 'UNHEALTHY'",
            [job_id],
        )

    def mark_cleaning(self, job_id: int) -> None:
        """The job's process has ended: its devices are being cleaned."""
        self.s.execute(
            "UPDATE devices SET status = 'CLEANING' FROM job_devices d "
            "WHERE d.job_id = ? AND devices.backend_id = d.backend_id AND devices.idx = d.device_index "
            "AND devices.status <> 'UNHEALTHY'",
            [job_id],
        )

    def finish(
        self,
        job_id: int,
        exit_code: int | None,
        reason: str,
        detail: str = "",
        *,
        halflife: float = DEFAULT_HALFLIFE_S,
        now: float | None = None,
    ) -> HistoryEntry | None:
        """Move the job to history, free its devices (IDLE) and record their usage; None if already gone.

        A job someone asked to stop ends as ``released`` whatever its command did on the way out, with the
        release's detail (who asked) unless ``detail`` says more; a job being preempted ends as ``preempted``.
        The device-seconds it held are added to its user group's fair-share usage (decayed with ``halflife``).
        """
        if reason not in END_REASONS:
            raise InvalidValueError(f"Unknown end reason '{reason}'.")
        job = self.find(job_id)
        if job is None:
            return None
        if job.release_requested and reason in ("failed", "finished", "lost"):
            reason = self.s.guardian.release_reason(job_id) or "released"  # "idle": the GPU guardian reclaimed it
        if job.release_requested and not detail:
            detail = job.release_detail
        elif job.preempting and reason in ("failed", "finished", "lost", "preempted"):
            reason = "preempted"
            if not detail:
                detail = f"preempted for job {job.preempted_for}" if job.preempted_for is not None else "preempted"
        elif reason == "timeout" and not detail and job.time_limit is not None:
            detail = f"it reached its time limit ({format_duration(job.time_limit)})"
        devices = json.dumps([{"host": d.backend_host, "backend_id": d.backend_id, "index": d.index} for d in job.devices])
        self.s.execute(
            f"INSERT INTO job_history ({HISTORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?, ?, ?, ?)",
            [
                job.id, job.token, job.sda_id, job.priority, job.host, job.pid, job.process_name, job.client_version,
                job.device_count, devices, job.request_time, job.start_time, exit_code, reason, detail, job.time_limit,
            ],
        )
        held_since = job.submit_time or job.start_time
        if job.fairshare_group is not None and held_since is not None and job.devices:
            at = time.time() if now is None else now
            used = len(job.devices) * max(0.0, at - held_since.timestamp())
            self.s.fairshare.accrue(job.fairshare_group, used, at, halflife)
        if job.start_time is not None:
            self.s.execute(
                "INSERT INTO device_usage SELECT ?, ?, backend_id, device_index, ?, now() FROM job_devices "
                "WHERE job_id = ?",
                [job.id, job.token, job.start_time, job.id],
            )
        self.s.execute(
            "UPDATE devices SET status = 'IDLE' FROM job_devices d "
            "WHERE d.job_id = ? AND devices.backend_id = d.backend_id AND devices.idx = d.device_index "
            "AND devices.status IN ('PREPARING', 'PROCESSING', 'CLEANING')",
            [job_id],
        )
        self.s.execute("DELETE FROM job_devices WHERE job_id = ?", [job_id])
        self.s.execute("DELETE FROM job_processes WHERE job_id = ?", [job_id])
        self.s.execute("DELETE FROM jobs WHERE id = ?", [job_id])
        ended = f"id={job_id} reason={reason}" + ("" if exit_code is None else f" exit={exit_code}")
        self.s.events.record("END_JOB", ended, job.token)
        return self.history_entry(job_id)

    def request_release(self, job_id: int, detail: str = "") -> Job:
        """Flag a job for release, saying who asked (``detail``); a QUEUED job leaves the queue at once."""
        job = self.get(job_id)
        if not job.release_requested:
            self.s.execute(
                "UPDATE jobs SET release_requested = TRUE, release_detail = ? WHERE id = ?", [detail, job_id]
            )
        self.s.events.record("RELEASE_JOB", f"id={job_id} status={job.status}", job.token)
        if job.status == "QUEUED":
            self.finish(job_id, None, "released", detail)
        return job

    def update_priority(self, job_id: int, priority: int) -> None:
        """Change a QUEUED job's priority (-99..99)."""
        job = self.get(job_id)
        check_priority(priority)
        if job.status != "QUEUED":
            raise ConflictError(f"Job {job_id} is {job.status}; only a QUEUED job's priority can change.")
        self.s.execute("UPDATE jobs SET priority = ? WHERE id = ?", [priority, job_id])
        self.s.events.record("UPDATE_JOB_PRIORITY", f"id={job_id} priority={priority}", job.token)

    def record_processes(self, job_id: int, processes: Sequence[tuple[int, str, int, int | None, int | None]]) -> None:
        """Replace the sampled processes of a job: (pid, name, memory MiB, backend id, device index)."""
        self.s.execute("DELETE FROM job_processes WHERE job_id = ?", [job_id])
        if processes:
            self.s.executemany(
                "INSERT INTO job_processes VALUES (?, ?, ?, ?, ?, ?)", [[job_id, *p] for p in processes]
            )

    # -- history and usage ------------------------------------------------------------------------

    def history(self, count: int | None = None, token: str | None = None) -> list[HistoryEntry]:
        """Return ended jobs, newest last (the newest ``count`` when given)."""
        where, params = ("WHERE token = ?", [token]) if token is not None else ("", [])
        if token is not None:
            self.s.tokens.get(token)
        limit = f" LIMIT {int(count)}" if count is not None else ""
        rows = self.s.all(f"SELECT {HISTORY_COLUMNS} FROM job_history {where} ORDER BY end_time DESC, id DESC{limit}", params)
        return [HistoryEntry(*row) for row in reversed(rows)]

    def history_entry(self, job_id: int) -> HistoryEntry | None:
        """Return one ended job."""
        row = self.s.one(f"SELECT {HISTORY_COLUMNS} FROM job_history WHERE id = ?", [job_id])
        return HistoryEntry(*row) if row else None

    def usage(self, begin: datetime, end: datetime, token: str | None = None) -> list[TokenUsage]:
        """Device-seconds per token inside [begin, end], counting running jobs up to now."""
        if end <= begin:
            raise InvalidValueError("The end of the period must come after its beginning.")
        if token is not None:
            self.s.tokens.get(token)
        sql = """
            WITH spans AS ({spans}), clipped AS (
                SELECT token, job_id, greatest(start_time, ?) AS s, least(end_time, ?) AS e FROM spans
            )
            SELECT c.token, coalesce(t.description, ''), sum(epoch(e) - epoch(s)), count(DISTINCT job_id)
            FROM clipped c LEFT JOIN tokens t ON t.value = c.token
            WHERE e > s {filter}
            GROUP BY c.token, t.description ORDER BY 3 DESC, 1
        """.replace("{filter}", "AND c.token = ?" if token is not None else "").replace("{spans}", USAGE_SPANS_SQL)
        params: list[Any] = [begin, end] + ([token] if token is not None else [])
        return [TokenUsage(t, d, float(sec), int(n)) for t, d, sec, n in self.s.all(sql, params)]
