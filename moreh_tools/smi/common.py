"""What both user tools share: finding the user's token and the wording for one the state does not know."""

from __future__ import annotations

import os

from moreh_tools import identity
from moreh_tools.runtime import ToolError


def token_source() -> str:
    """Where the token came from, for messages: the variable or the file."""
    if os.environ.get("MOREH_SDA_TOKEN", "").strip():
        return "MOREH_SDA_TOKEN"
    return os.environ.get("MOREH_TOKEN_FILE") or identity.DEFAULT_TOKEN_FILE


def find_token() -> str:
    """The user's token (MOREH_SDA_TOKEN, else the token file), or ToolError ``SDA token is not given.``."""
    try:
        return identity.find_token()
    except identity.TokenNotGiven as exc:
        raise ToolError(str(exc)) from None


def unknown_token() -> str:
    """The refusal of a token the state does not know (the runtime calls it ``moreh::InvalidToken``)."""
    return (
        f"Invalid SDA token (moreh::InvalidToken.): the token from {token_source()} is not known to the "
        "SDA manager; check it or ask your administrator."
    )
