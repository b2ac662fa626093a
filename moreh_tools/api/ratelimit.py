"""Per-token request budget, like Backend.AI keypairs: N requests per window (default 900 per 15 minutes).

A fixed window per key: the first request opens a window of ``window_s`` seconds; the request past the budget is
answered 429 with ``Retry-After`` set to the seconds left in the window. ``MOREH_API_RATE`` overrides the budget as
``N`` (per 15 minutes) or ``N/SECONDS``; ``0`` turns the limit off.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

from moreh_tools.api.errors import ApiError

DEFAULT_REQUESTS = 900
DEFAULT_WINDOW_S = 900.0
RATE_LIMITED = 429
#: A launcher's reports (its wait, start and end) may come this many times as often as other requests: a
#: token running a hundred jobs reports about each of them every ~25 s while they wait or run.
REPORT_FACTOR = 20
_MAX_KEYS = 100_000  # past this many live windows, expired ones are swept before adding another


def parse_rate(text: str | None) -> tuple[int, float]:
    """``(requests, window_s)`` from ``N`` or ``N/SECONDS``; the default for empty or malformed text."""
    if not text:
        return DEFAULT_REQUESTS, DEFAULT_WINDOW_S
    count, _, window = text.partition("/")
    try:
        requests = int(count)
        window_s = float(window) if window else DEFAULT_WINDOW_S
    except ValueError:
        return DEFAULT_REQUESTS, DEFAULT_WINDOW_S
    if requests < 0 or not window_s > 0 or math.isinf(window_s):
        return DEFAULT_REQUESTS, DEFAULT_WINDOW_S
    return requests, window_s


class RateLimiter:
    """Counts requests per key in fixed windows; ``hit`` raises the 429 ApiError once a key's budget is spent."""

    def __init__(self, requests: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        """``requests`` per ``window_s`` seconds per key; 0 requests means no limit."""
        self.requests = requests
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window end, requests so far)
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> RateLimiter:
        """The limiter ``MOREH_API_RATE`` asks for."""
        return cls(*parse_rate(os.environ.get("MOREH_API_RATE")))

    @classmethod
    def for_reports(cls) -> RateLimiter:
        """The budget of a launcher's reports about its own jobs, per token: ``MOREH_API_REPORT_RATE``
        (``N`` or ``N/SECONDS``), by default :data:`REPORT_FACTOR` times the token budget in the same window
        (0 when the token budget is off)."""
        text = os.environ.get("MOREH_API_REPORT_RATE")
        if text:
            return cls(*parse_rate(text))
        requests, window_s = parse_rate(os.environ.get("MOREH_API_RATE"))
        return cls(requests * REPORT_FACTOR, window_s)

    def hit(self, key: str) -> None:
        """Count one request for ``key``; raise 429 (with Retry-After) when it is over budget."""
        if self.requests == 0:
            return
        now = self.clock()
        with self._lock:
            end, count = self._windows.get(key, (0.0, 0))
            if end <= now:
                if len(self._windows) >= _MAX_KEYS:
                    self._sweep(now)
                end, count = now + self.window_s, 0
            count += 1
            self._windows[key] = (end, count)
        if count > self.requests:
            retry = max(1, math.ceil(end - now))
            raise ApiError(
                RATE_LIMITED,
                f"Rate limit exceeded: {self.requests} requests per {self.window_s:g} s for this token; "
                f"retry after {retry} s.",
                RATE_LIMITED,
                headers={"Retry-After": str(retry)},
            )

    def check(self, key: str) -> None:
        """Raise 429 when ``key`` already spent its budget in the current window; count nothing.

        Called before anything costs a state read, so a client over its budget costs next to nothing.
        """
        if self.requests == 0:
            return
        now = self.clock()
        with self._lock:
            end, count = self._windows.get(key, (0.0, 0))
        if end > now and count >= self.requests:
            retry = max(1, math.ceil(end - now))
            raise ApiError(
                RATE_LIMITED,
                f"Rate limit exceeded: {self.requests} requests per {self.window_s:g} s for this token; "
                f"retry after {retry} s.",
                RATE_LIMITED,
                headers={"Retry-After": str(retry)},
            )

    def _sweep(self, now: float) -> None:
        for key in [k for k, (end, _) in self._windows.items() if end <= now]:
            del self._windows[key]
