"""SDA Model: the accelerator sizes ("flavors") and SDA model groups (``/api/sdamanager/sdamodel...``).

Any token may list the models it may use; listing every model and the model groups needs ADMIN or DEVELOPER;
changes need ADMIN.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import ApiCaller, CallerDep, require_admin, require_reader, require_self_or_admin
from moreh_tools.api.params import param
from moreh_tools.api.views import success
from state.records import ModelGroup, SDAModel, TimeLimits
from state.session import Session

router = APIRouter(tags=["SDAModel"])


def _group_brief(group: ModelGroup) -> dict[str, Any]:
    return {
        "id": group.id,
        "name": group.name,
        "index": group.id,
        "combine": False,
        "backendGroupId": group.backend_group_id,
    }


def model_view(
    model: SDAModel, description: str, groups: list[ModelGroup], limits: TimeLimits | None = None
) -> dict[str, Any]:
    """An SDA model as the document's SDAModel; ``group`` is its first model group (``groups`` lists all).

    ``timeLimitDefault`` and ``timeLimitMax`` (ours) are the model's job time limits in seconds (null: not set).
    """
    briefs = [_group_brief(g) for g in groups]
    return {
        "id": model.id,
        "name": model.name,
        "numDevices": model.devices,
        "description": description,
        "group": briefs[0] if briefs else None,
        "groups": briefs,
        "timeLimitDefault": limits.default if limits else None,
        "timeLimitMax": limits.maximum if limits else None,
    }


def group_view(group: ModelGroup, descriptions: dict[int, str]) -> dict[str, Any]:
    """An SDA model group as the document's Group, with its models and backend group."""
    return {
        **_group_brief(group),
        "backendGroupName": group.backend_group_name,
        "tokenlist": [],
        "sdamodellist": [
            {"id": m.id, "name": m.name, "numDevices": m.devices, "description": descriptions.get(m.id, "")}
            for m in group.models
        ],
    }


def _models(s: Session, caller: ApiCaller, token: str | None) -> list[dict[str, Any]]:
    groups = s.model_groups.all()
    descriptions = s.models.descriptions()
    limits = s.limits.models()
    if token is None and caller.reads_all:
        groups_of: dict[int, list[ModelGroup]] = {}
        for group in groups:
            for model in group.models:
                groups_of.setdefault(model.id, []).append(group)
        return [
            model_view(m, descriptions.get(m.id, ""), groups_of.get(m.id, []), limits.get(m.id)) for m in s.models.all()
        ]
    who = token if token is not None else caller.token
    if not caller.reads_all:
        require_self_or_admin(caller, who)
    s.tokens.get(who)
    chosen: dict[int, tuple[SDAModel, list[ModelGroup]]] = {}
    for choice in s.model_groups.choices_for(who):
        entry = chosen.setdefault(choice.model.id, (choice.model, []))
        if choice.group is not None:
            entry[1].append(choice.group)
    return [model_view(m, descriptions.get(m.id, ""), g, limits.get(m.id)) for m, g in chosen.values()]


@router.get("/api/sdamanager/sdamodel", summary="List SDA models (those a token may use, with token)")
def list_models(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """Every model (ADMIN, DEVELOPER), or the models ``token`` may use (a USER: its own token's by default)."""
    token = param(request, "token", str, required=False)
    with request.app.state.store.reading() as s:
        return _models(s, caller, token)


@router.post("/api/sdamanager/sdamodel", summary="Add an SDA model")
def create_model(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Add model ``name`` of ``numDevices`` devices described by ``desc`` (``timeLimitDefault``/``timeLimitMax``: ours)."""
    from moreh_tools.services.limits import apply_model_limits

    require_admin(caller)
    name = param(request, "name", str)
    devices = param(request, "numDevices", int)
    description = param(request, "desc", str)
    limit_default = param(request, "timeLimitDefault", required=False)
    limit_max = param(request, "timeLimitMax", required=False)
    with request.app.state.store.transaction("api: POST /api/sdamanager/sdamodel") as s:
        model_id = s.models.create(name, devices)
        s.models.describe(model_id, description)
        limits = None
        if limit_default is not None or limit_max is not None:
            limits = apply_model_limits(s, model_id, limit_default, limit_max)
        return success(model_view(s.models.get(model_id), description, [], limits))


@router.put("/api/sdamanager/sdamodel", summary="Change an SDA model's job time limits (ours)")
def update_model(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Set model ``sdamodel``'s ``timeLimitDefault`` and/or ``timeLimitMax`` (``moreh-run --time`` forms; null clears)."""
    from moreh_tools.api.errors import SYNTAX, ApiError
    from moreh_tools.services.limits import apply_model_limits

    require_admin(caller)
    model_id = param(request, "sdamodel", int)
    limit_default = param(request, "timeLimitDefault", required=False)
    limit_max = param(request, "timeLimitMax", required=False)
    if limit_default is None and limit_max is None:
        raise ApiError(SYNTAX, "SyntaxError. Nothing to change: give 'timeLimitDefault' and/or 'timeLimitMax'.")
    with request.app.state.store.transaction("api: PUT /api/sdamanager/sdamodel") as s:
        limits = apply_model_limits(s, model_id, limit_default, limit_max)
        return success(model_view(s.models.get(model_id), s.models.descriptions().get(model_id, ""), [], limits))


@router.delete("/api/sdamanager/sdamodel", summary="Delete an SDA model")
def delete_model(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Delete model ``sdamodel`` (no SDA may use it)."""
    require_admin(caller)
    model_id = param(request, "sdamodel", int)
    with request.app.state.store.transaction("api: DELETE /api/sdamanager/sdamodel") as s:
        s.models.delete(model_id)
    return success()


@router.post("/api/sdamanager/sdamodel/grouping", summary="Add a model to a model group")
def add_model_to_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Add model ``sdamodel`` to SDA model group ``group``."""
    require_admin(caller)
    model_id = param(request, "sdamodel", int)
    group_id = param(request, "group", int)
    with request.app.state.store.transaction("api: POST /api/sdamanager/sdamodel/grouping") as s:
        s.model_groups.add_member(group_id, model_id)
    return success()


@router.delete("/api/sdamanager/sdamodel/grouping", summary="Remove a model from a model group")
def remove_model_from_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Remove model ``sdamodel`` from SDA model group ``group``."""
    require_admin(caller)
    model_id = param(request, "sdamodel", int)
    group_id = param(request, "group", int)
    with request.app.state.store.transaction("api: DELETE /api/sdamanager/sdamodel/grouping") as s:
        s.model_groups.remove_member(group_id, model_id)
    return success()


@router.get("/api/sdamanager/sdamodel/group", summary="List SDA model groups")
def list_model_groups(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """Every SDA model group with its models and backend group."""
    require_reader(caller)
    with request.app.state.store.reading() as s:
        descriptions = s.models.descriptions()
        return [group_view(g, descriptions) for g in s.model_groups.all()]


@router.post("/api/sdamanager/sdamodel/group", summary="Create an SDA model group")
def create_model_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Create group ``label`` tied to backend group ``groupId`` (default: the default backend group 0)."""
    require_admin(caller)
    label = param(request, "label", str)
    backend_group = param(request, "groupId", int, required=False, default=0)
    with request.app.state.store.transaction("api: POST /api/sdamanager/sdamodel/group") as s:
        group_id = s.model_groups.create(label, backend_group)
        return success(group_view(s.model_groups.get(group_id), s.models.descriptions()))


@router.put("/api/sdamanager/sdamodel/group", summary="Rename an SDA model group")
def rename_model_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Rename group ``id`` to ``label``."""
    require_admin(caller)
    group_id = param(request, "id", int)
    label = param(request, "label", str)
    with request.app.state.store.transaction("api: PUT /api/sdamanager/sdamodel/group") as s:
        s.model_groups.rename(group_id, label)
    return success()


@router.delete("/api/sdamanager/sdamodel/group", summary="Delete an SDA model group (or one model from it)")
def delete_model_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Delete group ``id`` (with its models listed it needs ``force=true``); with ``sdaid``, only remove that SDA model
    from the group."""
    require_admin(caller)
    group_id = param(request, "id", int)
    model_id = param(request, "sdaid", int, required=False)
    force = param(request, "force", bool, required=False, default=False)
    with request.app.state.store.transaction("api: DELETE /api/sdamanager/sdamodel/group") as s:
        if model_id is not None:
            s.model_groups.remove_member(group_id, model_id)
        else:
            s.model_groups.delete(group_id, force)
    return success()
