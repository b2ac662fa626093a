"""The state's invariants, checked from outside: what must hold after any sequence of commits.

``violations(session)`` lists every broken rule as a sentence (empty when the state is sound);
``check(store)`` opens the state, runs them and fails the calling test with the list. The crash,
soak and fuzz tests use it; it reads the tables directly so a bug in a repository cannot hide
a bug in the same repository's rows.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from state.session import Session
    from state.store import StateStore

HELD_STATUSES = ("PREPARING", "PROCESSING", "CLEANING")
_EVENT_JOB_ID = re.compile(r"(?:^|\s)id=(\d+)(?:\s|$)")


def _ids(session: Session, sql: str) -> list[int]:
    return [int(r[0]) for r in session.all(sql)]


def _event_job_ids(session: Session, action: str) -> Counter[int]:
    found: Counter[int] = Counter()
    for (detail,) in session.all("SELECT detail FROM events WHERE action = ?", [action]):
        match = _EVENT_JOB_ID.search(detail)
        if match:
            found[int(match[1])] += 1
    return found


def violations(session: Session, *, manual_device_status: bool = False, check_events: bool = True) -> list[str]:
    """Every invariant the state breaks, one sentence each.

    ``manual_device_status``: an admin may set any device status by hand (``update device all 1
    PROCESSING``), so a held-looking device without a job is only a fault where no one did that.
    ``check_events``: jobs written straight into the tables by a test have no events.
    """
    found: list[str] = []
    s = session

    # One device, one job: the primary key says so; a rebuilt table without it would not.
    for backend_id, index, n in s.all(
        "SELECT backend_id, device_index, count(*) FROM job_devices GROUP BY 1, 2 HAVING count(*) > 1"
    ):
        found.append(f"device {backend_id}:{index} is held by {n} jobs")
    for job_id, backend_id, index in s.all(
        "SELECT d.job_id, d.backend_id, d.device_index FROM job_devices d "
        "WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = d.job_id)"
    ):
        found.append(f"device {backend_id}:{index} is held by job {job_id}, which is gone")
    for job_id, backend_id, index in s.all(
        "SELECT d.job_id, d.backend_id, d.device_index FROM job_devices d "
        "WHERE NOT EXISTS (SELECT 1 FROM devices v WHERE v.backend_id = d.backend_id AND v.idx = d.device_index)"
    ):
        found.append(f"job {job_id} holds device {backend_id}:{index}, which does not exist")

    # A held device is PREPARING/PROCESSING/CLEANING, and only a held device is.
    for backend_id, index, status, job_id in s.all(
        "SELECT v.backend_id, v.idx, v.status, d.job_id FROM devices v JOIN job_devices d "
        "ON d.backend_id = v.backend_id AND d.device_index = v.idx WHERE v.status NOT IN (?, ?, ?)",
        list(HELD_STATUSES),
    ):
        found.append(f"device {backend_id}:{index} is held by job {job_id} but {status}")
    if not manual_device_status:
        for backend_id, index, status in s.all(
            "SELECT v.backend_id, v.idx, v.status FROM devices v WHERE v.status IN (?, ?, ?) AND NOT EXISTS "
            "(SELECT 1 FROM job_devices d WHERE d.backend_id = v.backend_id AND d.device_index = v.idx)",
            list(HELD_STATUSES),
        ):
            found.append(f"device {backend_id}:{index} is {status} without a live job")

    # A job's devices match its state: none while queued, exactly its count once allocated.
    for job_id, status, wanted, held in s.all(
        "SELECT j.id, j.status, j.device_count, (SELECT count(*) FROM job_devices d WHERE d.job_id = j.id) "
        "FROM jobs j"
    ):
        if status == "QUEUED" and held:
            found.append(f"queued job {job_id} holds {held} device(s)")
        elif status in ("SUBMITTED", "RUNNING") and held != wanted:
            found.append(f"{status} job {job_id} holds {held} device(s), not {wanted}")
        elif status not in ("QUEUED", "SUBMITTED", "RUNNING"):
            found.append(f"job {job_id} has the unknown status {status!r}")
    for job_id, status in s.all("SELECT id, status FROM jobs WHERE status = 'RUNNING' AND start_time IS NULL"):
        found.append(f"job {job_id} is {status} without a start time")

    # A job is either live or ended, never both, and ends once.
    for (job_id,) in s.all("SELECT id FROM job_history GROUP BY id HAVING count(*) > 1"):
        found.append(f"job {job_id} is in the history more than once")
    for (job_id,) in s.all("SELECT j.id FROM jobs j JOIN job_history h ON h.id = j.id"):
        found.append(f"job {job_id} is both in the queue and in the history")
    for (reason,) in s.all(
        "SELECT DISTINCT end_reason FROM job_history WHERE end_reason NOT IN ('finished', 'failed', 'released', 'lost')"
    ):
        found.append(f"a history entry has the unknown end reason {reason!r}")
    for (job_id,) in s.all(
        "SELECT DISTINCT u.job_id FROM device_usage u WHERE NOT EXISTS (SELECT 1 FROM job_history h WHERE h.id = u.job_id)"
    ):
        found.append(f"device usage of job {job_id}, which never ended")
    for (job_id,) in s.all(
        "SELECT DISTINCT p.job_id FROM job_processes p WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = p.job_id)"
    ):
        found.append(f"processes recorded for job {job_id}, which is gone")
    for job_id, sda_id in s.all(
        "SELECT j.id, j.sda_id FROM jobs j WHERE NOT EXISTS (SELECT 1 FROM sdas x WHERE x.id = j.sda_id)"
    ):
        found.append(f"job {job_id} runs on SDA {sda_id}, which does not exist")

    # Reserved SDAs: each device reserved once, by a reserved SDA, and used by no one else's job.
    for backend_id, index, n in s.all(
        "SELECT backend_id, device_index, count(*) FROM sda_reservations GROUP BY 1, 2 HAVING count(*) > 1"
    ):
        found.append(f"device {backend_id}:{index} is reserved {n} times")
    for sda_id, backend_id, index in s.all(
        "SELECT r.sda_id, r.backend_id, r.device_index FROM sda_reservations r "
        "WHERE NOT EXISTS (SELECT 1 FROM sdas x WHERE x.id = r.sda_id AND x.reserved)"
    ):
        found.append(f"device {backend_id}:{index} is reserved for SDA {sda_id}, which is not a reserved SDA")
    for job_id, sda_id, backend_id, index, owner in s.all(
        "SELECT j.id, j.sda_id, d.backend_id, d.device_index, r.sda_id FROM job_devices d JOIN jobs j ON j.id = d.job_id "
        "JOIN sda_reservations r ON r.backend_id = d.backend_id AND r.device_index = d.device_index "
        "WHERE r.sda_id <> j.sda_id"
    ):
        found.append(f"job {job_id} of SDA {sda_id} holds device {backend_id}:{index}, reserved for SDA {owner}")

    # Ids come from sequences: the next one handed out must be above every id already used.
    for table, column in (("events", "id"), ("jobs", "id"), ("job_history", "id")):
        for (dup,) in s.all(f"SELECT {column} FROM {table} GROUP BY 1 HAVING count(*) > 1"):
            found.append(f"{table} id {dup} is used twice")

    if check_events:
        created = _event_job_ids(s, "CREATE_JOB")
        ended = _event_job_ids(s, "END_JOB")
        allocated = _event_job_ids(s, "ALLOCATE_JOB")
        for job_id in _ids(s, "SELECT id FROM jobs"):
            if created[job_id] != 1:
                found.append(f"job {job_id} has {created[job_id]} CREATE_JOB events, not 1")
            if ended[job_id]:
                found.append(f"live job {job_id} has an END_JOB event")
        for job_id in _ids(s, "SELECT id FROM jobs WHERE status <> 'QUEUED'"):
            if allocated[job_id] != 1:
                found.append(f"allocated job {job_id} has {allocated[job_id]} ALLOCATE_JOB events, not 1")
        history = set(_ids(s, "SELECT id FROM job_history"))
        for job_id in history:
            if ended[job_id] != 1:
                found.append(f"ended job {job_id} has {ended[job_id]} END_JOB events, not 1")
        for job_id in set(ended) - history:
            found.append(f"job {job_id} has an END_JOB event but no history entry")
    return found


def check(store: StateStore | None = None, **options: bool) -> None:
    """Assert that the state opens and breaks no invariant (``options``: see :func:`violations`)."""
    from state.store import StateStore

    with (store or StateStore()).reading() as session:
        broken = violations(session, **options)
    assert not broken, "state invariants broken:\n  " + "\n  ".join(broken)
