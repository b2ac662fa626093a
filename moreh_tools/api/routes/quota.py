"""Quotas, quota requests and fair share (ours, beyond the 52 documented endpoints; see API.md).

Setting quotas, listing every quota and fair share, and deciding requests need ADMIN; any token may ask for
more GPUs for the user group its jobs are charged to, and list its own requests. The rules are
:mod:`moreh_tools.services.quotas`; these routes only read parameters and shape answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import CallerDep
from moreh_tools.api.errors import SYNTAX, ApiError
from moreh_tools.api.params import param
from moreh_tools.api.views import service_context, success
from moreh_tools.services import quotas
from moreh_tools.services.records import QuotaRow

router = APIRouter(tags=["Quota"])


def _quota(row: QuotaRow) -> dict[str, Any]:
    q = row.quota
    return {
        "userGroupId": q.user_group_id,
        "userGroupName": q.user_group_name,
        "backendGroupId": q.backend_group_id,
        "backendGroupName": q.backend_group_name,
        "nominal": q.nominal,
        "granted": q.granted,
        "effectiveNominal": q.effective_nominal,
        "borrow": q.borrow,
        "used": row.used,
        "borrowed": row.borrowed,
    }


def _request(r: Any) -> dict[str, Any]:
    from datetime import datetime

    def iso(epoch: float | None) -> str | None:
        return None if epoch is None else datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")

    return {
        "id": r.id,
        "token": r.token,
        "userGroupId": r.user_group_id,
        "backendGroupId": r.backend_group_id,
        "gpus": r.gpus,
        "days": r.days,
        "reason": r.reason,
        "status": r.status,
        "requestedAt": iso(r.requested_at),
        "decidedAt": iso(r.decided_at),
        "expiresAt": iso(r.expires_at),
    }


@router.get("/api/sdamanager/quota", summary="GPU quotas of user groups (ADMIN; ours)")
def list_quotas(request: Request, caller: CallerDep) -> Any:
    """Every (user group, backend group) quota with its grants in force and the devices the group uses now."""
    return [_quota(r) for r in quotas.show_quotas(service_context(request, caller))]


@router.put("/api/sdamanager/quota", summary="Set or remove a user group's GPU quota (ADMIN; ours)")
def update_quota(request: Request, caller: CallerDep) -> Any:
    """Set user group ``group``'s quota on backend group ``backendGroup``: ``nominal`` and ``borrow`` (default 0);
    ``nominal=null`` removes it."""
    group_id = param(request, "group", int)
    backend_group_id = param(request, "backendGroup", int)
    nominal_text = param(request, "nominal")
    borrow = param(request, "borrow", int, required=False)
    nominal: int | None = None
    if nominal_text.strip().lower() not in ("null", "none"):
        text = nominal_text.strip()
        if not (text.lstrip("-").isascii() and text.lstrip("-").isdigit()):
            raise ApiError(SYNTAX, f"SyntaxError. Parameter 'nominal' must be an integer or null, got '{text[:40]}'.")
        nominal = int(text)
    quotas.set_quota(
        service_context(request, caller),
        user_group_id=group_id,
        backend_group_id=backend_group_id,
        nominal=nominal,
        borrow=borrow,
    )
    return success()


@router.get("/api/sdamanager/fairshare", summary="Fair share of user groups (ADMIN; ours)")
def list_fairshare(request: Request, caller: CallerDep) -> Any:
    """Each user group's share, decayed GPU-seconds and fair-share factor."""
    rows = quotas.show_fairshare(service_context(request, caller))
    return [
        {
            "userGroupId": r.user_group_id,
            "userGroupName": r.name,
            "share": r.share,
            "usageGpuSeconds": round(r.usage_gpu_seconds, 3),
            "factor": round(r.factor, 6),
        }
        for r in rows
    ]


@router.get("/api/sdamanager/quota/request", summary="Quota requests (every one for ADMIN, its own for others; ours)")
def list_quota_requests(request: Request, caller: CallerDep) -> Any:
    """Every request (ADMIN; ``status`` filters) or the caller's own requests."""
    status = param(request, "status", required=False)
    ctx = service_context(request, caller)
    if caller.is_admin:
        return [_request(r) for r in quotas.list_requests(ctx, status=status)]
    mine = quotas.my_quota(ctx).requests
    return [_request(r) for r in mine if status is None or r.status == status.upper()]


@router.post("/api/sdamanager/quota/request", summary="Ask for more GPUs for your user group for some days (ours)")
def create_quota_request(request: Request, caller: CallerDep) -> Any:
    """Ask for ``gpus`` more GPUs for ``days`` days, saying why (``reason``)."""
    gpus = param(request, "gpus", int)
    days = param(request, "days", int)
    reason = param(request, "reason")
    created = quotas.request_quota(service_context(request, caller), gpus=gpus, days=days, reason=reason)
    return success(_request(created))


@router.put("/api/sdamanager/quota/request", summary="Approve or reject a quota request (ADMIN; ours)")
def decide_quota_request(request: Request, caller: CallerDep) -> Any:
    """``action=approve`` (the quota rises at once, until the request's days are over) or ``action=reject``."""
    request_id = param(request, "id", int)
    action = param(request, "action").strip().lower()
    if action not in ("approve", "reject"):
        raise ApiError(SYNTAX, f"SyntaxError. Parameter 'action' must be approve or reject, got '{action[:40]}'.")
    decided = quotas.decide_request(service_context(request, caller), request_id=request_id, approve=action == "approve")
    return success(_request(decided))
