"""The admin view's event log tail: the newest events at the bottom, as many as fit."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widget import Widget

from moreh_tools.dashboard import formatting as fmt
from state.records import Event

ACTION_STYLES = {"END_JOB": "green", "RELEASE_JOB": "yellow", "ALLOCATE_JOB": "cyan", "CREATE_JOB": "blue"}


class EventLog(Widget):
    """``14:03:07 RELEASE_JOB id=3 status=QUEUED`` lines."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Start empty."""
        super().__init__(id=id)
        self.events: tuple[Event, ...] = ()
        self.now: datetime | None = None

    def show(self, events: tuple[Event, ...], now: datetime) -> None:
        """Draw these events (newest first) at the next refresh."""
        if events != self.events or self.now is None or now.date() != self.now.date():
            self.events, self.now = events, now
            self.refresh()

    def render(self) -> Text:
        """The newest events that fit, oldest of them on top."""
        if not self.events:
            return Text("no event yet", style="dim")
        now = self.now or self.events[0].time
        lines = []
        for event in reversed(self.events[: max(self.size.height, 1)]):
            line = Text(fmt.clock(event.time, now) + " ", style="dim")
            line.append(event.action, style=ACTION_STYLES.get(event.action, "bold"))
            line.append(f" {event.detail}")
            if event.token:
                line.append(f" {fmt.short_token(event.token)}", style="dim")
            line.truncate(self.size.width, overflow="ellipsis")
            lines.append(line)
        return Text("\n").join(lines)
