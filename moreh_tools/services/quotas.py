"""GPU quotas of user groups, quota requests that expire, and fair share, as use cases.

The rules, once for the console, the API and ``moreh-smi quota``:

* A quota is set per (user group, backend group): ``nominal`` GPUs the group may always use and ``borrow``
  more it may use while others leave them idle (borrowed work, which groups within their nominal quota may
  preempt). Neither may be negative, together they may not exceed the devices of the backend group, and a
  borrowing limit needs a nominal quota above 0. ``nominal`` ``null`` removes the quota (unlimited again).
* A token's jobs are charged to the lowest-id user group of the token that has a quota on the job's backend
  group (:func:`scheduler_core.scheduling.charged_group`); a token with no such group is not limited.
* A user asks for more GPUs for the group its jobs are charged to, on the backend group of its current SDA,
  for a number of days; an admin approves (the nominal quota rises at once, until the days are over) or
  rejects it. A request is decided once. Every step is in the event log, and so is the end of a grant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moreh_tools.services import settings
from moreh_tools.services.caller import require_admin
from moreh_tools.services.records import MyQuota, QuotaRow
from state.errors import ConflictError, InvalidValueError, NotFoundError, UnknownTokenError
from state.records import GroupQuota, QuotaRequest

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext
    from moreh_tools.services.records import FairShareRow
    from state.session import Session

MAX_REQUEST_DAYS = 365
MAX_REASON = 500


def set_quota(
    ctx: ServiceContext, *, user_group_id: int, backend_group_id: int, nominal: int | None, borrow: int | None = None
) -> GroupQuota | None:
    """Set (or with ``nominal`` None remove) a user group's quota on a backend group; the quota now (None: removed)."""
    require_admin(ctx.caller, "Setting a quota")
    if nominal is None and borrow:
        raise InvalidValueError(
            f"A borrowing limit needs a nominal quota: give user group {user_group_id} a nominal quota above 0 first."
        )
    if nominal is not None:
        if nominal < 0 or (borrow or 0) < 0:
            raise InvalidValueError(f"A quota cannot be below zero (nominal {nominal}, borrow {borrow or 0}).")
        if borrow and nominal == 0:
            raise InvalidValueError(
                "A borrowing limit needs a nominal quota above 0; a group with nominal 0 may not borrow."
            )
    with ctx.write(f"update usergroup quota {user_group_id} {backend_group_id} {nominal} {borrow or 0}") as s:
        if nominal is None:
            s.quotas.clear(user_group_id, backend_group_id)
            return None
        s.user_groups.get(user_group_id)
        s.backend_groups.require(backend_group_id)
        devices = s.quotas.devices_in(backend_group_id)
        if nominal + (borrow or 0) > devices:
            raise InvalidValueError(
                f"Nominal {nominal} + borrow {borrow or 0} is above the {devices} device(s) of backend group "
                f"{backend_group_id}; give at most {devices} in all."
            )
        s.quotas.set(user_group_id, backend_group_id, nominal, borrow or 0)
        return next(
            q for q in s.quotas.all(settings.now(), user_group_id) if q.backend_group_id == backend_group_id
        )


def quota_rows(s: Session, user_group_ids: list[int] | None = None) -> list[QuotaRow]:
    """Every quota (or those of some groups) with its grants in force and what the group holds now."""
    used = s.quotas.in_use()
    return [
        QuotaRow(q, *used.get((q.user_group_id, q.backend_group_id), (0, 0)))
        for q in s.quotas.all(settings.now())
        if user_group_ids is None or q.user_group_id in user_group_ids
    ]


def show_quotas(ctx: ServiceContext) -> list[QuotaRow]:
    """``show quota``: every quota."""
    require_admin(ctx.caller, "Listing quotas")
    with ctx.read() as s:
        return quota_rows(s)


def show_fairshare(ctx: ServiceContext) -> list[FairShareRow]:
    """``show fairshare``: every user group's share, decayed usage and factor."""
    from moreh_tools.services.scheduling import fairshare_rows

    require_admin(ctx.caller, "Listing fair shares")
    with ctx.read() as s:
        return fairshare_rows(s)


# -- requests ------------------------------------------------------------------------------------------------


def _charged_group(s: Session, token: str) -> tuple[int, int]:
    """(user group, backend group) a request of ``token`` is for: the group its jobs are charged to there."""
    from scheduler_core.scheduling import Quota, charged_group
    from state.planning import token_groups

    owner = s.tokens.get(token)
    backend_group = s.jobs.backend_group_of_sda(owner.current_sda) if owner.current_sda is not None else 0
    groups = token_groups(s).get(token, [])
    if not groups:
        raise ConflictError(
            "This token is in no user group, so no quota limits it; there is nothing to raise (ask an admin)."
        )
    quotas = {key: Quota(n, b) for key, (n, b) in s.quotas.in_force(settings.now()).items()}
    group = charged_group(groups, backend_group, quotas)
    if group is None:
        raise ConflictError(
            f"No quota limits this token's jobs on backend group {backend_group} (none of its user groups "
            f"{', '.join(map(str, groups))} has one there), so there is nothing to raise."
        )
    return group, backend_group


def request_quota(ctx: ServiceContext, *, gpus: int, days: int, reason: str) -> QuotaRequest:
    """A user asks for ``gpus`` more GPUs for the user group its jobs are charged to, for ``days`` days."""
    token = ctx.caller.token
    if token is None:
        raise UnknownTokenError("SDA token is not given.")
    if gpus < 1:
        raise InvalidValueError(f"Ask for at least 1 GPU, not {gpus}.")
    if not 1 <= days <= MAX_REQUEST_DAYS:
        raise InvalidValueError(f"Ask for 1 to {MAX_REQUEST_DAYS} days, not {days}.")
    text = reason.strip()
    if not text or len(text) > MAX_REASON or not text.isprintable():
        raise InvalidValueError(f"Give a reason: 1 to {MAX_REASON} printable characters.")
    with ctx.write(f"moreh-smi quota --request {gpus} --days {days}") as s:
        try:
            group, backend_group = _charged_group(s, token)
        except NotFoundError:
            raise UnknownTokenError(f"Token '{token[:8]}...' is not known to the SDA Manager.") from None
        devices = s.quotas.devices_in(backend_group)
        if gpus > devices:
            raise InvalidValueError(
                f"Backend group {backend_group} has {devices} device(s); ask for at most {devices} GPU(s)."
            )
        return s.quotas.request(token, group, backend_group, gpus, days, text, settings.now())


def my_quota(ctx: ServiceContext) -> MyQuota:
    """``moreh-smi quota``: the quotas of the caller's token's user groups and the token's requests."""
    from state.planning import token_groups

    token = ctx.caller.token
    if token is None:
        raise UnknownTokenError("SDA token is not given.")
    with ctx.read() as s:
        if not s.tokens.exists(token):
            raise UnknownTokenError(f"Token '{token[:8]}...' is not known to the SDA Manager.")
        groups = token_groups(s).get(token, [])
        now = settings.now()
        return MyQuota(tuple(quota_rows(s, groups)), tuple(_as_of(r, now) for r in s.quotas.requests(token=token)))


def list_requests(ctx: ServiceContext, *, status: str | None = None) -> list[QuotaRequest]:
    """``show quota request``: every request (or those of one status), oldest first."""
    from state.records import QUOTA_REQUEST_STATUSES

    require_admin(ctx.caller, "Listing quota requests")
    if status is not None and status.upper() not in QUOTA_REQUEST_STATUSES:
        from state.errors import BadRequestError

        raise BadRequestError(f"Unknown request status '{status}': use one of {'|'.join(QUOTA_REQUEST_STATUSES)}.")
    with ctx.read() as s:
        found = [_as_of(r, settings.now()) for r in s.quotas.requests()]
    return [r for r in found if status is None or r.status == status.upper()]


def _as_of(request: QuotaRequest, now: float) -> QuotaRequest:
    """A grant whose days are over reads EXPIRED even before a scheduling pass has marked it so."""
    from dataclasses import replace

    if request.status == "APPROVED" and request.expires_at is not None and request.expires_at <= now:
        return replace(request, status="EXPIRED")
    return request


def decide_request(ctx: ServiceContext, *, request_id: int, approve: bool) -> QuotaRequest:
    """Approve or reject a PENDING request (a decided one is refused); approving raises the quota at once."""
    from moreh_tools.services.scheduling import run_pass, woken

    require_admin(ctx.caller, "Deciding quota requests")
    verb = "approve" if approve else "reject"
    with ctx.write(f"{verb} quota request {request_id}") as s:
        request = s.quotas.get_request(request_id)
        if request.status != "PENDING":
            raise ConflictError(f"Quota request {request_id} is already {request.status}; a request is decided once.")
        decided = s.quotas.decide(request_id, approve, settings.now())
        decision = run_pass(s) if approve else None
    if decision is not None:
        ctx.wake(woken(decision))
    return decided
