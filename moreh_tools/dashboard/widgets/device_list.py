"""The user view's devices: two lines each, with memory and utilisation bars and sparklines."""

from __future__ import annotations

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from moreh_tools.dashboard import formatting as fmt
from moreh_tools.dashboard.history import DeviceHistory, memory_percent
from moreh_tools.services.records import DeviceStatus, SmiStatus

STATE_STYLES = {"running": "bold green", "preparing": "yellow", "waiting": "cyan", "idle": "dim"}


class DeviceList(Widget):
    """The token's devices (SDAs): model, state, then the live figures of the GPUs a job holds."""

    DEFAULT_CSS = """
    DeviceList { height: auto; padding: 0 1; }
    """

    def __init__(self, history: DeviceHistory, *, id: str | None = None) -> None:
        """Draw from the app's ``history`` for the sparklines."""
        super().__init__(id=id)
        self.history = history
        self.status: SmiStatus | None = None

    def show(self, status: SmiStatus) -> None:
        """Draw this status at the next refresh."""
        self.status = status
        self.refresh(layout=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """Two lines per device (one when there is none)."""
        return max(2 * len(self.status.devices), 1) if self.status is not None else 1

    def render(self) -> Text:
        """Every device, fitted to the width."""
        if self.status is None:
            return Text("reading the state…", style="dim")
        if not self.status.devices:
            return Text("This token has no device yet; add one with 'moreh-smi device --add'.", style="yellow")
        width = self.size.width
        lines = []
        for device in self.status.devices:
            lines += [self._title(device, width), self._figures(device, width)]
        return Text("\n").join(lines)

    def _title(self, device: DeviceStatus, width: int) -> Text:
        text = Text("*" if device.current else " ", style="bold yellow")
        text.append(f"{device.id:>2} ", style="bold")
        text.append(device.model_text, style="bold")
        count = len(device.gpus) or device.model_devices
        text.append(f" · {count} GPU{'s' if count != 1 else ''}", style="dim")
        text.append(" · ")
        text.append(device.state, style=STATE_STYLES.get(device.state, ""))
        if device.job_ids:
            text.append(f" job {', '.join(map(str, device.job_ids))}")
        if device.in_use and device.memory_used_mib is not None:
            text.append(f" · {fmt.gib(device.memory_used_mib)}/{fmt.gib(device.memory_total_mib)}", style="dim")
        if device.reserved:
            text.append(" · reserved", style="magenta")
        if device.simulated:
            text.append(" · simulated", style="magenta")
        text.truncate(width, overflow="ellipsis")
        return text

    def _figures(self, device: DeviceStatus, width: int) -> Text:
        memory = memory_percent(device)
        util = float(device.utilization) if device.utilization is not None else None
        # Each figure: label, bar, percentage, sparkline; 26 cells go to the labels and percentages.
        room = max(width - 26, 8)
        bar_width = max(4, min(16, room // 4))
        spark_width = max((room - 2 * bar_width) // 2, 0)
        text = Text()
        for label, value, series in (
            ("    mem ", memory, self.history.memory(device.id)),
            (" util ", util, self.history.utilization(device.id)),
        ):
            text.append(label, style="dim")
            text.append_text(fmt.bar(value, bar_width))
            text.append(f" {fmt.percent_text(value):>4} ")
            text.append_text(fmt.sparkline(series, spark_width))
        text.truncate(width)
        return text
