"""The admin view's backend × device grid: one cell per GPU, coloured by its scheduling state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from moreh_tools.dashboard import formatting as fmt
from moreh_tools.services.records import GridBackend, GridDevice

CELL_WIDTH = 7  # " 93·41 ": utilisation · memory, in percent


def shown_state(device: GridDevice) -> str:
    """The state a cell is coloured by: the device's status, or FOREIGN while a foreign process uses it."""
    return "FOREIGN" if device.flag and device.status != "UNHEALTHY" else device.status


def legend(backends: Sequence[GridBackend]) -> Text:
    """The colour key, each state with how many GPUs are in it (the guardian's states only when present)."""
    counts = Counter(shown_state(d) for b in backends for d in b.devices)
    text = Text()
    for state, style in fmt.STATE_STYLES.items():
        text.append(f" {state.lower()} {counts[state]} ", style=style)
        text.append(" ")
    for state, style in fmt.GUARD_STYLES.items():
        if counts[state]:
            text.append(f" {state.lower()} {counts[state]} ", style=style)
            text.append(" ")
    return text


def guard_lines(backends: Sequence[GridBackend]) -> list[Text]:
    """One line per backend or GPU the GPU guardian keeps out of use, with why (none when all is well)."""
    lines = []
    for backend in backends:
        if backend.failure:
            lines.append(Text(f"{backend.id} {backend.host}: no GPU handed out: {backend.failure}", style="bold red"))
        for device in backend.devices:
            if device.flag:
                style = "red" if device.status == "UNHEALTHY" else "dark_orange"
                where = f"{backend.id} {backend.host}:{device.index}"
                lines.append(Text(f"{where} {shown_state(device).lower()}: {device.flag}", style=style))
    return lines


def summary(backends: Sequence[GridBackend]) -> str:
    """``60 backends · 480 GPUs (simulated) · cell: util%·mem%`` for the panel title."""
    total = sum(len(b.devices) for b in backends)
    sim = " (simulated)" if backends and all(b.simulated for b in backends) else ""
    plural = "" if len(backends) == 1 else "s"
    return f"{len(backends)} backend{plural} · {total} GPU{'' if total == 1 else 's'}{sim} · cell: util%·mem%"


def cell(device: GridDevice) -> Text:
    """One GPU: ``util·mem`` on its state's colour; the state's short name when it was never sampled."""
    state = shown_state(device)
    style = fmt.STATE_STYLES.get(state) or fmt.GUARD_STYLES.get(state, "")
    if device.util_gpu is None and device.memory_percent is None:
        body = fmt.STATE_SHORT.get(state, state.lower())[:CELL_WIDTH].center(CELL_WIDTH)
    else:
        util = fmt.NONE if device.util_gpu is None else str(device.util_gpu)
        memory = fmt.NONE if device.memory_percent is None else str(device.memory_percent)
        body = f"{util:>3}·{memory:<3}".center(CELL_WIDTH)
    return Text(body, style=style)


class BackendGrid(Widget):
    """Backends down, GPUs across; a backend with more GPUs than fit wraps onto more lines."""

    DEFAULT_CSS = """
    BackendGrid { height: auto; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Start empty; :meth:`show` gives it backends."""
        super().__init__(id=id)
        self.backends: tuple[GridBackend, ...] = ()

    def show(self, backends: tuple[GridBackend, ...]) -> None:
        """Draw these backends at the next refresh (no refresh when nothing changed)."""
        if backends != self.backends:
            self.backends = backends
            self.refresh(layout=True)

    def _label_width(self, width: int) -> int:
        """Room for ``id host (sim) ``; squeezed (down to 10) so that a whole 8-GPU backend fits on a line."""
        longest = max((len(f"{b.id} {b.host}") for b in self.backends), default=4)
        wanted = min(longest, 18) + 7  # " (sim)" or " off", and a space
        widest = max((len(b.devices) for b in self.backends), default=0)
        fit = width - min(widest, 8) * (CELL_WIDTH + 1) + 1
        return max(min(wanted, fit), 10)

    def _per_line(self, width: int) -> int:
        return max((width - self._label_width(width) + 1) // (CELL_WIDTH + 1), 1)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """A legend line, then each backend's lines."""
        per_line = self._per_line(width)
        rows = sum(max(-(-len(b.devices) // per_line), 1) for b in self.backends)
        return 1 + rows + len(guard_lines(self.backends))

    def render(self) -> Text:
        """The legend, then one or more lines per backend."""
        width = self.size.width
        label_width = self._label_width(width)
        per_line = self._per_line(width)
        lines = [legend(self.backends)]
        if not self.backends:
            lines.append(Text("No backend is registered yet ('create backend' or a first moreh-run).", style="yellow"))
        for backend in self.backends:
            devices = backend.devices
            chunks = [devices[i : i + per_line] for i in range(0, len(devices), per_line)] or [()]
            for number, chunk in enumerate(chunks):
                line = self._label(backend, label_width) if number == 0 else Text(" " * label_width)
                for number_in_line, device in enumerate(chunk):
                    if number_in_line:
                        line.append(" ")
                    line.append_text(cell(device))
                if not devices:
                    line.append("no GPU registered", style="dim")
                line.truncate(width)
                lines.append(line)
        for line in guard_lines(self.backends):
            line.truncate(width)
            lines.append(line)
        return Text("\n").join(lines)

    @staticmethod
    def _label(backend: GridBackend, width: int) -> Text:
        """``id host`` with `` off`` or `` (sim)`` when there is room; the name wins a narrow column."""
        name = f"{backend.id} {backend.host}"
        tag = " off" if backend.status != "ACTIVE" else " (sim)" if backend.simulated else ""
        if len(name) + len(tag) > width - 1:
            tag = " off" if backend.status != "ACTIVE" and len(name) + 4 <= width - 1 else ""
        if len(name) + len(tag) > width - 1:
            name = name[: width - 2] + "…"
        text = Text(name, style="bold" if backend.status == "ACTIVE" else "dim strike")
        text.append(tag, style="red" if tag == " off" else "magenta")
        text.pad_right(width - len(text))
        return text
