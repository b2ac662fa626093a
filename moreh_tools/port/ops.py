"""Every operation a tool may ask of the state, by name: the service that does it and the type it returns.

The same table serves every way in: the in-process port calls the service directly, and the daemon's
socket and a master's HTTP API answer ``POST /api/v1/op/<name>`` with the JSON of the result. The
service modules and the result types are named as text and imported on first use: a tool that talks to
a daemon never loads the services (nor DuckDB), and only the result types of the ops it calls (each
frozen dataclass costs about a millisecond to create, dozens of them a third of a ``moreh-smi`` run).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from moreh_tools.services.records import (
        Access,
        Added,
        ConsoleResult,
        DeviceCheck,
        HostReply,
        JobUpdate,
        ModelOption,
        MyQuota,
        OwnedDevices,
        SmiStatus,
        Snapshot,
        Submitted,
        SwitchChoices,
        Switched,
        VersionInfo,
    )
    from state.records import QuotaRequest

T = TypeVar("T", covariant=True)

#: The version of the op protocol; a client and a daemon that differ say so in one line.
#: 2: ``job_started`` takes ``containment`` (how the launcher contains the job's processes).
#: 3: ``job_finish`` answers who stopped the job (the release's detail) instead of nothing.
PROTOCOL = 3
OP_PATH = "/api/v1/op/"


#: Where the names of result types are found, in this order (both packages load their records lazily).
RESULT_TYPES = ("moreh_tools.services.records", "state.records")


class RecordNames(Mapping[str, Any]):
    """The names of a result type expression, found in the record packages as they are used (they load lazily)."""

    def __init__(self, modules: list[ModuleType]) -> None:
        """Look names up in ``modules``, the first that has the name winning."""
        self.modules = modules

    def __getitem__(self, name: str) -> Any:
        for module in self.modules:
            try:
                return getattr(module, name)
            except AttributeError:
                continue
        raise KeyError(name)  # a builtin (list, int, None): eval looks further

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({name for module in self.modules for name in dir(module)}))

    def __len__(self) -> int:
        return len(list(iter(self)))


class Op(Generic[T]):
    """One operation: its name, the service function (``module:function``) and what it returns.

    ``result`` is a type expression over :data:`RESULT_TYPES` (``"SmiStatus"``, ``"list[ModelOption]"``);
    ``idempotent``: sending it again after a lost answer does no harm (reads, a launcher's own reports);
    ``long_poll``: it may wait for a change (the daemon waits without holding a thread).
    """

    __slots__ = ("_result", "idempotent", "long_poll", "name", "result_spec", "target")

    def __init__(self, name: str, target: str, result: str, *, idempotent: bool = True, long_poll: bool = False) -> None:
        """Name the op, its service function and its result type."""
        self.name = name
        self.target = target
        self.result_spec = result
        self.idempotent = idempotent
        self.long_poll = long_poll
        self._result: Any = None

    @property
    def result(self) -> Any:
        """The result type (its module imported now)."""
        if self._result is None:
            self._result = eval(self.result_spec, {}, RecordNames([importlib.import_module(m) for m in RESULT_TYPES]))
        return self._result

    def function(self) -> Callable[..., T]:
        """The service function (imported now)."""
        module, _, name = self.target.partition(":")
        found: Callable[..., T] = getattr(importlib.import_module(module), name)
        return found


STATUS: Op[SmiStatus] = Op("status", "moreh_tools.services.status:token_status", "SmiStatus")
VERSIONS: Op[VersionInfo] = Op("versions", "moreh_tools.services.status:server_versions", "VersionInfo")
DEVICE_MODELS: Op[list[ModelOption]] = Op("device_models", "moreh_tools.services.devices:models", "list[ModelOption]")
DEVICE_ADD: Op[Added] = Op("device_add", "moreh_tools.services.devices:add", "Added", idempotent=False)
DEVICE_OWNED: Op[OwnedDevices] = Op("device_owned", "moreh_tools.services.devices:owned", "OwnedDevices")
DEVICE_REMOVE: Op[OwnedDevices] = Op(
    "device_remove", "moreh_tools.services.devices:remove", "OwnedDevices", idempotent=False
)
DEVICE_SWITCH: Op[OwnedDevices] = Op("device_switch", "moreh_tools.services.devices:switch_device", "OwnedDevices")
SWITCH_CHOICES: Op[SwitchChoices] = Op("switch_choices", "moreh_tools.services.devices:switch_choices", "SwitchChoices")
SWITCH_MODEL: Op[Switched] = Op("switch_model", "moreh_tools.services.devices:switch_model", "Switched")
JOB_SUBMIT: Op[Submitted] = Op("job_submit", "moreh_tools.services.jobs:submit", "Submitted")
JOB_WAIT: Op[JobUpdate] = Op("job_wait", "moreh_tools.services.jobs:wait", "JobUpdate", long_poll=True)
JOB_STARTED: Op[bool] = Op("job_started", "moreh_tools.services.jobs:started", "bool")
JOB_CLEANING: Op[None] = Op("job_cleaning", "moreh_tools.services.jobs:cleaning", "None")
JOB_FINISH: Op[str | None] = Op("job_finish", "moreh_tools.services.jobs:finish", "str | None")
JOB_ABANDONED: Op[int | None] = Op("job_abandoned", "moreh_tools.services.jobs:abandoned", "int | None")
JOB_CHECK_DEVICES: Op[DeviceCheck] = Op(
    "job_check_devices", "moreh_tools.services.guardian:check_devices", "DeviceCheck", idempotent=False
)
JOB_RELEASE: Op[list[int]] = Op("job_release", "moreh_tools.services.jobs:release", "list[int]")
JOB_RELEASE_MINE: Op[list[int]] = Op("job_release_mine", "moreh_tools.services.jobs:release_mine", "list[int]")
JOB_PRIORITY: Op[None] = Op("job_priority", "moreh_tools.services.jobs:set_priority", "None")
HOST_REGISTER: Op[int] = Op("host_register", "moreh_tools.services.hosts:register_host", "int")
HOST_REPORT: Op[HostReply] = Op("host_report", "moreh_tools.services.hosts:report", "HostReply")
CONSOLE: Op[ConsoleResult] = Op("console", "moreh_tools.services.console:run_line", "ConsoleResult", idempotent=False)
DASHBOARD_ACCESS: Op[Access] = Op("dashboard_access", "moreh_tools.services.dashboard:access", "Access")
DASHBOARD_SNAPSHOT: Op[Snapshot] = Op("dashboard_snapshot", "moreh_tools.services.dashboard:snapshot", "Snapshot")
QUOTA_REQUEST: Op[QuotaRequest] = Op(
    "quota_request", "moreh_tools.services.quotas:request_quota", "QuotaRequest", idempotent=False
)
QUOTA_MINE: Op[MyQuota] = Op("quota_mine", "moreh_tools.services.quotas:my_quota", "MyQuota")

OPS: dict[str, Op[Any]] = {
    op.name: op
    for op in (
        STATUS,
        VERSIONS,
        DEVICE_MODELS,
        DEVICE_ADD,
        DEVICE_OWNED,
        DEVICE_REMOVE,
        DEVICE_SWITCH,
        SWITCH_CHOICES,
        SWITCH_MODEL,
        JOB_SUBMIT,
        JOB_WAIT,
        JOB_STARTED,
        JOB_CLEANING,
        JOB_FINISH,
        JOB_ABANDONED,
        JOB_CHECK_DEVICES,
        JOB_RELEASE,
        JOB_RELEASE_MINE,
        JOB_PRIORITY,
        HOST_REGISTER,
        HOST_REPORT,
        CONSOLE,
        DASHBOARD_ACCESS,
        DASHBOARD_SNAPSHOT,
        QUOTA_REQUEST,
        QUOTA_MINE,
    )
}
