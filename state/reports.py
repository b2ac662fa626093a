"""Read-only views the REST API needs: history search, device-time spans for usage, jobs' sampled processes."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from state.records import HistoryEntry

if TYPE_CHECKING:
    from state.session import Session

# One row per device a job held: ended jobs from device_usage, running ones up to now. JobRepository.usage
# sums these; the API also needs them one by one to find the peak number of devices in use.
USAGE_SPANS_SQL = """
    SELECT token, job_id, backend_id, device_index, start_time, end_time FROM device_usage
    UNION ALL
    SELECT j.token, j.id, d.backend_id, d.device_index, j.start_time, now()::TIMESTAMP
    FROM jobs j JOIN job_devices d ON d.job_id = j.id
    WHERE j.start_time IS NOT NULL
"""

HISTORY_COLUMNS = (
    "id, token, sda_id, priority, host, pid, process_name, client_version, device_count, devices, request_time, "
    "start_time, end_time, exit_code, end_reason, end_detail, time_limit"
)


@dataclass(frozen=True)
class HistoryQuery:
    """Filters for ended jobs; every one left as None matches everything."""

    job_id: int | None = None
    token: str | None = None  # exact token value
    token_contains: str | None = None
    end_reasons: Collection[str] | None = None
    start_from: datetime | None = None
    start_to: datetime | None = None
    end_from: datetime | None = None
    end_to: datetime | None = None
    offset: int = 0
    limit: int = 500


def search_history(s: Session, query: HistoryQuery) -> tuple[list[HistoryEntry], int]:
    """Return one page of the ended jobs matching ``query``, newest end first, and how many match in all."""
    where: list[str] = []
    params: list[Any] = []
    for clause, value in (
        ("id = ?", query.job_id),
        ("token = ?", query.token),
        ("contains(token, ?)", query.token_contains),
        ("start_time >= ?", query.start_from),
        ("start_time <= ?", query.start_to),
        ("end_time >= ?", query.end_from),
        ("end_time <= ?", query.end_to),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    if query.end_reasons is not None:
        reasons = sorted(query.end_reasons)
        if not reasons:
            return [], 0
        where.append(f"end_reason IN ({','.join('?' * len(reasons))})")
        params.extend(reasons)
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    total = s.one(f"SELECT count(*) FROM job_history {condition}", params)
    rows = s.all(
        f"SELECT {HISTORY_COLUMNS} FROM job_history {condition} ORDER BY end_time DESC, id DESC LIMIT ? OFFSET ?",
        [*params, max(query.limit, 0), max(query.offset, 0)],
    )
    return [HistoryEntry(*row) for row in rows], int(total[0]) if total else 0


@dataclass(frozen=True)
class UsageSpan:
    """One device held by one job, clipped to the period asked about."""

    token: str
    job_id: int
    start: datetime
    end: datetime


def usage_spans(s: Session, begin: datetime, end: datetime, token: str | None = None) -> list[UsageSpan]:
    """Every device-holding span that overlaps [begin, end], clipped to it (running jobs count up to now)."""
    sql = f"""
        WITH spans AS ({USAGE_SPANS_SQL})
        SELECT token, job_id, greatest(start_time, ?) AS s, least(end_time, ?) AS e FROM spans
        WHERE least(end_time, ?) > greatest(start_time, ?) {"AND token = ?" if token is not None else ""}
        ORDER BY s
    """
    params: list[Any] = [begin, end, end, begin] + ([token] if token is not None else [])
    return [UsageSpan(t, int(j), start, stop) for t, j, start, stop in s.all(sql, params)]


def device_total(s: Session) -> int:
    """How many devices the registered backends have."""
    row = s.one("SELECT count(*) FROM devices")
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class JobProcess:
    """One process the daemon sampled on a job's devices."""

    job_id: int
    pid: int
    name: str
    memory_mib: int
    backend_id: int | None
    device_index: int | None


def job_processes(s: Session, job_ids: Collection[int]) -> list[JobProcess]:
    """The last sampled processes of ``job_ids``, by job then pid."""
    if not job_ids:
        return []
    ids = sorted(int(i) for i in job_ids)
    rows = s.all(
        "SELECT job_id, pid, name, memory_mib, backend_id, device_index FROM job_processes "
        f"WHERE job_id IN ({','.join('?' * len(ids))}) ORDER BY job_id, pid, backend_id, device_index",
        ids,
    )
    return [JobProcess(int(j), int(p), str(n), int(m), b, d) for j, p, n, m, b, d in rows]
