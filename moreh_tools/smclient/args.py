"""Converting command arguments, with one-line errors that say what to type instead.

A converter that cannot read an argument as its kind (not an integer, beyond the integer range, not
true/false, a list with an empty item) raises :class:`UsageError`: the line is bad usage (exit 2),
like an unknown command or a wrong argument count. Whether a well-formed value is acceptable (a
priority within -99..99, a token that exists) is for the state to say (exit 1).
"""

from __future__ import annotations

import re
import shlex

NULL_WORDS = {"null", "none"}
INT_MAX = 2**31 - 1
# ASCII digits with an optional leading '-': int() alone also takes '1_0', ' 7 ', '+3' and other scripts' digits ('٣').
_INTEGER = re.compile(r"-?[0-9]+")


class UsageError(Exception):
    """The command line itself is wrong: unknown command, wrong argument count, an unreadable argument."""


def split_line(line: str) -> list[str]:
    """Split a console line into words the way a POSIX shell does; ValueError for an unclosed quote.

    Quotes and backslashes group and escape as in ``shlex.split``. A ``#`` begins a comment only at the
    start of a word, as in a shell: ``team#3`` and ``http://host/#frag`` are whole words, ``team #3`` is
    ``team`` (``shlex``'s own ``comments=True`` would cut both words at the ``#``).
    """
    return shlex.split(_without_comments(line))


def _without_comments(line: str) -> str:
    """``line`` without its comments: from a ``#`` that starts a word, outside quotes, to the end of its line."""
    kept: list[str] = []
    quote = ""
    in_word = False
    i = 0
    while i < len(line):
        char = line[i]
        if quote == "'":
            quote = "" if char == "'" else quote
        elif quote == '"':
            if char == "\\" and line[i + 1 : i + 2] in ('"', "\\"):  # shlex escapes only these inside "..."
                kept.append(char)
                i += 1
                char = line[i]
            elif char == '"':
                quote = ""
        elif char in " \t\r\n":
            in_word = False
        elif char == "#" and not in_word:
            end = line.find("\n", i)
            i = len(line) if end < 0 else end  # the newline itself ends the comment and is kept
            continue
        else:
            in_word = True
            if char == "\\" and i + 1 < len(line):  # the escaped character belongs to the word
                kept.append(char)
                i += 1
                char = line[i]
            elif char in "'\"":
                quote = char
        kept.append(char)
        i += 1
    return "".join(kept)


def to_int(value: str, what: str) -> int:
    """Parse an integer argument: ASCII digits with an optional leading ``-``, within ±2147483647."""
    if not _INTEGER.fullmatch(value):
        raise UsageError(f"The {what} must be an integer, not '{value}': type it with the digits 0-9.")
    number = int(value, 10)
    if abs(number) > INT_MAX:
        raise UsageError(f"The {what} {value} is out of range: use an integer from -{INT_MAX} to {INT_MAX}.")
    return number


def to_count(value: str, what: str) -> int:
    """Parse how many rows to show: a positive integer (0 or a negative number is bad usage)."""
    count = to_int(value, what)
    if count < 1:
        raise UsageError(f"The {what} must be at least 1, not {count}: it says how many to show.")
    return count


def is_int(value: str) -> bool:
    """Whether ``value`` reads as an integer argument (``to_int`` would take it)."""
    return _INTEGER.fullmatch(value) is not None and abs(int(value, 10)) <= INT_MAX


def to_bool(value: str, what: str) -> bool:
    """Parse ``true``/``false`` (case-insensitive)."""
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"The {what} must be true or false, not '{value}'.")


def is_null(value: str) -> bool:
    """Whether the argument is the word null (which clears a list)."""
    return value.lower() in NULL_WORDS


def to_list(value: str) -> list[str]:
    """Split a comma-separated list; ``null`` is the empty list."""
    if is_null(value):
        return []
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise UsageError(f"The list '{value}' has an empty item: separate items with single commas.")
    return items


def to_int_list(value: str, what: str) -> list[int]:
    """Split a comma-separated list of integer ids; ``null`` is the empty list."""
    return [to_int(item, what) for item in to_list(value)]
