"""Records of quotas: a user group's quota, a request for more, and its accrued usage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupQuota:
    """A user group's GPU quota on a backend group: ``nominal`` devices for sure, ``borrow`` more while idle.

    ``granted`` is what approved, unexpired quota requests add to the nominal quota now.
    """

    user_group_id: int
    user_group_name: str
    backend_group_id: int
    backend_group_name: str
    nominal: int
    borrow: int
    granted: int = 0

    @property
    def effective_nominal(self) -> int:
        """The nominal quota with the grants in force."""
        return self.nominal + self.granted


@dataclass(frozen=True)
class QuotaRequest:
    """A user's request for more GPUs for their user group, for some days (times are epoch seconds)."""

    id: int
    token: str
    user_group_id: int
    backend_group_id: int
    gpus: int
    days: int
    reason: str
    status: str
    requested_at: float
    decided_at: float | None = None
    expires_at: float | None = None


@dataclass(frozen=True)
class GroupUsage:
    """A user group's GPU-seconds as last accrued (``usage`` as of ``updated_at``, epoch seconds; decay it to now)."""

    user_group_id: int
    usage: float
    updated_at: float
