"""Entry point of ``moreh_smclient``: one line (--command), lines piped on stdin, or the REPL."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn, TextIO

from moreh_tools import __version__

if TYPE_CHECKING:
    from state.store import StateStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
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


def run_line(line: str, *, json_output: bool = False, out: TextIO | None = None) -> int:
    """Run one console line, print its result, and return an exit status (0 on success).

    With ``MOREH_SDA_MANAGER_ADDRESS`` set the line runs on that SDA Manager (``POST /api/smclient/command``).
    """
    if os.environ.get("MOREH_SDA_MANAGER_ADDRESS", "").strip():
        from moreh_tools.remote.smclient import run_remote_line

        return run_remote_line(line, json_output=json_output, out=out or sys.stdout)
    return run_line_here(line, json_output=json_output, out=out)


def run_line_here(
    line: str,
    *,
    json_output: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    store: StateStore | None = None,
) -> int:
    """Run one console line on ``store`` (default: this host's state), whatever the address says."""
    from moreh_tools.smclient import registry
    from moreh_tools.smclient.args import UsageError, split_line
    from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested
    from moreh_tools.smclient.output import Message, Output, to_json
    from state.errors import StateError
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
    try:
        if words[-1] == "?":  # 'COMMAND ?', 'update token ?', '?': printed below, like any result
            result: Output = Message(registry.help_for(words[:-1]))
        else:
            cmd, args = registry.resolve(words)
            registry.check_arg_count(cmd, args)
            ctx = registry.Context(" ".join(words), json_output=json_output, store=store)
            with command_line(ctx.line):  # helpers' own transactions (release) log the admin's line too
                result = cmd.handler(ctx, args)
    except (ExitRequested, ClearRequested):
        raise
    except UsageError as exc:
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


def _run_lines(lines: Iterable[str], json_output: bool) -> int:
    from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested

    status = EXIT_OK
    for line in lines:
        try:
            code = run_line(line, json_output=json_output)
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
    from moreh_tools.smclient.registry import load_commands
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
        try:
            history.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            readline.write_history_file(history)
            history.chmod(0o600)
        except OSError:
            pass

    atexit.register(save)


def repl(json_output: bool) -> int:
    """The interactive console: banner, ``>`` prompt, line editing and history."""
    from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested
    from state.paths import state_file

    _setup_readline()
    address = os.environ.get("MOREH_SDA_MANAGER_ADDRESS")
    print(f"SDAManager's Client. Connect to {address or state_file()}")
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
            run_line(line, json_output=json_output)
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
            code = _run_lines(ns.command, ns.json)
        elif ns.command is not None:
            try:
                code = run_line(ns.command[0], json_output=ns.json)
            except (ExitRequested, ClearRequested):
                code = EXIT_OK
        elif not sys.stdin.isatty():
            code = _run_lines(sys.stdin, ns.json)
        else:
            code = repl(ns.json)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, as a shell tool killed by SIGPIPE would.
        _silence_stdout()
        code = EXIT_BROKEN_PIPE
    finally:
        if collecting:  # main() also runs inside other programs (the tests)
            gc.enable()
    if argv is None and ns.command is not None:
        _exit_now(code)
    sys.exit(code)


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report for a writer whose reader left


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _exit_now(code: int) -> NoReturn:
    """End the console script without tearing the interpreter down.

    Only for ``--command`` run as the console script: by now the state is closed and unlocked and
    nothing is registered with atexit, while the teardown of DuckDB's modules and of the command's
    objects costs 15-20 ms, a tenth of a 10,000-token 'show token' (benchmarks/bench_smclient).
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a reader that went away (| head); the exit status still says how the command went
        pass
    os._exit(code)


if __name__ == "__main__":
    main()
