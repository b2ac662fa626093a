"""The GPU guardian (not in the Moreh API document): the devices it keeps out of use, and idle policies.

``GET /api/guardian/devices`` (ADMIN, DEVELOPER) lists the flags; ``GET/PUT/DELETE /api/guardian/idle`` (ADMIN)
lists, sets and clears the idle policy of a token or an SDA model, with the console's rules.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import CallerDep
from moreh_tools.api.params import param
from moreh_tools.api.views import service_context, success
from state.records import DeviceFlag, IdlePolicyRow

router = APIRouter(tags=["Guardian"])


def flag_view(flag: DeviceFlag) -> dict[str, Any]:
    """One flag: where (``device`` null: the whole backend), what kind, since when, why, and the process."""
    return {
        "backendId": flag.backend_id,
        "host": flag.host,
        "device": flag.index,
        "kind": flag.kind,
        "cause": flag.cause,
        "since": flag.since.isoformat(sep=" ", timespec="seconds"),
        "pid": flag.pid,
        "user": flag.user,
        "memoryMiB": flag.memory_mib,
        "jobId": flag.job_id,
        "deviceJobId": flag.device_job,
    }


def policy_view(policy: IdlePolicyRow) -> dict[str, Any]:
    """One idle policy (``window`` and ``grace`` in seconds)."""
    return {
        "scope": policy.scope,
        "target": policy.target,
        "util": policy.util_percent,
        "memory": policy.memory_mib,
        "window": policy.window_s,
        "grace": policy.grace_s,
        "updatedAt": policy.updated_at.isoformat(sep=" ", timespec="seconds"),
    }


@router.get("/api/guardian/devices", summary="List the devices the GPU guardian keeps out of use, and why")
def list_flags(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """Failed (UNHEALTHY) GPUs, GPUs a foreign process uses, and hosts whose NVML fails."""
    from moreh_tools.services import guardian

    return [flag_view(f) for f in guardian.device_flags(service_context(request, caller))]


@router.get("/api/guardian/idle", summary="List the idle policies")
def list_idle(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """Every idle policy of a token or an SDA model."""
    from moreh_tools.services import guardian

    return [policy_view(p) for p in guardian.idle_policies(service_context(request, caller))]


@router.put("/api/guardian/idle", summary="Set the idle policy of a token or an SDA model")
def set_idle(request: Request, caller: CallerDep) -> dict[str, Any]:
    """``scope`` token|sdamodel, ``target`` (token value or model id): reclaim a job's devices once its GPUs stayed
    below ``util`` % and ``memory`` MiB for ``window`` seconds, counted after ``grace`` seconds from its start."""
    from moreh_tools.services import guardian

    policy = guardian.set_idle_policy_values(
        service_context(request, caller),
        scope=param(request, "scope", str),
        target=param(request, "target", str),
        util=param(request, "util", float),
        memory=param(request, "memory", float),
        window=param(request, "window", float),
        grace=param(request, "grace", float, required=False, default=0.0),
    )
    return success(policy_view(policy))


@router.delete("/api/guardian/idle", summary="Clear the idle policy of a token or an SDA model")
def clear_idle(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Remove the idle policy of ``scope`` token|sdamodel ``target``."""
    from moreh_tools.services import guardian

    guardian.clear_idle_policy(
        service_context(request, caller), scope=param(request, "scope", str), target=param(request, "target", str)
    )
    return success()
