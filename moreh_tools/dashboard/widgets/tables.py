"""The dashboard's tables: jobs (user and admin forms), history, usage.

Each ``show`` keeps the cursor on the same job (row key = job id) across refreshes and touches only
the cells that changed when the rows are the same, so a live table neither jumps nor flickers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable

from moreh_tools.dashboard import formatting as fmt
from moreh_tools.services.records import FairShareRow, HistoryRow, JobRow, UsageRow

Cell = str | Text
Row = tuple[str, tuple[Cell, ...]]


class LiveTable(DataTable[Cell]):
    """A DataTable refreshed from whole row lists."""

    COLUMNS: tuple[tuple[str, str], ...] = ()  # (key, label)

    def __init__(self, *, id: str | None = None) -> None:
        """A row-cursor table with the class's columns."""
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._shown: list[Row] = []

    def on_mount(self) -> None:
        """Add the columns."""
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)

    def selected_key(self) -> str | None:
        """The key of the row under the cursor."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def fill(self, rows: Sequence[Row]) -> None:
        """Show exactly ``rows``, keeping the cursor on its row."""
        rows = list(rows)
        if [k for k, _ in rows] == [k for k, _ in self._shown]:
            for (key, cells), (_, old) in zip(rows, self._shown, strict=True):
                for (column, _), new_cell, old_cell in zip(self.COLUMNS, cells, old, strict=True):
                    if new_cell != old_cell:
                        self.update_cell(key, column, new_cell, update_width=True)
            self._shown = rows
            return
        selected, scroll_y = self.selected_key(), self.scroll_y
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        self._shown = rows
        keys = [k for k, _ in rows]
        if selected in keys:
            self.move_cursor(row=keys.index(selected), scroll=False)
        self.call_after_refresh(self.scroll_to, y=scroll_y, animate=False)


def _status(job: JobRow) -> Text:
    return Text(job.status.lower(), style=fmt.JOB_STYLES.get(job.status, ""))


def _where(job: JobRow, width: int | None = None) -> Text:
    if job.queued:
        text = Text(job.reason_code or "", style="bold yellow")
        if job.expected_start is not None:
            text.append(f" ~{job.expected_text}", style="cyan")
        if job.reason_code:
            text.append(": ")
        text.append(job.reason, style="yellow")
    else:
        text = Text(job.placed_on or job.host, style="dim")
    if width is not None:
        text.truncate(width, overflow="ellipsis")
    return text


class UserJobTable(LiveTable):
    """The token's running and queued jobs, with elapsed times (a few rows, refreshed every poll)."""

    COLUMNS = (
        ("dev", "Dev"),
        ("job", "Job"),
        ("status", "Status"),
        ("queue", "Queue"),
        ("time", "For"),
        ("where", "Waiting for / running on"),
        ("process", "Process"),
    )

    def show(self, jobs: Sequence[JobRow], now: datetime) -> None:
        """Fill from the user's jobs."""
        self.fill(
            [
                (
                    str(j.id),
                    (
                        str(j.sda_id),
                        str(j.id),
                        _status(j),
                        f"#{j.position}" if j.position is not None else fmt.NONE,
                        fmt.since(j.start_time if j.start_time is not None else j.request_time, now),
                        _where(j),
                        j.process or fmt.NONE,
                    ),
                )
                for j in jobs
            ]
        )


class AdminJobTable(LiveTable):
    """Every job: running first, then the queue in scheduling order (clock times, so idle means still)."""

    COLUMNS = (
        ("job", "Job"),
        ("owner", "Owner"),
        ("status", "Status"),
        ("queue", "#"),
        ("pri", "Pri"),
        ("gpus", "GPUs"),
        # Process before the long reason text: at 80 columns a job is still recognisable (issue 15).
        ("process", "Process"),
        ("where", "Waiting for / running on"),
        ("since", "Since"),
    )

    def show(self, jobs: Sequence[JobRow], now: datetime) -> None:
        """Fill from all jobs."""
        self.fill(
            [
                (
                    str(j.id),
                    (
                        str(j.id),
                        fmt.clip(j.owner or fmt.short_token(j.token), 14),
                        _status(j),
                        str(j.position) if j.position is not None else fmt.NONE,
                        str(j.priority),
                        str(j.device_count),
                        fmt.clip(j.process, 16) or fmt.NONE,
                        _where(j, 40),  # the whole reason is in the user's view and in 'show job'; Since fits
                        fmt.clock(j.start_time or j.request_time, now),
                    ),
                )
                for j in jobs
            ]
        )


class HistoryTable(LiveTable):
    """The token's ended jobs, newest first."""

    COLUMNS = (
        ("job", "Job"),
        ("dev", "Dev"),
        ("exit", "Exit"),
        ("how", "Ended"),
        ("ran", "Ran"),
        ("at", "At"),
        ("process", "Process"),
    )

    def show(self, history: Sequence[HistoryRow], now: datetime) -> None:
        """Fill from the history rows."""
        self.fill(
            [
                (
                    str(h.id),
                    (
                        str(h.id),
                        str(h.sda_id),
                        fmt.exit_text(h.exit_code, h.end_reason),
                        Text(h.end_reason, style=fmt.END_STYLES.get(h.end_reason, "")),
                        fmt.duration(h.duration),
                        fmt.clock(h.end_time, now),
                        h.process or fmt.NONE,
                    ),
                )
                for h in history
            ]
        )


class UsageTable(LiveTable):
    """Device-hours per token over the last 24 h, with what each runs and queues now."""

    COLUMNS = (
        ("owner", "Token"),
        ("hours", "GPU·h"),
        ("jobs", "Jobs"),
        ("running", "Run"),
        ("queued", "Queue"),
    )

    def show(self, usage: Sequence[UsageRow]) -> None:
        """Fill from the usage rows."""
        self.fill(
            [
                (
                    u.token,
                    (
                        Text(fmt.clip(u.owner or fmt.short_token(u.token), 12)),
                        f"{u.device_hours:.1f}",
                        str(u.jobs),
                        Text(str(u.running), style="green" if u.running else "dim"),
                        Text(str(u.queued), style="cyan" if u.queued else "dim"),
                    ),
                )
                for u in usage
            ]
        )


class FairShareTable(LiveTable):
    """Each user group's fair share: share, decayed usage and the factor that orders jobs of equal priority."""

    COLUMNS = (
        ("group", "Group"),
        ("share", "Share"),
        ("hours", "GPU·h"),
        ("factor", "Factor"),
    )

    def show(self, rows: Sequence[FairShareRow]) -> None:
        """Fill from the fair-share rows."""
        self.fill(
            [
                (
                    str(r.user_group_id),
                    (
                        Text(fmt.clip(r.name, 12)),
                        f"{r.share:g}",
                        f"{r.usage_gpu_hours:.1f}",
                        Text(f"{r.factor:.3f}", style="green" if r.factor >= 0.5 else "yellow"),
                    ),
                )
                for r in rows
            ]
        )
