"""Scheduler endpoints (part A.2, 44-47): the job queue in scheduling order, priorities, release, history.

A USER sees and changes only its own token's jobs; another token's job answers 601 exactly as a missing one does.
ADMIN and DEVELOPER see the whole queue (DEVELOPER with other tokens' values redacted).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import ApiCaller, CallerDep
from moreh_tools.api.errors import NOT_FOUND, SYNTAX, ApiError
from moreh_tools.api.params import param
from moreh_tools.api.read_cache import cached_answer
from moreh_tools.api.views import TokenViews, history_info, job_info, service_context, store_of, success
from state.records import Job
from state.reports import HistoryQuery, search_history

router = APIRouter(tags=["Scheduler"])

MAX_HISTORY_LIMIT = 10_000
# The document's status words (and this project's end reasons) → job_history.end_reason values.
HISTORY_STATUSES = {
    "completed": ("finished",),
    "finished": ("finished",),
    "failed": ("failed", "lost"),
    "lost": ("lost",),
    "canceled": ("released", "idle"),
    "cancelled": ("released", "idle"),
    "released": ("released",),
    "timeout": ("timeout",),
    "preempted": ("preempted",),
    "idle": ("idle",),
}
QUEUE_STATUSES = {"running": ("SUBMITTED", "RUNNING"), "waiting": ("QUEUED",)}


def _missing_job(job_id: int) -> ApiError:
    return ApiError(NOT_FOUND, f"Job {job_id} is not in the queue; list the queue with GET /api/scheduler/queue.", 404)


def _own_job(caller: ApiCaller, job: Job | None, job_id: int) -> Job:
    """The job if the caller may change it; otherwise the same 601 a missing job gets."""
    if job is None or not (caller.is_admin or caller.owns(job.token)):
        raise _missing_job(job_id)
    return job


@router.get("/api/scheduler/queue", summary="Jobs in the queue, running ones first, then waiting in scheduling order")
def get_queue(request: Request, caller: CallerDep) -> Any:
    """Running jobs (oldest first), then waiting ones in the order the scheduler will serve them.

    ``status`` (running | waiting) and ``id`` filter; a USER sees only its own token's jobs. A waiting job also
    carries ``reasonCode``, ``reason`` and ``expectedStart`` (ISO 8601 with the UTC offset, or null).
    """
    from moreh_tools.services.scheduling import queue_info

    status = param(request, "status", required=False)
    job_id = param(request, "id", int, required=False)
    wanted: tuple[str, ...] | None = None
    if status:
        wanted = QUEUE_STATUSES.get(status.strip().lower())
        if wanted is None:
            raise ApiError(SYNTAX, f"SyntaxError. Parameter 'status' must be running or waiting, got '{status[:40]}'.")

    def compute() -> list[dict[str, Any]]:
        with store_of(request).reading() as s:
            jobs = s.jobs.all() if caller.reads_all else s.jobs.of_token(caller.token)
            jobs = [j for j in jobs if (wanted is None or j.status in wanted) and (job_id is None or j.id == job_id)]
            info = queue_info(s) if any(j.status == "QUEUED" for j in jobs) else {}
            positions = {job: i.position or 0 for job, i in info.items()}
            jobs.sort(key=lambda j: (j.status == "QUEUED", positions.get(j.id, 0), j.id))
            views = TokenViews(s, caller, {j.token for j in jobs})
            shown = []
            for j in jobs:
                found = info.get(j.id)
                item = job_info(j, views, found.position if found else None)
                if j.status == "QUEUED":
                    item.update(
                        reasonCode=found.reason_code if found else None,
                        reason=found.reason if found else None,
                        expectedStart=found.expected_iso if found else None,
                    )
                shown.append(item)
            return shown

    return cached_answer(request, caller, compute)


@router.put("/api/scheduler/queue", summary="Change a waiting job's priority (reorders the queue)")
def update_queue_priority(request: Request, caller: CallerDep) -> Any:
    """Set waiting job ``id``'s priority (-99..99) and run a scheduling pass, as ``update job priority`` does.

    A USER may re-rank its own jobs, up to its token's priority.
    """
    from moreh_tools.services import jobs

    job_id = param(request, "id", int)
    priority = param(request, "priority", int)
    jobs.set_priority(service_context(request, caller), job_id=job_id, priority=priority)
    return success()


@router.delete("/api/scheduler/queue", summary="Release (cancel) a job")
def delete_queue_job(request: Request, caller: CallerDep) -> Any:
    """Release job ``id``: a waiting one leaves the queue; a running one is stopped (SIGTERM, then SIGKILL).

    ``isWeb`` is accepted and has no effect. The answer comes once the job's processes on this host are gone.
    """
    from moreh_tools.services import jobs

    job_id = param(request, "id", int)
    param(request, "isWeb", bool, required=False, default=False)
    with store_of(request).reading() as s:
        job = s.jobs.find(job_id)
        if job is None:
            ended = s.jobs.history_entry(job_id)
            if ended is not None and (caller.is_admin or caller.owns(ended.token)):
                raise ApiError(
                    NOT_FOUND, f"Job {job_id} has already ended; see GET /api/scheduler/history?id={job_id}.", 404
                )
        _own_job(caller, job, job_id)
    who = "an admin" if caller.is_admin else "its user"
    jobs.release(service_context(request, caller), job_ids=[job_id], detail=f"released by {who} (API)")
    return success()


def _time_param(name: str, raw: str | None) -> datetime | None:
    if raw is None or not raw.strip():
        return None
    text = raw.strip().replace("T", " ")
    for form in ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, form)
        except ValueError:
            continue
    raise ApiError(SYNTAX, f"SyntaxError. Parameter '{name}' must be a time like 2024-01-31 09:30, got '{raw[:40]}'.")


@router.get("/api/scheduler/history", summary="Ended jobs, newest first, filtered and paged")
def get_history(request: Request, caller: CallerDep) -> Any:
    """Ended jobs matching every filter given; ``{"jobs": [JobInfo], "totalCount": N}`` (N before paging).

    Times are ``YYYY-MM-DD HH:mm`` (local); ``status`` is a comma list of completed, failed, canceled;
    ``token`` matches part of the token value (ADMIN) or all of it (others). A USER sees only its own jobs.
    """
    start_from = _time_param("starttimeFrom", param(request, "starttimeFrom", required=False))
    start_to = _time_param("starttimeTo", param(request, "starttimeTo", required=False))
    end_from = _time_param("endtimeFrom", param(request, "endtimeFrom", required=False))
    end_to = _time_param("endtimeTo", param(request, "endtimeTo", required=False))
    status = param(request, "status", required=False)
    token = param(request, "token", required=False)
    offset = param(request, "offset", int, required=False, default=0)
    limit = param(request, "limit", int, required=False, default=500)
    job_id = param(request, "id", int, required=False)
    if offset < 0:
        raise ApiError(SYNTAX, f"SyntaxError. Parameter 'offset' must be 0 or more, got {offset}.")
    if not 0 <= limit <= MAX_HISTORY_LIMIT:
        raise ApiError(SYNTAX, f"SyntaxError. Parameter 'limit' must be 0 to {MAX_HISTORY_LIMIT}, got {limit}.")
    reasons: set[str] | None = None
    if status is not None and status.strip():
        reasons = set()
        for word in (w.strip().lower() for w in status.split(",")):
            if not word:
                continue
            if word not in HISTORY_STATUSES:
                raise ApiError(
                    SYNTAX,
                    f"SyntaxError. Parameter 'status' holds '{word[:40]}'; use a comma list of completed, failed, "
                    "canceled.",
                )
            reasons.update(HISTORY_STATUSES[word])
    # Only an ADMIN may match part of a token value: for anyone else a substring filter would be an oracle that
    # spells out other tokens' values letter by letter, so theirs must match whole.
    exact = None if caller.reads_all else caller.token
    if token and not caller.is_admin:
        if exact is not None and token != exact:
            return {"jobs": [], "totalCount": 0}
        exact = token
    query = HistoryQuery(
        job_id=job_id,
        token=exact,
        token_contains=(token or None) if caller.is_admin else None,
        end_reasons=reasons,
        start_from=start_from,
        start_to=start_to,
        end_from=end_from,
        end_to=end_to,
        offset=offset,
        limit=limit,
    )
    with store_of(request).reading() as s:
        entries, total = search_history(s, query)
        views = TokenViews(s, caller, {e.token for e in entries})
        return {"jobs": [history_info(e, views) for e in entries], "totalCount": total}
