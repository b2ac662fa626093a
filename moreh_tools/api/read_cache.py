"""Answers of the polled read-only GETs, kept until the state's next commit.

Dashboards and scripts poll ``GET /api/scheduler/queue`` or ``/api/sdamanager/sda`` many times a second
between two changes; each answer costs several DuckDB queries (1-3 ms each) while the rendered JSON of
the last one is still right. The daemon's store counts its commits (:attr:`OwnedStore.generation`), so
an answer computed at generation *g* stays right until the next commit. The count is read before the
answer's snapshot opens: a commit that lands in between makes the answer newer than its key, never older.

Answers are kept per caller (token and access level: what a USER sees differs from what an ADMIN sees),
per path and query, for at most :data:`MAX_AGE_S` even without a commit (answers may carry ages computed
from the clock). One request computes a missing answer while the others asking for it wait for it,
so a commit does not send 32 pollers to DuckDB at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from starlette.responses import Response

    from moreh_tools.services.caller import Caller

#: An answer is recomputed after this long even when nothing committed.
MAX_AGE_S = 1.0
#: Answers kept at most (least recently used go first).
MAX_ANSWERS = 256

_Key = tuple[int, str, str, "str | None", "str | None", bool]


class _Pending:
    """An answer being computed by one request, waited for by the others."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.body: bytes | None = None


class ReadCache:
    """Rendered answers keyed by (generation, path, query, caller)."""

    def __init__(self) -> None:
        """Nothing kept yet."""
        self._answers: OrderedDict[_Key, tuple[float, bytes]] = OrderedDict()
        self._pending: dict[_Key, _Pending] = {}
        self._lock = threading.Lock()

    def answer(self, request: Request, caller: Caller, compute: Callable[[], Any]) -> Response:
        """The answer of ``compute()`` rendered as JSON, from the cache when nothing committed since."""
        from starlette.responses import Response

        generation = getattr(request.app.state.store, "generation", None)
        if generation is None:  # a store that does not count its commits: nothing can be kept
            return Response(_render(compute()), media_type="application/json")
        key: _Key = (
            generation,
            request.url.path,
            request.url.query,
            caller.token,
            caller.level,
            caller.owner,
        )
        now = time.monotonic()
        with self._lock:
            kept = self._answers.get(key)
            if kept is not None and now - kept[0] < MAX_AGE_S:
                self._answers.move_to_end(key)
                return Response(kept[1], media_type="application/json")
            pending = self._pending.get(key)
            leader = pending is None
            if pending is None:
                pending = self._pending[key] = _Pending()
        if not leader:
            pending.done.wait()
            if pending.body is not None:
                return Response(pending.body, media_type="application/json")
            # The computing request failed (its caller got the error): compute this one's own answer.
            return Response(_render(compute()), media_type="application/json")
        try:
            body = _render(compute())
            pending.body = body
            with self._lock:
                self._answers[key] = (now, body)
                self._answers.move_to_end(key)
                while len(self._answers) > MAX_ANSWERS:
                    self._answers.popitem(last=False)
        finally:
            with self._lock:
                del self._pending[key]
            pending.done.set()
        return Response(body, media_type="application/json")


def _render(value: Any) -> bytes:
    """The bytes FastAPI would send for ``value`` returned from a route."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse

    return bytes(JSONResponse(jsonable_encoder(value)).body)


def read_cache_of(app: FastAPI) -> ReadCache:
    """The app's cache of answers."""
    cache: ReadCache = app.state.read_cache
    return cache


def cached_answer(request: Request, caller: Caller, compute: Callable[[], Any]) -> Response:
    """``compute()``'s answer for this request, shared with identical requests until the next commit."""
    return read_cache_of(request.app).answer(request, caller, compute)
