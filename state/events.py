"""The event log: one entry per state change, written in the same transaction as the change."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from state.records import Event
    from state.session import Session

_COLUMNS = "id, time, action, token, command, detail, origin"

_COMMAND_LINE: ContextVar[str | None] = ContextVar("moreh_command_line", default=None)


@contextmanager
def command_line(line: str) -> Iterator[None]:
    """Log ``line`` as the command of every event recorded inside the block (in this thread or task).

    A console line may call helpers that open transactions of their own with a fixed reason
    (``release 7`` ends jobs through the release service, whose transactions say "release 7");
    inside this block their events still carry the whole line the admin typed.
    """
    reset = _COMMAND_LINE.set(line)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(reset)


class EventLog:
    """Appends and lists events. Appends are part of the caller's transaction."""

    def __init__(self, session: Session, command: str, origin: str = "") -> None:
        """Bind to a session; ``command`` is the command line that caused the changes, ``origin`` who sent it."""
        self.s = session
        self.command = _COMMAND_LINE.get() or command  # inside command_line(): the line the admin typed
        self.origin = origin

    def record(self, action: str, detail: str, token: str = "") -> None:
        """Append one event (atomic with the surrounding transaction)."""
        self.s.execute(
            f"INSERT INTO events ({_COLUMNS}) VALUES (nextval('seq_event'), now(), ?, ?, ?, ?, ?)",
            [action, token, self.command, detail, self.origin],
        )

    def record_many(self, action: str, details: list[str], token: str = "") -> None:
        """Append one event per detail, in order, with one statement."""
        if details:
            self.s.execute(
                f"INSERT INTO events ({_COLUMNS}) SELECT nextval('seq_event'), now(), ?, ?, ?, unnest(?), ?",
                [action, token, self.command, details, self.origin],
            )

    def tail(self, count: int | None = None) -> list[Event]:
        """Return the newest ``count`` events (all when None), oldest first."""
        from state.records import Event  # here, not above: every session makes an EventLog, few list events

        sql = f"SELECT {_COLUMNS} FROM events ORDER BY id DESC"
        rows = self.s.all(sql + (f" LIMIT {int(count)}" if count is not None else ""))
        return [Event(*row) for row in reversed(rows)]

    def find(self, token: str | None = None, action: str | None = None, count: int | None = None) -> list[Event]:
        """Return the events of ``token`` and/or ``action`` (the newest ``count`` when given), oldest first."""
        from state.records import Event

        where, params = [], []
        for column, value in (("token", token), ("action", action)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_COLUMNS} FROM events"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
        rows = self.s.all(sql + (f" LIMIT {int(count)}" if count is not None else ""), params)
        return [Event(*row) for row in reversed(rows)]
