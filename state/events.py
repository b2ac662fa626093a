"""The event log: one entry per state change, written in the same transaction as the change."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from state.records import Event
    from state.session import Session

_COLUMNS = "id, time, action, token, command, detail, origin"


class EventLog:
    """Appends and lists events. Appends are part of the caller's transaction."""

    def __init__(self, session: Session, command: str, origin: str = "") -> None:
        """Bind to a session; ``command`` is the command line that caused the changes, ``origin`` who sent it."""
        self.s = session
        self.command = command
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
