"""GPU quotas of user groups per backend group, temporary quota requests, and decayed usage for fair share.

Only storage lives here. What an admin may set (no negative quota, none above the cluster, no borrowing
without a nominal quota) and the request workflow's rules are :mod:`moreh_tools.services.quotas`; how quotas,
borrowing and usage shape a scheduling pass is :mod:`scheduler_core.scheduling` and :mod:`scheduler_core.fairshare`.
Times are epoch seconds (``now`` comes from the caller, so a test may move the clock).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scheduler_core.fairshare import accrue, decay
from state.errors import NotFoundError
from state.records import GroupQuota, GroupUsage, QuotaRequest

if TYPE_CHECKING:
    from state.session import Session

DAY_S = 86400.0
_REQUEST_COLUMNS = (
    "id, token, user_group_id, backend_group_id, gpus, days, reason, status, requested_at, decided_at, expires_at"
)


class QuotaRepository:
    """Reads and changes group quotas and quota requests; every change records an event."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    # -- quotas ---------------------------------------------------------------------------------------------

    def granted(self, now: float) -> dict[tuple[int, int], int]:
        """(user group, backend group) -> GPUs that approved, unexpired requests add to the nominal quota at ``now``."""
        rows = self.s.all(
            "SELECT user_group_id, backend_group_id, sum(gpus) FROM quota_requests "
            "WHERE status = 'APPROVED' AND expires_at > ? GROUP BY 1, 2",
            [now],
        )
        return {(int(g), int(b)): int(n) for g, b, n in rows}

    def all(self, now: float, user_group_id: int | None = None) -> list[GroupQuota]:
        """Every quota (or one user group's), with the names and the grants in force at ``now``, by group ids."""
        if user_group_id is not None:
            self.s.user_groups.get(user_group_id)
        grants = self.granted(now)
        rows = self.s.all(
            "SELECT q.user_group_id, coalesce(u.name, ''), q.backend_group_id, coalesce(b.name, ''), q.nominal, q.borrow "
            "FROM group_quotas q LEFT JOIN user_groups u ON u.id = q.user_group_id "
            "LEFT JOIN backend_groups b ON b.id = q.backend_group_id ORDER BY 1, 3"
        )
        return [
            GroupQuota(int(g), str(gn), int(b), str(bn), int(n), int(x), grants.get((int(g), int(b)), 0))
            for g, gn, b, bn, n, x in rows
            if user_group_id is None or int(g) == user_group_id
        ]

    def get(self, user_group_id: int, backend_group_id: int) -> tuple[int, int] | None:
        """(nominal, borrow) of one quota as set (without grants), None when there is none."""
        row = self.s.one(
            "SELECT nominal, borrow FROM group_quotas WHERE user_group_id = ? AND backend_group_id = ?",
            [user_group_id, backend_group_id],
        )
        return (int(row[0]), int(row[1])) if row else None

    def set(self, user_group_id: int, backend_group_id: int, nominal: int, borrow: int) -> None:
        """Set a user group's quota on a backend group (both must exist)."""
        self.s.user_groups.get(user_group_id)
        self.s.backend_groups.require(backend_group_id)
        self.s.execute(
            "DELETE FROM group_quotas WHERE user_group_id = ? AND backend_group_id = ?", [user_group_id, backend_group_id]
        )
        self.s.execute(
            "INSERT INTO group_quotas VALUES (?, ?, ?, ?)", [user_group_id, backend_group_id, nominal, borrow]
        )
        self.s.events.record(
            "UPDATE_USERGROUP_QUOTA",
            f"usergroup={user_group_id} backendgroup={backend_group_id} nominal={nominal} borrow={borrow}",
        )

    def clear(self, user_group_id: int, backend_group_id: int) -> None:
        """Remove a user group's quota on a backend group (its jobs there are no longer limited)."""
        self.s.user_groups.get(user_group_id)
        self.s.backend_groups.require(backend_group_id)
        self.s.execute(
            "DELETE FROM group_quotas WHERE user_group_id = ? AND backend_group_id = ?", [user_group_id, backend_group_id]
        )
        self.s.events.record(
            "UPDATE_USERGROUP_QUOTA", f"usergroup={user_group_id} backendgroup={backend_group_id} nominal=none"
        )

    def in_force(self, now: float) -> dict[tuple[int, int], tuple[int, int]]:
        """(user group, backend group) -> (nominal with grants, borrow) at ``now``: the scheduler's quotas."""
        grants = self.granted(now)
        rows = self.s.all("SELECT user_group_id, backend_group_id, nominal, borrow FROM group_quotas")
        return {(int(g), int(b)): (int(n) + grants.get((int(g), int(b)), 0), int(x)) for g, b, n, x in rows}

    def devices_in(self, backend_group_id: int) -> int:
        """How many devices the backends of a backend group have (the most any quota there can mean)."""
        row = self.s.one(
            "SELECT count(*) FROM devices d JOIN backends b ON b.id = d.backend_id WHERE b.group_id = ?",
            [backend_group_id],
        )
        return int(row[0]) if row else 0

    def in_use(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(user group, backend group) -> (devices its jobs hold, of which borrowed), for the groups charged now."""
        rows = self.s.all(
            "SELECT j.charged_group, coalesce(g.backend_group_id, 0), count(*), "
            "count(*) FILTER (WHERE j.borrowed) FROM jobs j JOIN job_devices d ON d.job_id = j.id "
            "LEFT JOIN sdas s ON s.id = j.sda_id LEFT JOIN model_groups g ON g.id = s.model_group_id "
            "WHERE j.charged_group IS NOT NULL GROUP BY 1, 2"
        )
        return {(int(g), int(b)): (int(n), int(x)) for g, b, n, x in rows}

    def forget_user_group(self, user_group_id: int) -> None:
        """A user group is being deleted: drop its quotas, requests and usage."""
        self.s.execute("DELETE FROM group_quotas WHERE user_group_id = ?", [user_group_id])
        self.s.execute("DELETE FROM quota_requests WHERE user_group_id = ?", [user_group_id])
        self.s.execute("DELETE FROM fairshare_usage WHERE user_group_id = ?", [user_group_id])

    def forget_backend_group(self, backend_group_id: int) -> None:
        """A backend group is being deleted: drop the quotas and requests on it."""
        self.s.execute("DELETE FROM group_quotas WHERE backend_group_id = ?", [backend_group_id])
        self.s.execute("DELETE FROM quota_requests WHERE backend_group_id = ?", [backend_group_id])

    # -- requests -------------------------------------------------------------------------------------------

    def request(
        self, token: str, user_group_id: int, backend_group_id: int, gpus: int, days: int, reason: str, now: float
    ) -> QuotaRequest:
        """Record a PENDING request of ``token`` for ``gpus`` more GPUs for ``days`` days."""
        row = self.s.one("SELECT nextval('seq_quota_request')")
        assert row is not None
        request_id = int(row[0])
        self.s.execute(
            f"INSERT INTO quota_requests ({_REQUEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 'PENDING', ?, NULL, NULL)",
            [request_id, token, user_group_id, backend_group_id, gpus, days, reason, now],
        )
        self.s.events.record(
            "REQUEST_QUOTA",
            f"id={request_id} usergroup={user_group_id} backendgroup={backend_group_id} gpus={gpus} days={days}",
            token,
        )
        return self.get_request(request_id)

    def get_request(self, request_id: int) -> QuotaRequest:
        """One request, or NotFoundError."""
        row = self.s.one(f"SELECT {_REQUEST_COLUMNS} FROM quota_requests WHERE id = ?", [request_id])
        if row is None:
            raise NotFoundError(f"Quota request {request_id} not found; list them with 'show quota request'.")
        return QuotaRequest(*row)

    def requests(self, status: str | None = None, token: str | None = None) -> list[QuotaRequest]:
        """Requests, oldest first, optionally of one status and/or one token."""
        where, params = [], []
        for column, value in (("status", status), ("token", token)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_REQUEST_COLUMNS} FROM quota_requests" + (" WHERE " + " AND ".join(where) if where else "")
        return [QuotaRequest(*row) for row in self.s.all(sql + " ORDER BY id", params)]

    def decide(self, request_id: int, approve: bool, now: float) -> QuotaRequest:
        """Approve (the grant runs from ``now`` for the request's days) or reject a request; the new record."""
        request = self.get_request(request_id)
        if approve:
            expires = now + request.days * DAY_S
            self.s.execute(
                "UPDATE quota_requests SET status = 'APPROVED', decided_at = ?, expires_at = ? WHERE id = ?",
                [now, expires, request_id],
            )
        else:
            self.s.execute(
                "UPDATE quota_requests SET status = 'REJECTED', decided_at = ? WHERE id = ?", [now, request_id]
            )
        action = "APPROVE_QUOTA_REQUEST" if approve else "REJECT_QUOTA_REQUEST"
        self.s.events.record(
            action,
            f"id={request_id} usergroup={request.user_group_id} backendgroup={request.backend_group_id} "
            f"gpus={request.gpus}",
            request.token,
        )
        return self.get_request(request_id)

    def expire(self, now: float) -> list[int]:
        """Mark the approved requests whose period ended by ``now`` EXPIRED (one event each); their ids."""
        rows = self.s.all(
            "SELECT id, token, user_group_id, backend_group_id, gpus FROM quota_requests "
            "WHERE status = 'APPROVED' AND expires_at <= ? ORDER BY id",
            [now],
        )
        if not rows:
            return []
        ids = [int(r[0]) for r in rows]
        self.s.execute("UPDATE quota_requests SET status = 'EXPIRED' WHERE id IN (SELECT unnest(?))", [ids])
        for request_id, token, group, backend_group, gpus in rows:
            self.s.events.record(
                "QUOTA_REQUEST_EXPIRED",
                f"id={request_id} usergroup={group} backendgroup={backend_group} gpus={gpus}",
                str(token),
            )
        return ids


class FairShareRepository:
    """Each user group's GPU-seconds, decayed with a half-life and accrued when its jobs end."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    def usage(self) -> dict[int, GroupUsage]:
        """Every group's usage as last accrued (decay it to now with :meth:`decayed`)."""
        rows = self.s.all("SELECT user_group_id, usage, updated_at FROM fairshare_usage")
        return {int(g): GroupUsage(int(g), float(u), float(t)) for g, u, t in rows}

    def decayed(self, now: float, halflife: float) -> dict[int, float]:
        """Every group's usage decayed to ``now`` (GPU-seconds)."""
        return {g: decay(u.usage, max(0.0, now - u.updated_at), halflife) for g, u in self.usage().items()}

    def accrue(self, user_group_id: int, gpu_seconds: float, now: float, halflife: float) -> None:
        """Decay the group's usage to ``now`` and add ``gpu_seconds`` (a job of the group just ended)."""
        if gpu_seconds <= 0:
            return
        old = self.usage().get(user_group_id)
        total = gpu_seconds if old is None else accrue(old.usage, max(0.0, now - old.updated_at), halflife, gpu_seconds)
        self.set(user_group_id, total, now)

    def set(self, user_group_id: int, usage: float, now: float) -> None:
        """Store the group's usage as of ``now``."""
        self.s.execute("DELETE FROM fairshare_usage WHERE user_group_id = ?", [user_group_id])
        self.s.execute("INSERT INTO fairshare_usage VALUES (?, ?, ?)", [user_group_id, usage, now])
