"""Who a token is, asked once a second at most: the API's token lookups, cached, and the app's rate limiter."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from moreh_tools.api.ratelimit import RateLimiter
    from state.store import StateStore

# Token lookups are cached this long: a deleted token or a changed access level takes effect within it.
TOKEN_CACHE_S = 1.0


class TokenCache:
    """Token -> (valid until, access level or None), shared by the request threads."""

    def __init__(self) -> None:
        """An empty cache."""
        self.entries: dict[str, tuple[float, str | None]] = {}
        self.lock = threading.Lock()


def lookup_access_level(app: FastAPI, token: str) -> str | None:
    """The access level of ``token``, or None when unknown (cached for TOKEN_CACHE_S)."""
    cache: TokenCache = app.state.token_cache
    now = time.monotonic()
    with cache.lock:
        hit = cache.entries.get(token)
    if hit is not None and hit[0] > now:
        return hit[1]
    if len(token) > 256:
        return None
    store: StateStore = app.state.store
    with store.reading() as s:
        level = s.tokens.access_level(token)
    with cache.lock:
        if len(cache.entries) > 10_000:
            cache.entries.clear()
        cache.entries[token] = (now + TOKEN_CACHE_S, level)
    return level


def forget_token(app: FastAPI, token: str) -> None:
    """Drop ``token`` from the lookup cache (after deleting it or changing its access level)."""
    cache: TokenCache = app.state.token_cache
    with cache.lock:
        cache.entries.pop(token, None)


def limiter_of(app: FastAPI) -> RateLimiter:
    """The app's rate limiter."""
    limiter: RateLimiter = app.state.rate_limiter
    return limiter


def report_limiter_of(app: FastAPI) -> RateLimiter:
    """The separate budget of launchers' reports about their own jobs (``MOREH_API_REPORT_RATE``)."""
    limiter: RateLimiter = app.state.report_limiter
    return limiter


