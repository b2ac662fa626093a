"""Records of the GPU guardian: a flagged device, an idle policy, a job's idle state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class DeviceFlag:
    """Why the GPU guardian keeps a device (``index``) or a whole backend (``index`` None, kind ``nvml``) out of use.

    ``pid``/``user``/``memory_mib`` name the process of a ``foreign`` or ``escaped`` flag; ``job_id`` is the job an
    escaped process belongs to; ``device_job`` the job the device is allocated to (None: free). ``since`` is when
    the guardian first saw it.
    """

    backend_id: int
    host: str
    index: int | None
    kind: str
    cause: str
    since: datetime
    pid: int | None = None
    user: str | None = None
    memory_mib: int | None = None
    job_id: int | None = None
    device_job: int | None = None

    @property
    def location(self) -> str:
        """``host:index`` (``host`` for a host-wide flag)."""
        return self.host if self.index is None else f"{self.host}:{self.index}"


@dataclass(frozen=True)
class IdlePolicyRow:
    """An idle policy an admin set for a token or an SDA model (``target``: the token value or the model id)."""

    scope: str
    target: str
    util_percent: float
    memory_mib: float
    window_s: float
    grace_s: float
    updated_at: datetime


@dataclass(frozen=True)
class JobIdle:
    """The guardian's idle bookkeeping of one running job (times are the state's clock, epoch seconds)."""

    job_id: int
    idle_since: float | None
    warned: bool
    seconds_left: float | None
    reclaimed: bool
    notified_at: float | None = None
    checked_at: float | None = None  # the sample this was last updated by
