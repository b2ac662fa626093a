"""The queue as the scheduler reads it: backends and their devices, queued jobs, reservations, order.

Apart from :mod:`state.jobs` so that a read-only view (moreh-smi's "Waiting for" column) can ask
the scheduler without loading the job records: ``moreh-smi`` pays for every import at each start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scheduler_core.scheduling import BackendState, DeviceState, QueuedJob

if TYPE_CHECKING:
    from datetime import datetime

    from state.session import Session


def _epoch(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def scheduling_inputs(s: Session) -> tuple[list[BackendState], list[QueuedJob], dict[int, int], set[tuple[int, int]]]:
    """Snapshot what the scheduler needs: backends, the queue, active jobs per SDA, reserved devices."""
    guarded, failing = s.guardian.scheduler_view()  # the GPU guardian's flags: failed GPUs, foreign processes
    devices: dict[int, list[DeviceState]] = {}
    for backend_id, idx, status in s.all("SELECT backend_id, idx, status FROM devices ORDER BY 1, 2"):
        devices.setdefault(backend_id, []).append(DeviceState(backend_id, idx, guarded.get((backend_id, idx), status)))
    backends = [
        BackendState(
            bid, host, gid, status == "ACTIVE" and not unreachable and bid not in failing, tuple(devices.get(bid, ()))
        )
        for bid, host, gid, status, unreachable in s.all(
            "SELECT id, host, group_id, status, unreachable FROM backends ORDER BY id"
        )
    ]
    reservations: dict[int, list[tuple[int, int]]] = {}
    for sda_id, backend_id, idx in s.all("SELECT sda_id, backend_id, device_index FROM sda_reservations"):
        reservations.setdefault(sda_id, []).append((backend_id, idx))
    queue: list[QueuedJob] = []
    for jid, token, sda_id, priority, request_time, count, local, group, duplicable, limit in s.all(
        "SELECT j.id, j.token, j.sda_id, j.priority, j.request_time, j.device_count, j.backend_id, "
        "coalesce(g.backend_group_id, 0), t.duplicable, j.time_limit "
        "FROM jobs j JOIN sdas s ON s.id = j.sda_id JOIN tokens t ON t.value = j.token "
        "LEFT JOIN model_groups g ON g.id = s.model_group_id WHERE j.status = 'QUEUED'"
    ):
        queue.append(
            QueuedJob(
                id=int(jid),
                token=token,
                sda_id=int(sda_id),
                priority=int(priority),
                request_time=_epoch(request_time),
                device_count=int(count),
                backend_group_id=int(group),
                sda_limit=int(duplicable),
                reserved_devices=tuple(sorted(reservations.get(int(sda_id), ()))),
                allowed_backends=frozenset({local}) if local is not None else frozenset(),
                time_limit=float(limit) if limit is not None else None,
            )
        )
    active = {
        int(sda): int(n)
        for sda, n in s.all("SELECT sda_id, count(*) FROM jobs WHERE status <> 'QUEUED' GROUP BY sda_id")
    }
    reserved = {(b, i) for held in reservations.values() for b, i in held}
    return backends, queue, active, reserved


def queue_positions(s: Session) -> dict[int, int]:
    """The 1-based position of every QUEUED job in scheduling order, by job id."""
    rows = s.all("SELECT id FROM jobs WHERE status = 'QUEUED' ORDER BY priority DESC, request_time, id")
    return {int(job_id): position for position, (job_id,) in enumerate(rows, start=1)}
