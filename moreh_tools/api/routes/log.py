"""Log endpoint (part A.2, 52): the SDA Manager's event log, one entry per state change.

A USER sees only the events of its own token. Anyone but an ADMIN gets them without the command text, and with other
tokens' values in the detail text redacted.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import ApiCaller, CallerDep, redact, require_self_or_admin
from moreh_tools.api.errors import SYNTAX, ApiError
from moreh_tools.api.params import param
from moreh_tools.api.views import TokenViews, iso_utc, store_of

router = APIRouter(tags=["Log"])

DEFAULT_EVENT_LIMIT = 1000
MAX_EVENT_LIMIT = 100_000


def _scrubbed(text: str, known: set[str], caller: ApiCaller) -> str:
    """``text`` with every other token's value replaced by its redacted handle.

    A token is found wherever it stands, also joined to other text by ``-``, ``_``, ``+`` or ``/`` (which
    are letters of the token alphabet, so no word boundary would find it): every known value that occurs
    in the text is replaced, longest first.
    """
    present = sorted((t for t in known if t and t in text), key=len, reverse=True)
    if not present:
        return text
    pattern = re.compile("|".join(re.escape(t) for t in present))
    return pattern.sub(lambda m: redact(m[0], caller) or "", text)


@router.get("/api/log/sdamanager/event", summary="SDA Manager events, oldest first")
def list_events(request: Request, caller: CallerDep) -> Any:
    """The newest ``limit`` events (default 1000), filtered by ``token`` and ``action`` (e.g. CREATE_SDA)."""
    token = param(request, "token", required=False) or None
    action = param(request, "action", required=False) or None
    limit = param(request, "limit", int, required=False, default=DEFAULT_EVENT_LIMIT)
    if not 0 <= limit <= MAX_EVENT_LIMIT:
        raise ApiError(SYNTAX, f"SyntaxError. Parameter 'limit' must be 0 to {MAX_EVENT_LIMIT}, got {limit}.")
    if not caller.reads_all:
        token = token or caller.token
        require_self_or_admin(caller, token)
    with store_of(request).reading() as s:
        events = s.events.find(token, action.strip().upper() if action else None, limit)
        views = TokenViews(s, caller, {e.token for e in events if e.token})
        known = set() if caller.is_admin else {t.value for t in s.tokens.all()}
    shown = []
    for event in events:
        detail = event.detail
        if event.action == "ADD_TOKEN_ENV" and not (caller.is_admin or caller.owns(event.token)):
            # A token's env is shown only to an ADMIN and its owner (as GET /api/sdamanager/token keeps it).
            detail = detail.partition("=")[0] + "=(hidden)"
        request_text: dict[str, Any] = {"detail": detail if caller.is_admin else _scrubbed(detail, known, caller)}
        if caller.is_admin:
            request_text["command"] = event.command
        shown.append(
            {
                "id": event.id,
                "token": views.token(event.token, with_groups=False) if event.token else None,
                "action": event.action,
                "request": json.dumps(request_text, ensure_ascii=False),
                "response": json.dumps({"code": "SUCCESS"}),
                "eventTime": iso_utc(event.time),
                "referer": {"protocol": "HTTP" if event.command.startswith("api:") else "CLI", "ipAddress": ""},
                # Who asked: the Unix uid (SO_PEERCRED over the daemon's socket) and the way in.
                "origin": event.origin,
            }
        )
    return shown
