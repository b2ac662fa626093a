"""The event log: one entry per state change, written in the same transaction as the change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from state.records import Event


class EventLog:
    """Appends and lists events. Appends are part of the caller's transaction."""

    def __init__(self, conn: Any, command: str) -> None:
        """Bind to an open connection; ``command`` is the command line that caused the changes."""
        self.conn = conn
        self.command = command

    def record(self, action: str, detail: str, token: str = "") -> None:
        """Append one event (atomic with the surrounding transaction)."""
        self.conn.execute(
            "INSERT INTO events VALUES (nextval('seq_event'), now(), ?, ?, ?, ?)",
            [action, token, self.command, detail],
        )

    def record_many(self, action: str, details: list[str], token: str = "") -> None:
        """Append one event per detail, in order, with one statement."""
        if details:
            self.conn.execute(
                "INSERT INTO events SELECT nextval('seq_event'), now(), ?, ?, ?, unnest(?)",
                [action, token, self.command, details],
            )

    def tail(self, count: int | None = None) -> list[Event]:
        """Return the newest ``count`` events (all when None), oldest first."""
        from state.records import Event  # here, not above: every session makes an EventLog, few list events

        sql = "SELECT id, time, action, token, command, detail FROM events ORDER BY id DESC"
        rows = self.conn.execute(sql + (f" LIMIT {int(count)}" if count is not None else "")).fetchall()
        return [Event(*row) for row in reversed(rows)]

    def find(self, token: str | None = None, action: str | None = None, count: int | None = None) -> list[Event]:
        """Return the events of ``token`` and/or ``action`` (the newest ``count`` when given), oldest first."""
        from state.records import Event

        where, params = [], []
        for column, value in (("token", token), ("action", action)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT id, time, action, token, command, detail FROM events"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
        rows = self.conn.execute(sql + (f" LIMIT {int(count)}" if count is not None else ""), params).fetchall()
        return [Event(*row) for row in reversed(rows)]
