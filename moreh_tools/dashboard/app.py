"""The dashboard app: two views over one :class:`~moreh_tools.dashboard.data.DataSource`, polled live.

Each poll runs ``source.fetch`` in a thread worker (the state lock is held only in there, never
while drawing); the next poll is scheduled only when one finishes, so polls never overlap. Actions
also run in thread workers and are followed by an immediate poll.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.notifications import SeverityLevel
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Footer
from textual.worker import Worker, WorkerState

from moreh_tools.dashboard.data import DEFAULT_INTERVAL_S, DataSource
from moreh_tools.dashboard.history import DeviceHistory
from moreh_tools.dashboard.screens import ConfirmScreen, HelpScreen, ModelScreen, PriorityScreen
from moreh_tools.dashboard.widgets.backend_grid import BackendGrid, summary
from moreh_tools.dashboard.widgets.device_list import DeviceList
from moreh_tools.dashboard.widgets.event_log import EventLog
from moreh_tools.dashboard.widgets.status_bar import StatusBar
from moreh_tools.dashboard.widgets.tables import (
    AdminJobTable,
    FairShareTable,
    HistoryTable,
    LiveTable,
    UsageTable,
    UserJobTable,
)
from moreh_tools.services.records import JobRow, ModelOption, Snapshot, SwitchChoices, View

ACTIONS = ("release", "priority", "switch_model")
#: The keys that switch views (bindings ``u`` and ``a``), for the reply to one this access does not open.
VIEW_KEYS: dict[str, View] = {"u": "user", "a": "admin"}


def problem_text(error: BaseException) -> str:
    """One line for a failed poll or action: our errors carry their message, others get their type."""
    from moreh_tools.runtime import ToolError
    from state.errors import StateError

    if isinstance(error, ToolError | StateError):
        return str(error)
    return f"internal error ({type(error).__name__}: {error}); please report it"


class DashboardApp(App[None]):
    """``moreh-smi --dashboard``."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "moreh-smi dashboard"
    # The palette's footer entry costs 12 columns that an 80-column terminal needs for our keys.
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]] | None] = [  # type: ignore[misc]
        (0, "-narrow"),
        (110, "-wide"),
    ]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("u", "view('user')", "User view"),
        Binding("a", "view('admin')", "Admin view"),
        Binding("r", "refresh", "Refresh"),
        Binding("x", "release", "Release"),
        Binding("p", "priority", "Priority"),
        Binding("m", "switch_model", "Model"),
    ]

    def __init__(self, source: DataSource, *, interval: float = DEFAULT_INTERVAL_S, read_only: bool = False) -> None:
        """Show what ``source`` gives, re-reading it every ``interval`` seconds."""
        super().__init__()
        self.source = source
        self.access = source.access
        self.interval = interval
        self.read_only = read_only
        self.view: View = self.access.views[0]
        self.snapshot: Snapshot | None = None
        self.history = DeviceHistory()
        self.polls = 0
        self._polling = False
        self._poll_again = False
        self._timer: Timer | None = None
        self._acting = False
        self.said: list[str] = []

    @property
    def busy(self) -> bool:
        """Whether a poll or an action is in flight (tests wait for this to settle)."""
        return self._polling or self._acting or any(w.is_running for w in self.workers)

    # -- layout ---------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Status line, the views, the key footer."""
        yield StatusBar(self.access.label, self.view, self.read_only, id="status")
        with ContentSwitcher(initial=self.view, id="views"):
            if self.access.user:
                with Vertical(id="user"):
                    with VerticalScroll(id="devices-box", classes="panel"):
                        yield DeviceList(self.history, id="devices")
                    yield UserJobTable(id="user-jobs")
                    yield HistoryTable(id="history")
            if self.access.admin:
                with Vertical(id="admin"):
                    with Horizontal(id="admin-top"):
                        with VerticalScroll(id="grid-box", classes="panel"):
                            yield BackendGrid(id="grid")
                        with Vertical(id="admin-side"):
                            yield UsageTable(id="usage")
                            yield FairShareTable(id="fairshare")
                            yield EventLog(id="events")
                    yield AdminJobTable(id="jobs")
        yield Footer()

    def on_mount(self) -> None:
        """Title the panels, focus the jobs, start polling."""
        titles = {
            "#devices-box": "Devices",
            "#user-jobs": "Jobs",
            "#history": "Recent history",
            "#grid-box": "Cluster",
            "#jobs": "Jobs",
            "#usage": "Usage, last 24 h",
            "#fairshare": "Fair share (user groups)",
            "#events": "Events",
        }
        for selector, title in titles.items():
            for widget in self.query(selector):
                widget.border_title = title
                widget.add_class("panel")
        self._focus_view()
        self.poll()

    def _focus_view(self) -> None:
        self.query_one("#user-jobs" if self.view == "user" else "#jobs").focus()

    # -- polling ----------------------------------------------------------------------------------------

    def poll(self) -> None:
        """Read the state now, unless a poll is running (then once more right after it)."""
        if self._polling:
            self._poll_again = True
            return
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._polling = True
        self.run_worker(
            partial(self.source.fetch, self.view),
            name="poll",
            group="poll",
            thread=True,
            exclusive=True,
            exit_on_error=False,
        )

    def _polled(self, worker: Worker[Any]) -> None:
        from textual.css.query import NoMatches

        try:
            if worker.state == WorkerState.SUCCESS:
                snapshot = worker.result
                assert isinstance(snapshot, Snapshot)
                self.polls += 1
                self._draw(snapshot)
            elif worker.state == WorkerState.ERROR and worker.error is not None:
                self._draw_problem(problem_text(worker.error))
        except NoMatches:
            if self.is_running:
                raise  # a view missing from a running dashboard is a defect, not a closing app
            # A poll that ends while the app closes: its views are going (leaves first, so any of them may be
            # gone already), and no next poll is due.
            return
        self._polling = False
        if self._poll_again:
            self._poll_again = False
            self.poll()
        else:
            self._timer = self.set_timer(self.interval, self.poll)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Polls chain the next one; actions say how they went and trigger a poll."""
        worker = event.worker
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        if worker.group == "poll":
            self._polled(worker)
        elif worker.group == "choices":
            if event.state == WorkerState.SUCCESS and isinstance(worker.result, SwitchChoices):
                self._choices_ready(worker.result)
            elif worker.error is not None:
                self.say(problem_text(worker.error), "error")
        elif worker.group == "action":
            self._acting = False
            if event.state == WorkerState.SUCCESS:
                self.say(str(worker.result))
            elif worker.error is not None:
                self.say(problem_text(worker.error), "error")
            self.poll()

    # -- drawing -------------------------------------------------------------------------------------------

    def _draw(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        simulated = False
        if snapshot.user is not None:
            user = snapshot.user
            self.history.record(user.status)
            self.query_one(DeviceList).show(user.status)
            simulated = any(d.simulated for d in user.status.devices)
            jobs = self.query_one(UserJobTable)
            jobs.show(user.jobs, snapshot.taken_at)
            running = sum(1 for j in user.jobs if not j.queued)
            jobs.border_title = f"Jobs · {running} running · {len(user.jobs) - running} queued"
            self.query_one(HistoryTable).show(user.history, snapshot.taken_at)
        if snapshot.admin is not None:
            admin = snapshot.admin
            simulated = any(b.simulated for b in admin.backends)
            if snapshot.changed or self.polls == 1:
                self.query_one(BackendGrid).show(admin.backends)
                self.query_one("#grid-box").border_title = f"Cluster · {summary(admin.backends)}"
                table = self.query_one(AdminJobTable)
                table.show(admin.jobs, snapshot.taken_at)
                table.border_title = (
                    f"Jobs · {len(admin.running)} running · {len(admin.queue)} queued, in scheduling order"
                )
                self.query_one(UsageTable).show(admin.usage)
                fairshare = self.query_one(FairShareTable)
                fairshare.display = bool(admin.fairshare)  # no user groups: no panel, the usage keeps the room
                fairshare.show(admin.fairshare)
            self.query_one(EventLog).show(admin.events, snapshot.taken_at)
        self.query_one(StatusBar).show(
            view=self.view, daemon=snapshot.daemon_running, taken_at=snapshot.taken_at, simulated=simulated
        )

    def say(self, message: str, severity: SeverityLevel = "information") -> None:
        """Tell the user how something went, in a toast (errors stay longer); ``said`` keeps the lines."""
        self.said.append(message)
        titles = {"information": "Done", "warning": "Not now", "error": "Not done"}
        self.notify(message, title=titles[severity], severity=severity, timeout=8 if severity == "error" else 4)

    def _draw_problem(self, message: str) -> None:
        bar = self.query_one(StatusBar)
        bar.show(view=self.view, daemon=bar.daemon, taken_at=bar.taken_at, simulated=bar.simulated, problem=message)

    # -- bindings ---------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide what this view, this access or --read-only does not allow."""
        if action in ACTIONS and self.read_only:
            return False
        if action == "priority":
            return self.view == "admin"
        if action == "switch_model":
            return self.view == "user"
        if action == "view":
            wanted = parameters[0] if parameters else None
            return wanted in self.access.views and wanted != self.view
        return True

    def on_key(self, event: events.Key) -> None:
        """A view key this access does not open (its binding is hidden) says why instead of doing nothing."""
        view = VIEW_KEYS.get(event.key)
        if view is None or view in self.access.views:
            return
        event.stop()
        if view == "admin":
            self.say(f"The admin view needs an ADMIN token; {self.access.label} is not one.", "warning")
        else:
            self.say(
                "The user view needs a token: start the dashboard with MOREH_SDA_TOKEN set (or a token file).",
                "warning",
            )

    def action_help(self) -> None:
        """Show the keys."""
        self.push_screen(HelpScreen(self.read_only, self.interval))

    def action_view(self, view: str) -> None:
        """Switch between the user and the admin view."""
        if view not in self.access.views or view == self.view:
            return
        self.view = "admin" if view == "admin" else "user"
        self.query_one(ContentSwitcher).current = self.view
        self._focus_view()
        self.refresh_bindings()
        self.poll()

    def action_refresh(self) -> None:
        """Poll now."""
        self.poll()

    # -- actions ------------------------------------------------------------------------------------------------

    def selected_job(self) -> JobRow | None:
        """The job under the cursor of the current view's job table."""
        if self.snapshot is None:
            return None
        table: LiveTable = self.query_one(UserJobTable if self.view == "user" else AdminJobTable)
        key = table.selected_key()
        data = self.snapshot.user if self.view == "user" else self.snapshot.admin
        jobs = data.jobs if data is not None else ()
        return next((j for j in jobs if str(j.id) == key), None)

    def _act(self, work: Callable[[], str]) -> None:
        if self._acting:
            self.say("The previous action is still running; wait for it.", "warning")
            return
        self._acting = True
        self.run_worker(work, name="action", group="action", thread=True, exit_on_error=False)

    def action_release(self) -> None:
        """Ask, then release the selected job."""
        job = self.selected_job()
        if job is None:
            self.say("No job is selected: move the cursor onto a job first.", "warning")
            return
        owner = f", {job.owner}" if self.view == "admin" and job.owner else ""
        where = f"waiting at #{job.position}" if job.queued else f"{job.status.lower()} on {job.placed_on or job.host}"
        detail = (
            "It leaves the queue and its moreh-run exits."
            if job.queued
            else "Its processes get SIGTERM, then SIGKILL after the grace time; its devices are freed."
        )
        question = f"Release job {job.id} ({job.process or 'no process'}{owner}, {where})?"

        def answered(yes: bool | None) -> None:
            if yes:
                self._act(partial(self.source.release, job.id))

        self.push_screen(ConfirmScreen(question, detail), answered)

    def action_priority(self) -> None:
        """Ask for a queued job's new priority, then set it."""
        job = self.selected_job()
        if job is None or not job.queued:
            self.say("Select a queued job: only a queued job's priority can change.", "warning")
            return

        def answered(priority: int | None) -> None:
            if priority is not None and priority != job.priority:
                self._act(partial(self.source.set_priority, job.id, priority))

        self.push_screen(PriorityScreen(job.id, job.owner, job.priority, job.position), answered)

    def action_switch_model(self) -> None:
        """Pick a model for the current device, confirm, switch (the choices are read in a worker)."""
        self.run_worker(self.source.model_choices, name="choices", group="choices", thread=True, exit_on_error=False)

    def _choices_ready(self, choices: SwitchChoices) -> None:
        if choices.busy is not None:
            self.say(
                f"The model cannot be switched while {choices.busy}; wait for it to end or release it (x).", "warning"
            )
            return
        if not choices.options:
            self.say("This token may use no SDA model; ask your administrator.", "warning")
            return

        def picked(option: ModelOption | None) -> None:
            if option is None or option == choices.current_option:
                return
            current = choices.current
            question = f"Switch device {choices.device_id} from {current} to {option.text}?"

            def answered(yes: bool | None) -> None:
                if yes:
                    self._act(partial(self.source.switch_model, option))

            self.push_screen(ConfirmScreen(question, "Its next job gets the new model's GPUs."), answered)

        self.push_screen(ModelScreen(choices.device_id, choices.current_option, choices.options), picked)
