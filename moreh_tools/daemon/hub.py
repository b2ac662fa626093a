"""Who waits for news of which job inside the daemon, and waking them: long polls that hold no thread.

A launcher waiting for its devices (or watching its running job) keeps a request open; the request
sleeps on an asyncio event registered here, and whoever changes the job (a request handled in another
thread, or the daemon's tick) calls :meth:`JobHub.jobs_changed`, which wakes it. Launchers that
started before the daemon sleep on their job's FIFO instead; they are woken too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from pathlib import Path

from state.errors import StateBusyError


class Waiter:
    """One long poll's wake-up: an asyncio event set from any thread."""

    def __init__(self, job_id: int, token: str | None) -> None:
        """Wait for ``job_id`` (on behalf of ``token``, for the per-token cap)."""
        self.job_id = job_id
        self.token = token
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def wake(self) -> None:
        """Set the event from whatever thread calls this."""
        self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout`` seconds pass; whether woken (the event is reset)."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        self.event.clear()
        return True


class JobHub:
    """The daemon's waiters by job, with caps so that one token cannot pile up waits without bound."""

    def __init__(self, home: Path, per_token: int = 1024, total: int = 20000) -> None:
        """Waiters of the state in ``home``; at most ``per_token`` per token and ``total`` in all."""
        self.home = home
        self.per_token = per_token
        self.total = total
        self._lock = threading.Lock()
        self._by_job: dict[int, set[Waiter]] = {}
        self._count: dict[str | None, int] = {}
        self._all = 0

    def register(self, job_id: int, token: str | None) -> Waiter:
        """A waiter for ``job_id``; StateBusyError past a cap (the client asks again later)."""
        waiter = Waiter(job_id, token)
        with self._lock:
            if self._all >= self.total or self._count.get(token, 0) >= self.per_token:
                raise StateBusyError(
                    "Too many requests of this token are waiting at once; wait for some to end and try again."
                )
            self._by_job.setdefault(job_id, set()).add(waiter)
            self._count[token] = self._count.get(token, 0) + 1
            self._all += 1
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        """Forget a waiter (its request ended)."""
        with self._lock:
            waiters = self._by_job.get(waiter.job_id)
            if waiters is not None and waiter in waiters:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_job[waiter.job_id]
                self._count[waiter.token] -= 1
                if not self._count[waiter.token]:
                    del self._count[waiter.token]
                self._all -= 1

    def jobs_changed(self, job_ids: Iterable[int]) -> None:
        """Wake every waiter of ``job_ids`` (and launchers sleeping on those jobs' FIFOs)."""
        from moreh_tools.jobs import wakeup

        ids = list(job_ids)
        with self._lock:
            woken = [w for job_id in ids for w in self._by_job.get(job_id, ())]
        for waiter in woken:
            waiter.wake()
        for job_id in ids:
            wakeup.wake(self.home, job_id)

    def waiting(self) -> int:
        """How many requests wait now."""
        with self._lock:
            return self._all
