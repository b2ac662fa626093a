"""The moreh_smclient console itself: --command, --json, piped stdin, the REPL, help, errors, event log."""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SMCLIENT, Smc, fails, ok, state_unchanged, token_of

from moreh_tools import __version__
from moreh_tools.smclient import catalog, registry
from moreh_tools.smclient.output import Output

NewToken = Callable[..., str]

# The job-queue commands are tested with the scheduler (tests/test_smclient_jobs.py).
JOB_PREFIXES = ("show job", "get job", "get history", "show history", "show usage", "release", "update job")
ENTRY = re.compile(r"^(?P<name>[a-z_ ]+?) +: (?P<desc>\S.*)$")
USAGE = re.compile(r"^      \(usages : (?P<usage>.+)\)$")


def admin_commands() -> dict[str, registry.Command]:
    """Every visible console command except the job-queue ones."""
    return {
        name: cmd
        for name, cmd in catalog.load_commands().items()
        if not cmd.hidden and not name.startswith(JOB_PREFIXES)
    }


def run_console(*args: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the installed console script."""
    return subprocess.run([SMCLIENT, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


# -- options -----------------------------------------------------------------------------------


def test_version_option_through_the_console_script() -> None:
    done = run_console("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"moreh_smclient (moreh-tools) {__version__}\n", "")


def test_help_option_through_the_console_script_does_not_touch_the_state(moreh_home: Path) -> None:
    done = run_console("--help")
    assert done.returncode == 0
    assert "--command LINE" in done.stdout
    assert "--json" in done.stdout
    assert not moreh_home.exists()


def test_an_unknown_option_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from moreh_tools.smclient.main import main

    with pytest.raises(SystemExit) as stop:
        main(["--frobnicate"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unrecognized arguments: --frobnicate" in err


# -- help and COMMAND ? ------------------------------------------------------------------------


def test_help_lists_every_command_in_the_seed_format(smc: Smc) -> None:
    listing = ok(smc("help")).out
    assert ok(smc("h")).out == listing
    names: list[str] = []
    lines = listing.splitlines()
    for n, line in enumerate(lines):
        usage = USAGE.match(line)
        if usage:
            assert ENTRY.match(lines[n - 1]), f"usage line without its command: {line!r}"
            continue
        entry = ENTRY.match(line)
        assert entry, f"not a help entry: {line!r}"
        assert line.index(" : ") == 34 or line.index(":") == 34, line  # the seed's name column
        names.append(entry["name"].strip())
    assert names == sorted(names)
    visible = {name for name, cmd in catalog.load_commands().items() if not cmd.hidden}
    assert set(names) == visible
    assert "update token duplicable" in names  # from the 001 guide
    assert "remove usergroup list" not in names  # an accepted spelling, not a listed command


def test_question_mark_prints_the_commands_help_entry(smc: Smc) -> None:
    lines = ok(smc("help")).lines
    for name in sorted(catalog.load_commands()):
        if registry.REGISTRY[name].hidden:
            continue
        out = ok(smc(f"{name} ?")).lines
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} ") and " : " in line[:36])
        assert out == lines[start : start + len(out)], name
        assert len(out) == (2 if registry.REGISTRY[name].usage else 1)
    assert ok(smc("CREATE SDA ?")).out == ok(smc("create sda ?")).out


def help_entries(listing: str, prefix: str) -> list[str]:
    """The lines of the ``help`` listing for every command whose name starts with ``prefix``."""
    lines = listing.splitlines()
    picked: list[str] = []
    for n, line in enumerate(lines):
        entry = ENTRY.match(line)
        if entry and entry["name"].strip().startswith(prefix):
            picked.append(line)
            if n + 1 < len(lines) and USAGE.match(lines[n + 1]):
                picked.append(lines[n + 1])
    return picked


@pytest.mark.parametrize("typed", ["update token", "show", "show tok", "delete", "update sdamodelgroup", "rel"])
def test_question_mark_after_the_start_of_a_command_lists_the_commands_that_start_so(smc: Smc, typed: str) -> None:
    expected = help_entries(ok(smc("help")).out, typed)
    assert len(expected) >= 2, typed
    assert ok(smc(f"{typed} ?")).lines == expected
    assert ok(smc(f"{typed.upper()} ?")).lines == expected
    assert ok(smc(f"{typed} ?", json=True)).json == {"message": "\n".join(expected)}


def test_a_bare_question_mark_is_help(smc: Smc) -> None:
    assert ok(smc("?")).out == ok(smc("help")).out
    assert ok(smc("show token ?")).lines == help_entries(ok(smc("help")).out, "show token")[:1]  # a command: its entry


def test_question_mark_after_a_wrong_command(smc: Smc) -> None:
    with state_unchanged():
        fails(smc("frobnicate ?"), 2, "Unknown command 'frobnicate'")
        fails(smc("create sda x ?"), 2, "Unknown command 'create sda x'", "Did you mean 'create sda ?'")


# -- bad lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "suggestion"),
    [
        ("show tokn", "show token"),
        ("creat token me", "create token"),
        ("delet sda x", "delete sda"),
        ("show backendgrup", "show backendgroup"),
        ("update usergroup nam 1 x", "update usergroup name"),
        ("shwo relationship", "show relationship"),
    ],
)
def test_unknown_commands_suggest_the_closest_one(smc: Smc, line: str, suggestion: str) -> None:
    fails(smc(line), 2, "Unknown command", f"Did you mean '{suggestion}'?")


def test_a_hopeless_command_gets_no_suggestion(smc: Smc) -> None:
    message = fails(smc("frobnicate the widgets"), 2, "Unknown command 'frobnicate the widgets'", "'help'")
    assert "Did you mean" not in message


def test_every_command_with_a_wrong_argument_count_prints_its_usage(smc: Smc) -> None:
    commands = admin_commands()
    assert len(commands) > 80
    with state_unchanged():
        for name, cmd in commands.items():
            low, high = cmd.arg_range
            counts = [high + 1] + ([low - 1] if low > 0 else [])
            for count in counts:
                line = name + " x" * count
                message = fails(smc(line), 2, f"'{name}' takes", f"got {count}")
                assert message.endswith(cmd.usage_line()), (line, message)


def test_unclosed_quotes_blank_lines_and_comments(smc: Smc) -> None:
    fails(smc("create token 'unclosed"), 2, "close every quote")
    assert ok(smc("")).out == ""
    assert ok(smc("   # only a comment")).out == ""
    token = token_of(ok(smc("create token commented  # the rest is ignored")))
    assert ok(smc(f"get token {token}", json=True)).json[0]["description"] == "commented"


def test_a_hash_begins_a_comment_only_at_the_start_of_a_word(smc: Smc, new_token: NewToken) -> None:
    token = new_token("env-holder")
    ok(smc(f"add token env {token} URL http://host/#frag"))
    ok(smc(f"add token env {token} TAG a#b   # the rest is a comment"))
    assert ok(smc(f"get token {token}", json=True)).json[0]["env"] == {"URL": "http://host/#frag", "TAG": "a#b"}
    described = {
        "create token team#3": "team#3",
        "create token team #3": "team",
        "create token 'team #3'": "team #3",
        "create token team\\ #3": "team #3",
        "create token \"it's\"#1": "it's#1",
        "create token 'a'#b": "a#b",
        "create token #x\n'quoted'": "quoted",  # a comment ends with its line
    }
    for line, description in described.items():
        created = token_of(ok(smc(line)))
        assert ok(smc(f"get token {created}", json=True)).json[0]["description"] == description, line


def test_the_comment_rule_is_told_in_help_and_in_the_console_banner(moreh_home: Path) -> None:
    done = run_console("--help")
    assert "a '#' at the start of a word begins a comment" in " ".join(done.stdout.split())
    code, screen = run_repl([b"q\n"], moreh_home)
    assert code == 0
    assert "A '#' at the start of a word begins a comment, as in a shell ('team#3' is one word" in screen


@pytest.mark.parametrize("line", ["exit", "quit", "q", "clear"])
def test_exit_and_clear_do_nothing_with_command(smc: Smc, line: str) -> None:
    assert ok(smc(line)).out == ""


@pytest.mark.parametrize(
    ("line", "needles"),
    [
        ("show history abc", ("count of history must be an integer, not 'abc'",)),
        ("get job feid 99999999999999999", ("frontend id 99999999999999999 is out of range", "2147483647")),
        ("delete usergroup 1 maybe", ("force delete flag must be true or false, not 'maybe'",)),
        ("update sdamodelgroup list 1 1,,2", ("has an empty item",)),
        ("show usage 2024-01-01 noon 2024-01-02 00:00:00", ("begin time 'noon' is not a time", "hh:mm:ss")),
    ],
)
def test_an_argument_that_is_not_of_its_kind_is_bad_usage_exit_2(
    rejects: Callable[..., str], line: str, needles: tuple[str, ...]
) -> None:
    rejects(line, 2, *needles)


@pytest.mark.parametrize(
    "line",
    [
        "create token d ٣",  # an Arabic-Indic three
        "create token d 1_0",
        "create token d +5",
        "create token d ' 5'",
        "create token d ５",  # a fullwidth five
        "show eventlog ２",
        "show usage ٢٠٢٤-01-01 00:00:00 2024-01-02 00:00:00",
        "show usage 2024-01-01 0٩:00:00 2024-01-02 00:00:00",
    ],
)
def test_numbers_are_ascii_digits_only(rejects: Callable[..., str], line: str) -> None:
    message = rejects(line, 2)
    assert "digits 0-9" in message or "YYYY-MM-DD" in message or "hh:mm:ss" in message, message


def test_ascii_numbers_with_a_minus_still_work(smc: Smc) -> None:
    token = token_of(ok(smc("create token d -5")))
    ok(smc(f"update token priority {token} 007"))
    assert ok(smc(f"get token {token}", json=True)).json[0]["priority"] == 7
    # Not a frontend id in ASCII digits, so 'release' reads it as a token.
    fails(smc("release ٣"), 1, "Token '٣' not found")


def test_a_well_formed_request_the_state_refuses_is_exit_1(rejects: Callable[..., str], new_token: NewToken) -> None:
    token = new_token()
    rejects("get job feid 2147483647", 1, "Job 2147483647 is not in the queue")
    rejects(f"update token priority {token} 100", 1, "priority 100 is out of range", "-99 to 99")
    rejects("delete usergroup 7 true", 1, "not found")


def test_an_internal_error_is_one_line_and_exit_3(smc: Smc, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx: registry.Context, args: list[str]) -> Output:
        raise RuntimeError("boom")

    original = catalog.load_commands()["show token"]
    monkeypatch.setitem(registry.REGISTRY, "show token", dataclasses.replace(original, handler=broken))
    message = fails(smc("show token"), 3, "Internal error (RuntimeError: boom)", "report it")
    assert message.count("\n") == 0
    monkeypatch.setenv("MOREH_DEBUG", "1")  # developers get the traceback
    with pytest.raises(RuntimeError, match="boom"):
        smc("show token")


# -- --json ------------------------------------------------------------------------------------


def test_every_show_and_get_command_prints_json(smc: Smc, new_token: NewToken) -> None:
    token = new_token("json-user", 3)
    ok(smc(f"create sda {token} d 1"))
    ok(smc(f"create usergroup ug1 {token}"))
    ok(smc("create sdamodelgroup mg1 0 1"))
    ok(smc("add membership 1 1"))
    ok(smc("create backend n1 10.0.0.1 2"))
    ok(smc("create version 1.0 /opt/1.0"))
    ok(smc("update usergroup quota 1 0 1 1"))
    from conftest import local_context

    from moreh_tools.services.quotas import request_quota

    asking = dataclasses.replace(local_context(), caller=dataclasses.replace(local_context().caller, token=token))
    request_quota(asking, gpus=1, days=2, reason="a deadline")
    args = {
        "get token": token,
        "get sda": token,
        "get backend beid": "1",
        "get backend group": "0",
        "get backend name": "n1",
    }
    optional = {
        "show sdamodel": token,
        "show usergroup": "1",
        "show sdamodelgroup": "1",
        "show backendgroup": "0",
        "show membership": "1",
        "show relationship": "1",
        "show version": "1.0",
        "show eventlog": "5",
        "show quota request": "PENDING",
    }
    readers = [name for name in admin_commands() if name.startswith(("show ", "get "))]
    assert len(readers) >= 20
    for name in readers:
        low, _ = registry.REGISTRY[name].arg_range
        assert low == 0 or name in args, f"give {name!r} an argument in this test"
        required = f" {args[name]}" if name in args else ""
        for line in {name + required, f"{name}{required} {optional.get(name, '')}".strip()}:
            result = ok(smc(line, json=True))
            parsed = json.loads(result.out)
            assert isinstance(parsed, list), line
            if not name.endswith("running"):
                assert parsed, f"{line} printed no records"
    assert ok(smc("get token " + token, json=True)).json[0]["priority"] == 3
    assert ok(smc("show sdamodel " + token, json=True)).json == [{"id": 1, "name": "Small.64GB", "devices": 1}]


def test_json_messages_and_errors(smc: Smc) -> None:
    created = ok(smc("create token j", json=True)).json
    assert created["message"] == f"Create SDA Success (Token : {created['token']})"
    assert ok(smc("create backend n1 10.0.0.1 1", json=True)).json == {
        "message": "Create Backend Success (id : 1)",
        "id": 1,
    }



@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        ("get token nosuch", 1, "Token 'nosuch' not found; list tokens with 'show token'."),
        ("show tokn", 2, "Unknown command 'show tokn'. Did you mean 'show token'? Type 'help' for the list."),
        ("show history abc", 2, "The count of history must be an integer, not 'abc': type it with the digits 0-9."),
        ("create token 'unclosed", 2, "Cannot read the line (No closing quotation): close every quote you open."),
    ],
)
def test_json_errors_are_a_json_object_on_stdout_and_one_line_on_stderr(
    smc: Smc, line: str, code: int, message: str
) -> None:
    with state_unchanged():
        result = smc(line, json=True)
    assert result.code == code
    assert result.json == {"error": message, "exit_code": code}
    assert result.err == f"Error: {message}\n"


def test_piped_json_lines_print_one_json_document_each(smc: Smc) -> None:
    done = run_console("--json", stdin="show backendgroup\nget token nosuch\n")
    assert done.returncode == 1
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(done.stdout)
    second, _ = decoder.raw_decode(done.stdout[end:].lstrip())
    assert first == [{"id": 0, "name": "default_backend_group", "backends": []}]
    assert second == {"error": "Token 'nosuch' not found; list tokens with 'show token'.", "exit_code": 1}
    assert done.stderr == "Error: Token 'nosuch' not found; list tokens with 'show token'.\n"


# -- piped stdin and the REPL (real processes) -------------------------------------------------


def test_piped_lines_run_one_per_line_and_failures_do_not_stop_the_rest(smc: Smc, new_token: NewToken) -> None:
    token = new_token("piped")
    script = "\n".join(
        [
            "# set up a token",
            f"update token priority {token} 7",
            "",
            "get token nosuch",
            f"add token env {token} A 1",
            "show tokn",
            f"update token desc {token} 'after the failures'",
            f"get token {token}",
        ]
    )
    done = run_console(stdin=script + "\n")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "Error: Token 'nosuch' not found; list tokens with 'show token'.",
        "Error: Unknown command 'show tokn'. Did you mean 'show token'? Type 'help' for the list.",
    ]
    out = done.stdout.splitlines()
    assert out[:3] == ["Update Token Priority success.", "Add Token Env success.", "Update Token success."]
    assert f"|  {token}  |  after the failures  |" in out[6]
    record = ok(smc(f"get token {token}", json=True)).json[0]
    assert (record["priority"], record["env"], record["description"]) == (7, {"A": "1"}, "after the failures")


def test_repeated_command_options_run_every_line_in_order(smc: Smc) -> None:
    done = run_console("-c", "create token first", "--command", "create token second")
    assert (done.returncode, done.stderr) == (0, "")
    assert len(done.stdout.splitlines()) == 2
    done = run_console("-c", "get token nosuch", "-c", "create token third", "-c", "show tokn")
    assert done.returncode == 1  # as for piped lines: 1 when any line failed, whatever the cause
    assert done.stderr.splitlines() == [
        "Error: Token 'nosuch' not found; list tokens with 'show token'.",
        "Error: Unknown command 'show tokn'. Did you mean 'show token'? Type 'help' for the list.",
    ]
    done = run_console("-c", "create token fourth", "-c", "q", "-c", "create token never")
    assert (done.returncode, done.stderr) == (0, "")
    assert [t["description"] for t in ok(smc("show token", json=True)).json] == ["first", "second", "third", "fourth"]
    assert "repeat it to run several lines" in " ".join(run_console("--help").stdout.split())


def test_piped_lines_stop_at_q_and_succeed_with_exit_0(smc: Smc) -> None:
    done = run_console(stdin="create token first\nq\ncreate token never\n")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("Create SDA Success (Token : ")
    assert [t["description"] for t in ok(smc("show token", json=True)).json] == ["first"]


def test_piped_json(smc: Smc) -> None:
    done = run_console("--json", stdin="show backendgroup\n")
    assert done.returncode == 0
    assert json.loads(done.stdout) == [{"id": 0, "name": "default_backend_group", "backends": []}]


def run_repl(keys: list[bytes], home: Path, timeout: float = 20) -> tuple[int, str]:
    """Drive the interactive console through a pseudo-terminal; return its exit status and screen text."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "MOREH_HOME": str(home)}
    proc = subprocess.Popen([SMCLIENT], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + timeout
    pending = list(keys)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the console exited and closed the terminal
                    break
                if not data:
                    break
                screen += data
                # Type the next line only once the console prompts for it.
                if pending and screen.rstrip().endswith(b">"):
                    os.write(master, pending.pop(0))
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=5), screen.decode(errors="replace").replace("\r\n", "\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_repl_banner_prompt_commands_errors_and_quit(smc: Smc, moreh_home: Path) -> None:
    code, screen = run_repl([b"create token repl-user\n", b"bogus\n", b"show usergroup\n", b"q\n"], moreh_home)
    assert code == 0
    assert f"SDAManager's Client. Connect to {moreh_home / 'state.duckdb'}" in screen
    assert "Type 'help' for the commands" in screen
    assert re.search(r">create token repl-user\nCreate SDA Success \(Token : \S{24}\)\n", screen)
    assert ">bogus\nError: Unknown command 'bogus'." in screen
    assert ">show usergroup\n+---" in screen
    assert "Traceback" not in screen
    assert [t["description"] for t in ok(smc("show token", json=True)).json] == ["repl-user"]


def test_repl_keeps_history_across_sessions(smc: Smc, moreh_home: Path) -> None:
    code, _ = run_repl([b"create token from-history\n", b"\x04"], moreh_home)  # Ctrl-D ends the session
    assert code == 0
    history = moreh_home / "smclient_history"
    assert "create token from-history" in history.read_text()
    assert history.stat().st_mode & 0o077 == 0
    code, _ = run_repl([b"\x10\n", b"q\n"], moreh_home)  # Ctrl-P recalls the previous line
    assert code == 0
    assert [t["description"] for t in ok(smc("show token", json=True)).json] == ["from-history", "from-history"]


# -- event log ---------------------------------------------------------------------------------


def test_show_eventlog_shows_the_last_100_events_or_the_count_asked(smc: Smc) -> None:
    from state.store import StateStore

    with StateStore().transaction("bulk create") as s:
        tokens = [s.tokens.create(f"user{i}") for i in range(105)]
    events = ok(smc("show eventlog", json=True)).json
    assert [e["id"] for e in events] == list(range(6, 106))
    assert [e["token"] for e in events] == tokens[5:]
    assert {(e["action"], e["command"]) for e in events} == {("CREATE_TOKEN", "bulk create")}
    lines = ok(smc("show eventlog 2")).lines
    assert len(lines) == 6
    assert lines[1].startswith("|  ID   |           Time           |     Action     |            Token           |")
    assert re.match(
        rf"^\|  105  \|  \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d\d  \|  CREATE_TOKEN  \|  {re.escape(tokens[-1])}  \|",
        lines[4],
    )
    with state_unchanged():
        fails(smc("show eventlog many"), 2, "event count must be an integer, not 'many'")
        fails(smc("show eventlog 1 2"), 2, "takes 0 to 1 argument(s), got 2")


@pytest.mark.parametrize(
    "line",
    ["show eventlog 0", "show eventlog -5", "show history 0", "show history device -1", "get history token T 0"],
)
def test_every_count_argument_must_be_positive(rejects: Callable[..., str], new_token: NewToken, line: str) -> None:
    token = new_token()
    rejects(line.replace(" T ", f" {token} "), 2, "must be at least 1, not ", "how many to show")


def test_every_change_is_logged_with_its_command_line(smc: Smc, new_token: NewToken) -> None:
    token, other = new_token("logged"), new_token("other")
    lines = [
        "create backend n1 10.0.0.1 4",
        "create backend n2 10.0.0.2 2",
        "create backendgroup bg1 2",
        "update backendgroup name 1 bg-one",
        "update backendgroup list 1 null",
        "add backendgroup 1 2",
        "remove backendgroup 1 2",
        "update backend host 2 n2b",
        "update backend ip 2 10.0.0.3",
        "update backend status 1 SHUTDOWN",
        "update backend group 2 1",
        "update device 1 0 SHUTDOWN",
        "update device all 1 IDLE",
        "create sdamodel tiny 1",
        "create sdamodelgroup mg1 0 1",
        "update sdamodelgroup name 1 mg-one",
        "update sdamodelgroup backendgroup 1 1",
        "update sdamodelgroup list 1 1,53",
        "add sdamodelgroup 1 2",
        "remove sdamodelgroup 1 2",
        f"create usergroup ug1 {other}",
        "update usergroup name 1 ug-one",
        f"update usergroup list 1 {token}",
        f"add usergroup 1 {other}",
        f"remove usergroup 1 {other}",
        "add membership 1 1",
        "update usergroup quota 1 0 2 1",
        "update usergroup quota 1 0 null",
        f"update token timelimit {token} 2h 1d",
        "update sdamodel timelimit 1 30m null",
        f"create sda {token} d 53",
        f"update token sda max {token} 2",
        f"create resv_sda {token} r 1",
        f"update sda id {token} 1 1",
        f"update sda {token} 53",
        f"update token sda current {token} 2",
        f"delete sda {token} 2",
        f"update token desc {token} renamed",
        f"update token priority {token} 9",
        f"update token access level {token} ADMIN",
        f"update token sda max {token} 1",
        f"update token duplicable {token} 3",
        f"add token env {token} K v",
        f"remove token env {token} K",
        "remove membership 1 1",
        "delete usergroup 1 true",
        "delete sdamodelgroup 1 true",
        "delete sdamodel 2",
        "delete backendgroup 1 true",
        "delete backend 2",
        "create version 1.0 /opt/1.0",
        "update version path 1.0 /srv/1.0",
        "update version query 1.0 q",
        "update version worker 1.0 w",
        "update version health_check 1.0 h",
        "update version support 1.0 true",
        "update version latest 1.0",
        "add worker env 1.0 A 1",
        "remove worker env 1.0 A",
        "delete version 1.0",
        f"delete sda {token}",
        f"delete token {token}",
        "create token fresh 5",
    ]
    for line in lines:
        ok(smc(line))
    logged = {e["command"] for e in ok(smc("show eventlog 1000", json=True)).json}
    assert [line for line in lines if line not in logged] == []
    mutating = {name for name in admin_commands() if name.split()[0] in {"create", "delete", "update", "add", "remove"}}
    used = {registry.resolve(line.split())[0].name for line in lines}
    assert mutating - used == set()  # the list above covers every command that changes the state


def test_question_mark_with_json_prints_json(smc: Smc) -> None:
    entry = ok(smc("create sda ?")).out.rstrip("\n")
    assert ok(smc("create sda ?", json=True)).json == {"message": entry}
