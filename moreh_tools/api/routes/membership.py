"""Membership endpoints (part A.2, 48-50): links from a user group (parent) to an SDA model group (child).

A token may use an SDA model when one of its user groups is a member of an SDA model group holding it.
Only an ADMIN changes memberships; a USER sees the groups its token is in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import CallerDep, require_admin
from moreh_tools.api.params import param
from moreh_tools.api.views import TokenViews, command_text, store_of, success

if TYPE_CHECKING:
    from moreh_tools.api.auth import ApiCaller
    from state.records import ModelGroup, UserGroup
    from state.session import Session

router = APIRouter(tags=["Membership"])


def _model_group(group: ModelGroup) -> dict[str, Any]:
    return {
        "id": group.id,
        "name": group.name,
        "backendGroupId": group.backend_group_id,
        "backendGroupName": group.backend_group_name,
        "sdamodels": [{"id": m.id, "name": m.name, "numDevices": m.devices} for m in group.models],
    }


def _with_children(s: Session, views: TokenViews, groups: list[UserGroup]) -> list[dict[str, Any]]:
    """User groups as Group objects, each with ``children``: the SDA model groups it is a member of."""
    model_groups = {g.id: g for g in s.model_groups.all()}
    links: dict[int, list[ModelGroup]] = {}
    for user_group, model_group in s.memberships.pairs():
        links.setdefault(user_group, []).append(model_groups[model_group])
    return [{**views.group(g), "children": [_model_group(m) for m in links.get(g.id, [])]} for g in groups]


def _one_with_children(s: Session, caller: ApiCaller, group_id: int) -> dict[str, Any]:
    return _with_children(s, TokenViews(s, caller, []), [s.user_groups.get(group_id)])[0]


@router.get("/api/membership", summary="User groups and the SDA model groups each is a member of")
def list_memberships(request: Request, caller: CallerDep) -> Any:
    """Every user group with its ``children`` (SDA model groups); a USER sees only the groups its token is in."""
    with store_of(request).reading() as s:
        views = TokenViews(s, caller, None if caller.reads_all else [caller.token])
        return _with_children(s, views, views.visible_groups())


@router.post("/api/membership", summary="Make a user group a member of an SDA model group (ADMIN)")
def add_membership(request: Request, caller: CallerDep) -> Any:
    """Link user group ``parentId`` to SDA model group ``childId``; answers the user group with its children."""
    parent = param(request, "parentId", int)
    child = param(request, "childId", int)
    require_admin(caller)
    with store_of(request).transaction(command_text(request)) as s:
        s.memberships.add(parent, child)
        result = _one_with_children(s, caller, parent)
    return success(result)


@router.delete("/api/membership", summary="Remove a user group's membership of an SDA model group (ADMIN)")
def remove_membership(request: Request, caller: CallerDep) -> Any:
    """Unlink user group ``parentId`` from SDA model group ``childId``; answers the user group with its children."""
    parent = param(request, "parentId", int)
    child = param(request, "childId", int)
    require_admin(caller)
    with store_of(request).transaction(command_text(request)) as s:
        s.memberships.remove(parent, child)
        result = _one_with_children(s, caller, parent)
    return success(result)
