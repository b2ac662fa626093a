"""Extensions beyond the 52 documented endpoints: what ``moreh-smi`` and ``moreh-switch-model`` need remotely.

Each answers for the caller's own token only (any access level): the user tools run on a user's host with
``MOREH_SDA_MANAGER_ADDRESS`` set and render the answer with the same code as on the master.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import CallerDep
from moreh_tools.api.errors import BACKEND, ApiError
from moreh_tools.api.params import param
from moreh_tools.smi.common import UserError

router = APIRouter(tags=["Remote tools"])


def _refused(exc: UserError) -> ApiError:
    # The user tools' refusals ("no current device", "in use") are back-end refusals with the tool's own line;
    # a usage refusal (exit status 2 locally, e.g. a device id that is not a number) is HTTP 422 so the client
    # exits with 2 too.
    from moreh_tools.remote.tools import USAGE_REFUSED
    from moreh_tools.smi.common import EXIT_USAGE

    return ApiError(BACKEND, str(exc), USAGE_REFUSED if exc.code == EXIT_USAGE else 409)


@router.get("/api/remote/smi/status", summary="The caller's moreh-smi status (extension)")
def smi_status(request: Request, caller: CallerDep) -> dict[str, Any]:
    """``{"status": ...}``: the moreh-smi status dataclasses of the caller's token, as JSON."""
    from moreh_tools.smi.status import collect_status

    try:
        with request.app.state.store.reading() as s:
            status = collect_status(s, caller.token)
    except UserError as exc:
        raise _refused(exc) from None
    return {"status": asdict(status)}


@router.get("/api/remote/switchmodel", summary="The caller's current model and model choices (extension)")
def switch_model_options(request: Request, caller: CallerDep) -> dict[str, Any]:
    """``{"current": "Small at mg1", "options": [ModelOption...], "lines": ["1. Small  *", ...]}``."""
    from moreh_tools.smi import devices

    try:
        with request.app.state.store.reading() as s:
            sda = devices.current_device(s, caller.token)
            options = devices.model_options(s, caller.token)
            current = next((o.text for o in options if o.is_model_of(sda)), None)
            if current is None:  # the admin took the current model out of the token's reach: still name it
                name = s.models.get(sda.model_id).name
                group = s.model_groups.get(sda.model_group_id).name if sda.model_group_id is not None else None
                current = f"{name} at {group}" if group else name
            lines = devices.list_lines(options, sda, marker=True)
    except UserError as exc:
        raise _refused(exc) from None
    return {"current": current, "options": [asdict(o) for o in options], "lines": lines}


@router.post("/api/remote/switchmodel", summary="Switch the caller's current device to a model (extension)")
def switch_model(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Switch to ``model`` (list number, name or name@group) or to ``modelId`` (+ ``groupId``).

    ``{"changed": bool, "option": ModelOption}``; refusals are 602 with moreh-switch-model's own line.
    """
    text = param(request, "model", str, required=False)
    model_id = param(request, "modelId", int, required=False)
    group_id = param(request, "groupId", int, required=False)
    if (text is None) == (model_id is None):
        raise ApiError(600, "SyntaxError. Give exactly one of the parameters 'model' and 'modelId'.")
    from moreh_tools.smi import devices

    try:
        with request.app.state.store.transaction("moreh-switch-model (api)") as s:
            devices.current_device(s, caller.token)
            options = devices.model_options(s, caller.token)
            if text is not None:
                option = devices.resolve_model(options, text)
            else:
                found = [o for o in options if o.model_id == model_id and o.group_id == group_id]
                if not found:
                    raise UserError(
                        f"Model {model_id} is not a model this token may use; see 'moreh-smi device --list'."
                    )
                option = found[0]
            changed = devices.switch_model(s, caller.token, option)
    except UserError as exc:
        raise _refused(exc) from None
    return {"changed": changed, "option": asdict(option)}


@router.get("/api/remote/smi/version", summary="What moreh-smi -s shows: server and worker versions (extension)")
def smi_version(request: Request, caller: CallerDep) -> dict[str, Any]:
    """``{"pairs": [["Server", ...], ["Latest Version", ...], ["Supported Versions", ...]]}``."""
    from moreh_tools import __version__

    with request.app.state.store.reading() as s:
        versions = s.versions.all()
    latest = next((v.version for v in versions if v.latest), "")
    supported = ", ".join(v.version for v in versions if v.supported)
    pairs = [["Server", f"moreh-tools {__version__}"], ["Latest Version", latest], ["Supported Versions", supported]]
    return {"pairs": pairs}


@router.post("/api/remote/smi/reset", summary="moreh-smi -r: release the caller's jobs (extension)")
def smi_reset(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Release the caller's jobs (of device ``idx`` only, when given); ``{"released": [job ids]}``.

    Queued jobs leave the queue; a running job's host daemon ends its processes and its launcher records the end.
    """
    idx = param(request, "idx", str, required=False)
    from moreh_tools import identity
    from moreh_tools.jobs.control import release_jobs
    from moreh_tools.smi.devices import owned_device

    store = request.app.state.store
    try:
        with store.reading() as s:
            device = owned_device(s, caller.token, idx).id if idx is not None else None
            jobs = [j for j in s.jobs.of_token(caller.token) if device is None or j.sda_id == device]
    except UserError as exc:
        raise _refused(exc) from None
    if not jobs:
        raise ApiError(BACKEND, "Device release failed. (Not running job.)", 409)
    return {"released": release_jobs(store, jobs, identity.host_name())}


# moreh-smi device --list/--add/--rm/--switch: the steps of moreh_tools.smi.device_cli, for the caller's token.


@router.get("/api/remote/smi/device/models", summary="The models the caller may add a device of (extension)")
def device_models(request: Request, caller: CallerDep) -> dict[str, Any]:
    """``{"options": [ModelOption...]}``; with ``room=true`` refused (602) when the caller is at its max SDA."""
    need_room = param(request, "room", bool, required=False, default=False)
    from moreh_tools.smi.device_cli import models_in

    try:
        with request.app.state.store.reading() as s:
            options = models_in(s, caller.token, need_room=bool(need_room))
    except UserError as exc:
        raise _refused(exc) from None
    return {"options": [asdict(o) for o in options]}


@router.post("/api/remote/smi/device/add", summary="moreh-smi device --add: add a device (extension)")
def device_add(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Add a device of ``model`` (list number, name or name@group) or of the picked ``option`` (a ModelOption
    as JSON); ``{"table", "room", "options"}``."""
    text = param(request, "model", str, required=False)
    picked = param(request, "option", str, required=False)
    if (text is None) == (picked is None):
        raise ApiError(600, "SyntaxError. Give exactly one of the parameters 'model' and 'option'.")
    from moreh_tools.smi.device_cli import add_in

    model = text if text is not None else _option_from(str(picked))
    try:
        with request.app.state.store.transaction("moreh-smi device --add (api)") as s:
            added = add_in(s, caller.token, model)
    except UserError as exc:
        raise _refused(exc) from None
    return {"table": added.table, "room": added.room, "options": [asdict(o) for o in added.options]}


def _option_from(text: str) -> Any:
    import json

    from moreh_tools.smi.devices import ModelOption

    kinds: dict[str, tuple[type, ...]] = {
        "number": (int,),
        "model_id": (int,),
        "name": (str,),
        "devices": (int,),
        "group_id": (int, type(None)),
        "group_name": (str, type(None)),
    }
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if (
        not isinstance(data, dict)
        or set(data) != set(kinds)
        or not all(isinstance(data[k], t) and not isinstance(data[k], bool) for k, t in kinds.items())
    ):
        raise ApiError(600, f"SyntaxError. Parameter 'option' must be a JSON object with the keys {', '.join(kinds)}.")
    return ModelOption(**data)


@router.get("/api/remote/smi/device/owned", summary="The caller's device ids and their table (extension)")
def device_owned(request: Request, caller: CallerDep) -> dict[str, Any]:
    """``{"owned": [device ids], "table": "..."}``: what the --rm/--switch pickers show."""
    from moreh_tools.smi.device_cli import owned_in

    try:
        with request.app.state.store.reading() as s:
            owned, table = owned_in(s, caller.token)
    except UserError as exc:
        raise _refused(exc) from None
    return {"owned": owned, "table": table}


@router.post("/api/remote/smi/device/rm", summary="moreh-smi device --rm: remove a device (extension)")
def device_rm(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Remove the caller's device ``device`` (refused while a job uses it); ``{"table": "..."}``."""
    device = param(request, "device", str)
    return _change(request, caller.token, "rm", device)


@router.post("/api/remote/smi/device/switch", summary="moreh-smi device --switch: current device (extension)")
def device_switch(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Make the caller's device ``device`` its current one; ``{"table": "..."}``."""
    device = param(request, "device", str)
    return _change(request, caller.token, "switch", device)


def _change(request: Request, token: str, action: str, device: str) -> dict[str, Any]:
    from moreh_tools.smi.device_cli import change_in

    try:
        with request.app.state.store.transaction(f"moreh-smi device --{action} (api)") as s:
            table = change_in(s, token, action, device)
    except UserError as exc:
        raise _refused(exc) from None
    return {"table": table}
