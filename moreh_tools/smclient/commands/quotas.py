"""GPU quotas of user groups, fair share, and the quota requests users send with ``moreh-smi quota --request``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from moreh_tools.grid import Column
from moreh_tools.smclient.args import is_null, to_int
from moreh_tools.smclient.output import Message, Output, Table
from moreh_tools.smclient.registry import Context, command

if TYPE_CHECKING:
    from moreh_tools.services.records import FairShareRow, QuotaRow
    from state.records import QuotaRequest

QUOTA_COLUMNS = [
    Column("UserGroup ID", "right"),
    Column("UserGroup"),
    Column("BackendGroup ID", "right"),
    Column("BackendGroup"),
    Column("Nominal", "right"),
    Column("Granted", "right"),
    Column("Borrow", "right"),
    Column("Used", "right"),
    Column("Borrowed", "right"),
]
FAIRSHARE_COLUMNS = [
    Column("ID", "right"),
    Column("UserGroup"),
    Column("Share", "right"),
    Column("Usage (GPU-h)", "right"),
    Column("Factor", "right"),
]
REQUEST_COLUMNS = [
    Column("ID", "right"),
    Column("Token"),
    Column("UserGroup ID", "right"),
    Column("BackendGroup ID", "right"),
    Column("GPUs", "right"),
    Column("Days", "right"),
    Column("Status"),
    Column("Requested"),
    Column("Expires"),
    Column("Reason"),
]


def _when(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def quota_record(row: QuotaRow) -> dict[str, object]:
    """A quota as a JSON object."""
    q = row.quota
    return {
        "user_group_id": q.user_group_id,
        "user_group": q.user_group_name,
        "backend_group_id": q.backend_group_id,
        "backend_group": q.backend_group_name,
        "nominal": q.nominal,
        "granted": q.granted,
        "effective_nominal": q.effective_nominal,
        "borrow": q.borrow,
        "used": row.used,
        "borrowed": row.borrowed,
    }


def quota_table(rows: list[QuotaRow]) -> Table:
    """``show quota``: one line per (user group, backend group) quota."""
    return Table(
        QUOTA_COLUMNS,
        [
            [
                str(r.quota.user_group_id),
                r.quota.user_group_name,
                str(r.quota.backend_group_id),
                r.quota.backend_group_name,
                str(r.quota.nominal),
                str(r.quota.granted),
                str(r.quota.borrow),
                str(r.used),
                str(r.borrowed),
            ]
            for r in rows
        ],
        [quota_record(r) for r in rows],
    )


def fairshare_record(row: FairShareRow) -> dict[str, object]:
    """A user group's fair share as a JSON object."""
    return {
        "user_group_id": row.user_group_id,
        "user_group": row.name,
        "share": row.share,
        "usage_gpu_seconds": round(row.usage_gpu_seconds, 3),
        "factor": round(row.factor, 6),
    }


def request_record(r: QuotaRequest) -> dict[str, object]:
    """A quota request as a JSON object (times ISO 8601 with the UTC offset)."""
    return {
        "id": r.id,
        "token": r.token,
        "user_group_id": r.user_group_id,
        "backend_group_id": r.backend_group_id,
        "gpus": r.gpus,
        "days": r.days,
        "reason": r.reason,
        "status": r.status,
        "requested_at": _iso(r.requested_at),
        "decided_at": _iso(r.decided_at),
        "expires_at": _iso(r.expires_at),
    }


def request_table(requests: list[QuotaRequest]) -> Table:
    """``show quota request``: every request, oldest first."""
    return Table(
        REQUEST_COLUMNS,
        [
            [
                str(r.id),
                r.token,
                str(r.user_group_id),
                str(r.backend_group_id),
                str(r.gpus),
                str(r.days),
                r.status,
                _when(r.requested_at),
                _when(r.expires_at),
                r.reason,
            ]
            for r in requests
        ],
        [request_record(r) for r in requests],
    )


@command(
    "update usergroup quota",
    "Update UserGroup GPU quota on a backend group (nominal null: no quota)",
    "update usergroup quota {user group id} {backend group id} {nominal} {borrow : optional}",
)
def update_usergroup_quota(ctx: Context, args: list[str]) -> Output:
    from moreh_tools.services.quotas import set_quota

    group_id = to_int(args[0], "user group id")
    backend_group_id = to_int(args[1], "backend group id")
    nominal = None if is_null(args[2]) else to_int(args[2], "nominal quota")
    borrow = to_int(args[3], "borrowing limit") if len(args) > 3 else None
    quota = set_quota(
        ctx.service, user_group_id=group_id, backend_group_id=backend_group_id, nominal=nominal, borrow=borrow
    )
    data: dict[str, object] = {"user_group_id": group_id, "backend_group_id": backend_group_id}
    data.update({"nominal": None, "borrow": None} if quota is None else {"nominal": quota.nominal, "borrow": quota.borrow})
    return Message("Update UserGroup Quota success.", data)


@command("show quota", "Print GPU quotas of user groups (with grants in force and use now)")
def show_quota(ctx: Context, args: list[str]) -> Output:
    from moreh_tools.services.quotas import show_quotas

    return quota_table(show_quotas(ctx.service))


@command("show fairshare", "Print each user group's fair share: share, decayed GPU usage, factor")
def show_fairshare(ctx: Context, args: list[str]) -> Output:
    from moreh_tools.services.quotas import show_fairshare as fairshare

    rows = fairshare(ctx.service)
    return Table(
        FAIRSHARE_COLUMNS,
        [[str(r.user_group_id), r.name, f"{r.share:g}", f"{r.usage_gpu_hours:.2f}", f"{r.factor:.4f}"] for r in rows],
        [fairshare_record(r) for r in rows],
    )


@command(
    "show quota request",
    "Print quota requests (PENDING, APPROVED, REJECTED, EXPIRED)",
    "show quota request {status : optional}",
)
def show_quota_request(ctx: Context, args: list[str]) -> Output:
    from moreh_tools.services.quotas import list_requests

    return request_table(list_requests(ctx.service, status=args[0] if args else None))


@command("approve quota request", "Approve a quota request (raises the quota until it expires)", "approve quota request {request id}")
def approve_quota_request(ctx: Context, args: list[str]) -> Output:
    from moreh_tools.services.quotas import decide_request

    request = decide_request(ctx.service, request_id=to_int(args[0], "request id"), approve=True)
    return Message(f"Approve Quota Request success. (expires : {_when(request.expires_at)})", request_record(request))


@command("reject quota request", "Reject a quota request", "reject quota request {request id}")
def reject_quota_request(ctx: Context, args: list[str]) -> Output:
    from moreh_tools.services.quotas import decide_request

    request = decide_request(ctx.service, request_id=to_int(args[0], "request id"), approve=False)
    return Message("Reject Quota Request success.", request_record(request))
