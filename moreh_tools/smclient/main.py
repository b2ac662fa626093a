"""Entry point of ``moreh_smclient``: one line (--command), lines piped on stdin, or the REPL."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn, TextIO

from moreh_tools import __version__

if TYPE_CHECKING:
    from moreh_tools.port import Port
    from moreh_tools.services.context import ServiceContext

from moreh_tools.runtime import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    exit_now,
    silence_stdout,
)

BANNER_2 = f"moreh-tools {__version__}. Type 'help' for the commands, 'COMMAND ?' for one, 'q' to quit."
COMMENTS = "A '#' at the start of a word begins a comment, as in a shell ('team#3' is one word, 'team #3' is 'team')."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"moreh_smclient: {message} (see 'moreh_smclient --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="moreh_smclient",
        description=(
            "SDA Manager admin console. With no arguments on a terminal it starts an interactive console; "
            "lines piped on stdin run one per line."
        ),
        epilog=(
            "Lines are split into words as by a shell: quotes group words, and a '#' at the start of a word "
            "begins a comment ('team#3' is one word). "
            "Example: moreh_smclient --command 'show token'   (state directory: $MOREH_HOME)"
        ),
    )
    parser.add_argument(
        "--command",
        "-c",
        metavar="LINE",
        action="append",
        help=(
            "run one console line and exit with its status; repeat it to run several lines in order, as piped "
            "lines run: each runs even if one before it failed, 'q' stops, and the exit status is 1 when any failed"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print show/get results as JSON")
    parser.add_argument("--version", action="version", version=f"moreh_smclient (moreh-tools) {__version__}")
    return parser


def _error(message: str, err: TextIO | None = None) -> None:
    from moreh_tools.messages import one_line

    print(f"Error: {one_line(message)}", file=err or sys.stderr)


def console_port() -> Port:
    """The port a console works through (the token, when one is set, goes with every line)."""
    from moreh_tools import identity
    from moreh_tools.port import open_port

    try:
        token: str | None = identity.find_token()
    except identity.TokenNotGiven:
        token = None
    return open_port(token, tool="moreh_smclient")


def run_line(line: str, *, json_output: bool = False, out: TextIO | None = None, port: Port | None = None) -> int:
    """Run one console line through ``port`` (default: a new one), print what it printed, and return its exit
    status (0 on success).

    ``exit``/``clear`` raise the exceptions the console loop handles.
    """
    from moreh_tools.port import ops
    from moreh_tools.runtime import exit_code_of
    from moreh_tools.smclient.args import split_line
    from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested
    from state.errors import StateError

    out = out or sys.stdout
    try:
        if not split_line(line):  # blank, or only a comment: nothing to send
            return EXIT_OK
    except ValueError:
        pass  # the line runs anyway: the console says what is wrong with its quoting
    try:
        result = (port or console_port()).call(ops.CONSOLE, line=line, json=json_output)
    except StateError as exc:  # the line never ran (the state or its server is unreachable, the token refused)
        code = exit_code_of(exc)
        _error(str(exc))
        if json_output:
            from moreh_tools.messages import one_line
            from moreh_tools.smclient.output import error_json

            print(error_json(one_line(str(exc)), code), file=out)
        return code
    if result.stdout:
        out.write(result.stdout)
    if result.stderr:
        sys.stderr.write(result.stderr)
    if result.action == "exit":
        raise ExitRequested
    if result.action == "clear":
        raise ClearRequested
    return result.exit_code


def run_line_here(
    line: str,
    *,
    service: ServiceContext,
    json_output: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run one console line against ``service``'s state (where the port runs it: this process or a daemon)."""
    from moreh_tools.smclient import registry
    from moreh_tools.smclient.args import UsageError, split_line
    from moreh_tools.smclient.catalog import load_commands
    from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested
    from moreh_tools.smclient.output import Message, Output, to_json
    from state.errors import BadRequestError, StateError, StateOwnedElsewhere
    from state.events import command_line

    out = out or sys.stdout

    def failed(message: str, code: int) -> int:
        """One ``Error:`` line on stderr and, with --json, the same as a JSON object on stdout."""
        _error(message, err)
        if json_output:
            from moreh_tools.messages import one_line
            from moreh_tools.smclient.output import error_json

            print(error_json(one_line(message), code), file=out)
        return code

    try:
        words = split_line(line)
    except ValueError as exc:
        return failed(f"Cannot read the line ({exc}): close every quote you open.", EXIT_USAGE)
    if not words:
        return EXIT_OK
    load_commands()
    try:
        if words[-1] == "?":  # 'COMMAND ?', 'update token ?', '?': printed below, like any result
            result: Output = Message(registry.help_for(words[:-1]))
        else:
            cmd, args = registry.resolve(words)
            registry.check_arg_count(cmd, args)
            ctx = registry.Context(" ".join(words), json_output=json_output, service=service)
            with command_line(ctx.line):  # helpers' own transactions (release) log the admin's line too
                result = cmd.handler(ctx, args)
    except (ExitRequested, ClearRequested):
        raise
    except StateOwnedElsewhere:
        raise  # a daemon took the state while this line waited for it: the port runs the line there instead
    except (UsageError, BadRequestError) as exc:
        return failed(str(exc), EXIT_USAGE)
    except StateError as exc:
        return failed(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return failed("Interrupted; nothing was changed by the interrupted command.", EXIT_INTERRUPTED)
    except Exception as exc:  # never a traceback for the user; MOREH_DEBUG=1 shows it
        if os.environ.get("MOREH_DEBUG"):
            raise
        return failed(
            f"Internal error ({type(exc).__name__}: {exc}); please report it with the command you ran.", EXIT_INTERNAL
        )
    if result is not None:
        print(to_json(result) if json_output else result.as_text(), file=out)
    return EXIT_OK


def _run_lines(lines: Iterable[str], json_output: bool, port: Port) -> int:
    from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested

    status = EXIT_OK
    for line in lines:
        try:
            code = run_line(line, json_output=json_output, port=port)
        except ExitRequested:
            break
        except ClearRequested:
            continue
        if code != EXIT_OK:
            status = EXIT_FAILED  # the README promises 1 when any piped line failed, whatever the cause
    return status


def _setup_readline() -> None:
    try:
        import readline
    except ImportError:  # line editing is a comfort, not a requirement
        return
    from moreh_tools.smclient.catalog import load_commands
    from state.paths import state_home

    names = sorted(n for n, c in load_commands().items() if not c.hidden)
    history = state_home() / "smclient_history"

    def complete(text: str, state: int) -> str | None:
        typed = readline.get_line_buffer()[: readline.get_endidx()]
        options = [n[len(typed) - len(text) :] for n in names if n.startswith(typed)]
        options = sorted({o.split(" ", 1)[0] + ("" if " " in o else " ") for o in options})
        return options[state] if state < len(options) else None

    readline.set_completer_delims(" ")
    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(1000)

    import atexit

    def save() -> None:
        # Never written through a link someone put in the history's place: a new private file, renamed over
        # it, in a state directory that passes the state's checks.
        import tempfile

        from state.errors import StateError
        from state.safety import checked_home

        try:
            with checked_home(history.parent):
                fd, temporary = tempfile.mkstemp(prefix=".smclient_history.", dir=history.parent)
            try:
                os.close(fd)
                readline.write_history_file(temporary)
                os.replace(temporary, history)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
        except (OSError, StateError):
            pass

    atexit.register(save)


def repl(json_output: bool, port: Port | None = None) -> int:
    """The interactive console: banner, ``>`` prompt, line editing and history (through ``port``, default: a new one)."""
    from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested

    port = port or console_port()
    _setup_readline()
    print(f"SDAManager's Client. Connect to {port.describe()}")
    print(BANNER_2)
    print(COMMENTS)
    print()
    while True:
        try:
            line = input(">")
        except EOFError:
            print()
            return EXIT_OK
        except KeyboardInterrupt:
            print()
            continue
        try:
            run_line(line, json_output=json_output, port=port)
        except ExitRequested:
            return EXIT_OK
        except ClearRequested:
            print("\033[H\033[2J", end="", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Console script entry point."""
    ns = _parser().parse_args(argv)
    collecting = gc.isenabled()
    if ns.command is not None:
        # One line, then exit: cycle collection frees nothing worth its cost here, about 10 ms of a
        # 10,000-token 'show token', half of it while importing DuckDB (benchmarks/bench_smclient).
        gc.disable()
    from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested

    try:
        if ns.command is not None and len(ns.command) > 1:
            code = _run_lines(ns.command, ns.json, console_port())
        elif ns.command is not None:
            try:
                code = run_line(ns.command[0], json_output=ns.json, port=console_port())
            except (ExitRequested, ClearRequested):
                code = EXIT_OK
        elif not sys.stdin.isatty():
            code = _run_lines(sys.stdin, ns.json, console_port())
        else:
            code = repl(ns.json, console_port())
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, as a shell tool killed by SIGPIPE would.
        silence_stdout()
        code = EXIT_BROKEN_PIPE
    finally:
        if collecting:  # main() also runs inside other programs (the tests)
            gc.enable()
    if argv is None and ns.command is not None:
        exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
