"""Answers about quotas: a quota as listed, and a user's own."""

from __future__ import annotations

from dataclasses import dataclass

from state.records.quotas import GroupQuota, QuotaRequest


@dataclass(frozen=True)
class QuotaRow:
    """A quota as ``show quota`` lists it: the quota, its grants in force, and what the group uses now."""

    quota: GroupQuota
    used: int
    borrowed: int


@dataclass(frozen=True)
class MyQuota:
    """What ``moreh-smi quota`` shows a user: the quotas of the token's groups and the token's requests."""

    quotas: tuple[QuotaRow, ...]
    requests: tuple[QuotaRequest, ...]
