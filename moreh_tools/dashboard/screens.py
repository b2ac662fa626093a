"""The dashboard's modal screens: help, the confirmation dialog, the priority and model pickers."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from moreh_tools.services.records import ModelOption
from state.records import PRIORITY_MAX, PRIORITY_MIN

HELP_KEYS = (
    ("q", "quit"),
    ("?", "this help"),
    ("u / a", "user view / admin view (ADMIN token, or access to the state)"),
    ("tab", "next table; arrows and PgUp/PgDn move the cursor"),
    ("r", "refresh now"),
)
ACTION_KEYS = (
    ("x", "release the job under the cursor (asks first)"),
    ("p", "change the queued job's priority (admin view)"),
    ("m", "switch your current device's model (user view)"),
)


class HelpScreen(ModalScreen[None]):
    """The key bindings and what the colours mean; any key closes it."""

    def __init__(self, read_only: bool, interval: float) -> None:
        """Say whether actions are hidden and how often the screen refreshes."""
        super().__init__()
        self.read_only = read_only
        self.interval = interval

    def compose(self) -> ComposeResult:
        """One text block in a box."""
        from moreh_tools.dashboard.formatting import STATE_STYLES

        text = Text()
        text.append("moreh-smi --dashboard", style="bold")
        text.append(" · press any key to close\n\n", style="dim")
        for key, meaning in HELP_KEYS + (() if self.read_only else ACTION_KEYS):
            text.append(f" {key:<6} ", style="bold cyan")
            text.append(meaning + "\n")
        if self.read_only:
            text.append(" --read-only: release, priority and model actions are off.\n", style="magenta")
        text.append(f"\nRefreshes every {self.interval:g} s (--interval). Grid colours:\n")
        for state, style in STATE_STYLES.items():
            text.append(f" {state.lower()} ", style=style)
            text.append(" ")
        text.append("\nBars and sparklines: green below 50 %, yellow below 85 %, red above.\n")
        text.append("'simulated': figures of simulated GPUs (MOREH_FAKE_GPUS), not hardware.")
        with Vertical(id="help-box", classes="dialog"):
            yield Static(text, id="help-text")

    def on_key(self, event: events.Key) -> None:
        """Any key closes the help (and does nothing else)."""
        event.stop()
        event.prevent_default()
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Ask before an action: ``y``/enter confirms, ``n``/esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        """``question`` is one line; ``detail`` says what will happen."""
        super().__init__()
        self.question = question
        self.detail = detail

    def compose(self) -> ComposeResult:
        """The question, what it does, and Yes/No buttons."""
        with Vertical(id="confirm-box", classes="dialog"):
            yield Label(self.question, id="confirm-question")
            if self.detail:
                yield Label(self.detail, classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        """Focus No: enter alone never confirms by accident."""
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """A button answers."""
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        """A key answers."""
        self.dismiss(answer)


def parse_priority(text: str) -> int:
    """The priority typed, or ValueError with the line to show."""
    value = text.strip()
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"'{value}' is not a whole number: type one from {PRIORITY_MIN} to {PRIORITY_MAX}.") from None
    if not PRIORITY_MIN <= number <= PRIORITY_MAX:
        raise ValueError(f"{number} is out of range: type one from {PRIORITY_MIN} to {PRIORITY_MAX}.")
    return number


class PriorityScreen(ModalScreen[int | None]):
    """Type a queued job's new priority; enter changes it, esc leaves it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, job_id: int, owner: str, priority: int, position: int | None) -> None:
        """The job whose priority changes, and where it stands now."""
        super().__init__()
        self.job_id = job_id
        self.owner = owner
        self.priority = priority
        self.position = position

    def compose(self) -> ComposeResult:
        """The job, an input with the current priority, and the buttons."""
        place = f" at #{self.position}" if self.position is not None else ""
        with Vertical(id="priority-box", classes="dialog"):
            yield Label(f"Job {self.job_id} ({self.owner}) waits{place} with priority {self.priority}.")
            yield Label(f"New priority ({PRIORITY_MIN}..{PRIORITY_MAX}; higher runs first):", classes="hint")
            yield Input(str(self.priority), id="priority-input")
            yield Label("", id="priority-error")
            with Horizontal(classes="buttons"):
                yield Button("Change (enter)", id="change", variant="error")
                yield Button("Cancel (esc)", id="cancel", variant="primary")

    def on_mount(self) -> None:
        """Type straight away."""
        self.query_one(Input).focus()

    def _submit(self) -> None:
        try:
            value = parse_priority(self.query_one(Input).value)
        except ValueError as exc:
            self.query_one("#priority-error", Label).update(Text(str(exc), style="bold red"))
            return
        self.dismiss(value)

    def on_input_submitted(self) -> None:
        """Enter in the input confirms."""
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Change confirms, Cancel leaves."""
        if event.button.id == "change":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        """Leave the priority as it is."""
        self.dismiss(None)


class ModelScreen(ModalScreen[ModelOption | None]):
    """Pick a model for the current device (the ``moreh-switch-model`` list, current one marked)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "cancel", "Cancel")]

    def __init__(self, device_id: int, current: ModelOption | None, options: tuple[ModelOption, ...]) -> None:
        """The device and the models the token may use."""
        super().__init__()
        self.device_id = device_id
        self.current = current
        self.options = options

    def compose(self) -> ComposeResult:
        """The current model and the numbered list."""
        now = self.current.text if self.current is not None else "a model this token may no longer use"
        with Vertical(id="model-box", classes="dialog"):
            yield Label(f"Device {self.device_id} is {now}. Switch it to:")
            yield OptionList(
                *[
                    Option(f"{o.number}. {o.label}{'  (current)' if o == self.current else ''}", id=str(o.number))
                    for o in self.options
                ],
                id="model-list",
            )
            yield Label("enter picks, esc cancels; you confirm on the next screen.", classes="hint")

    def on_mount(self) -> None:
        """Start on the current model."""
        option_list = self.query_one(OptionList)
        option_list.focus()
        if self.current is not None:
            option_list.highlighted = self.options.index(self.current)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """A picked model goes back to the app, which asks for confirmation."""
        number = int(event.option.id or 0)
        self.dismiss(next((o for o in self.options if o.number == number), None))

    def action_cancel(self) -> None:
        """Keep the model."""
        self.dismiss(None)
