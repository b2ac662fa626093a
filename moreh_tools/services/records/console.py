"""Answers of the admin console and the version query, and who may see which dashboard view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

View = Literal["user", "admin"]


@dataclass(frozen=True)
class VersionInfo:
    """What ``moreh-smi -s`` shows."""

    server: str
    latest: str
    supported: tuple[str, ...]


@dataclass(frozen=True)
class ConsoleResult:
    """What one admin console line printed, how it ended, and ``exit``/``clear`` requests."""

    stdout: str
    stderr: str
    exit_code: int
    action: str | None = None


@dataclass(frozen=True)
class Access:
    """Whose dashboard this is: a token (user view, admin view too for ADMIN) or the state's owner."""

    token: str | None
    label: str
    admin: bool

    @property
    def user(self) -> bool:
        """Whether there is a token, so a user view."""
        return self.token is not None

    @property
    def views(self) -> tuple[View, ...]:
        """The views this access may open, the first being where the dashboard starts."""
        views: list[View] = []
        if self.user:
            views.append("user")
        if self.admin:
            views.append("admin")
        return tuple(views)
