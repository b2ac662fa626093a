"""The line under the title: who is looking, which view, whether a daemon runs, the state's clock."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widget import Widget


class StatusBar(Widget):
    """One line of context; turns yellow when no daemon runs and red on a read problem."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def __init__(self, label: str, view: str, read_only: bool, *, id: str | None = None) -> None:
        """``label`` says whose dashboard this is; ``view`` which view shows first."""
        super().__init__(id=id)
        self.label = label
        self.read_only = read_only
        self.view = view
        self.daemon: bool | None = None
        self.taken_at: datetime | None = None
        self.problem: str | None = None
        self.simulated = False

    def show(
        self,
        *,
        view: str,
        daemon: bool | None,
        taken_at: datetime | None,
        simulated: bool,
        problem: str | None = None,
    ) -> None:
        """Set what the line says."""
        self.view, self.daemon, self.taken_at, self.simulated, self.problem = view, daemon, taken_at, simulated, problem
        self.refresh()

    def render(self) -> Text:
        """The line, trimmed to the width (the problem, if any, wins the space)."""
        text = Text()
        text.append(f"{self.view} view", style="bold")
        text.append(f" · {self.label}")
        if self.read_only:
            text.append(" · read-only", style="bold magenta")
        if self.daemon is True:
            text.append(" · daemon running", style="green")
        elif self.daemon is False:
            text.append(" · no sdamanager daemon", style="bold yellow")
        if self.simulated:
            text.append(" · simulated GPUs", style="magenta")
        if self.problem:
            text = Text(self.problem, style="bold red") + Text(" · ") + text
        if self.taken_at is not None:
            stamp = self.taken_at.strftime("%H:%M:%S")
            room = max(self.size.width - len(stamp) - 1, 0)
            text.truncate(room, overflow="ellipsis", pad=True)
            text.append(" " + stamp, style="dim")
        text.no_wrap = True
        return text
