"""What both user tools share: the device name, their errors, the token check and the exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from moreh_tools import identity

if TYPE_CHECKING:
    from state.records import Token
    from state.session import Session

#: How the tools call one SDA, as the real ones say "MoAI Accelerator" or "KT AI Accelerator".
DEVICE_NAME = "Moreh SDA"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UserError(Exception):
    """A request the tool refuses; the message is the one line the user sees."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class EndOfInput(Exception):
    """Standard input ended at a prompt."""


def token_source() -> str:
    """Where the token came from, for messages: the variable or the file."""
    if os.environ.get("MOREH_SDA_TOKEN", "").strip():
        return "MOREH_SDA_TOKEN"
    return os.environ.get("MOREH_TOKEN_FILE") or identity.DEFAULT_TOKEN_FILE


def find_token() -> str:
    """The user's token (MOREH_SDA_TOKEN, else the token file), or UserError ``SDA token is not given.``."""
    try:
        return identity.find_token()
    except identity.TokenNotGiven as exc:
        raise UserError(str(exc)) from None


def check_token(s: Session, token: str) -> Token:
    """The token's record; refuse one the state does not know (the runtime calls it ``moreh::InvalidToken``)."""
    from state.errors import NotFoundError

    try:
        return s.tokens.get(token)
    except NotFoundError:
        raise unknown_token() from None


def unknown_token() -> UserError:
    """The refusal of a token the state does not know."""
    return UserError(
        f"Invalid SDA token (moreh::InvalidToken.): the token from {token_source()} is not known to the "
        "SDA manager; check it or ask your administrator."
    )


def run_tool(name: str, body: Callable[[], int]) -> int:
    """Run a tool's body: every failure becomes one line on stderr and an exit status, never a traceback."""
    from state.errors import StateError

    try:
        code = body()
        sys.stdout.flush()  # inside the try: a closed pipe (moreh-smi | head) is handled below
        return code
    except UserError as exc:
        _say(str(exc))
        return exc.code
    except StateError as exc:
        _say(str(exc))
        return EXIT_FAILED
    except EndOfInput:
        _say("The input ended at the selection prompt; type q to quit. Nothing more was changed.")
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)
        _say("Interrupted; nothing more was changed.")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (moreh-smi | head): nothing to tell it, and no second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        if os.environ.get("MOREH_DEBUG"):
            raise
        _say(f"{name}: internal error ({type(exc).__name__}: {exc}); please report it with the command you ran.")
        return EXIT_INTERNAL


def _say(line: str) -> None:
    from moreh_tools.messages import one_line

    print(one_line(line), file=sys.stderr)
