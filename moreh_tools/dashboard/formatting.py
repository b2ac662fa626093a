"""Text and colour for the dashboard's figures: bars, sparklines, durations, sizes, state colours.

Plain functions over numbers and Rich ``Text``, so the widgets stay thin and the look is tested
without a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from rich.text import Text

NONE = "-"
SPARK_CHARS = "▁▂▃▄▅▆▇█"

#: Device states (``devices.status``) and how the grid and legend colour them: busy is loud, idle calm.
STATE_STYLES: dict[str, str] = {
    "IDLE": "white on #2e6b34",
    "PREPARING": "black on #d7a600",
    "PROCESSING": "bold white on #1f5fbf",
    "CLEANING": "white on #8a4fbf",
    "SHUTDOWN": "#9a9a9a on #3a3a3a",
}
STATE_SHORT = {
    "IDLE": "idle",
    "PREPARING": "prep",
    "PROCESSING": "busy",
    "CLEANING": "clean",
    "SHUTDOWN": "off",
    "UNHEALTHY": "sick",
}
#: States the legend names only while some GPU is in them: the GPU guardian's (a failed GPU, a foreign process).
GUARD_STYLES: dict[str, str] = {"UNHEALTHY": "bold white on #b3261e", "FOREIGN": "black on #ff8c00"}

#: Job statuses in the tables.
JOB_STYLES = {"RUNNING": "bold green", "SUBMITTED": "yellow", "QUEUED": "cyan"}
#: How a job ended, in the history table.
END_STYLES = {
    "finished": "green",
    "failed": "red",
    "released": "yellow",
    "lost": "magenta",
    "timeout": "red",
    "preempted": "yellow",
    "idle": "yellow",
}


def level_style(percent: float | None) -> str:
    """Green, then yellow from 50 %, red from 85 % (nvitop's reading of a load bar)."""
    if percent is None:
        return "dim"
    if percent >= 85:
        return "red"
    if percent >= 50:
        return "yellow"
    return "green"


def bar(percent: float | None, width: int) -> Text:
    """A ``████░░░░`` bar ``width`` cells wide, coloured by level; all dim when there is no figure."""
    width = max(width, 1)
    if percent is None:
        return Text("·" * width, style="dim")
    filled = round(max(0.0, min(percent, 100.0)) / 100 * width)
    text = Text("█" * filled, style=level_style(percent))
    text.append("░" * (width - filled), style="dim")
    return text


def sparkline(values: Sequence[float | None], width: int) -> Text:
    """The last ``width`` values (0-100) as ``▁▂▃▅▇`` blocks, right-aligned; gaps where there was no figure."""
    shown = list(values)[-width:] if width > 0 else []
    text = Text(" " * (max(width, 0) - len(shown)))
    for value in shown:
        if value is None:
            text.append("·", style="dim")
            continue
        step = min(len(SPARK_CHARS) - 1, int(max(0.0, min(value, 100.0)) / 100 * len(SPARK_CHARS)))
        text.append(SPARK_CHARS[step], style=level_style(value))
    return text


def percent_text(value: float | None) -> str:
    """``93%`` or ``-``."""
    return NONE if value is None else f"{value:.0f}%"


def gib(mib: int | None) -> str:
    """MiB as ``12.5G`` (the grid and bars are narrow); ``-`` when unknown."""
    if mib is None:
        return NONE
    return f"{mib / 1024:.1f}G" if mib < 100 * 1024 else f"{mib / 1024:.0f}G"


def duration(span: timedelta | None) -> str:
    """``45s``, ``3m05s``, ``2h07m``, ``3d04h``; ``-`` when unknown."""
    if span is None:
        return NONE
    seconds = max(int(span.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def since(moment: datetime | None, now: datetime) -> str:
    """How long ago ``moment`` was, as :func:`duration` writes it."""
    return duration(now - moment) if moment is not None else NONE


def clock(moment: datetime, now: datetime) -> str:
    """``14:03:07`` for today, ``06-01 14:03`` for an earlier day."""
    if moment.date() == now.date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%m-%d %H:%M")


def exit_text(exit_code: int | None, reason: str) -> Text:
    """The exit code coloured by how the job ended (``-`` when the process never reported one)."""
    code = NONE if exit_code is None else str(exit_code)
    style = END_STYLES.get(reason, "")
    if reason == "finished" and exit_code not in (0, None):
        style = "red"
    return Text(code, style=style)


def short_token(token: str) -> str:
    """The first 8 characters of a token value: enough to tell tokens apart on screen."""
    return token[:8]


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with an ellipsis (tables keep narrow columns narrow)."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
