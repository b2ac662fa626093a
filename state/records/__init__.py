"""Plain records read from the state: what the rest of the product sees, never a database row.

Import them from here (``from state.records import Job``): each lives in a submodule (the catalogue, jobs,
quotas, the GPU guardian; the values fields take, such as statuses, apart in ``values``) that is loaded on first
use, so a tool's start-up pays only for what it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from state.lazy import lazy_names

#: Where each name lives.
_WHERE = {
    "ACCESS_LEVELS": "values",
    "BACKEND_STATUSES": "values",
    "DEVICE_STATUSES": "values",
    "UNHEALTHY": "values",
    "PRIORITY_MIN": "values",
    "PRIORITY_MAX": "values",
    "Token": "catalogue",
    "SDAModel": "catalogue",
    "SDA": "catalogue",
    "UserGroup": "catalogue",
    "ModelGroup": "catalogue",
    "BackendGroup": "catalogue",
    "Device": "catalogue",
    "Backend": "catalogue",
    "Version": "catalogue",
    "Event": "catalogue",
    "DeviceRef": "jobs",
    "JOB_STATUSES": "values",
    "END_REASONS": "values",
    "Job": "jobs",
    "HistoryEntry": "jobs",
    "TokenUsage": "jobs",
    "TimeLimits": "jobs",
    "GroupQuota": "quotas",
    "QUOTA_REQUEST_STATUSES": "values",
    "QuotaRequest": "quotas",
    "GroupUsage": "quotas",
    "FLAG_UNHEALTHY": "values",
    "FLAG_FOREIGN": "values",
    "FLAG_ESCAPED": "values",
    "FLAG_NVML": "values",
    "FLAG_KINDS": "values",
    "DeviceFlag": "guardian",
    "IDLE_SCOPES": "values",
    "IdlePolicyRow": "guardian",
    "JobIdle": "guardian",
}

__getattr__, __dir__ = lazy_names(__name__, _WHERE)

if TYPE_CHECKING:
    from state.records.catalogue import (
        SDA as SDA,
    )
    from state.records.catalogue import (
        Backend as Backend,
    )
    from state.records.catalogue import (
        BackendGroup as BackendGroup,
    )
    from state.records.catalogue import (
        Device as Device,
    )
    from state.records.catalogue import (
        Event as Event,
    )
    from state.records.catalogue import (
        ModelGroup as ModelGroup,
    )
    from state.records.catalogue import (
        SDAModel as SDAModel,
    )
    from state.records.catalogue import (
        Token as Token,
    )
    from state.records.catalogue import (
        UserGroup as UserGroup,
    )
    from state.records.catalogue import (
        Version as Version,
    )
    from state.records.guardian import (
        DeviceFlag as DeviceFlag,
    )
    from state.records.guardian import (
        IdlePolicyRow as IdlePolicyRow,
    )
    from state.records.guardian import (
        JobIdle as JobIdle,
    )
    from state.records.jobs import (
        DeviceRef as DeviceRef,
    )
    from state.records.jobs import (
        HistoryEntry as HistoryEntry,
    )
    from state.records.jobs import (
        Job as Job,
    )
    from state.records.jobs import (
        TimeLimits as TimeLimits,
    )
    from state.records.jobs import (
        TokenUsage as TokenUsage,
    )
    from state.records.quotas import (
        GroupQuota as GroupQuota,
    )
    from state.records.quotas import (
        GroupUsage as GroupUsage,
    )
    from state.records.quotas import (
        QuotaRequest as QuotaRequest,
    )
    from state.records.values import (
        ACCESS_LEVELS as ACCESS_LEVELS,
    )
    from state.records.values import (
        BACKEND_STATUSES as BACKEND_STATUSES,
    )
    from state.records.values import (
        DEVICE_STATUSES as DEVICE_STATUSES,
    )
    from state.records.values import (
        END_REASONS as END_REASONS,
    )
    from state.records.values import (
        FLAG_ESCAPED as FLAG_ESCAPED,
    )
    from state.records.values import (
        FLAG_FOREIGN as FLAG_FOREIGN,
    )
    from state.records.values import (
        FLAG_KINDS as FLAG_KINDS,
    )
    from state.records.values import (
        FLAG_NVML as FLAG_NVML,
    )
    from state.records.values import (
        FLAG_UNHEALTHY as FLAG_UNHEALTHY,
    )
    from state.records.values import (
        IDLE_SCOPES as IDLE_SCOPES,
    )
    from state.records.values import (
        JOB_STATUSES as JOB_STATUSES,
    )
    from state.records.values import (
        PRIORITY_MAX as PRIORITY_MAX,
    )
    from state.records.values import (
        PRIORITY_MIN as PRIORITY_MIN,
    )
    from state.records.values import (
        QUOTA_REQUEST_STATUSES as QUOTA_REQUEST_STATUSES,
    )
    from state.records.values import (
        UNHEALTHY as UNHEALTHY,
    )
