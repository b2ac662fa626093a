"""What the services return: frozen dataclasses that cross the port (in process, or as JSON) and that the
tools render. Nothing here reads the state or prints.

Import them from here (``from moreh_tools.services.records import SmiStatus``): each lives in a submodule (status,
devices, console, dashboard, jobs, quotas) that is loaded on first use, so ``moreh-smi`` starts without building the
dashboard's records (see :mod:`state.lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from state.lazy import lazy_names

#: Where each name lives.
_WHERE = {
    "SIMULATED_GPU_NAME": "status",
    "SAMPLE_MAX_AGE_S": "status",
    "used_percent": "status",
    "GpuStatus": "status",
    "ProcessStatus": "status",
    "QueueInfo": "status",
    "WaitingJob": "status",
    "IdleStatus": "status",
    "DeviceStatus": "status",
    "SmiStatus": "status",
    "DEVICE_NAME": "status",
    "ModelOption": "devices",
    "Added": "devices",
    "OwnedDevices": "devices",
    "SwitchChoices": "devices",
    "Switched": "devices",
    "View": "console",
    "VersionInfo": "console",
    "ConsoleResult": "console",
    "Access": "console",
    "JobRow": "dashboard",
    "HistoryRow": "dashboard",
    "UserData": "dashboard",
    "GridDevice": "dashboard",
    "GridBackend": "dashboard",
    "UsageRow": "dashboard",
    "FairShareRow": "dashboard",
    "AdminData": "dashboard",
    "Snapshot": "dashboard",
    "GpuInfo": "jobs",
    "Submitted": "jobs",
    "JobUpdate": "jobs",
    "Release": "jobs",
    "ForeignProcess": "jobs",
    "HostReply": "jobs",
    "HealthSample": "jobs",
    "GpuProcessSample": "jobs",
    "HostWatch": "jobs",
    "DeviceCheck": "jobs",
    "GpuSample": "jobs",
    "ProcessSample": "jobs",
    "QuotaRow": "quotas",
    "MyQuota": "quotas",
}

__getattr__, __dir__ = lazy_names(__name__, _WHERE)

if TYPE_CHECKING:
    from moreh_tools.services.records.console import (
        Access as Access,
    )
    from moreh_tools.services.records.console import (
        ConsoleResult as ConsoleResult,
    )
    from moreh_tools.services.records.console import (
        VersionInfo as VersionInfo,
    )
    from moreh_tools.services.records.console import (
        View as View,
    )
    from moreh_tools.services.records.dashboard import (
        AdminData as AdminData,
    )
    from moreh_tools.services.records.dashboard import (
        FairShareRow as FairShareRow,
    )
    from moreh_tools.services.records.dashboard import (
        GridBackend as GridBackend,
    )
    from moreh_tools.services.records.dashboard import (
        GridDevice as GridDevice,
    )
    from moreh_tools.services.records.dashboard import (
        HistoryRow as HistoryRow,
    )
    from moreh_tools.services.records.dashboard import (
        JobRow as JobRow,
    )
    from moreh_tools.services.records.dashboard import (
        Snapshot as Snapshot,
    )
    from moreh_tools.services.records.dashboard import (
        UsageRow as UsageRow,
    )
    from moreh_tools.services.records.dashboard import (
        UserData as UserData,
    )
    from moreh_tools.services.records.devices import (
        Added as Added,
    )
    from moreh_tools.services.records.devices import (
        ModelOption as ModelOption,
    )
    from moreh_tools.services.records.devices import (
        OwnedDevices as OwnedDevices,
    )
    from moreh_tools.services.records.devices import (
        SwitchChoices as SwitchChoices,
    )
    from moreh_tools.services.records.devices import (
        Switched as Switched,
    )
    from moreh_tools.services.records.jobs import (
        DeviceCheck as DeviceCheck,
    )
    from moreh_tools.services.records.jobs import (
        ForeignProcess as ForeignProcess,
    )
    from moreh_tools.services.records.jobs import (
        GpuInfo as GpuInfo,
    )
    from moreh_tools.services.records.jobs import (
        GpuProcessSample as GpuProcessSample,
    )
    from moreh_tools.services.records.jobs import (
        GpuSample as GpuSample,
    )
    from moreh_tools.services.records.jobs import (
        HealthSample as HealthSample,
    )
    from moreh_tools.services.records.jobs import (
        HostReply as HostReply,
    )
    from moreh_tools.services.records.jobs import (
        HostWatch as HostWatch,
    )
    from moreh_tools.services.records.jobs import (
        JobUpdate as JobUpdate,
    )
    from moreh_tools.services.records.jobs import (
        ProcessSample as ProcessSample,
    )
    from moreh_tools.services.records.jobs import (
        Release as Release,
    )
    from moreh_tools.services.records.jobs import (
        Submitted as Submitted,
    )
    from moreh_tools.services.records.quotas import (
        MyQuota as MyQuota,
    )
    from moreh_tools.services.records.quotas import (
        QuotaRow as QuotaRow,
    )
    from moreh_tools.services.records.status import (
        DEVICE_NAME as DEVICE_NAME,
    )
    from moreh_tools.services.records.status import (
        SAMPLE_MAX_AGE_S as SAMPLE_MAX_AGE_S,
    )
    from moreh_tools.services.records.status import (
        SIMULATED_GPU_NAME as SIMULATED_GPU_NAME,
    )
    from moreh_tools.services.records.status import (
        DeviceStatus as DeviceStatus,
    )
    from moreh_tools.services.records.status import (
        GpuStatus as GpuStatus,
    )
    from moreh_tools.services.records.status import (
        IdleStatus as IdleStatus,
    )
    from moreh_tools.services.records.status import (
        ProcessStatus as ProcessStatus,
    )
    from moreh_tools.services.records.status import (
        QueueInfo as QueueInfo,
    )
    from moreh_tools.services.records.status import (
        SmiStatus as SmiStatus,
    )
    from moreh_tools.services.records.status import (
        WaitingJob as WaitingJob,
    )
    from moreh_tools.services.records.status import (
        used_percent as used_percent,
    )
