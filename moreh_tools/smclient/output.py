"""What a command returns: a message or a table, each printable as text or as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moreh_tools.grid import Column, render_grid


@dataclass
class Message:
    """A one-line result such as ``Create SDA success.``; ``data`` is its JSON form."""

    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_text(self) -> str:
        """The line the seeds print."""
        return self.text

    def as_json(self) -> Any:
        """The message and any values it reports."""
        return {"message": self.text, **self.data}


@dataclass
class Table:
    """A seed-style grid; ``records`` is the same content as a list of JSON objects.

    ``records`` may be a function that builds them, so big tables printed as text skip that work.
    """

    columns: Sequence[Column]
    rows: Sequence[Sequence[str]]
    records: list[dict[str, Any]] | Callable[[], list[dict[str, Any]]]
    notes: Sequence[str] = field(default=(), kw_only=True)  # lines under the grid (only when there is something to say)

    def as_text(self) -> str:
        """The grid (and its notes)."""
        grid = render_grid(self.columns, self.rows)
        return "\n".join([grid, *self.notes]) if self.notes else grid

    def as_json(self) -> Any:
        """The records."""
        return self.records() if callable(self.records) else self.records


Output = Message | Table | None


def to_json(output: Output) -> str:
    """Serialise a command's output as JSON text."""
    payload = {} if output is None else output.as_json()
    return json.dumps(payload, indent=2, ensure_ascii=False, default=str)


def error_json(message: str, exit_code: int) -> str:
    """The JSON object ``--json`` prints on stdout for a line that failed (its ``Error:`` line goes to stderr)."""
    return json.dumps({"error": message, "exit_code": exit_code}, indent=2, ensure_ascii=False)
