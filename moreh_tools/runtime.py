"""One runtime for every entry point: exit statuses, the error-to-line mapping, MOREH_DEBUG, pipes and Ctrl-C.

Exit statuses: 0 success, 1 a refusal or failure (the state unchanged), 2 bad usage, 3 an internal
error (a bug: ``MOREH_DEBUG=1`` shows its traceback), 130 interrupted (Ctrl-C), 141 the reader of
stdout went away (``| head``), as a shell reports a tool killed by SIGPIPE.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class ToolError(Exception):
    """A tool's own refusal: the message is the one line the user sees, ``code`` the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class EndOfInput(Exception):
    """Standard input ended at a prompt."""


def say(line: str) -> None:
    """Print one line on stderr, its unprintable characters escaped (it may quote what the user typed)."""
    from moreh_tools.messages import one_line

    print(one_line(line), file=sys.stderr, flush=True)


def exit_code_of(exc: BaseException) -> int:
    """The exit status an error means."""
    from state.errors import BadRequestError, StateError

    if isinstance(exc, ToolError):
        return exc.code
    if isinstance(exc, BadRequestError):
        return EXIT_USAGE
    if isinstance(exc, StateError):
        return EXIT_FAILED
    return EXIT_INTERNAL


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again (the reader left)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def exit_now(code: int) -> NoReturn:
    """End a console script at once, without tearing the interpreter down.

    For console scripts whose work is done and recorded: the teardown of DuckDB's modules costs 15-20 ms
    (a tenth of a 10,000-token ``show token``), and a helper thread still inside a C++ library when the
    interpreter finalises (``moreh-run``'s watcher reading the state file) would abort the process.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a reader that went away (| head); the exit status still says how it went
        pass
    os._exit(code)


def run(
    prog: str,
    body: Callable[[], int],
    *,
    prefix: str = "",
    unknown_token: Callable[[], str] | None = None,
) -> int:
    """Run a tool's body and turn every failure into one line on stderr and an exit status, never a traceback.

    ``prefix`` starts every error line (``moreh-run: ``, ``Error: ``); ``unknown_token`` gives the tool's own
    wording for a token the state does not know.
    """
    from state.errors import StateError, UnknownTokenError

    try:
        code = body()
        sys.stdout.flush()  # inside the try: a closed pipe is handled below
        return code
    except UnknownTokenError as exc:
        say(prefix + (unknown_token() if unknown_token is not None else str(exc)))
        return EXIT_FAILED
    except (ToolError, StateError) as exc:
        say(prefix + str(exc))
        return exit_code_of(exc)
    except EndOfInput:
        say(prefix + "The input ended at the selection prompt; type q to quit. Nothing more was changed.")
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)
        say(prefix + "Interrupted; nothing more was changed.")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if os.environ.get("MOREH_DEBUG"):
            raise
        say(f"{prog}: internal error ({type(exc).__name__}: {exc}); please report it with the command you ran.")
        return EXIT_INTERNAL
