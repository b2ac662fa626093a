"""Token endpoints (part A.2, 34-43): tokens, user (token) groups and their members.

Creating, deleting and re-ranking tokens and editing user groups is ADMIN work. A USER (or DEVELOPER) may read
its own token and the groups it is in, and may rename its token or point it at another of its SDAs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import CallerDep, require_admin, require_self_or_admin
from moreh_tools.api.errors import SYNTAX, ApiError
from moreh_tools.api.params import first_given, param
from moreh_tools.api.tokens import forget_token
from moreh_tools.api.views import TokenViews, command_text, store_of, success
from moreh_tools.services.limits import apply_token_limits

router = APIRouter(tags=["Token"])


@router.get("/api/sdamanager/token", summary="Tokens (the caller's own for USER)")
def list_tokens(request: Request, caller: CallerDep) -> Any:
    """Every token for ADMIN (values redacted for DEVELOPER), the caller's own for USER.

    ``token`` and ``maxDuplicates`` (0 unlimited, 1 off, N processes) filter the list.
    """
    token = param(request, "token", required=False)
    max_duplicates = param(request, "maxDuplicates", int, required=False)
    if token is not None and not caller.reads_all:
        require_self_or_admin(caller, token)
    with store_of(request).reading() as s:
        values: list[str] | None = None if caller.reads_all else [caller.token]
        if token is not None:
            values = [token]
        views = TokenViews(s, caller, values)
        if token is not None and token not in views.tokens:
            s.tokens.get(token)  # 601 naming the token
        shown = [
            views.token(value)
            for value, t in views.tokens.items()
            if max_duplicates is None or t.duplicable == max_duplicates
        ]
    return shown


@router.post("/api/sdamanager/token", summary="Create a token (ADMIN)")
def create_token(request: Request, caller: CallerDep) -> Any:
    """Create a token with a fresh unguessable value; ``maxDuplicates`` 1 (off) unless given."""
    require_admin(caller)
    alias = param(request, "description", required=False)
    desc = alias if alias is not None else param(request, "desc")
    priority = param(request, "priority", int, required=False, default=0)
    max_duplicates = param(request, "maxDuplicates", int, required=False, default=1)
    access_level = param(request, "accessLevel", required=False)
    limit_default = param(request, "timeLimitDefault", required=False)
    limit_max = param(request, "timeLimitMax", required=False)
    with store_of(request).transaction(command_text(request)) as s:
        value = s.tokens.create(desc, priority)
        if max_duplicates != 1:
            s.tokens.update_duplicable(value, max_duplicates)
        if access_level is not None:
            s.tokens.update_access_level(value, access_level.upper())
        if limit_default is not None or limit_max is not None:
            apply_token_limits(s, value, limit_default, limit_max)
        result = TokenViews(s, caller, [value]).token(value)
    return success(result)


@router.put("/api/sdamanager/token", summary="Change a token")
def update_token(request: Request, caller: CallerDep) -> Any:
    """Change what is given of ``desc``, ``targetSdaId`` (also USER, own token) and, ADMIN only,
    ``priority``, ``maxSdaCount``, ``maxDuplicates``, ``accessLevel``, ``timeLimitDefault`` and ``timeLimitMax``
    (time limits in ``moreh-run --time`` forms, ``null`` clears); all in one transaction."""
    token = param(request, "token")
    desc = first_given(param(request, "desc", required=False), param(request, "description", required=False))
    priority = param(request, "priority", int, required=False)
    max_sda = param(request, "maxSdaCount", int, required=False)
    target_sda = param(request, "targetSdaId", int, required=False)
    max_duplicates = param(request, "maxDuplicates", int, required=False)
    access_level = param(request, "accessLevel", required=False)
    limit_default = param(request, "timeLimitDefault", required=False)
    limit_max = param(request, "timeLimitMax", required=False)
    require_self_or_admin(caller, token)
    if any(v is not None for v in (priority, max_sda, max_duplicates, access_level, limit_default, limit_max)):
        require_admin(caller)
    if all(
        v is None for v in (desc, priority, max_sda, target_sda, max_duplicates, access_level, limit_default, limit_max)
    ):
        raise ApiError(
            SYNTAX,
            "SyntaxError. Nothing to change: give at least one of the parameters 'desc', 'priority', 'maxSdaCount', "
            "'targetSdaId', 'maxDuplicates', 'accessLevel', 'timeLimitDefault', 'timeLimitMax'.",
        )
    with store_of(request).transaction(command_text(request)) as s:
        s.tokens.get(token)
        if desc is not None:
            s.tokens.update_description(token, desc)
        if priority is not None:
            s.tokens.update_priority(token, priority)
        # Duplicable SDAs need max SDA 1: turning duplication off goes first, raising max SDA before it.
        if max_duplicates == 1:
            s.tokens.update_duplicable(token, 1)
        if max_sda is not None:
            s.tokens.update_max_sda(token, max_sda)
        if max_duplicates is not None and max_duplicates != 1:
            s.tokens.update_duplicable(token, max_duplicates)
        if target_sda is not None:
            s.tokens.update_current_sda(token, target_sda)
        if access_level is not None:
            s.tokens.update_access_level(token, access_level.upper())
        if limit_default is not None or limit_max is not None:
            apply_token_limits(s, token, limit_default, limit_max)
    if access_level is not None:
        forget_token(request.app, token)
    return success()


@router.delete("/api/sdamanager/token", summary="Delete a token (ADMIN)")
def delete_token(request: Request, caller: CallerDep) -> Any:
    """Delete a token that has no SDA and no job in the queue."""
    token = param(request, "token")
    require_admin(caller)
    with store_of(request).transaction(command_text(request)) as s:
        s.tokens.delete(token)
    forget_token(request.app, token)
    return success()


# -- user (token) groups --------------------------------------------------------------------------------------------


@router.get("/api/sdamanager/token/group", summary="User (token) groups")
def list_token_groups(request: Request, caller: CallerDep) -> Any:
    """Every user group with its tokens; a USER sees only the groups its token is in, others' tokens redacted."""
    with store_of(request).reading() as s:
        views = TokenViews(s, caller, None if caller.reads_all else [caller.token])
        return [views.group(g, member_objects=True) for g in views.visible_groups()]


@router.post("/api/sdamanager/token/group", summary="Create a user group (ADMIN)")
def create_token_group(request: Request, caller: CallerDep) -> Any:
    """Create an empty user group named ``label`` (``desc`` optional)."""
    require_admin(caller)
    alias = param(request, "name", required=False)
    label = alias if alias is not None else param(request, "label")
    desc = first_given(param(request, "desc", required=False), param(request, "description", required=False)) or ""
    with store_of(request).transaction(command_text(request)) as s:
        group_id = s.user_groups.create(label, desc)
        result = TokenViews(s, caller, []).group(s.user_groups.get(group_id), member_objects=True)
    return success(result)


@router.put("/api/sdamanager/token/group", summary="Rename a user group (ADMIN)")
def update_token_group(request: Request, caller: CallerDep) -> Any:
    """Rename user group ``id`` to ``label`` (without ``label`` nothing changes)."""
    group_id = param(request, "id", int)
    label = first_given(param(request, "label", required=False), param(request, "name", required=False))
    require_admin(caller)
    with store_of(request).transaction(command_text(request)) as s:
        s.user_groups.get(group_id)
        if label is not None:
            s.user_groups.rename(group_id, label)
    return success()


@router.delete("/api/sdamanager/token/group", summary="Delete a user group (ADMIN)")
def delete_token_group(request: Request, caller: CallerDep) -> Any:
    """Delete user group ``id`` and its memberships; one that still has tokens needs ``force=true``."""
    group_id = param(request, "id", int)
    force = param(request, "force", bool, required=False, default=False)
    require_admin(caller)
    with store_of(request).transaction(command_text(request)) as s:
        s.user_groups.delete(group_id, force)
    return success()


@router.post("/api/sdamanager/token/grouping", summary="Add a token to a user group (ADMIN)")
def add_token_to_group(request: Request, caller: CallerDep) -> Any:
    """Add ``token`` to user group ``group``."""
    group_id = param(request, "group", int)
    token = param(request, "token")
    require_admin(caller)
    with store_of(request).transaction(command_text(request)) as s:
        s.user_groups.add_member(group_id, token)
    return success()


@router.delete("/api/sdamanager/token/grouping", summary="Remove a token from a user group (ADMIN)")
def remove_token_from_group(request: Request, caller: CallerDep) -> Any:
    """Remove ``token`` from user group ``group``."""
    group_id = param(request, "group", int)
    token = param(request, "token")
    require_admin(caller)
    with store_of(request).transaction(command_text(request)) as s:
        s.user_groups.remove_member(group_id, token)
    return success()
