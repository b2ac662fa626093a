"""Hostile input: every smclient command, moreh-smi, moreh-switch-model and moreh-run fed garbage.

Arguments are random, oversized (10,000 characters), unicode (emoji, right-to-left text,
combining marks, undecodable bytes as argv delivers them), negative, huge (2**63) and
injection-like (``'; DROP TABLE tokens; --``, ``%s``, ``$(...)``). Every run starts from the same
seeded state (tokens, SDAs, groups, backends, a queued, a running and an ended job) and must end
in success or in a non-zero exit with one message line, never a traceback, and leave the state
exactly as it was when it failed. The state file itself is also attacked: corrupt, truncated,
foreign, newer, in an unusable directory, and migrated (a backup must be kept).

The search is derandomized (a fixed seed), so the normal suite is repeatable: 200 examples per
target. For a long run, raise the count::

    MOREH_FUZZ_EXAMPLES=5000 /tmp/venv/bin/python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import faulthandler
import io
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, Result, Smc, dump_state, start_running_job
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from invariants import violations

EXAMPLES = int(os.environ.get("MOREH_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
LOCAL_HOST = "fuzz-host"  # the host moreh-run and moreh-smi believe they run on (8 simulated GPUs)
DEAD_PID = 99_999  # above Linux's default pid_max (32768): never a live process
EXIT_INTERNAL = 3

HOSTILE: tuple[str, ...] = (
    "'; DROP TABLE tokens; --",
    '" OR 1=1 --',
    "1; DELETE FROM jobs",
    "%s",
    "%d%n%x",
    "{}",
    "{0!r:>99999}",
    "${HOME}",
    "$(reboot)",
    "`id`",
    "x" * 10_000,
    "é" * 5_000,
    "-1",
    "-0",
    "0",
    "007",
    "+5",
    " 5 ",
    "1_000",
    str(2**31),
    str(2**31 - 1),
    str(2**63),
    str(-(2**63) - 1),
    "9" * 400,
    "1e309",
    "nan",
    "inf",
    "0x1f",
    "١٢",  # Arabic-Indic digits: int() accepts them
    "½",
    "²",  # str.isdigit() says yes, int() says no
    "🚀",
    "👩‍👩‍👧‍👦",
    "\u202eoverride\u202c",
    "שָׁלוֹם",
    "مرحبا",
    "\u200b",
    "\ufeff",
    "a\u0301",
    "",
    " ",
    "\t",
    "\n",
    "a\nb",
    "\r\n",
    "\x1b[2J\x1b[31mred",
    "\x7f",
    "\udcff",  # what argv holds for a byte that is not UTF-8
    "\x00",
    "null",
    "NULL",
    "None",
    "true",
    "FALSE",
    "?",
    "-h",
    "--help",
    "--",
    "-",
    "../../../etc/passwd",
    "/dev/zero",
    "\\",
    "'",
    '"',
    "a,b,,c",
    ",",
    "1,1,1",
    "1,-1,2147483648",
    "2024-02-30",
    "25:61:61",
    "0000-00-00",
    "9999-12-31",
    "::1",
    "256.256.256.256",
    "SHUTDOWN",
    "PROCESSING",
    "ADMIN",
)
ARGV_HOSTILE = tuple(v for v in HOSTILE if "\x00" not in v)  # argv cannot hold NUL


# -- the seeded state ----------------------------------------------------------------------------


class Seed:
    """A state file every example starts from, and what is in it (a plain class: hypothesis prints it)."""

    def __init__(self, file: Path, tokens: tuple[str, ...], plausible: tuple[str, ...]) -> None:
        """Remember the file as it is now: its bytes and its rows."""
        self.file = file
        self.data = file.read_bytes()  # each example starts from these bytes; most must end with them
        self.dump = dump_state()
        self.tokens = tokens  # a user with SDAs and jobs, an admin with a reserved SDA, a spare user, one with none
        self.plausible = plausible  # values that name things in the seed, so commands get past their lookups

    def __repr__(self) -> str:
        return f"Seed({self.file})"


def _line(line: str) -> None:
    from moreh_tools.smclient.main import run_line

    sink = io.StringIO()
    code = run_line(line, out=sink)
    assert code == 0, (line, sink.getvalue())


def _created_token(description: str, priority: int = 0) -> str:
    from moreh_tools.smclient.main import run_line

    sink = io.StringIO()
    assert run_line(f"create token {description} {priority}", out=sink) == 0
    return sink.getvalue().strip().rsplit(" ", 1)[-1].rstrip(")")


def _build_seed(home: Path) -> Seed:
    """Tokens, SDAs, groups, backends, a version, and a queued, a running and an ended job."""
    from conftest import ensure_local_backend

    from moreh_tools.gpus import get_provider
    from state.store import StateStore

    user = _created_token("fuzz_user@example.com", 5)
    admin = _created_token("fuzz_admin", -3)
    spare = _created_token("fuzz_spare")
    lonely = _created_token("fuzz_lonely")
    for line in (
        f"update token sda max {user} 3",
        f"update token duplicable {spare} 0",
        f"update token access level {admin} ADMIN",
        f"add token env {user} FOO bar",
        "create backend job-node 10.9.9.9 8",
        "create backend spare-node 10.9.9.10 4",
        "create backendgroup bg_fuzz 2",
        f"create usergroup ug_fuzz {user},{spare}",
        "create sdamodelgroup mg_fuzz 0 1,2,3",
        "add membership 1 1",
        f"create sda {user} first 1",
        f"create sda {user} second 3",
        f"create sda {spare} spare 2",
        f"create resv_sda {admin} held 1",
        "create version 1.0.0 /opt/moreh/1.0.0",
        "update version latest 1.0.0",
        "add worker env 1.0.0 LD_PRELOAD /x.so",
    ):
        _line(line)
    store = StateStore(home)
    provider = get_provider()
    try:
        ensure_local_backend(store, provider, host=LOCAL_HOST)
    finally:
        provider.close()
    # A running job (its launcher long dead: nothing real is ever signalled), a queued one, an ended one.
    start_running_job(user, 1)
    with store.transaction("fuzz seed") as s:
        s.execute("UPDATE jobs SET launcher_pid = ?, pid = ?", [DEAD_PID, DEAD_PID])
        ended = s.jobs.submit(spare, 3, backend_id=s.backends.local_id("job-node"), launcher_pid=DEAD_PID, launcher_create_time=0.0,
                              process_name="python old.py")
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(ended.id, DEAD_PID, 0.0)
        s.jobs.finish(ended.id, 0, "finished")
        s.jobs.submit(user, 2, backend_id=s.backends.local_id("job-node"), launcher_pid=DEAD_PID, launcher_create_time=0.0,
                      process_name="python queued.py", priority=7)
    with store.reading() as s:
        broken = violations(s)
    assert not broken, broken
    assert not (home / "state.duckdb.wal").exists()
    plausible = (user, admin, spare, lonely, "0", "1", "2", "3", "4", "5", "8", "null", "true", "false",
                 "Small.64GB", "Large.256GB", "1.0.0", "job-node", "bg_fuzz", "ACTIVE", "IDLE", "USER", "FOO",
                 "2020-01-01", "00:00:00", "2099-01-01", "23:59:59", "10.0.0.1", "QUEUED", "RUNNING", "1,2")
    return Seed(home / "state.duckdb", (user, admin, spare, lonely), plausible)


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    """Build the seed state once per module (building it takes longer than a hundred examples)."""
    home = tmp_path_factory.mktemp("fuzz-seed")
    saved = {k: os.environ.get(k) for k in ("MOREH_HOME", "MOREH_FAKE_GPUS", "MOREH_HOSTNAME")}
    os.environ.update(MOREH_HOME=str(home), MOREH_FAKE_GPUS="8", MOREH_HOSTNAME=LOCAL_HOST)
    try:
        return _build_seed(home)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def fresh(seed: Seed, moreh_home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Return a function that puts the seed state back in this test's MOREH_HOME."""
    monkeypatch.setenv("MOREH_FAKE_GPUS", "8")
    monkeypatch.setenv("MOREH_HOSTNAME", LOCAL_HOST)
    monkeypatch.setenv("MOREH_RELEASE_GRACE", "0.2")
    monkeypatch.setenv("MOREH_TOKEN_FILE", "/nonexistent/moreh-token")
    monkeypatch.setenv("MOREH_LOCK_TIMEOUT", "20")
    for name in ("MOREH_SDA_TOKEN", "MOREH_VISIBLE_DEVICE", "MOREH_JOB_ID", "MOREH_DEBUG"):
        monkeypatch.delenv(name, raising=False)

    def restore() -> None:
        moreh_home.mkdir(mode=0o700, exist_ok=True)
        for leftover in (moreh_home / "state.duckdb.wal", moreh_home / "run"):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink(missing_ok=True)
        (moreh_home / "state.duckdb").write_bytes(seed.data)

    return restore


def assert_unchanged(seed: Seed, home: Path, what: str) -> None:
    """The state is byte-for-byte the seed, or at least holds exactly the seed's rows."""
    current = home / "state.duckdb"
    if current.read_bytes() == seed.data and not (home / "state.duckdb.wal").exists():
        return
    assert dump_state() == seed.dump, f"the state changed although {what} failed"


def assert_sound(what: str) -> None:
    """The state breaks no invariant (an admin may have set device statuses by hand)."""
    from state.store import StateStore

    with StateStore().reading() as s:
        broken = violations(s, manual_device_status=True)
    assert not broken, (what, broken)


def one_error_line(err: str, what: str, prefix: str = "") -> str:
    """The single line a refusal prints on stderr."""
    lines = err.splitlines()
    assert len(lines) == 1, f"{what}: expected one error line, got {err!r}"
    assert lines[0].startswith(prefix), (what, lines[0])
    assert lines[0].strip() != prefix.strip(), (what, "an empty message")
    return lines[0]


def no_traceback(result: Result, what: str) -> None:
    """No traceback, no 'internal error': every refusal is one the code meant."""
    for text in (result.out, result.err):
        assert "Traceback" not in text, (what, text[-2000:])
    assert result.code != EXIT_INTERNAL, (what, result.err[-2000:])
    assert "nternal error" not in result.err, (what, result.err[-2000:])
    # The database's own words mean input reached it unchecked: the user learns nothing useful from them.
    assert "database error" not in result.err, (what, result.err[-2000:])


# -- moreh_smclient ------------------------------------------------------------------------------


def _commands() -> list[Any]:
    from moreh_tools.smclient.catalog import load_commands

    return [load_commands()[name] for name in sorted(load_commands())]


COMMANDS = _commands()


def smclient_case(smc: Smc, seed: Seed, home: Path, line: str) -> int:
    """Run one console line from the seed state and judge what it did."""
    result = smc(line)
    what = f"moreh_smclient -c {line[:300]!r}"
    no_traceback(result, what)
    if result.code == 0:
        assert result.err == "", (what, result.err[:2000])
        assert_sound(what)
        return 0
    assert result.code in (1, 2), (what, result.code)
    assert result.out == "", (what, result.out[:2000])
    # argparse reads a line that starts with '-' as an option: its own one-line usage error, exit 2
    message = one_error_line(result.err, what)
    assert message.startswith("Error: ") or (line.startswith("-") and message.startswith("moreh_smclient: ")), message
    assert_unchanged(seed, home, what)
    return result.code


def argument(seed: Seed, hostile: tuple[str, ...] = HOSTILE) -> st.SearchStrategy[str]:
    """One argument: hostile, a name the seed knows, random text or a random integer."""
    return st.one_of(
        st.sampled_from(hostile),
        st.sampled_from(seed.plausible),
        st.text(max_size=40),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
    )


@st.composite
def console_lines(draw: st.DrawFn, seed: Seed) -> str:
    """A registered command with hostile arguments (sometimes one too few or too many), or raw text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.text(max_size=200), st.sampled_from(HOSTILE)))
    cmd = draw(st.sampled_from(COMMANDS))
    low, high = cmd.arg_range
    count = draw(st.one_of(st.integers(low, high), st.integers(max(0, low - 1), high + 1)))
    args = draw(st.lists(argument(seed), min_size=count, max_size=count))
    return " ".join([cmd.name, *(shlex.quote(a) for a in args)])


def test_every_command_survives_hostile_arguments(
    smc: Smc, seed: Seed, fresh: Callable[[], None], moreh_home: Path
) -> None:
    """A sweep: every registered command, each argument position a different hostile value."""
    runs, code = 0, 0
    for number, cmd in enumerate(COMMANDS):
        low, high = cmd.arg_range
        for round_ in range(2):
            count = high if round_ == 0 else low
            if round_ and count == high:
                continue
            values = [HOSTILE[(number * 7 + position * 13 + round_ * 29) % len(HOSTILE)] for position in range(count)]
            if code == 0:  # a refusal left the seed as it was; a success may have changed it
                fresh()
            code = smclient_case(smc, seed, moreh_home, " ".join([cmd.name, *(shlex.quote(v) for v in values)]))
            runs += 1
    assert runs >= len(COMMANDS)


def test_hostile_values_in_every_position_of_token_commands(
    smc: Smc, seed: Seed, fresh: Callable[[], None], moreh_home: Path
) -> None:
    """Every hostile value, in turn, as the one wrong argument of a command that is otherwise right."""
    user = seed.tokens[0]
    templates = ("get token {}", f"update token desc {user} {{}}", f"update token priority {user} {{}}")
    code = 0
    for template in templates:
        for value in HOSTILE:
            if code == 0:  # a refusal left the seed as it was; a success may have changed it
                fresh()
            code = smclient_case(smc, seed, moreh_home, template.format(shlex.quote(value)))


@FUZZ
@given(data=st.data())
def test_smclient_fuzz(smc: Smc, seed: Seed, fresh: Callable[[], None], moreh_home: Path, data: st.DataObject) -> None:
    """Random registered commands with random hostile arguments, and random raw lines."""
    line = data.draw(console_lines(seed), label="line")
    fresh()
    event(f"exit {smclient_case(smc, seed, moreh_home, line)}")


# -- moreh-smi and moreh-switch-model ----------------------------------------------------------------

SMI_FLAGS = ("-h", "--help", "-r", "--reset", "-s", "--server-version", "-v", "--version", "-t", "--token",
             "-p", "--json", "--list", "device", "--bogus", "-x", "-rt", "-i", "--idx", "--add", "--rm", "--switch")
SMI_VALUED = ("-i", "--idx", "--add", "--rm", "--switch")


@dataclass
class ToolRun:
    """What one in-process run of a user tool printed and returned."""

    out: str
    err: str
    code: int


def run_tool(
    main: Callable[[list[str]], int], argv: list[str], stdin: str, capsys: pytest.CaptureFixture[str]
) -> ToolRun:
    """Run a tool's ``main(argv)`` with ``stdin`` as its standard input."""
    capsys.readouterr()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        try:
            code: int | str | None = main(argv)
        except SystemExit as exc:  # argparse's --help and --version exit
            code = exc.code
    finally:
        sys.stdin = saved
    captured = capsys.readouterr()
    return ToolRun(captured.out, captured.err, code if isinstance(code, int) else (0 if code is None else 1))


def user_tool_case(seed: Seed, home: Path, run: ToolRun, what: str, interactive: bool) -> None:
    """Success, or one line on stderr (hints of a prompt before it) and the state as it was."""
    no_traceback(Result(run.out, run.err, run.code), what)
    if run.code == 0:
        assert_sound(what)
        return
    assert run.code in (1, 2, 130), (what, run.code, run.err[-2000:])
    lines = run.err.splitlines()
    if interactive:  # a prompt re-asks with a hint on stderr; the refusal is the last line
        assert lines, (what, "no message")
        assert all(line.startswith("Type ") for line in lines[:-1]), (what, lines[:5])
        if "success" in run.out.lower():
            assert_sound(what)  # an earlier answer at the prompt did change something
            return
    else:
        one_error_line(run.err, what)
    assert_unchanged(seed, home, what)


@st.composite
def smi_argv(draw: st.DrawFn, seed: Seed) -> list[str]:
    """Random moreh-smi options, valued ones followed by a hostile or plausible value."""
    argv: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        flag = draw(st.one_of(st.sampled_from(SMI_FLAGS), st.sampled_from(ARGV_HOSTILE)))
        argv.append(flag)
        if flag in SMI_VALUED and draw(st.booleans()):
            argv.append(draw(argument(seed, ARGV_HOSTILE).filter(lambda v: "\x00" not in v)))
    return argv


def answers() -> st.SearchStrategy[str]:
    """What a user might type at a selection prompt."""
    return st.lists(st.one_of(st.sampled_from(("1", "2", "3", "99", "-1", "q", "", "١", "🚀", "x" * 5000)),
                              st.text(max_size=20).filter(lambda t: "\n" not in t)), max_size=3).map(
        lambda lines: "".join(line + "\n" for line in lines)
    )


def token_env(data: st.DataObject, seed: Seed, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set MOREH_SDA_TOKEN to a seeded token, a hostile value, or nothing."""
    token = data.draw(st.one_of(st.sampled_from(seed.tokens), st.sampled_from(ARGV_HOSTILE), st.none()), label="token")
    if token is None or not token.strip():
        monkeypatch.delenv("MOREH_SDA_TOKEN", raising=False)
    else:
        monkeypatch.setenv("MOREH_SDA_TOKEN", token)


@FUZZ
@given(data=st.data())
def test_moreh_smi_fuzz(
    seed: Seed,
    fresh: Callable[[], None],
    moreh_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: st.DataObject,
) -> None:
    """moreh-smi with random options, values, tokens and prompt answers."""
    from moreh_tools.smi.main import main

    argv = data.draw(smi_argv(seed), label="argv")
    stdin = data.draw(answers(), label="stdin")
    token_env(data, seed, monkeypatch)
    fresh()
    run = run_tool(main, argv, stdin, capsys)
    event(f"exit {run.code}")
    user_tool_case(seed, moreh_home, run, f"moreh-smi {shlex.join(argv)[:300]}", interactive=bool(stdin))


@FUZZ
@given(data=st.data())
def test_moreh_switch_model_fuzz(
    seed: Seed,
    fresh: Callable[[], None],
    moreh_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: st.DataObject,
) -> None:
    """moreh-switch-model with random --model values, stray options, tokens and prompt answers."""
    from moreh_tools.switch_model.main import main

    argv = data.draw(
        st.one_of(
            st.tuples(st.just("--model"), argument(seed, ARGV_HOSTILE)).map(list),
            st.lists(st.one_of(st.sampled_from(("--model", "-h", "--help", "-m", "--mod")),
                               st.sampled_from(ARGV_HOSTILE)), max_size=3),
        ),
        label="argv",
    )
    argv = [a for a in argv if "\x00" not in a]
    stdin = data.draw(answers(), label="stdin")
    token_env(data, seed, monkeypatch)
    fresh()
    run = run_tool(main, argv, stdin, capsys)
    event(f"exit {run.code}")
    user_tool_case(seed, moreh_home, run, f"moreh-switch-model {shlex.join(argv)[:300]}", interactive=bool(stdin))


# -- moreh-run ---------------------------------------------------------------------------------------


@st.composite
def moreh_run_argv(draw: st.DrawFn, seed: Seed) -> list[str]:
    """moreh-run options with hostile values and a command that is hostile or ``true``."""
    argv: list[str] = []
    for option in ("--token", "--sda", "--priority"):
        if draw(st.booleans()):
            argv += [option, draw(argument(seed, ARGV_HOSTILE))]
    if draw(st.booleans()):
        argv.append(draw(st.sampled_from(("--", "--bogus", "-x", "--version", "--help"))))
    argv.append(draw(st.one_of(st.just("true"), st.sampled_from(ARGV_HOSTILE))))
    argv += draw(st.lists(st.sampled_from(ARGV_HOSTILE), max_size=2))
    return argv


@pytest.fixture
def no_hang() -> Iterator[None]:
    """A launcher that waited in the queue would hang the suite: dump the stacks and stop instead."""
    faulthandler.dump_traceback_later(240, exit=True, file=sys.__stderr__ or sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


def _reap() -> None:
    """Collect the guardians the in-process launcher forked (they are this process's children)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@FUZZ
@given(data=st.data())
def test_moreh_run_fuzz(
    seed: Seed,
    fresh: Callable[[], None],
    moreh_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_hang: None,
    data: st.DataObject,
) -> None:
    """moreh-run with hostile tokens, SDA ids, priorities and commands: it runs ``true`` or refuses."""
    from moreh_tools.launcher.cli import main

    argv = data.draw(moreh_run_argv(seed), label="argv")
    # Only the spare token (duplicable, no job) may reach a queue: its job then starts at once.
    monkeypatch.setenv("MOREH_SDA_TOKEN", seed.tokens[2])
    visible = data.draw(st.one_of(st.none(), st.sampled_from(ARGV_HOSTILE)), label="MOREH_VISIBLE_DEVICE")
    if visible is not None:
        monkeypatch.setenv("MOREH_VISIBLE_DEVICE", visible)
    fresh()
    if _might_wait(seed, argv, visible):
        return
    run = run_tool(main, argv, "", capsys)
    _reap()
    event(f"exit {run.code}")
    what = f"moreh-run {shlex.join(argv)[:300]} (MOREH_VISIBLE_DEVICE={visible!r})"
    no_traceback(Result(run.out, run.err, run.code), what)
    if run.code == 0:
        assert_sound(what)
        return
    lines = run.err.splitlines()
    if any(line.startswith("[") for line in lines):
        return  # the command ran (and failed); the [info] lines are the launcher's, not a refusal
    one_error_line(run.err, what)
    assert_unchanged(seed, moreh_home, what)


def _might_wait(seed: Seed, argv: list[str], visible: str | None) -> bool:
    """Whether this run could queue behind a job (the user's SDAs are busy) and so block the test."""
    from moreh_tools.launcher.cli import LaunchError, parse

    try:
        request = parse(argv)
    except (LaunchError, SystemExit):  # refused, or --help/--version
        return False
    token = request.token.strip() if request.token else seed.tokens[2]
    return token != seed.tokens[2] and token in seed.tokens


# -- the state file and its directory ----------------------------------------------------------------


# Root ignores file permissions; without these two capabilities it meets them like anyone else.
AS_MERE_OWNER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def smclient(*args: str, home: Path, without_root_powers: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real console script (optionally with root's permission override dropped)."""
    env = {**os.environ, "MOREH_HOME": str(home)}
    env.pop("MOREH_DEBUG", None)
    prefix = AS_MERE_OWNER if without_root_powers and os.geteuid() == 0 else []
    return subprocess.run([*prefix, str(BIN / "moreh_smclient"), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def refusal(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """One ``Error:`` line naming every needle, exit 1, nothing on stdout."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    line = one_error_line(done.stderr, "state file", "Error: ")
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture
def good_state(smc: Smc, moreh_home: Path) -> Path:
    """A small real state file with a token in it; returns the file."""
    assert smc("create token precious_user").code == 0
    return moreh_home / "state.duckdb"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:4096], id="header-only"),
        pytest.param(lambda data: bytes(b ^ 0x5A for b in data[:8192]) + data[8192:], id="scrambled-header"),
        pytest.param(lambda data: b"SQLite format 3\x00" + data[16:], id="wrong-magic"),
        pytest.param(lambda data: os.urandom(len(data)), id="random"),
    ],
)
def test_a_damaged_state_file_is_refused_and_left_alone(
    good_state: Path, moreh_home: Path, damage: Callable[[bytes], bytes]
) -> None:
    good_state.write_bytes(damage(good_state.read_bytes()))
    before = good_state.read_bytes()
    for line in ("show token", "create token x"):
        done = smclient("-c", line, home=moreh_home)
        refusal(done, str(good_state), "move it away")
        assert good_state.read_bytes() == before, "a damaged state file was changed"
    assert sorted(p.name for p in moreh_home.iterdir()) == ["state.duckdb", "state.lock"]


def test_a_damaged_write_ahead_log_is_refused_and_left_alone(good_state: Path, moreh_home: Path) -> None:
    wal = moreh_home / "state.duckdb.wal"
    wal.write_bytes(os.urandom(5000))
    before = (good_state.read_bytes(), wal.read_bytes())
    done = smclient("-c", "show token", home=moreh_home)
    if done.returncode == 0:  # DuckDB discards a log it cannot read as a torn write: the token is still there
        assert "precious_user" in done.stdout
        assert smclient("-c", "create token after_wal", home=moreh_home).returncode == 0
        shown = smclient("-c", "show token", home=moreh_home).stdout
        assert "precious_user" in shown
        assert "after_wal" in shown
    else:
        refusal(done, "move it away")
        assert (good_state.read_bytes(), wal.read_bytes()) == before


def test_a_foreign_duckdb_file_is_refused_and_left_alone(moreh_home: Path) -> None:
    import duckdb

    moreh_home.mkdir(mode=0o700)
    path = moreh_home / "state.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE invoices (id INTEGER, amount DOUBLE); INSERT INTO invoices VALUES (1, 9.5)")
    conn.close()
    before = path.read_bytes()
    for line in ("show token", "create token x"):
        refusal(smclient("-c", line, home=moreh_home), "foreign", "MOREH_HOME")
    assert path.read_bytes() == before
    conn = duckdb.connect(str(path), read_only=True)
    assert conn.execute("SELECT * FROM invoices").fetchall() == [(1, 9.5)]
    conn.close()


def test_a_state_from_a_newer_moreh_tools_is_refused_and_left_alone(good_state: Path, moreh_home: Path) -> None:
    import duckdb

    conn = duckdb.connect(str(good_state))
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'm999_future', now())")
    conn.close()
    before = good_state.read_bytes()
    refusal(smclient("-c", "show token", home=moreh_home), "999", "upgrade moreh-tools")
    assert good_state.read_bytes() == before


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_state_path_that_is_not_a_file_is_refused(moreh_home: Path, kind: str) -> None:
    moreh_home.mkdir(mode=0o700)
    path = moreh_home / "state.duckdb"
    if kind == "directory":
        path.mkdir()
        (path / "keep").write_text("mine")
    else:
        os.mkfifo(path)
    done = smclient("-c", "show token", home=moreh_home)
    refusal(done, str(path))
    if kind == "directory":
        assert (path / "keep").read_text() == "mine"


def test_a_home_that_is_a_file_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "not-a-dir"
    home.write_text("precious")
    refusal(smclient("-c", "show token", home=home), str(home))
    refusal(smclient("-c", "show token", home=home / "below"), "MOREH_HOME")
    assert home.read_text() == "precious"


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv")
@pytest.mark.parametrize(
    ("home_mode", "file_mode", "lock_mode", "reads_work"),
    [
        pytest.param(0o500, 0o660, 0o660, True, id="directory-read-only"),
        pytest.param(0o500, 0o440, 0o440, False, id="all-read-only"),
        pytest.param(0o700, 0o440, 0o660, False, id="state-file-read-only"),
    ],
)
def test_an_unwritable_state_gives_a_clear_error_and_is_left_alone(
    good_state: Path, moreh_home: Path, home_mode: int, file_mode: int, lock_mode: int, reads_work: bool
) -> None:
    """Someone who may not write the state is told so and what to do, never to move the file away."""
    before = good_state.read_bytes()
    good_state.chmod(file_mode)
    (moreh_home / "state.lock").chmod(lock_mode)
    moreh_home.chmod(home_mode)
    try:
        reading = smclient("-c", "show token", home=moreh_home, without_root_powers=True)
        if reads_work:
            assert reading.returncode == 0, reading.stderr
            assert "precious_user" in reading.stdout
        else:
            message = refusal(reading, str(moreh_home))
            assert "move it away" not in message, message
        message = refusal(smclient("-c", "create token x", home=moreh_home, without_root_powers=True), str(moreh_home))
        assert "Permission denied" in message, message
        assert "MOREH_HOME" in message or "may write" in message, message
        assert "move it away" not in message, message
        if home_mode == 0o500:
            message = refusal(smclient("-c", "show token", home=moreh_home / "sub", without_root_powers=True))
            assert "MOREH_HOME" in message, message
    finally:
        moreh_home.chmod(0o700)
        good_state.chmod(0o660)
    assert good_state.read_bytes() == before
    assert not (moreh_home / "sub").exists()
    assert not (moreh_home / "state.duckdb.wal").exists()


def test_a_world_writable_state_directory_is_refused(good_state: Path, moreh_home: Path) -> None:
    moreh_home.chmod(0o777)
    try:
        refusal(smclient("-c", "show token", home=moreh_home), "world-writable", "chmod o-w")
    finally:
        moreh_home.chmod(0o700)
    assert stat.S_IMODE(moreh_home.stat().st_mode) == 0o700


# -- migrations keep a backup --------------------------------------------------------------------


def _m_fake_add_column(conn: Any) -> None:
    conn.execute("ALTER TABLE tokens ADD COLUMN fuzz_note VARCHAR DEFAULT ''")


def _m_fake_broken(conn: Any) -> None:
    conn.execute("ALTER TABLE tokens ADD COLUMN half_done VARCHAR")
    raise RuntimeError("migration bug")


def _pretend_newer_code(monkeypatch: pytest.MonkeyPatch, migration: Callable[[Any], None]) -> None:
    from state import migrations

    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, migration))
    monkeypatch.setattr(migrations, "LATEST_VERSION", len(migrations.MIGRATIONS))


def _backups(home: Path) -> list[Path]:
    return sorted(home.glob("state.duckdb.bak-*"))


def test_a_migration_keeps_a_backup_of_the_older_state(
    good_state: Path, moreh_home: Path, monkeypatch: pytest.MonkeyPatch, smc: Smc
) -> None:
    import duckdb

    from state import migrations

    old_version = migrations.LATEST_VERSION
    old_rows = dump_state()
    _pretend_newer_code(monkeypatch, _m_fake_add_column)
    assert smc("show token").code == 0  # opening the state migrates it
    backups = _backups(moreh_home)
    assert len(backups) == 1, backups
    assert backups[0].name.startswith(f"state.duckdb.bak-v{old_version}-")
    conn = duckdb.connect(str(backups[0]), read_only=True)
    try:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (old_version,)
        assert conn.execute("SELECT description FROM tokens").fetchall() == [("precious_user",)]
    finally:
        conn.close()
    new_rows = dump_state()
    assert set(old_rows["schema_migrations"]) < set(new_rows["schema_migrations"])
    assert len(new_rows["schema_migrations"]) == len(old_rows["schema_migrations"]) + 1
    assert len(new_rows["tokens"]) == len(old_rows["tokens"])
    assert smc("show token").code == 0
    assert len(_backups(moreh_home)) == 1, "a backup per open, not per migration"


def test_a_failed_migration_leaves_the_state_as_it_was(
    good_state: Path, moreh_home: Path, monkeypatch: pytest.MonkeyPatch, smc: Smc
) -> None:
    from state import migrations

    old_version = migrations.LATEST_VERSION
    old_rows = dump_state()
    _pretend_newer_code(monkeypatch, _m_fake_broken)
    result = smc("show token")
    assert result.code != 0
    one_error_line(result.err, "a failed migration", "Error: ")
    assert "Traceback" not in result.err
    assert len(_backups(moreh_home)) == 1
    monkeypatch.undo()
    monkeypatch.setenv("MOREH_HOME", str(moreh_home))
    assert old_version == migrations.LATEST_VERSION
    assert dump_state() == old_rows, "a failed migration changed the state"


# -- regressions: what the fuzzer found ------------------------------------------------------------


def test_an_argument_with_a_newline_still_gives_one_error_line(smc: Smc) -> None:
    """Found by the fuzzer: 'get token "a<newline>b"' printed an error split over two lines."""
    result = smc("get token 'a\nb\x1b[2J'")
    message = one_error_line(result.err, "get token", "Error: ")
    assert "a\\nb\\x1b[2J" in message


def test_user_tools_escape_control_characters_in_their_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from moreh_tools.launcher.cli import main as moreh_run
    from moreh_tools.smi.main import main as moreh_smi

    monkeypatch.setenv("MOREH_SDA_TOKEN", "nobody")
    assert moreh_smi(["device", "x\ny"]) == 2
    assert "x\\ny" in one_error_line(capsys.readouterr().err, "moreh-smi", "moreh-smi: ")
    assert moreh_run(["--", "no\nsuch-command"]) == 127
    assert "no\\nsuch-command" in one_error_line(capsys.readouterr().err, "moreh-run", "moreh-run: ")


def test_undecodable_bytes_in_argv_get_a_clear_error(moreh_home: Path, smc: Smc) -> None:
    """Found by the fuzzer: a byte that is not UTF-8 reached DuckDB and came back as its conversion error."""
    assert smc("create token someone").code == 0
    env = {**os.environ, "MOREH_HOME": str(moreh_home), "MOREH_FAKE_GPUS": "8", "MOREH_HOSTNAME": LOCAL_HOST}
    env.pop("MOREH_DEBUG", None)
    runs = {
        "moreh_smclient": [str(BIN / "moreh_smclient").encode(), b"-c", b"get token \xff\xfe"],
        "moreh-run": [str(BIN / "moreh-run").encode(), b"--token", b"\xff", b"true"],
    }
    for name, argv in runs.items():
        done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
        err = done.stderr.decode("utf-8", "replace")
        assert done.returncode == 1, (name, err)
        line = one_error_line(err, name)
        assert "UTF-8" in line, (name, line)
        assert "database error" not in line, (name, line)
    env_token = {**env, "MOREH_SDA_TOKEN": "\udcff"}  # the variable held the byte 0xff
    for tool in ("moreh-smi", "moreh-switch-model"):
        done = subprocess.run([str(BIN / tool)], env=env_token, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60, check=False)
        line = one_error_line(done.stderr.decode("utf-8", "replace"), tool)
        assert done.returncode == 1, (tool, line)
        assert "UTF-8" in line, (tool, line)


def test_huge_or_odd_sda_ids_are_refused_in_one_line(capsys: pytest.CaptureFixture[str], moreh_home: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the fuzzer: MOREH_VISIBLE_DEVICE=999...9 (400 digits) reached DuckDB, which cannot hold it."""
    from moreh_tools.launcher.cli import main as moreh_run
    from state.errors import InvalidValueError
    from state.store import StateStore

    monkeypatch.setenv("MOREH_SDA_TOKEN", "whoever")
    for value in ("9" * 400, "²", str(2**31)):
        monkeypatch.setenv("MOREH_VISIBLE_DEVICE", value)
        assert moreh_run(["true"]) == 1
        assert "is not an SDA id" in one_error_line(capsys.readouterr().err, value, "moreh-run: ")
    monkeypatch.delenv("MOREH_VISIBLE_DEVICE")
    assert moreh_run(["--sda", "9" * 400, "true"]) == 2
    assert "is not valid" in one_error_line(capsys.readouterr().err, "--sda", "moreh-run: ")
    with pytest.raises(InvalidValueError, match="far out of range"), StateStore().reading() as s:
        s.sdas.get(10**40)
