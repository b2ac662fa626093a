"""JSON shapes of the Moreh API document (part A.1) for tokens, user groups, SDAs and jobs.

Each shape keeps the document's field names and adds what the document lacks (access level, SDA ids, the
job's state) under further camelCase names. Other users' token values pass through ``auth.redact``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import Request

from moreh_tools.api.auth import ApiCaller, redact
from state.records import SDA, DeviceRef, HistoryEntry, Job, Token, UserGroup

if TYPE_CHECKING:
    from moreh_tools.services.caller import Caller
    from moreh_tools.services.context import ServiceContext
    from state.records import Backend
    from state.session import Session
    from state.store import StateStore

# The document's job statuses; SUBMITTED (devices given, command not started yet) counts as Running.
JOB_STATUS = {"QUEUED": "Waiting", "SUBMITTED": "Running", "RUNNING": "Running"}
END_STATUS = {
    "finished": "Completed",
    "failed": "Failed",
    "lost": "Failed",
    "released": "Canceled",
    "timeout": "Timeout",
    "preempted": "Preempted",
    "idle": "Canceled",
}


def api_time(value: datetime | None) -> str | None:
    """``2021-11-10 07:20:00.263`` (local time, milliseconds), the document's JobInfo time form."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def iso_utc(value: datetime) -> str:
    """``2021-10-11T20:28:06.521Z``: a stored (local, naive) time as ISO-8601 UTC, the Event form."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def success(result: Any = None) -> dict[str, Any]:
    """``{"code": "SUCCESS"}``, with ``result`` when given."""
    return {"code": "SUCCESS"} if result is None else {"code": "SUCCESS", "result": result}


class TokenViews:
    """Token and user-group shapes for one request, with the tokens and groups read once."""

    def __init__(self, s: Session, caller: ApiCaller, values: Iterable[str] | None = None) -> None:
        """Read the tokens ``values`` (all tokens when None) and every user group."""
        self.caller = caller
        self.tokens: dict[str, Token] = (
            {t.value: t for t in s.tokens.all()} if values is None else s.tokens.many(list(values))
        )
        self.groups = s.user_groups.all()
        self.limits = s.limits.tokens()
        self.groups_of: dict[str, list[UserGroup]] = {}
        for group in self.groups:
            for member in group.tokens:
                self.groups_of.setdefault(member, []).append(group)

    def visible_groups(self) -> list[UserGroup]:
        """Every user group for ADMIN and DEVELOPER; for USER, the groups its token is in."""
        return self.groups if self.caller.reads_all else self.groups_of.get(self.caller.token, [])

    def sees(self, value: str) -> bool:
        """Whether the caller may see this token's details (its own, or any for ADMIN and DEVELOPER)."""
        return self.caller.reads_all or self.caller.owns(value)

    def value(self, value: str) -> str:
        """The token value as the caller may see it."""
        return redact(value, self.caller) or ""

    def group(self, group: UserGroup, *, member_objects: bool = False) -> dict[str, Any]:
        """A user group: ``tokenlist`` holds token values, or token objects with ``member_objects``."""
        members: list[Any] = [
            self.token(m, with_groups=False) if member_objects else self.value(m) for m in group.tokens
        ]
        return {
            "id": group.id,
            "name": group.name,
            "index": group.id,
            "combine": False,
            "description": group.description,
            "tokenlist": members,
        }

    def token(self, value: str, *, with_groups: bool = True) -> dict[str, Any]:
        """A token object; another user's token shows only its redacted value to USER callers."""
        token = self.tokens.get(value)
        if token is None or not self.sees(value):
            return {"value": self.value(value)}
        shown: dict[str, Any] = {
            "value": self.value(value),
            "description": token.description,
            "priority": token.priority,
        }
        if with_groups:
            shown["grouplist"] = [self.group(g) for g in self.groups_of.get(value, [])]
        shown.update(
            accessLevel=token.access_level,
            maxSdaCount=token.max_sda,
            targetSdaId=token.current_sda,
            maxDuplicates=token.duplicable,
        )
        limits = self.limits.get(value)
        shown.update(
            timeLimitDefault=limits.default if limits else None, timeLimitMax=limits.maximum if limits else None
        )
        if self.caller.is_admin or self.caller.owns(value):
            shown["env"] = dict(token.env)
        return shown


def _by_backend(devices: Sequence[DeviceRef]) -> dict[int, list[DeviceRef]]:
    out: dict[int, list[DeviceRef]] = {}
    for d in devices:
        out.setdefault(d.backend_id, []).append(d)
    return out


def backend_brief(backend: Backend, indexes: Iterable[int] | None = None) -> dict[str, Any]:
    """A backend as ``GET /api/backend`` shows it (without IPMI), its ``devices`` limited to ``indexes`` when given."""
    wanted = None if indexes is None else set(indexes)
    return {
        "id": backend.id,
        "type": "GPU",
        "ip": backend.ip,
        "port": "",
        "devices": [
            {
                "id": d.index,
                "name": d.name or f"Device {d.index}",
                "backendId": str(backend.id),
                "status": d.status,
                "uuid": d.uuid,
                "memoryTotalMiB": d.memory_total_mib,
            }
            for d in backend.devices
            if wanted is None or d.index in wanted
        ],
        "name": backend.host,
        "status": backend.status,
        "group": {"id": backend.group_id, "name": backend.group_name, "index": backend.group_id, "combine": False},
    }


class SdaViews:
    """SDA shapes for one request: models, tokens and the backends the SDAs hold, each read once."""

    def __init__(self, s: Session, caller: ApiCaller, sdas: Sequence[SDA]) -> None:
        """Read what the shapes of ``sdas`` need."""
        self.models = {m.id: m for m in s.models.all()}
        self.tokens = TokenViews(s, caller, {sda.token for sda in sdas})
        backend_ids = sorted({d.backend_id for sda in sdas for d in sda.devices})
        self.backends = {b: s.backends.get(b) for b in backend_ids}

    def sda(self, sda: SDA) -> dict[str, Any]:
        """An SDA: its model, token, and the backends and devices it holds now (reserved or running a job)."""
        model = self.models.get(sda.model_id)
        return {
            "id": sda.id,
            "modelId": sda.model_id,
            "token": self.tokens.token(sda.token),
            "reserved": sda.reserved,
            "numDevices": model.devices if model else 0,
            "backends": [
                backend_brief(self.backends[b], [d.index for d in held])
                for b, held in _by_backend(sda.devices).items()
                if b in self.backends
            ],
            "description": sda.description,
            "sdamodelName": model.name if model else "",
            "sdamodelGroupId": sda.model_group_id,
        }


def _device_info(devices: Sequence[DeviceRef]) -> str:
    hosts: dict[str, list[int]] = {}
    for d in devices:
        hosts.setdefault(d.backend_host, []).append(d.index)
    return json.dumps(
        {"device_info": [{"host": host, "devices": sorted(idx)} for host, idx in hosts.items()]},
        separators=(",", ":"),
    )


def job_info(job: Job, tokens: TokenViews, position: int | None = None) -> dict[str, Any]:
    """A queued or running job as the document's JobInfo (``queuePosition`` for a waiting one)."""
    return {
        "id": job.id,
        "token": tokens.token(job.token, with_groups=False),
        "priority": job.priority,
        "status": JOB_STATUS.get(job.status, job.status.title()),
        "clientPid": job.pid if job.pid is not None else job.launcher_pid,
        "processName": job.process_name,
        "requestTime": api_time(job.request_time),
        "startTime": api_time(job.start_time),
        "endTime": None,
        "referer": {"protocol": "moreh-run", "ipAddress": job.host},
        "deviceCount": job.device_count,
        "deviceInfo": _device_info(job.devices),
        "sdaId": job.sda_id,
        "host": job.host,
        "state": job.status,
        "queuePosition": position,
        "releaseRequested": job.release_requested,
        "timeLimit": job.time_limit,
    }


def history_info(entry: HistoryEntry, tokens: TokenViews) -> dict[str, Any]:
    """An ended job as the document's JobInfo, with its exit code and end reason."""
    return {
        "id": entry.id,
        "token": tokens.token(entry.token, with_groups=False),
        "priority": entry.priority,
        "status": END_STATUS.get(entry.end_reason, entry.end_reason.title()),
        "clientPid": entry.pid,
        "processName": entry.process_name,
        "requestTime": api_time(entry.request_time),
        "startTime": api_time(entry.start_time),
        "endTime": api_time(entry.end_time),
        "referer": {"protocol": "moreh-run", "ipAddress": entry.host},
        "deviceCount": entry.device_count,
        "deviceInfo": _device_info(entry.device_refs),
        "sdaId": entry.sda_id,
        "host": entry.host,
        "exitCode": entry.exit_code,
        "endReason": entry.end_reason,
    }


def store_of(request: Request) -> StateStore:
    """The state store the app serves."""
    store: StateStore = request.app.state.store
    return store


def service_context(request: Request, caller: Caller) -> ServiceContext:
    """The services' context of a request: the daemon's open state, its job hub, this host."""
    from moreh_tools.services.context import ServiceContext

    state = request.app.state
    return ServiceContext(
        db=state.store,
        caller=caller,
        notifier=state.hub,
        host=state.host,
        machine_id=state.machine_id,
        in_daemon=True,
        daemon_running=True,
    )


def command_text(request: Request) -> str:
    """What events record as the command: ``api: METHOD path``."""
    return f"api: {request.method} {request.url.path}"
