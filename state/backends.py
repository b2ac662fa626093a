"""Backends (worker nodes), their devices, and backend groups."""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from state.checks import check_choice, check_name
from state.errors import ConflictError, InvalidValueError, NotFoundError
from state.records import BACKEND_STATUSES, DEVICE_STATUSES, Backend, BackendGroup, Device

if TYPE_CHECKING:
    from state.session import Session

DEFAULT_GROUP_ID = 0
MAX_DEVICES_PER_BACKEND = 1024
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252})$")
SAMPLE_RETENTION_S = 86400.0
_PRUNE_EVERY_S = 60.0
_last_prune = 0.0
_DEVICE_COLUMNS = (
    "backend_id, idx, status, uuid, name, memory_total_mib, memory_used_mib, util_gpu, util_mem, temp_gpu, temp_mem"
)


def check_host(host: str) -> str:
    """Return ``host`` if it is a plausible host name."""
    if not _HOST.match(host):
        raise InvalidValueError(
            f"'{host}' is not a valid host name: use letters, digits, '.', '-' and '_' (at most 253 characters)."
        )
    return host


def check_ip(ip: str) -> str:
    """Return ``ip`` normalised if it is an IPv4 or IPv6 address."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise InvalidValueError(f"'{ip}' is not an IP address: use a form like 192.168.110.1.") from None


class BackendGroupRepository:
    """Groups of backends. Every backend is in exactly one; group 0 always exists."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    def require(self, group_id: int) -> str:
        """Return the group's name or raise NotFoundError."""
        row = self.s.one("SELECT name FROM backend_groups WHERE id = ?", [group_id])
        if row is None:
            raise NotFoundError(f"Backend group {group_id} not found; list them with 'show backendgroup'.")
        return str(row[0])

    def find(self, id_or_name: str) -> int:
        """Return the id of the group named or numbered ``id_or_name``."""
        digits = id_or_name.removeprefix("-")
        if digits.isascii() and digits.isdigit():  # what int() reads; '--5' and '²' are names
            self.require(int(id_or_name))
            return int(id_or_name)
        row = self.s.one("SELECT id FROM backend_groups WHERE name = ?", [id_or_name])
        if row is None:
            raise NotFoundError(f"Backend group '{id_or_name}' not found; list them with 'show backendgroup'.")
        return int(row[0])

    def all(self, group_id: int | None = None) -> list[BackendGroup]:
        """Return every backend group (or just ``group_id``) with its backends."""
        if group_id is not None:
            self.require(group_id)
        members: dict[int, list[tuple[int, str]]] = {}
        for bid, host, gid in self.s.all("SELECT id, host, group_id FROM backends ORDER BY id"):
            members.setdefault(gid, []).append((bid, host))
        return [
            BackendGroup(gid, name, tuple(members.get(gid, ())))
            for gid, name in self.s.all("SELECT id, name FROM backend_groups ORDER BY id")
            if group_id is None or gid == group_id
        ]

    def _check_unique_name(self, name: str, except_id: int | None = None) -> None:
        row = self.s.one("SELECT id FROM backend_groups WHERE name = ?", [name])
        if row is not None and row[0] != except_id:
            raise ConflictError(f"A backend group named '{name}' already exists (id {row[0]}); pick another name.")

    def _not_default(self, group_id: int, doing: str) -> None:
        if group_id == DEFAULT_GROUP_ID:
            raise ConflictError(f"The default backend group 0 cannot be {doing}.")

    def _check_movable(self, group_id: int, backend_ids: Sequence[int]) -> None:
        if len(set(backend_ids)) != len(backend_ids):
            raise ConflictError("The backend list names the same backend twice; list each once.")
        for backend_id in backend_ids:
            current = self.s.backends.get(backend_id).group_id
            if current not in (DEFAULT_GROUP_ID, group_id):
                raise ConflictError(
                    f"Backend {backend_id} belongs to backend group {current}; a backend is in one group only, "
                    f"so remove it there first ('remove backendgroup {current} {backend_id}')."
                )

    def _move(self, backend_ids: Sequence[int], group_id: int) -> None:
        for backend_id in backend_ids:
            self.s.execute("UPDATE backends SET group_id = ? WHERE id = ?", [group_id, backend_id])

    def create(self, name: str, backend_ids: Sequence[int] = ()) -> int:
        """Create a group, moving the listed backends (all from the default group) into it."""
        check_name(name, "backend group name")
        self._check_unique_name(name)
        self._check_movable(-1, list(backend_ids))
        row = self.s.one("SELECT nextval('seq_backendgroup')")
        assert row is not None
        group_id = int(row[0])
        self.s.execute("INSERT INTO backend_groups VALUES (?, ?)", [group_id, name])
        self._move(backend_ids, group_id)
        self.s.events.record("CREATE_BACKENDGROUP", f"id={group_id} name={name} backends={list(backend_ids)}")
        return group_id

    def delete(self, group_id: int, force: bool = False) -> None:
        """Delete a group; its backends and SDA model groups fall back to the default group."""
        self._not_default(group_id, "deleted")
        self.require(group_id)
        members = self.s.all("SELECT id FROM backends WHERE group_id = ?", [group_id])
        if members and not force:
            raise ConflictError(
                f"Backend group {group_id} still has {len(members)} backend(s); empty it first or add 'true' "
                "to force the delete."
            )
        self._move([m[0] for m in members], DEFAULT_GROUP_ID)
        self.s.execute(
            "UPDATE model_groups SET backend_group_id = ? WHERE backend_group_id = ?",
            [DEFAULT_GROUP_ID, group_id],
        )
        self.s.quotas.forget_backend_group(group_id)
        self.s.execute("DELETE FROM backend_groups WHERE id = ?", [group_id])
        self.s.events.record("DELETE_BACKENDGROUP", f"id={group_id} force={force}")

    def rename(self, group_id: int, name: str) -> None:
        """Change the group's name (not the default group's: scripts rely on it)."""
        self._not_default(group_id, "renamed")
        self.require(group_id)
        check_name(name, "backend group name")
        self._check_unique_name(name, group_id)
        self.s.execute("UPDATE backend_groups SET name = ? WHERE id = ?", [name, group_id])
        self.s.events.record("UPDATE_BACKENDGROUP", f"id={group_id} name={name}")

    def replace_members(self, group_id: int, backend_ids: Sequence[int]) -> None:
        """Make the listed backends (from the default group or this one) the group's whole list."""
        self._not_default(group_id, "given a backend list (backends return to it when removed elsewhere)")
        self.require(group_id)
        self._check_movable(group_id, list(backend_ids))
        self.s.execute("UPDATE backends SET group_id = ? WHERE group_id = ?", [DEFAULT_GROUP_ID, group_id])
        self._move(backend_ids, group_id)
        self.s.events.record("UPDATE_BACKENDGROUP", f"id={group_id} backends={list(backend_ids)}")

    def add(self, group_id: int, backend_id: int) -> None:
        """Move one backend from the default group into this group."""
        self._not_default(group_id, "added to directly (remove the backend from its group instead)")
        self.require(group_id)
        if self.s.backends.get(backend_id).group_id == group_id:
            raise ConflictError(f"Backend {backend_id} is already in backend group {group_id}.")
        self._check_movable(group_id, [backend_id])
        self._move([backend_id], group_id)
        self.s.events.record("ADD_BACKENDGROUP", f"id={group_id} backend={backend_id}")

    def remove(self, group_id: int, backend_id: int) -> None:
        """Move one backend from this group back to the default group."""
        self._not_default(group_id, "emptied (every backend must be in some group)")
        self.require(group_id)
        if self.s.backends.get(backend_id).group_id != group_id:
            raise NotFoundError(f"Backend {backend_id} is not in backend group {group_id}; see 'show backendgroup'.")
        self._move([backend_id], DEFAULT_GROUP_ID)
        self.s.events.record("REMOVE_BACKENDGROUP", f"id={group_id} backend={backend_id}")


class BackendRepository:
    """Worker nodes and their devices."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    def _build(self, rows: list[tuple[Any, ...]]) -> list[Backend]:
        if not rows:
            return []
        devices: dict[int, list[Device]] = {}
        ids = [r[0] for r in rows]
        where = "" if len(ids) > 64 else f" WHERE backend_id IN ({','.join(str(int(i)) for i in ids)})"
        for row in self.s.all(f"SELECT {_DEVICE_COLUMNS} FROM devices{where} ORDER BY backend_id, idx"):
            devices.setdefault(row[0], []).append(Device(*row))
        return [
            Backend(row[0], row[1], row[2], row[3], row[4], row[5], devices=tuple(devices.get(row[0], ())))
            for row in rows
        ]

    def _select(self, where: str = "", params: list[Any] | None = None, order: str = "b.id") -> list[Backend]:
        return self._build(
            self.s.all(
                "SELECT b.id, b.host, b.ip, b.group_id, coalesce(g.name, ''), b.status FROM backends b "
                f"LEFT JOIN backend_groups g ON g.id = b.group_id {where} ORDER BY {order}",
                params,
            )
        )

    def all(self, order: str = "id") -> list[Backend]:
        """Return every backend ordered by ``id``, ``name`` (host) or ``group`` (then host)."""
        orders = {"id": "b.id", "name": "b.host, b.id", "group": "b.group_id, b.host, b.id"}
        return self._select(order=orders[order])

    def get(self, backend_id: int) -> Backend:
        """Return one backend or raise NotFoundError."""
        found = self._select("WHERE b.id = ?", [backend_id])
        if not found:
            raise NotFoundError(f"Backend {backend_id} not found; list backends with 'show backend'.")
        return found[0]

    def by_name(self, host: str) -> list[Backend]:
        """Return the backend whose host name is ``host``."""
        found = self._select("WHERE b.host = ?", [host])
        if not found:
            raise NotFoundError(f"No backend named '{host}'; list backends with 'show backend name'.")
        return found

    def by_group(self, id_or_name: str) -> list[Backend]:
        """Return the backends of one backend group (by id or name)."""
        group_id = self.s.backend_groups.find(id_or_name)
        return self._select("WHERE b.group_id = ?", [group_id], order="b.host, b.id")

    def _check_unique_host(self, host: str, except_id: int | None = None) -> None:
        row = self.s.one("SELECT id FROM backends WHERE host = ?", [host])
        if row is not None and row[0] != except_id:
            raise ConflictError(f"A backend named '{host}' already exists (id {row[0]}); host names are unique.")

    def create(self, host: str, ip: str, device_count: int) -> int:
        """Register a backend with ``device_count`` IDLE devices in the default group; return its id."""
        check_host(host)
        ip = check_ip(ip)
        if not 0 <= device_count <= MAX_DEVICES_PER_BACKEND:
            raise InvalidValueError(f"Device count {device_count} is out of range: use 0 to {MAX_DEVICES_PER_BACKEND}.")
        self._check_unique_host(host)
        row = self.s.one("SELECT nextval('seq_backend')")
        assert row is not None
        backend_id = int(row[0])
        self.s.execute(
            "INSERT INTO backends (id, host, ip, group_id, status, created_at) VALUES (?, ?, ?, 0, 'ACTIVE', now())",
            [backend_id, host, ip],
        )
        if device_count:
            self.s.execute(
                "INSERT INTO devices (backend_id, idx, status) SELECT ?, range, 'IDLE' FROM range(?)",
                [backend_id, device_count],
            )
        self.s.events.record("CREATE_BACKEND", f"id={backend_id} host={host} ip={ip} devices={device_count}")
        return backend_id

    def _held_devices(self, backend_id: int, index: int | None = None) -> list[tuple[int, str]]:
        sql = """
            SELECT device_index, 'job ' || job_id FROM job_devices WHERE backend_id = ?
            UNION ALL
            SELECT device_index, 'reserved SDA ' || sda_id FROM sda_reservations WHERE backend_id = ?
        """
        rows = self.s.all(sql, [backend_id, backend_id])
        return [(int(i), str(h)) for i, h in rows if index is None or i == index]

    def delete(self, backend_id: int) -> None:
        """Remove a backend whose devices no job or reserved SDA holds."""
        self.get(backend_id)
        held = self._held_devices(backend_id)
        if held:
            raise ConflictError(f"Backend {backend_id} device {held[0][0]} is held by {held[0][1]}; release it first.")
        self.s.execute("DELETE FROM devices WHERE backend_id = ?", [backend_id])
        self.s.execute("DELETE FROM device_samples WHERE backend_id = ?", [backend_id])
        self.s.execute("DELETE FROM backend_ipmi WHERE backend_id = ?", [backend_id])
        self.s.execute("DELETE FROM backends WHERE id = ?", [backend_id])
        self.s.events.record("DELETE_BACKEND", f"id={backend_id}")

    def update_host(self, backend_id: int, host: str) -> None:
        """Rename a backend."""
        self.get(backend_id)
        check_host(host)
        self._check_unique_host(host, backend_id)
        self.s.execute("UPDATE backends SET host = ? WHERE id = ?", [host, backend_id])
        self.s.events.record("UPDATE_BACKEND", f"id={backend_id} host={host}")

    def update_ip(self, backend_id: int, ip: str) -> None:
        """Change a backend's address."""
        self.get(backend_id)
        ip = check_ip(ip)
        self.s.execute("UPDATE backends SET ip = ? WHERE id = ?", [ip, backend_id])
        self.s.events.record("UPDATE_BACKEND", f"id={backend_id} ip={ip}")

    def update_status(self, backend_id: int, status: str) -> None:
        """Mark a backend ACTIVE or SHUTDOWN (SHUTDOWN backends get no new jobs)."""
        self.get(backend_id)
        status = check_choice(status, BACKEND_STATUSES, "backend status")
        self.s.execute("UPDATE backends SET status = ? WHERE id = ?", [status, backend_id])
        self.s.events.record("UPDATE_BACKEND", f"id={backend_id} status={status}")

    def update_group(self, backend_id: int, group_id: int | None) -> None:
        """Move a backend to another group (None: back to the default group)."""
        self.get(backend_id)
        target = DEFAULT_GROUP_ID if group_id is None else group_id
        self.s.backend_groups.require(target)
        self.s.execute("UPDATE backends SET group_id = ? WHERE id = ?", [target, backend_id])
        self.s.events.record("UPDATE_BACKEND", f"id={backend_id} group={target}")

    def update_device(self, backend_id: int, index: int | None, status: str) -> int:
        """Set one device's status (all devices when ``index`` is None); return how many changed."""
        backend = self.get(backend_id)
        status = check_choice(status, DEVICE_STATUSES, "device status")
        indexes = [d.index for d in backend.devices]
        if index is not None and index not in indexes:
            raise NotFoundError(
                f"Backend {backend_id} has no device {index}; its devices are {', '.join(map(str, indexes)) or 'none'}."
            )
        held = self._held_devices(backend_id, index)
        if held:
            raise ConflictError(f"Backend {backend_id} device {held[0][0]} is held by {held[0][1]}; release it first.")
        cleared = self.s.guardian.device_status_set(backend_id, index, status)
        if index is None:
            self.s.execute("UPDATE devices SET status = ? WHERE backend_id = ?", [status, backend_id])
        else:
            self.s.execute(
                "UPDATE devices SET status = ? WHERE backend_id = ? AND idx = ?", [status, backend_id, index]
            )
        # Clearing an UNHEALTHY device keeps what had failed in the event log.
        was = "".join(f" was_unhealthy[{i}]={cause}" for i, cause in cleared)
        self.s.events.record(
            "UPDATE_DEVICE",
            f"backend={backend_id} device={'all' if index is None else index} status={status}{was}",
        )
        return len(indexes) if index is None else 1

    def ipmi_addresses(self) -> dict[int, tuple[str, int]]:
        """Backend id -> (IPMI address, last known power status) of the backends that have one."""
        return {int(r[0]): (str(r[1]), int(r[2])) for r in self.s.all("SELECT backend_id, ip, status FROM backend_ipmi")}

    def set_ipmi(self, backend_id: int, ip: str, status: int) -> None:
        """Record a backend's IPMI address and power status."""
        self.s.execute("DELETE FROM backend_ipmi WHERE backend_id = ?", [backend_id])
        self.s.execute("INSERT INTO backend_ipmi VALUES (?, ?, ?)", [backend_id, ip, status])

    def by_ipmi_or_worker_ip(self, node: str) -> int:
        """The id of the backend whose IPMI address (else worker address) is ``node``; NotFoundError when none."""
        row = self.s.one("SELECT backend_id FROM backend_ipmi WHERE ip = ?", [node])
        if row is None:
            row = self.s.one("SELECT id FROM backends WHERE ip = ?", [node])
        if row is None:
            raise NotFoundError(f"No backend has the IPMI or worker address '{node[:80]}'; see GET /api/backend.")
        return int(row[0])

    def described_devices(self, backend_id: int) -> dict[int, str]:
        """Index -> UUID of the backend's devices already described by a GPU provider."""
        rows = self.s.all("SELECT idx, uuid FROM devices WHERE backend_id = ? AND uuid IS NOT NULL", [backend_id])
        return {int(index): str(uuid) for index, uuid in rows}

    def devices_of(self, backend_id: int) -> dict[int, str | None]:
        """Index -> UUID (None: not described by a GPU provider yet) of each of the backend's devices."""
        rows = self.s.all("SELECT idx, uuid FROM devices WHERE backend_id = ?", [backend_id])
        return {int(index): (str(uuid) if uuid is not None else None) for index, uuid in rows}

    def device_indexes(self, backend_id: int) -> set[int]:
        """The indexes of the backend's devices."""
        return {int(r[0]) for r in self.s.all("SELECT idx FROM devices WHERE backend_id = ?", [backend_id])}

    def local_id(self, host: str) -> int | None:
        """Return the id of the backend named ``host``, if registered."""
        row = self.s.one("SELECT id FROM backends WHERE host = ?", [host])
        return int(row[0]) if row else None

    def by_machine(self, machine_id: str) -> int | None:
        """The id of the backend registered for the machine ``machine_id``, if any."""
        row = self.s.one("SELECT id FROM backends WHERE machine_id = ? ORDER BY id LIMIT 1", [machine_id])
        return int(row[0]) if row else None

    def machine_of(self, backend_id: int) -> str | None:
        """The machine id a backend was registered for (None: created by an admin, never reported)."""
        row = self.s.one("SELECT machine_id FROM backends WHERE id = ?", [backend_id])
        return str(row[0]) if row and row[0] is not None else None

    def uuid_owners(self, uuids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """GPU UUID -> (backend id, device index) for the UUIDs already registered."""
        wanted = sorted({u for u in uuids if u})
        if not wanted:
            return {}
        rows = self.s.all(
            f"SELECT uuid, backend_id, idx FROM devices WHERE uuid IN ({','.join('?' * len(wanted))})", wanted
        )
        return {str(u): (int(b), int(i)) for u, b, i in rows}

    def claim_machine(self, backend_id: int, machine_id: str) -> None:
        """Tie a backend to a machine (one registered before hosts were known by machine id, or by an admin)."""
        self.s.execute("UPDATE backends SET machine_id = ? WHERE id = ?", [machine_id, backend_id])

    def touch(self, backend_id: int) -> None:
        """Record that the backend's host reported just now (a host marked unreachable is back)."""
        self.s.execute("UPDATE backends SET last_seen = now(), unreachable = FALSE WHERE id = ?", [backend_id])

    def mark_unreachable(self, backend_id: int) -> None:
        """The backend's host stopped reporting: its devices leave the pool until it reports again."""
        self.s.execute("UPDATE backends SET unreachable = TRUE WHERE id = ? AND NOT unreachable", [backend_id])
        self.s.events.record("BACKEND_UNREACHABLE", f"id={backend_id}")

    def silent_since(self, seconds: float) -> list[int]:
        """Backends that reported once but not in the last ``seconds`` (their host went quiet)."""
        rows = self.s.all(
            "SELECT id FROM backends WHERE last_seen IS NOT NULL AND NOT unreachable "
            "AND epoch(now()::TIMESTAMP) - epoch(last_seen) > ? ORDER BY id",
            [seconds],
        )
        return [int(r[0]) for r in rows]

    def register_local(
        self, host: str, ip: str, devices: Sequence[tuple[str, str, int]], machine_id: str | None = None
    ) -> int:
        """Register a host as a backend with its GPUs ((uuid, name, memory MiB) per index); return its id.

        The host is found by ``machine_id`` first (an admin may rename a backend; a shell may set another
        ``MOREH_HOSTNAME``), then by name. An already registered host keeps its status, group and device
        statuses (the admin's word stands); GPUs that appeared since are added as IDLE. A GPU already
        registered as another backend's device is refused: one physical GPU is never handed out twice.
        """
        backend_id = self.by_machine(machine_id) if machine_id else None
        if backend_id is None:
            backend_id = self.local_id(host)
            if backend_id is not None and machine_id and self.machine_of(backend_id) not in (None, machine_id):
                raise ConflictError(
                    f"A backend named '{host}' is registered for another machine; set MOREH_HOSTNAME to a name of "
                    "this machine's own, or ask an admin to rename that backend."
                )
        for uuid, (owner, index) in self.uuid_owners([d[0] for d in devices]).items():
            if owner != backend_id:
                raise ConflictError(
                    f"GPU {uuid} is already registered as device {index} of backend {owner}; one GPU is never "
                    "registered twice (delete that backend, or fix the machine id of this host)."
                )
        if backend_id is None:
            backend_id = self.create(host, ip, len(devices))  # the event says how many GPUs it came with
        if machine_id and self.machine_of(backend_id) is None:
            self.claim_machine(backend_id, machine_id)
        known = self.device_indexes(backend_id)
        for index, (uuid, name, memory) in enumerate(devices):
            if index not in known:
                self.s.execute(
                    "INSERT INTO devices (backend_id, idx, status) VALUES (?, ?, 'IDLE')", [backend_id, index]
                )
            self.s.execute(
                "UPDATE devices SET uuid = ?, name = ?, memory_total_mib = ? WHERE backend_id = ? AND idx = ?",
                [uuid, name, memory, backend_id, index],
            )
        return backend_id

    def record_samples(self, backend_id: int, samples: Sequence[Device], at: float | None = None) -> None:
        """Store the latest sampled figures of a backend's devices, and append them to the sample history.

        The history (``/api/signal``, ``/metrics``) keeps ``MOREH_SAMPLE_RETENTION_S`` seconds (default a day).
        """
        if not samples:
            return
        now = time.time() if at is None else at
        # One statement each for all the devices: DuckDB's executemany runs a statement per row (~1.5 ms each),
        # and 60 hosts of 8 GPUs report 240 device samples a second.
        rows = "(" + ", ".join("?" * 9) + ")"
        self.s.execute(
            f"INSERT INTO device_samples VALUES {', '.join([rows] * len(samples))}",
            [value for d in samples for value in (now, backend_id, d.index, *_figures(d))],
        )
        _prune_samples(self.s, now)
        # CASE on the index rather than a join against VALUES: DuckDB plans the join at ~4x the cost.
        columns = ("memory_total_mib", "memory_used_mib", "util_gpu", "util_mem", "temp_gpu", "temp_mem")
        cases = " ".join("WHEN ? THEN ?" for _ in samples)
        params: list[object] = []
        for column_number in range(len(columns)):
            for d in samples:
                params += [d.index, _figures(d)[column_number]]
        assignments = ", ".join(f"{column} = CASE idx {cases} ELSE {column} END" for column in columns)
        self.s.execute(
            f"UPDATE devices SET {assignments}, sampled_at = now() "
            f"WHERE backend_id = ? AND idx IN ({', '.join('?' * len(samples))})",
            [*params, backend_id, *(d.index for d in samples)],
        )


def sample_retention_s() -> float:
    """Seconds of sample history kept: ``MOREH_SAMPLE_RETENTION_S`` (default a day)."""
    try:
        value = float(os.environ.get("MOREH_SAMPLE_RETENTION_S", "") or SAMPLE_RETENTION_S)
    except ValueError:
        return SAMPLE_RETENTION_S
    return value if value > 0 else SAMPLE_RETENTION_S


def _figures(device: Device) -> list[int | None]:
    """A sample's figures in the column order of ``device_samples`` and ``devices``."""
    return [
        device.memory_total_mib,
        device.memory_used_mib,
        device.util_gpu,
        device.util_mem,
        device.temp_gpu,
        device.temp_mem,
    ]


def _prune_samples(s: Session, now: float) -> None:
    """Drop samples past the retention, at most once a minute per process (each tick would be wasted work)."""
    global _last_prune
    if now - _last_prune < _PRUNE_EVERY_S:
        return
    _last_prune = now
    s.execute("DELETE FROM device_samples WHERE t < ?", [now - sample_retention_s()])
