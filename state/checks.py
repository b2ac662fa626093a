"""Validation of values the seeds constrain; raises InvalidValueError with a user-facing line."""

from __future__ import annotations

from state.errors import InvalidValueError
from state.records import PRIORITY_MAX, PRIORITY_MIN


def check_priority(value: int, what: str = "priority") -> int:
    """Return ``value`` if it is within -99..99."""
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise InvalidValueError(
            f"The {what} {value} is out of range: use an integer from {PRIORITY_MIN} to {PRIORITY_MAX}."
        )
    return value


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """Return the upper-cased ``value`` if it is one of ``choices``."""
    upper = value.upper()
    if upper not in choices:
        raise InvalidValueError(f"Unknown {what} '{value}': use one of {'|'.join(choices)}.")
    return upper


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a usable name: non-empty, printable, at most 128 characters."""
    if not value or not value.strip():
        raise InvalidValueError(f"The {what} must not be empty.")
    if len(value) > 128:
        raise InvalidValueError(f"The {what} is {len(value)} characters long; use at most 128.")
    if not value.isprintable():
        raise InvalidValueError(f"The {what} contains control characters; use printable text only.")
    return value
