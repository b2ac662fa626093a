"""Backend: worker nodes, their devices, IPMI power, and backend groups (``/api/backend...``).

Listings need an ADMIN or DEVELOPER token; every change needs an ADMIN token.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api import ipmi
from moreh_tools.api.auth import CallerDep, require_admin, require_reader
from moreh_tools.api.errors import SYNTAX, ApiError
from moreh_tools.api.params import param
from moreh_tools.api.views import backend_brief, success
from state.backends import check_ip
from state.records import Backend, BackendGroup

router = APIRouter(tags=["Backend"])
PUT_COMMANDS = ("update", "reconnect", "on", "off", "cycle", "reset")
# The document's device statuses; BUSY has no scheduler meaning of its own, it holds devices like a running job.
DEVICE_STATUS = {"SHUTDOWN": "SHUTDOWN", "IDLE": "IDLE", "BUSY": "PROCESSING"}
IPMI_UNKNOWN, IPMI_OK = -1, 0


def group_view(group: BackendGroup) -> dict[str, Any]:
    """A backend group as the document's Group, with its backends."""
    return {
        "id": group.id,
        "name": group.name,
        "index": group.id,
        "combine": False,
        "tokenlist": [],
        "backendlist": [{"id": bid, "name": host} for bid, host in group.backends],
    }


def backend_view(backend: Backend, ipmi_info: dict[int, tuple[str, int]]) -> dict[str, Any]:
    """A backend as the document's Backend: devices, group and IPMI address."""
    ipmi_ip, ipmi_status = ipmi_info.get(backend.id, ("", IPMI_UNKNOWN))
    return {**backend_brief(backend), "ipmi": {"ip": ipmi_ip, "status": ipmi_status}}


@router.get("/api/backend", summary="List backends (or one with id)")
def list_backends(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """Every backend, or only ``id``, with its devices, group and IPMI address."""
    require_reader(caller)
    backend_id = param(request, "id", int, required=False)
    with request.app.state.store.reading() as s:
        backends = [s.backends.get(backend_id)] if backend_id is not None else s.backends.all()
        info = s.backends.ipmi_addresses()
        return [backend_view(b, info) for b in backends]


@router.post("/api/backend", summary="Create a backend")
def create_backend(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Register a worker: ``label`` (name), ``workerip``, ``node`` (IPMI IP), ``group``; ``devices`` (default 0,
    the worker's daemon adds its GPUs when it reports)."""
    require_admin(caller)
    node = param(request, "node", str)
    label = param(request, "label", str)
    group = param(request, "group", int)
    worker_ip = param(request, "workerip", str)
    devices = param(request, "devices", int, required=False, default=0)
    with request.app.state.store.transaction("api: POST /api/backend") as s:
        ipmi_ip = check_ip(node)
        backend_id = s.backends.create(label, worker_ip, devices)
        if group != 0:
            s.backends.update_group(backend_id, group)
        s.backends.set_ipmi(backend_id, ipmi_ip, IPMI_UNKNOWN)
        return success(backend_view(s.backends.get(backend_id), s.backends.ipmi_addresses()))


@router.put("/api/backend", summary="Update a backend, reconnect IPMI, or power on/off/cycle/reset")
def update_backend(request: Request, caller: CallerDep) -> Any:
    """``command=update`` edits ``label``/``workerip``/``node`` of ``id``; ``reconnect`` checks the IPMI of ``node``;
    ``on``/``off``/``cycle``/``reset`` run ipmitool on ``id`` or ``node`` with ``user`` and ``pwd`` (603 on failure).
    """
    require_admin(caller)
    command = param(request, "command", str)
    if command not in PUT_COMMANDS:
        raise ApiError(
            SYNTAX, f"SyntaxError. Parameter 'command' must be one of {', '.join(PUT_COMMANDS)}, got '{command[:40]}'."
        )
    backend_id = param(request, "id", int, required=command == "update")
    node = param(request, "node", str, required=command == "reconnect")
    label = param(request, "label", str, required=False)
    worker_ip = param(request, "workerip", str, required=False)
    user = param(request, "user", str, required=command not in ("update", "reconnect"))
    password = param(request, "pwd", str, required=command not in ("update", "reconnect"))
    store = request.app.state.store
    if command == "update":
        with store.transaction("api: PUT /api/backend update") as s:
            s.backends.get(backend_id)
            if label is not None:
                s.backends.update_host(backend_id, label)
            if worker_ip is not None:
                s.backends.update_ip(backend_id, worker_ip)
            if node is not None:
                status = s.backends.ipmi_addresses().get(backend_id, ("", IPMI_UNKNOWN))[1]
                s.backends.set_ipmi(backend_id, check_ip(node), status)
        return success()
    with store.reading() as s:
        if backend_id is not None:
            s.backends.get(backend_id)
            address = s.backends.ipmi_addresses().get(backend_id, (None, IPMI_UNKNOWN))[0] or node
            if address is None:
                raise ApiError(SYNTAX, f"SyntaxError. Backend {backend_id} has no IPMI address; give 'node'.")
        else:
            if node is None:
                raise ApiError(SYNTAX, "SyntaxError. Parameter 'id' or 'node' is required for power commands.")
            backend_id = s.backends.by_ipmi_or_worker_ip(node)
            address = node
    check_ip(address)
    if command == "reconnect" and user is None:
        # Without credentials only the address can be checked; the next power command will test the session.
        result = ""
        status = IPMI_UNKNOWN
    else:
        try:
            ipmi.power(address, user or "", password or "", "status" if command == "reconnect" else command)
        except ApiError:
            with store.transaction(f"api: PUT /api/backend {command} (failed)") as s:
                s.backends.set_ipmi(backend_id, address, IPMI_UNKNOWN)
                s.events.record("IPMI_FAILED", f"backend={backend_id} command={command}")
            raise
        result, status = "ok", IPMI_OK
    with store.transaction(f"api: PUT /api/backend {command}") as s:
        s.backends.set_ipmi(backend_id, address, status)
        s.events.record("IPMI_" + command.upper(), f"backend={backend_id} address={address} {result}".strip())
    return success()


@router.delete("/api/backend", summary="Delete a backend")
def delete_backend(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Remove backend ``id`` (none of its devices may be held by a job or a reserved SDA)."""
    require_admin(caller)
    backend_id = param(request, "id", int)
    with request.app.state.store.transaction("api: DELETE /api/backend") as s:
        s.backends.delete(backend_id)
    return success()


def _device_status(request: Request, caller: Any) -> dict[str, Any]:
    require_admin(caller)
    backend_id = param(request, "id", int)
    status = param(request, "status", str)
    state_status = DEVICE_STATUS.get(status.upper())
    if state_status is None:
        raise ApiError(
            SYNTAX, f"SyntaxError. Parameter 'status' must be one of SHUTDOWN, IDLE, BUSY, got '{status[:40]}'."
        )
    with request.app.state.store.transaction("api: PUT /api/backend/device/status") as s:
        s.backends.update_device(backend_id, None, state_status)
    return success()


@router.put("/api/backend/device/status", summary="Set the status of all devices of a backend")
def set_device_status(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Set every device of backend ``id`` to ``status`` (SHUTDOWN, IDLE or BUSY; any case)."""
    return _device_status(request, caller)


@router.get("/api/backend/device/status", summary="Set device status (the document's GET form)")
def set_device_status_get(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The document's directive says GET; its example and summary say PUT. Both are served."""
    return _device_status(request, caller)


@router.post("/api/backend/grouping", summary="Put a backend into a group")
def add_to_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Move ``backend`` from the default group into ``group``."""
    require_admin(caller)
    group = param(request, "group", int)
    backend = param(request, "backend", int)
    with request.app.state.store.transaction("api: POST /api/backend/grouping") as s:
        s.backend_groups.add(group, backend)
    return success()


@router.put("/api/backend/grouping", summary="Move a backend to another group")
def move_to_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Move ``backend`` into ``group`` from whichever group holds it."""
    require_admin(caller)
    group = param(request, "group", int)
    backend = param(request, "backend", int)
    with request.app.state.store.transaction("api: PUT /api/backend/grouping") as s:
        s.backend_groups.require(group)
        s.backends.update_group(backend, group)
    return success()


@router.delete("/api/backend/grouping", summary="Remove a backend from its group")
def remove_from_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Return ``backend`` to the default group (from ``group`` when given); with only ``group``, empty it."""
    require_admin(caller)
    group = param(request, "group", int, required=False)
    backend = param(request, "backend", int, required=False)
    if group is None and backend is None:
        raise ApiError(SYNTAX, "SyntaxError. Parameter 'backend' (or 'group') is required, e.g. ?backend=1.")
    with request.app.state.store.transaction("api: DELETE /api/backend/grouping") as s:
        if backend is None:
            s.backend_groups.replace_members(group, [])
        elif group is None:
            s.backends.update_group(backend, None)
        else:
            s.backend_groups.remove(group, backend)
    return success()


@router.get("/api/backend/group", summary="List backend groups")
def list_groups(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """Every backend group with its backends."""
    require_reader(caller)
    with request.app.state.store.reading() as s:
        return [group_view(g) for g in s.backend_groups.all()]


@router.post("/api/backend/group", summary="Create a backend group")
def create_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Create a group named ``label`` (the declared name ``group`` is accepted too)."""
    require_admin(caller)
    label = param(request, "label", str, required=False)
    if label is None:
        label = param(request, "group", str, required=False)
    if label is None:
        raise ApiError(SYNTAX, "SyntaxError. Parameter 'label' is required (text), e.g. ?label=ktc.")
    with request.app.state.store.transaction("api: POST /api/backend/group") as s:
        group_id = s.backend_groups.create(label)
        return success(group_view(s.backend_groups.all(group_id)[0]))


@router.put("/api/backend/group", summary="Rename a backend group")
def rename_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Rename group ``id`` to ``label``."""
    require_admin(caller)
    group_id = param(request, "id", int)
    label = param(request, "label", str)
    with request.app.state.store.transaction("api: PUT /api/backend/group") as s:
        s.backend_groups.rename(group_id, label)
        return success(group_view(s.backend_groups.all(group_id)[0]))


@router.delete("/api/backend/group", summary="Delete a backend group")
def delete_group(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Delete group ``id``; one with backends needs ``force=true`` (they return to the default group)."""
    require_admin(caller)
    group_id = param(request, "id", int)
    force = param(request, "force", bool, required=False, default=False)
    with request.app.state.store.transaction("api: DELETE /api/backend/group") as s:
        s.backend_groups.delete(group_id, force)
    return success()
