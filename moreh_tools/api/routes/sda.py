"""SDA endpoints (part A.2, 29-33): a token's software-defined accelerators and their utilisation.

A USER (or DEVELOPER) changes only its own token's SDAs; another token's answer 601 exactly as a missing one does.
Reserved SDAs hold devices for good, so only an ADMIN creates them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import CallerDep, require_admin, require_self_or_admin
from moreh_tools.api.errors import NOT_FOUND, ApiError
from moreh_tools.api.params import first_given, param
from moreh_tools.api.read_cache import cached_answer
from moreh_tools.api.views import SdaViews, command_text, store_of, success
from state.reports import job_processes

if TYPE_CHECKING:
    from moreh_tools.api.auth import ApiCaller
    from state.session import Session

router = APIRouter(tags=["SDA"])


def _sda_id(request: Request) -> int | None:
    """The SDA id of a change, under any of the names clients send it by."""
    return first_given(
        param(request, "sdaId", int, required=False),
        param(request, "sdaid", int, required=False),
        param(request, "id", int, required=False),
    )


def _sda_shown(s: Session, caller: ApiCaller, sda_id: int) -> dict[str, Any]:
    sda = s.sdas.get(sda_id)
    return SdaViews(s, caller, [sda]).sda(sda)


@router.get("/api/sdamanager/sda", summary="SDAs (one token's, or all for ADMIN/DEVELOPER)")
def get_sda(request: Request, caller: CallerDep) -> Any:
    """The caller's SDAs (``token`` picks another token for ADMIN/DEVELOPER); ``sdaId`` answers one SDA object."""
    token = param(request, "token", required=False)
    sda_id = first_given(param(request, "sdaId", int, required=False), param(request, "id", int, required=False))
    if token is None and not caller.reads_all:
        token = caller.token
    if token is not None and not caller.reads_all:
        require_self_or_admin(caller, token)

    def compute() -> Any:
        with store_of(request).reading() as s:
            sdas = s.sdas.of_token(token) if token is not None else s.sdas.all()
            if sda_id is not None:
                sdas = [sda for sda in sdas if sda.id == sda_id]
                if not sdas:
                    raise ApiError(NOT_FOUND, f"SDA {sda_id} not found.", 404)
            views = SdaViews(s, caller, sdas)
            shown = [views.sda(sda) for sda in sdas]
        return shown[0] if sda_id is not None else shown

    return cached_answer(request, caller, compute)


@router.post("/api/sdamanager/sda", summary="Create an SDA for a token")
def create_sda(request: Request, caller: CallerDep) -> Any:
    """Create an SDA of SDA model ``model`` for ``token``; ``group`` picks the SDA model group to reach it by."""
    model = param(request, "model", int)
    token = param(request, "token")
    desc = first_given(param(request, "desc", required=False), param(request, "description", required=False)) or ""
    reserved = param(request, "reserved", bool, required=False, default=False)
    group = param(request, "group", int, required=False)
    require_self_or_admin(caller, token)
    if reserved:
        require_admin(caller)
    with store_of(request).transaction(command_text(request)) as s:
        result = _sda_shown(s, caller, s.sdas.create(token, desc, model, group, reserved=reserved))
    return success(result)


@router.put("/api/sdamanager/sda", summary="Switch a token's SDA to another SDA model")
def update_sda(request: Request, caller: CallerDep) -> Any:
    """Switch SDA ``sdaId`` of ``token`` (its current SDA when left out) to SDA model ``model``."""
    token = param(request, "token")
    model = param(request, "model", int)
    sda_id = _sda_id(request)
    group = param(request, "group", int, required=False)
    require_self_or_admin(caller, token)
    with store_of(request).transaction(command_text(request)) as s:
        result = _sda_shown(s, caller, s.sdas.update_model(token, model, group, sda_id))
    return success(result)


@router.delete("/api/sdamanager/sda", summary="Delete a token's SDAs (or one of them)")
def delete_sda(request: Request, caller: CallerDep) -> Any:
    """Delete every SDA of ``token``, or only ``sdaId``; an SDA with a job in the queue is refused (602)."""
    token = param(request, "token")
    sda_id = _sda_id(request)
    require_self_or_admin(caller, token)
    with store_of(request).transaction(command_text(request)) as s:
        s.sdas.delete(token, sda_id)
    return success()


@router.get("/api/sdamanager/sdautilizations", summary="What a token's SDAs use now: memory, temperature, processes")
def get_sda_utilizations(request: Request, caller: CallerDep) -> Any:
    """The token's SDAs with the memory and temperature of the devices they hold, and the jobs' processes.

    ``id``, ``pid`` and ``processName`` describe the token's oldest running job (null when none runs).
    """
    token = param(request, "token", required=False) or caller.token
    if not caller.reads_all:
        require_self_or_admin(caller, token)
    with store_of(request).reading() as s:
        sdas = s.sdas.of_token(token)
        jobs = s.jobs.of_token(token)
        views = SdaViews(s, caller, sdas)
        processes = job_processes(s, [j.id for j in jobs])
        sdautils = []
        for sda in sdas:
            held = {(d.backend_id, d.index) for d in sda.devices}
            devices = [d for b, backend in views.backends.items() for d in backend.devices if (b, d.index) in held]
            temperatures = [d.temp_gpu for d in devices if d.temp_gpu is not None]
            sdautils.append(
                {
                    "totalMemory": sum(d.memory_total_mib or 0 for d in devices),
                    "usedMemory": sum(d.memory_used_mib or 0 for d in devices),
                    "temperature": max(temperatures) if temperatures else None,
                    "gpuPower": None,  # not sampled by moreh-tools
                    "sda": views.sda(sda),
                }
            )
    running = [j for j in jobs if j.status == "RUNNING"]
    first = running[0] if running else None
    return {
        "id": first.id if first else None,
        "pid": first.pid if first else None,
        "ptype": "job" if first else None,
        "processName": first.process_name if first else None,
        "sdautils": sdautils,
        "jobs": [
            {
                "id": j.id,
                "sdaId": j.sda_id,
                "status": j.status,
                "pid": j.pid if j.pid is not None else j.launcher_pid,
                "processName": j.process_name,
                "processes": [
                    {
                        "pid": p.pid,
                        "name": p.name,
                        "memoryMiB": p.memory_mib,
                        "backendId": p.backend_id,
                        "deviceIndex": p.device_index,
                    }
                    for p in processes
                    if p.job_id == j.id
                ],
            }
            for j in jobs
        ],
        "code": "SUCCESS",
    }
