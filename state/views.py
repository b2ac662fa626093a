"""Read models: queries shaped for one screen or endpoint rather than for an entity's repository.

``moreh-smi`` pays for each query at every start, the dashboard polls once a second, and the API's
signal and metrics endpoints read whole sample histories: each gets the query it needs here, as
plain named tuples. The services (``moreh_tools.services``) turn these rows into what the tools show.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from state.session import Session


class TokenOverview(NamedTuple):
    """A token's current SDA, its max SDA, and the worker version marked latest."""

    current_sda: int | None
    max_sda: int
    latest_version: str


class JobBrief(NamedTuple):
    """What a status view shows of one queued or running job."""

    id: int
    sda_id: int
    status: str
    host: str
    pid: int | None
    launcher_pid: int | None
    process_name: str


class SdaRow(NamedTuple):
    """One SDA of a token with its model and model group names."""

    id: int
    reserved: bool
    model_name: str | None
    model_devices: int | None
    group_name: str | None


class GpuRow(NamedTuple):
    """One GPU behind an SDA (reserved by it or held by its job), with its last sampled figures."""

    sda_id: int
    backend_id: int
    host: str
    idx: int
    name: str
    memory_total_mib: int | None
    memory_used_mib: int | None
    util_gpu: int | None
    util_mem: int | None
    temp_gpu: int | None
    temp_mem: int | None


class ProcessRow(NamedTuple):
    """One sampled process of a job: its GPU memory summed over the job's devices."""

    job_id: int
    pid: int
    name: str
    memory_mib: int


class GridRow(NamedTuple):
    """One device of the admin grid with the job holding it."""

    backend_id: int
    idx: int
    status: str
    name: str | None
    memory_used_mib: int | None
    memory_total_mib: int | None
    util_gpu: int | None
    job_id: int | None


class BackendRow(NamedTuple):
    """One backend of the admin grid."""

    id: int
    host: str
    status: str
    group: str


class DeviceMetric(NamedTuple):
    """The latest figures of one device, for ``/metrics``."""

    host: str
    ip: str
    idx: int
    name: str | None
    temp_gpu: int | None
    temp_mem: int | None
    util_gpu: int | None
    util_mem: int | None
    memory_used_mib: int | None
    memory_total_mib: int | None


class NodeRow(NamedTuple):
    """A backend as a metrics source, with its IPMI address."""

    id: int
    host: str
    ip: str
    ipmi_ip: str | None


class SampleRow(NamedTuple):
    """One entry of the sample history."""

    t: float
    backend_id: int
    idx: int
    memory_used_mib: int | None
    util_gpu: int | None
    util_mem: int | None
    temp_gpu: int | None
    temp_mem: int | None


# -- moreh-smi ----------------------------------------------------------------------------------------------


def token_overview(s: Session, token: str) -> TokenOverview | None:
    """The token's current SDA and max SDA, and the latest worker version; None for an unknown token."""
    row = s.one(
        "SELECT current_sda, max_sda, (SELECT version FROM versions WHERE latest LIMIT 1) FROM tokens WHERE value = ?",
        [token],
    )
    return TokenOverview(row[0], int(row[1]), row[2] or "") if row is not None else None


def token_jobs(s: Session, token: str) -> list[JobBrief]:
    """The token's queued and running jobs, by id."""
    return [
        JobBrief(*row)
        for row in s.all(
            "SELECT id, sda_id, status, host, pid, launcher_pid, process_name FROM jobs WHERE token = ? ORDER BY id",
            [token],
        )
    ]


def token_sdas(s: Session, token: str) -> list[SdaRow]:
    """The token's SDAs with their model and model group names, by id."""
    return [
        SdaRow(*row)
        for row in s.all(
            "SELECT s.id, s.reserved, m.name, m.devices, g.name FROM sdas s "
            "LEFT JOIN sda_models m ON m.id = s.model_id LEFT JOIN model_groups g ON g.id = s.model_group_id "
            "WHERE s.token = ? ORDER BY s.id",
            [token],
        )
    ]


def token_gpus(s: Session, token: str) -> list[GpuRow]:
    """The GPUs behind each of the token's SDAs (reserved, or held by its jobs), each once, in device order."""
    rows = s.all(
        "SELECT x.sda_id, d.backend_id, b.host, d.idx, coalesce(d.name, ''), d.memory_total_mib, d.memory_used_mib, "
        "d.util_gpu, d.util_mem, d.temp_gpu, d.temp_mem FROM ("
        "SELECT sda_id, backend_id, device_index FROM sda_reservations UNION ALL "
        "SELECT j.sda_id, jd.backend_id, jd.device_index FROM job_devices jd JOIN jobs j ON j.id = jd.job_id"
        ") x JOIN sdas s ON s.id = x.sda_id JOIN devices d ON d.backend_id = x.backend_id AND d.idx = x.device_index "
        "JOIN backends b ON b.id = d.backend_id WHERE s.token = ? ORDER BY 1, 2, 4",
        [token],
    )
    # UNION ALL is cheaper than UNION; a reserved device that a job holds comes twice and is kept once.
    unique = {(r[0], r[1], r[3]): GpuRow(*r) for r in rows}
    return list(unique.values())


def job_process_totals(s: Session, job_ids: Sequence[int]) -> list[ProcessRow]:
    """The sampled processes of ``job_ids``, one row per (job, pid) with its memory summed over devices."""
    if not job_ids:
        return []
    rows = s.all(
        f"SELECT job_id, pid, any_value(name), sum(memory_mib) FROM job_processes "
        f"WHERE job_id IN ({', '.join('?' for _ in job_ids)}) GROUP BY job_id, pid ORDER BY job_id, pid",
        list(job_ids),
    )
    return [ProcessRow(int(j), int(p), str(n), int(m)) for j, p, n, m in rows]


def samples_stale(s: Session, token: str, host: str, max_age_s: float) -> bool:
    """Whether the token has a job holding GPUs on ``host`` whose figures are missing or older than ``max_age_s``."""
    row = s.one(
        "SELECT count(*), count(d.sampled_at), "
        "coalesce(max(epoch(now()::TIMESTAMP) - epoch(d.sampled_at)), 0) "
        "FROM jobs j JOIN job_devices jd ON jd.job_id = j.id "
        "JOIN devices d ON d.backend_id = jd.backend_id AND d.idx = jd.device_index "
        "WHERE j.token = ? AND j.host = ? AND j.status IN ('SUBMITTED', 'RUNNING')",
        [token, host],
    )
    if row is None or not row[0]:
        return False
    return bool(row[1] != row[0] or float(row[2]) > max_age_s)


# -- the dashboard -------------------------------------------------------------------------------------------

_FINGERPRINT_SQL = """
SELECT now()::TIMESTAMP,
    (SELECT coalesce(max(id), 0) FROM events),
    (SELECT count(*) || ':' || coalesce(sum(hash(id, status, priority, pid)), 0) FROM jobs),
    (SELECT count(*) || ':' || coalesce(sum(hash(job_id, pid, memory_mib)), 0) FROM job_processes),
    (SELECT count(*) || ':' || coalesce(sum(hash(backend_id, idx, status)), 0) FROM devices),
    (SELECT max(sampled_at) FROM devices)
"""


def fingerprint(s: Session) -> tuple[datetime, tuple[Any, ...], Any]:
    """(the state's clock, what changes with any state change, what changes with each GPU sample)."""
    row = s.one(_FINGERPRINT_SQL)
    assert row is not None
    # Not every change writes an event (a job starting to run, samples), hence the hashes.
    return row[0], tuple(row[1:5]), row[5]


def grid(s: Session) -> tuple[list[BackendRow], list[GridRow]]:
    """Every backend, and every device with its status, last figures and the job holding it."""
    devices = [
        GridRow(*row)
        for row in s.all(
            "SELECT d.backend_id, d.idx, d.status, d.name, d.memory_used_mib, d.memory_total_mib, d.util_gpu, "
            "jd.job_id FROM devices d LEFT JOIN job_devices jd ON jd.backend_id = d.backend_id "
            "AND jd.device_index = d.idx ORDER BY 1, 2"
        )
    ]
    backends = [
        BackendRow(int(bid), str(host), str(status), str(group))
        for bid, host, status, group in s.all(
            "SELECT b.id, b.host, b.status, coalesce(g.name, '') FROM backends b "
            "LEFT JOIN backend_groups g ON g.id = b.group_id ORDER BY b.id"
        )
    ]
    return backends, devices


# -- the REST API's hardware views --------------------------------------------------------------------------


def device_metrics(s: Session) -> list[DeviceMetric]:
    """The latest figures of every device, by backend then index."""
    return [
        DeviceMetric(*row)
        for row in s.all(
            "SELECT b.host, b.ip, d.idx, d.name, d.temp_gpu, d.temp_mem, d.util_gpu, d.util_mem, "
            "d.memory_used_mib, d.memory_total_mib FROM devices d "
            "JOIN backends b ON b.id = d.backend_id ORDER BY b.id, d.idx"
        )
    ]


def nodes(s: Session) -> list[NodeRow]:
    """Every backend with its IPMI address."""
    rows = s.all(
        "SELECT b.id, b.host, b.ip, i.ip FROM backends b LEFT JOIN backend_ipmi i ON i.backend_id = b.id ORDER BY b.id"
    )
    return [NodeRow(int(r[0]), str(r[1]), str(r[2]), r[3]) for r in rows]


def sample_history(s: Session, backend_ids: Sequence[int], since: float) -> list[SampleRow]:
    """The samples of ``backend_ids`` since ``since`` (each device's latest one at least), by device and time."""
    if not backend_ids:
        return []
    marks = ", ".join("?" for _ in backend_ids)
    rows = s.all(
        f"""
        WITH latest AS (
            SELECT backend_id, idx, max(t) AS t FROM device_samples WHERE backend_id IN ({marks}) GROUP BY 1, 2
        )
        SELECT d.t, d.backend_id, d.idx, d.memory_used_mib, d.util_gpu, d.util_mem, d.temp_gpu, d.temp_mem
        FROM device_samples d JOIN latest l ON l.backend_id = d.backend_id AND l.idx = d.idx
        WHERE d.t >= least(?, l.t)
        ORDER BY d.backend_id, d.idx, d.t
        """,
        [*backend_ids, since],
    )
    return [SampleRow(*row) for row in rows]


def device_names(s: Session) -> dict[tuple[int, int], str | None]:
    """(backend id, index) -> the device's name."""
    return {(int(r[0]), int(r[1])): r[2] for r in s.all("SELECT backend_id, idx, name FROM devices")}
