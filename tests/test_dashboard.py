"""``moreh-smi --dashboard``: the Textual live dashboard, driven with Textual's ``run_test()`` pilot.

Behaviour tests run the app over a real state (tokens, SDAs, backends and jobs written through the
state API) and check what a person sees and what changes in the state after each key. Snapshot
tests run it over a fixed data source (fixed clock, fixed figures) and compare the screen's text
with ``tests/snapshots/dashboard_*.txt``; each says in its docstring what the screen must show.
Run with ``MOREH_UPDATE_SNAPSHOTS=1`` to rewrite the snapshot files, then review the diff.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from moreh_tools.dashboard import cli
from moreh_tools.dashboard.data import PortSource
from moreh_tools.port import LocalPort, ops
from moreh_tools.services.records import (
    SIMULATED_GPU_NAME,
    Access,
    AdminData,
    DeviceStatus,
    GpuStatus,
    GridBackend,
    GridDevice,
    HistoryRow,
    JobRow,
    ModelOption,
    SmiStatus,
    Snapshot,
    SwitchChoices,
    UsageRow,
    UserData,
    View,
    WaitingJob,
)
from state.errors import NotFoundError, PermissionDeniedError, StateBusyError
from state.records import Event
from state.store import StateStore

SNAPSHOTS = Path(__file__).parent / "snapshots"
BIN = Path(sys.executable).parent
JOB_HOST = "node-1"


# -- running the app ------------------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run one pilot session (no pytest-asyncio needed)."""
    asyncio.run(coro)


def screen_text(app: Any) -> str:
    """The screen as plain text, one line per terminal row (what a person reads, without colour)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system=None,
        record=True,
        legacy_windows=False,
    )
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


async def settle(app: Any, pilot: Any) -> None:
    """Wait until no poll or action is in flight and the screen has caught up."""
    for _ in range(200):
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not app.busy:
            break
    await pilot.pause(0.05)


async def wait_for(pilot: Any, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the app run until ``condition`` holds (polls are on timers, so this is how to wait for one)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the screen never showed what was expected")
        await pilot.pause(0.02)


def table_keys(app: Any, selector: str) -> list[str]:
    """The row keys (job ids) of a table, top to bottom."""
    table = app.query_one(selector)
    return [row.key.value for row in table.ordered_rows]


async def select_row(app: Any, pilot: Any, selector: str, key: str) -> None:
    """Move a table's cursor onto the row with ``key`` using the arrow keys, as a person would."""
    table = app.query_one(selector)
    table.focus()
    await pilot.pause()
    target = table_keys(app, selector).index(key)
    for _ in range(50):
        if table.cursor_row == target:
            return
        await pilot.press("down" if table.cursor_row < target else "up")
    raise AssertionError(f"cursor never reached row {key}")


def make_app(source: Any, **options: Any) -> Any:
    from moreh_tools.dashboard.app import DashboardApp

    return DashboardApp(source, interval=options.pop("interval", 3600), **options)


# -- a real state ---------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """Who and what the behaviour tests' state holds."""

    store: StateStore
    alice: str
    bob: str
    root: str
    alice_big: int
    alice_small: int
    bob_sda: int
    running: int
    bob_queued: int
    alice_queued: int
    finished: int


def _submit(s: Any, token: str, sda: int, process: str, priority: int | None = None) -> int:
    return int(
        s.jobs.submit(
            token, sda, backend_id=s.backends.local_id(JOB_HOST), launcher_pid=0, launcher_create_time=0.0, process_name=process, priority=priority
        ).id
    )


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """Two 8-GPU backends; alice runs a 4-GPU job and queues a 1-GPU one behind bob's 8-GPU job.

    The dashboard's own host is not a backend, so it never samples GPUs or signals processes here.
    """
    monkeypatch.setenv("MOREH_HOSTNAME", "dashboard-host")
    store = StateStore()
    with store.transaction("test: cluster") as s:
        alice = s.tokens.create("alice@example.com")
        s.tokens.update_max_sda(alice, 3)
        bob = s.tokens.create("bob@example.com", 5)
        root = s.tokens.create("root@example.com")
        s.tokens.update_access_level(root, "ADMIN")
        alice_big = s.sdas.create(alice, "", 3)  # Large.256GB: 4 GPUs
        alice_small = s.sdas.create(alice, "", 1)  # Small.64GB: 1 GPU
        bob_sda = s.sdas.create(bob, "", 4)  # xLarge.512GB: 8 GPUs
        s.backends.create(JOB_HOST, "10.0.0.1", 8)
        s.backends.create("node-2", "10.0.0.2", 8)
        done = _submit(s, alice, alice_small, "python warmup.py")
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(done, 0, 0.0)
        s.jobs.finish(done, 3, "failed")
        running = _submit(s, alice, alice_big, "python train.py")
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(running, 0, 0.0)
        bob_queued = _submit(s, bob, bob_sda, "python big.py")
        alice_queued = _submit(s, alice, alice_small, "python small.py")
        s.jobs.run_scheduling_pass()
    return Cluster(store, alice, bob, root, alice_big, alice_small, bob_sda, running, bob_queued, alice_queued, done)


def source_for(cluster: Cluster, token: str | None) -> PortSource:
    port = LocalPort(cluster.store.home, token, "test")
    return PortSource(port, port.call(ops.DASHBOARD_ACCESS))


def job_status(store: StateStore, job_id: int) -> tuple[str, int] | tuple[str, str]:
    """('QUEUED'|'RUNNING'…, priority) while the job is in the queue, ('ended', reason) after."""
    with store.reading() as s:
        job = s.jobs.find(job_id)
        if job is not None:
            return job.status, job.priority
        entry = s.jobs.history_entry(job_id)
        assert entry is not None
        return "ended", entry.end_reason


# -- refusing before the screen is taken ------------------------------------------------------------------


def test_refuses_without_a_terminal_and_points_at_plain_moreh_smi() -> None:
    """Piped output gets one line naming plain moreh-smi, a non-zero exit, and Textual is never loaded."""
    code = (
        "import sys\n"
        "from moreh_tools.dashboard.cli import main\n"
        "status = main([])\n"
        "print('textual loaded' if 'textual' in sys.modules else 'textual not loaded')\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stdout.strip() == "textual not loaded"
    assert done.stderr.splitlines() == [cli.NOT_A_TERMINAL]
    assert "'moreh-smi'" in cli.NOT_A_TERMINAL


def test_moreh_smi_dashboard_flag_through_the_console_script() -> None:
    """``moreh-smi --dashboard`` piped refuses with the same line; its options need the flag and go alone."""
    smi = str(BIN / "moreh-smi")

    def line(*args: str) -> tuple[int, str]:
        done = subprocess.run(
            [smi, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False
        )
        assert done.stdout == ""
        assert len(done.stderr.splitlines()) == 1, done.stderr
        return done.returncode, done.stderr.strip()

    assert line("--dashboard") == (1, cli.NOT_A_TERMINAL)
    assert line("--dashboard", "--interval", "2", "--read-only") == (1, cli.NOT_A_TERMINAL)
    code, message = line("--read-only")
    assert (code, message) == (2, "moreh-smi: --interval and --read-only go with --dashboard (see 'moreh-smi --help').")
    code, message = line("--dashboard", "-t")
    assert code == 2
    assert "--dashboard goes alone (not with -t)" in message
    code, message = line("--dashboard", "--interval", "0")
    assert code == 2
    assert "--interval takes seconds from 0.2 to 3600" in message


@pytest.mark.parametrize("value", ["0", "abc", "-1", "nan", "99999"])
def test_bad_interval_is_one_line_and_exit_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--interval`` must be seconds in range; anything else is refused before the terminal check."""
    assert cli.main(["--interval", value]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "--interval takes seconds" in err[0]
    assert f"'{value}'" in err[0]


@dataclass
class FakeApp:
    """Stands in for DashboardApp in the CLI tests: records what it was built with."""

    built: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, source: Any, **options: Any) -> FakeApp:
        self.built.append({"access": source.access, **options})
        return self

    def run(self) -> None:
        pass


@pytest.fixture
def on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> FakeApp:
    """Pretend stdin and stdout are a terminal and catch the app the CLI would start."""
    import moreh_tools.dashboard.app as app_module

    monkeypatch.setattr(cli, "on_a_terminal", lambda: True)
    fake = FakeApp()
    monkeypatch.setattr(app_module, "DashboardApp", fake)
    monkeypatch.delenv("MOREH_SDA_TOKEN", raising=False)
    monkeypatch.setenv("MOREH_TOKEN_FILE", "/nonexistent/token")
    return fake


def test_cli_starts_the_user_view_for_a_token_and_both_views_for_an_admin(
    cluster: Cluster, on_a_terminal: FakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A USER token gets the user view only; an ADMIN token both; the options reach the app."""
    monkeypatch.setenv("MOREH_SDA_TOKEN", cluster.alice)
    assert cli.main(["--interval", "2.5", "--read-only"]) == 0
    monkeypatch.setenv("MOREH_SDA_TOKEN", cluster.root)
    assert cli.main([]) == 0
    alice, root = on_a_terminal.built
    assert alice["access"].views == ("user",)
    assert (alice["interval"], alice["read_only"]) == (2.5, True)
    assert root["access"].views == ("user", "admin")
    assert (root["interval"], root["read_only"]) == (1.0, False)


def test_cli_without_token_opens_the_admin_view_on_the_state_or_refuses(
    on_a_terminal: FakeApp, capsys: pytest.CaptureFixture[str], moreh_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No token: with no state here it says the token is missing; next to a state it is the admin view."""
    assert cli.main([]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("SDA token is not given.")
    assert not on_a_terminal.built
    with StateStore().transaction("test: create the state"):
        pass
    assert cli.main([]) == 0
    assert on_a_terminal.built[0]["access"].views == ("admin",)
    monkeypatch.setenv("MOREH_SDA_TOKEN", "not-a-token")
    assert cli.main([]) == 1
    assert "Invalid SDA token" in capsys.readouterr().err


# -- the user view --------------------------------------------------------------------------------------------


def test_user_view_shows_devices_jobs_queue_place_and_history(cluster: Cluster) -> None:
    """Alice sees her two devices, her running job, her queued job's place and reason, and her failed job."""

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.alice))
        async with app.run_test(notifications=True, size=(120, 40)) as pilot:
            await settle(app, pilot)
            text = screen_text(app)
            assert "user view · alice@example.com" in text
            assert "no sdamanager daemon" in text
            assert "* 1 Large.256GB · 4 GPUs · running job" in text
            assert "2 Small.64GB · 1 GPU · waiting job" in text
            assert table_keys(app, "#user-jobs") == [str(cluster.running), str(cluster.alice_queued)]
            queued_line = next(line for line in text.splitlines() if "python small.py" in line)
            assert "#2" in queued_line  # behind bob's job, which has the higher priority
            assert f"behind job {cluster.bob_queued}" in queued_line
            history_line = next(line for line in text.splitlines() if "python warmup.py" in line)
            assert " 3 " in history_line
            assert "failed" in history_line
            assert "Admin view" not in text  # a USER token has no admin view
            assert "bob@example.com" not in text

    run(scenario())


def test_release_a_queued_job_after_confirming(cluster: Cluster) -> None:
    """x on the queued job asks first; y releases it: it leaves the table and ends as released."""

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.alice))
        async with app.run_test(notifications=True, size=(100, 30)) as pilot:
            await settle(app, pilot)
            await select_row(app, pilot, "#user-jobs", str(cluster.alice_queued))
            await pilot.press("x")
            await pilot.pause()
            dialog = screen_text(app)
            assert f"Release job {cluster.alice_queued} (python small.py, waiting at #2)?" in dialog
            assert "It leaves the queue" in dialog
            assert job_status(cluster.store, cluster.alice_queued) == ("QUEUED", 0)  # nothing before "y"
            await pilot.press("y")
            await settle(app, pilot)
            assert table_keys(app, "#user-jobs") == [str(cluster.running)]
            assert app.said == [f"Job {cluster.alice_queued} released."]
            history = screen_text(app).splitlines()
            assert any("python small.py" in line and "released" in line for line in history)
        assert job_status(cluster.store, cluster.alice_queued) == ("ended", "released")

    run(scenario())


def test_declining_the_confirmation_changes_nothing(cluster: Cluster) -> None:
    """n (or esc) closes the dialog and leaves the job queued."""

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.alice))
        async with app.run_test(notifications=True, size=(100, 30)) as pilot:
            await settle(app, pilot)
            await select_row(app, pilot, "#user-jobs", str(cluster.alice_queued))
            for key in ("n", "escape"):
                await pilot.press("x")
                await pilot.pause()
                assert "Release job" in screen_text(app)
                await pilot.press(key)
                await settle(app, pilot)
                assert "Release job" not in screen_text(app)
        assert job_status(cluster.store, cluster.alice_queued) == ("QUEUED", 0)

    run(scenario())


def test_switch_model_is_refused_while_a_job_runs_then_switches_an_idle_device(cluster: Cluster) -> None:
    """m on the busy current device says why not; on an idle current device it picks, confirms, switches."""
    with cluster.store.transaction("test: free alice's small device") as s:
        s.jobs.finish(cluster.alice_queued, None, "released")

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.alice))
        async with app.run_test(notifications=True, size=(100, 30)) as pilot:
            await settle(app, pilot)
            await pilot.press("m")
            await settle(app, pilot)
            assert app.said == [
                f"The model cannot be switched while job {cluster.running} (RUNNING) uses it; "
                "wait for it to end or release it (x)."
            ]
            with cluster.store.transaction("test: switch current") as s:
                s.tokens.update_current_sda(cluster.alice, cluster.alice_small)
            await pilot.press("r")
            await settle(app, pilot)
            await pilot.press("m")
            await settle(app, pilot)
            picker = screen_text(app)
            assert f"Device {cluster.alice_small} is Small.64GB. Switch it to:" in picker
            assert "Small.64GB  (current)" in picker
            await pilot.press("down", "enter")  # the next size up: Medium.128GB
            await pilot.pause()
            assert f"Switch device {cluster.alice_small} from Small.64GB to Medium.128GB?" in screen_text(app)
            await pilot.press("y")
            await settle(app, pilot)
            assert app.said[-1] == 'The model is successfully switched to "Medium.128GB".'
            assert f"{cluster.alice_small} Medium.128GB" in screen_text(app)
        with cluster.store.reading() as s:
            assert s.sdas.get(cluster.alice_small).model_id == 2

    run(scenario())


# -- the admin view ----------------------------------------------------------------------------------------------


def test_admin_view_shows_grid_queue_in_order_usage_and_events(cluster: Cluster) -> None:
    """An ADMIN token switches to the admin view with a: grid, running job then queue order, usage, events."""

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.root))
        async with app.run_test(notifications=True, size=(120, 40)) as pilot:
            await settle(app, pilot)
            assert "user view" in screen_text(app)
            await pilot.press("a")
            await settle(app, pilot)
            text = screen_text(app)
            assert "admin view · root@example.com" in text
            assert "Cluster · 2 backends · 16 GPUs · cell: util%·mem%" in text
            assert " idle 12   preparing 0   processing 4   cleaning 0   shutdown 0 " in text
            assert "1 node-1" in text
            assert "2 node-2" in text
            assert "Jobs · 1 running · 2 queued, in scheduling order" in text
            assert table_keys(app, "#jobs") == [
                str(cluster.running),
                str(cluster.bob_queued),
                str(cluster.alice_queued),
            ]
            assert "waiting for 8 device(s)" in text
            usage = app.query_one("#usage")
            assert [row.key.value for row in usage.ordered_rows] == [cluster.alice, cluster.bob]
            assert "END_JOB" in text
            assert "ALLOCATE_JOB" in text
            await pilot.press("u")
            await settle(app, pilot)
            assert "user view" in screen_text(app)

    run(scenario())


def test_admin_raises_a_priority_and_the_queue_order_changes(cluster: Cluster) -> None:
    """p on alice's queued job, 50, enter: she moves ahead of bob (the scheduler order), state says 50."""

    async def scenario() -> None:
        app = make_app(source_for(cluster, None))
        async with app.run_test(notifications=True, size=(120, 40)) as pilot:
            await settle(app, pilot)
            assert "admin view" in screen_text(app)
            await select_row(app, pilot, "#jobs", str(cluster.alice_queued))
            await pilot.press("p")
            await pilot.pause()
            dialog = screen_text(app)
            assert f"Job {cluster.alice_queued} (alice@example.com) waits at #2 with priority 0." in dialog
            await pilot.press("ctrl+a", "ctrl+k", "a", "b", "enter")
            await pilot.pause()
            assert "'ab' is not a whole number" in screen_text(app)
            await pilot.press("ctrl+a", "ctrl+k", "5", "0", "enter")
            await settle(app, pilot)
            # alice's 1-GPU job now leads and fits on the idle GPUs, so the pass started it
            assert app.said == [f"Job {cluster.alice_queued} priority set to 50."]
            keys = table_keys(app, "#jobs")
            assert keys.index(str(cluster.alice_queued)) < keys.index(str(cluster.bob_queued))
        assert job_status(cluster.store, cluster.alice_queued) == ("SUBMITTED", 50)

    run(scenario())


def test_admin_priority_reorders_a_queue_that_cannot_start(cluster: Cluster) -> None:
    """With every GPU busy, raising the last job's priority moves it to #1 of the queue table."""
    with cluster.store.transaction("test: fill node-2 and queue two more") as s:
        s.backends.update_status(2, "SHUTDOWN")
        third = _submit(s, cluster.bob, cluster.bob_sda, "python later.py", priority=-3)

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.root))
        async with app.run_test(notifications=True, size=(120, 40)) as pilot:
            await settle(app, pilot)
            await pilot.press("a")
            await settle(app, pilot)
            before = table_keys(app, "#jobs")
            assert before[-1] == str(third)
            await select_row(app, pilot, "#jobs", str(third))
            await pilot.press("p", "ctrl+a", "ctrl+k", "9", "9", "enter")
            await settle(app, pilot)
            after = table_keys(app, "#jobs")
            assert after[1] == str(third)  # right after the running job: first in the queue
            row = next(line for line in screen_text(app).splitlines() if line.startswith(f" {third} "))
            assert " queued   1 " in row
        assert job_status(cluster.store, third) == ("QUEUED", 99)

    run(scenario())


def test_read_only_hides_every_action(cluster: Cluster) -> None:
    """--read-only: no release, priority or model keys in the footer, and x does nothing."""

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.root), read_only=True)
        async with app.run_test(notifications=True, size=(120, 30)) as pilot:
            await settle(app, pilot)
            for view in ("u", "a"):
                await pilot.press(view)
                await settle(app, pilot)
                footer = screen_text(app).splitlines()[-1]
                assert "Quit" in footer
                assert "Release" not in footer
                assert "Priority" not in footer
                assert "Model" not in footer
            await select_row(app, pilot, "#jobs", str(cluster.bob_queued))
            await pilot.press("x", "p")
            await pilot.pause()
            assert "Release job" not in screen_text(app)
            assert "read-only" in screen_text(app)
        assert job_status(cluster.store, cluster.bob_queued) == ("QUEUED", 5)

    run(scenario())


def test_a_user_cannot_release_someone_elses_job(cluster: Cluster) -> None:
    """The user source refuses a job of another token with one line (the UI never offers it anyway)."""
    source = source_for(cluster, cluster.alice)
    with pytest.raises(NotFoundError, match=f"Job {cluster.bob_queued} not found"):
        source.release(cluster.bob_queued)
    with pytest.raises(PermissionDeniedError, match="up to its token priority"):
        source.set_priority(cluster.alice_queued, 9)
    assert job_status(cluster.store, cluster.bob_queued) == ("QUEUED", 5)


def test_help_on_question_mark_and_q_quits(cluster: Cluster) -> None:
    """? shows the keys; any key closes the help; q ends the app."""

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.alice))
        async with app.run_test(notifications=True, size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.press("question_mark")
            await pilot.pause()
            text = screen_text(app)
            assert "release the job under the cursor (asks first)" in text
            assert "press any key to close" in text
            await pilot.press("z")
            await pilot.pause()
            assert "press any key to close" not in screen_text(app)
            await pilot.press("q")
            await pilot.pause()
            assert not app.is_running

    run(scenario())


def test_a_view_key_this_access_does_not_open_says_why(cluster: Cluster) -> None:
    """Issue 15: ``a`` with a USER token and ``u`` without a token answer in a toast instead of doing nothing."""

    async def scenario(token: str | None, key: str, expected: str) -> None:
        app = make_app(source_for(cluster, token))
        async with app.run_test(notifications=True, size=(100, 30)) as pilot:
            await settle(app, pilot)
            view = app.view
            await pilot.press(key)
            await pilot.pause()
            assert app.view == view
            assert app.said, "nothing was said"
            assert expected in app.said[-1], app.said
            assert expected in screen_text(app)

    run(scenario(cluster.alice, "a", "The admin view needs an ADMIN token"))
    run(scenario(None, "u", "The user view needs a token"))


def test_says_when_a_daemon_runs(cluster: Cluster, moreh_home: Path) -> None:
    """A daemon that starts while the dashboard is up takes the state over; the dashboard follows it there."""

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.alice))
        async with app.run_test(notifications=True, size=(100, 24)) as pilot:
            await settle(app, pilot)
            assert "no sdamanager daemon" in screen_text(app)
            daemon = subprocess.Popen(
                [str(BIN / "sdamanager"), "--interval", "0.5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                deadline = time.monotonic() + 30
                while not (moreh_home / "sdamanager.sock").exists():
                    assert daemon.poll() is None, "sdamanager did not start"
                    assert time.monotonic() < deadline, "sdamanager did not start in time"
                    await asyncio.sleep(0.05)
                await pilot.press("r")
                await settle(app, pilot)
                assert "daemon running" in screen_text(app)
                assert "no sdamanager daemon" not in screen_text(app)
            finally:
                daemon.terminate()
                daemon.wait(timeout=20)

    run(scenario())


def test_grid_colours_follow_device_states(cluster: Cluster) -> None:
    """Processing GPUs carry the PROCESSING colour; once the job ends only the legend keeps it."""
    from moreh_tools.dashboard.formatting import STATE_STYLES

    def painted(app: Any, state: str) -> int:
        background = STATE_STYLES[state].split(" on ")[1]
        return app.export_screenshot().count(f'fill="{background}"')

    async def scenario() -> None:
        app = make_app(source_for(cluster, None))
        async with app.run_test(notifications=True, size=(100, 30)) as pilot:
            await settle(app, pilot)
            busy, idle = painted(app, "PROCESSING"), painted(app, "IDLE")
            with cluster.store.transaction("test: end the running job") as s:
                s.jobs.finish(cluster.running, 0, "finished")
            await pilot.press("r")
            await settle(app, pilot)
            assert " idle 16 " in screen_text(app)
            assert painted(app, "PROCESSING") < busy
            assert painted(app, "PROCESSING") >= 1  # the legend
            assert painted(app, "IDLE") > idle

    run(scenario())


def test_figures_refresh_on_the_interval_without_a_key(cluster: Cluster) -> None:
    """New GPU samples in the state reach the bars within a few 0.2 s intervals, with no key pressed."""
    from state.records import Device

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.alice), interval=0.2)
        async with app.run_test(notifications=True, size=(100, 30)) as pilot:
            await settle(app, pilot)
            assert " 77%" not in screen_text(app)
            with cluster.store.transaction("test: samples") as s:
                s.backends.record_samples(
                    1,
                    [
                        Device(
                            1, i, "PROCESSING", memory_total_mib=81920, memory_used_mib=40960, util_gpu=77, util_mem=5
                        )
                        for i in range(4)
                    ],
                )
            await wait_for(pilot, lambda: " 77%" in screen_text(app))
            figures = next(line for line in screen_text(app).splitlines() if " 77%" in line)
            assert " 50%" in figures  # 40960 of 81920 MiB on each GPU
            assert "160G/320G" in screen_text(app)

    run(scenario())


def test_draws_without_holding_the_state_lock(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every draw happens after the read released the state lock: another process could take it then."""
    from filelock import FileLock

    from moreh_tools.dashboard.app import DashboardApp

    draws: list[bool] = []
    original = DashboardApp._draw

    def draw_checking_the_lock(self: Any, snapshot: Snapshot) -> None:
        lock = FileLock(str(cluster.store.lock_path), timeout=0)
        lock.acquire()  # raises Timeout (and fails the test) if the poll still held it
        lock.release()
        draws.append(True)
        original(self, snapshot)

    monkeypatch.setattr(DashboardApp, "_draw", draw_checking_the_lock)

    async def scenario() -> None:
        app = make_app(source_for(cluster, cluster.root))
        async with app.run_test(notifications=True, size=(100, 30)) as pilot:
            await settle(app, pilot)
            await pilot.press("a")
            await settle(app, pilot)
            assert "admin view" in screen_text(app)

    run(scenario())
    assert len(draws) == 2


# -- polling ---------------------------------------------------------------------------------------------------------


class SlowSource:
    """A source whose polls take a while, counting how many ever ran at once; fails while ``failing``."""

    def __init__(self, snapshot: Snapshot, delay: float) -> None:
        self.access = Access("t", "slow", admin=False)
        self.snapshot = snapshot
        self.delay = delay
        self.failing = True
        self.calls = 0
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def fetch(self, view: View) -> Snapshot:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.calls += 1
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        if self.failing:
            raise StateBusyError("The state stayed locked for 30 s by another process; try again.")
        return self.snapshot


def test_polls_never_overlap_and_a_failed_poll_is_shown_then_recovers() -> None:
    """A 0.05 s interval with 0.1 s polls and r hammered: one poll at a time; an error shows, then clears."""
    source = SlowSource(user_snapshot(0), delay=0.1)

    async def scenario() -> None:
        app = make_app(source, interval=0.05)
        async with app.run_test(notifications=True, size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: "state stayed locked" in screen_text(app))
            source.failing = False
            for _ in range(10):
                await pilot.press("r")
            await wait_for(pilot, lambda: "* 1 Large.256GB" in screen_text(app))
            assert "state stayed locked" not in screen_text(app)
        assert source.calls >= 3
        assert source.most == 1

    run(scenario())


# -- snapshots ---------------------------------------------------------------------------------------------------------

CLOCK = datetime(2025, 6, 2, 12, 34, 56)


def _gpu(index: int, util: int | None, used: int | None) -> GpuStatus:
    return GpuStatus(
        backend_id=1,
        host="node-1",
        index=index,
        name=SIMULATED_GPU_NAME,
        memory_total_mib=81920,
        memory_used_mib=used,
        util_gpu=util,
        util_mem=util,
        temp_gpu=40,
        temp_mem=45,
    )


def user_snapshot(step: int) -> Snapshot:
    """Alice: device 1 (current) runs job 7 with climbing figures; device 2 waits with job 9 at #3."""
    util = min(20 + 8 * step, 96)
    memory = min(8000 + 6000 * step, 70000)
    big = DeviceStatus(
        id=1,
        current=True,
        name="Moreh SDA",
        model="Large.256GB",
        model_group=None,
        model_devices=4,
        reserved=False,
        state="running",
        job_ids=(7,),
        gpus=tuple(_gpu(i, util - 2 * i, memory) for i in range(4)),
    )
    small = DeviceStatus(
        id=2,
        current=False,
        name="Moreh SDA",
        model="Small.64GB",
        model_group=None,
        model_devices=1,
        reserved=False,
        state="waiting",
        job_ids=(9,),
        gpus=(),
    )
    reason = "behind job 8 (priority 10) in backend group 0"
    status = SmiStatus(
        token="t",
        current_version="0.1.0",
        latest_version="0.1.0",
        max_devices=3,
        current_device=1,
        devices=(big, small),
        processes=(),
        waiting=(WaitingJob(device=2, job_id=9, pid=4242, process="python eval.py", position=3, reason=reason),),
    )
    jobs = (
        JobRow(
            7,
            "t",
            "alice@example.com",
            1,
            "RUNNING",
            0,
            4,
            "node-1",
            "python train.py --epochs 90",
            None,
            "",
            CLOCK - timedelta(minutes=20),
            CLOCK - timedelta(minutes=12, seconds=5),
            "node-1:0-3",
        ),
        JobRow(
            9,
            "t",
            "alice@example.com",
            2,
            "QUEUED",
            0,
            1,
            "node-1",
            "python eval.py",
            3,
            reason,
            CLOCK - timedelta(minutes=2, seconds=30),
            None,
            "",
        ),
    )
    history = (
        HistoryRow(
            6,
            1,
            "python train.py --epochs 1",
            0,
            "finished",
            CLOCK - timedelta(hours=1, minutes=5),
            CLOCK - timedelta(minutes=40),
        ),
        HistoryRow(
            5,
            2,
            "python eval.py --bad-flag",
            2,
            "failed",
            CLOCK - timedelta(hours=2),
            CLOCK - timedelta(hours=2) + timedelta(seconds=4),
        ),
        HistoryRow(
            4, 1, "python sweep.py", None, "released", CLOCK - timedelta(days=1, hours=3), CLOCK - timedelta(days=1)
        ),
    )
    return Snapshot(CLOCK, daemon_running=True, user=UserData(status, jobs, history))


def admin_snapshot() -> Snapshot:
    """Three backends: node-1 busy and cleaning, node-2 half preparing, node-3 shut down; a queue of three."""

    def device(index: int, status: str, util: int | None = None, used: int | None = None) -> GridDevice:
        return GridDevice(index, status, used, 81920 if used is not None else None, util, None, True)

    node1 = (
        *tuple(device(i, "PROCESSING", 90 + i, 60000) for i in range(6)),
        device(6, "CLEANING", 0, 1000),
        device(7, "IDLE", 0, 0),
    )
    node2 = tuple(device(i, "PREPARING") for i in range(4)) + tuple(device(i, "IDLE", 0, 0) for i in range(4, 8))
    node3 = tuple(device(i, "SHUTDOWN") for i in range(8))
    backends = (
        GridBackend(1, "node-1", "ACTIVE", "default_backend_group", node1),
        GridBackend(2, "node-2", "ACTIVE", "default_backend_group", node2),
        GridBackend(3, "node-3", "SHUTDOWN", "default_backend_group", node3),
    )

    def job(
        jid: int,
        owner: str,
        status: str,
        position: int | None,
        reason: str,
        devices: int,
        priority: int,
        process: str,
        placed: str = "",
    ) -> JobRow:
        started = CLOCK - timedelta(minutes=jid) if status != "QUEUED" else None
        return JobRow(
            jid,
            f"tok{jid}",
            owner,
            jid,
            status,
            priority,
            devices,
            "node-1",
            process,
            position,
            reason,
            CLOCK - timedelta(minutes=30 + jid),
            started,
            placed,
        )

    running = (
        job(11, "alice@example.com", "RUNNING", None, "", 4, 0, "python train.py", "node-1:0-3"),
        job(12, "carol@example.com", "RUNNING", None, "", 2, 0, "torchrun fit.py", "node-1:4-5"),
        job(13, "dave@example.com", "SUBMITTED", None, "", 4, 0, "python prep.py", "node-2:0-3"),
    )
    queue = (
        job(
            14,
            "bob@example.com",
            "QUEUED",
            1,
            "waiting for 8 device(s): 3 of 8 idle in backend group 0",
            8,
            20,
            "python big.py",
        ),
        job(
            15,
            "erin@example.com",
            "QUEUED",
            2,
            "behind job 14 (priority 20) in backend group 0",
            1,
            0,
            "python small.py",
        ),
        job(
            16,
            "alice@example.com",
            "QUEUED",
            3,
            "behind job 14 (priority 20) in backend group 0",
            2,
            -5,
            "python eval.py",
        ),
    )
    usage = (
        UsageRow("tok11", "alice@example.com", 31.5, 6, 1, 1),
        UsageRow("tok12", "carol@example.com", 12.25, 3, 1, 0),
        UsageRow("tok14", "bob@example.com", 0.0, 0, 0, 1),
    )
    events = tuple(
        Event(100 - n, CLOCK - timedelta(seconds=10 * n), action, token, "", detail)
        for n, (action, token, detail) in enumerate(
            [
                ("ALLOCATE_JOB", "", "id=13 devices=2:0,2:1,2:2,2:3"),
                ("END_JOB", "tok10", "id=10 reason=finished exit=0"),
                ("RELEASE_JOB", "tok9", "id=9 status=QUEUED"),
                ("CREATE_JOB", "tok16", "id=16 sda=16 devices=2"),
                ("UPDATE_BACKEND", "", "id=3 status=SHUTDOWN"),
            ]
        )
    )
    return Snapshot(CLOCK, daemon_running=False, admin=AdminData(backends, running, queue, usage, events))


class FixedSource:
    """Canned snapshots: each fetch of the user view takes the next step (the last one repeats)."""

    def __init__(self, admin: bool) -> None:
        self.access = Access(
            "t" if not admin else None, "alice@example.com" if not admin else "state at /srv/moreh", admin=admin
        )
        self.step = 0

    def fetch(self, view: View) -> Snapshot:
        if view == "admin":
            return admin_snapshot()
        self.step += 1
        return user_snapshot(self.step)

    def release(self, job_id: int) -> str:
        raise AssertionError("snapshot tests take no action")

    def set_priority(self, job_id: int, priority: int) -> str:
        raise AssertionError("snapshot tests take no action")

    def model_choices(self) -> SwitchChoices:
        raise AssertionError("snapshot tests take no action")

    def switch_model(self, option: ModelOption) -> str:
        raise AssertionError("snapshot tests take no action")


def check_snapshot(name: str, text: str) -> None:
    """Compare with ``tests/snapshots/<name>.txt`` (MOREH_UPDATE_SNAPSHOTS=1 writes it instead)."""
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("MOREH_UPDATE_SNAPSHOTS"):
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    expected = path.read_text(encoding="utf-8").rstrip("\n")
    assert text == expected, f"screen differs from {path}; rerun with MOREH_UPDATE_SNAPSHOTS=1 and review the diff"


def snapshot_run(admin: bool, size: tuple[int, int], polls: int = 1) -> str:
    texts: list[str] = []

    async def scenario() -> None:
        app = make_app(FixedSource(admin))
        async with app.run_test(notifications=True, size=size) as pilot:
            await settle(app, pilot)
            for _ in range(polls - 1):
                await pilot.press("r")
                await settle(app, pilot)
            texts.append(screen_text(app))

    run(scenario())
    return texts[0]


class TestSnapshots:
    """The screens at fixed sizes over fixed data."""

    def test_user_view_80x24(self) -> None:
        """80×24 user view: status line (daemon running, simulated GPUs, 12:34:56); device 1 current with
        mem and util bars climbing over 12 polls and sparklines; device 2 waiting; the jobs table with job 7
        running for 12m05s and job 9 at #3 behind job 8; history with exit 0 finished, 2 failed, - released;
        a footer with Quit, Help, Refresh, Release and Model.
        """
        check_snapshot("dashboard_user_80x24", snapshot_run(False, (80, 24), polls=12))

    def test_user_view_120x40(self) -> None:
        """120×40 user view: the same content with longer bars and sparklines and every column visible."""
        check_snapshot("dashboard_user_120x40", snapshot_run(False, (120, 40), polls=12))

    def test_admin_view_80x24(self) -> None:
        """80×24 admin view: colour legend with counts; node-1 (sim) with figures, node-2 partly preparing, node-3 off;
        the jobs table (3 running, then the queue 14, 15, 16 in order with reasons); usage and events side
        by side under it; the status line says no sdamanager daemon.
        """
        check_snapshot("dashboard_admin_80x24", snapshot_run(True, (80, 24)))

    def test_admin_view_120x40(self) -> None:
        """120×40 admin view: grid on top, jobs on the left with usage and the event log on the right."""
        check_snapshot("dashboard_admin_120x40", snapshot_run(True, (120, 40)))


def test_plain_moreh_smi_help_does_not_load_textual() -> None:
    """``moreh-smi --help`` stays lean: the dashboard flag must not pull Textual into it."""
    code = (
        "import sys, contextlib, io\n"
        "from moreh_tools.smi.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "print('textual' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "False", done.stderr
