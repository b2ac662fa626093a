"""What ``moreh-run`` was asked to run, and how it refuses: shared by its argument parsing and its launch."""

from __future__ import annotations

from dataclasses import dataclass

from moreh_tools.runtime import ToolError

PROG = "moreh-run"
EXIT_FAILED, EXIT_USAGE = 1, 2
EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND = 126, 127  # the shell's: found but not executable, not found


class LaunchError(ToolError):
    """Bad input or a refusal: one line for the user and an exit status."""


@dataclass(frozen=True)
class Request:
    """What the user asked for."""

    token: str | None
    sda: int | None
    priority: int | None
    command: tuple[str, ...]
    time_limit: float | None = None  # seconds (--time), None: the token's or model's default, else unlimited
    requeue: bool = False  # --requeue: a preempted job goes back to the queue and runs again
