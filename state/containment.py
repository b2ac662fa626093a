"""Which containment holds each job's processes, as its launcher reported it (``moreh-smi -p`` shows it).

One line per job, e.g. ``cgroup v2 + v1 (devices, freezer, pids) /moreh/s-1a2b/job-12, GPU devices:
nvidia0 only`` or ``none (cgroup not writable: process group and MOREH_JOB_ID scan)``; kept after the
job ends, for its history.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from state.session import Session

MAX_TEXT = 300


def record(s: Session, job_id: int, description: str) -> None:
    """Remember how job ``job_id`` is contained (a repeated report replaces the first)."""
    text = description.replace("\n", " ")[:MAX_TEXT]
    s.execute("DELETE FROM job_containment WHERE job_id = ?", [job_id])
    s.execute("INSERT INTO job_containment (job_id, description) VALUES (?, ?)", [job_id, text])


def of_jobs(s: Session, job_ids: Collection[int]) -> dict[int, str]:
    """Job id -> containment line, for the jobs among ``job_ids`` whose launcher reported one."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    rows = s.all(f"SELECT job_id, description FROM job_containment WHERE job_id IN ({marks})", wanted)
    return {int(job_id): str(text) for job_id, text in rows}


def live_job_ids(s: Session) -> set[int]:
    """The ids of every job still in the queue (queued, allocated or running): their groups must stay."""
    return {int(row[0]) for row in s.all("SELECT id FROM jobs")}
