"""Cheap checks every request passes before anything reads it: JSON nesting, UTF-8 in the URL.

* A JSON body nested deeper than :data:`MAX_JSON_DEPTH` is refused (400) before it is parsed: Python's
  parser recurses (100,000 ``[`` raise RecursionError) and so would everything that walks the result.
* A query string or path whose percent-escapes decode to bytes that are not UTF-8 is refused (400)
  instead of being read with U+FFFD in place of the bad bytes (and stored so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

#: The deepest JSON any request of ours needs is 3 (an op's list of GPU records); 64 leaves room.
MAX_JSON_DEPTH = 64

# Strings are skipped whole (brackets inside them do not nest); only brackets are looked at.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects deeper than ``limit`` (malformed text may say no)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for match in _JSON_TOKENS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def utf8_problem(scope: Mapping[str, Any]) -> str | None:
    """What part of the request's URL is not UTF-8 once its percent-escapes are decoded, or None."""
    raw_path = scope.get("raw_path")
    parts: list[tuple[str, bytes]] = []
    if isinstance(raw_path, bytes | bytearray):
        parts.append(("path", bytes(raw_path)))
    query = scope.get("query_string")
    if isinstance(query, bytes | bytearray):
        parts.append(("query string", bytes(query).replace(b"+", b" ")))
    for what, value in parts:
        try:
            value.decode("utf-8")
            unquote_to_bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return what
    return None
