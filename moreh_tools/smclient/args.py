"""Converting command arguments, with one-line errors that say what to type instead."""

from __future__ import annotations

from state.errors import InvalidValueError

NULL_WORDS = {"null", "none"}


class UsageError(Exception):
    """The command line itself is wrong (unknown command, wrong number of arguments)."""


def to_int(value: str, what: str) -> int:
    """Parse an integer argument."""
    try:
        number = int(value, 10)
    except ValueError:
        raise InvalidValueError(f"The {what} must be an integer, not '{value}'.") from None
    if abs(number) > 2**31 - 1:
        raise InvalidValueError(f"The {what} {value} is out of range.")
    return number


def to_bool(value: str, what: str) -> bool:
    """Parse ``true``/``false`` (case-insensitive)."""
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidValueError(f"The {what} must be true or false, not '{value}'.")


def is_null(value: str) -> bool:
    """Whether the argument is the word null (which clears a list)."""
    return value.lower() in NULL_WORDS


def to_list(value: str) -> list[str]:
    """Split a comma-separated list; ``null`` is the empty list."""
    if is_null(value):
        return []
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise InvalidValueError(f"The list '{value}' has an empty item: separate items with single commas.")
    return items


def to_int_list(value: str, what: str) -> list[int]:
    """Split a comma-separated list of integer ids; ``null`` is the empty list."""
    return [to_int(item, what) for item in to_list(value)]
