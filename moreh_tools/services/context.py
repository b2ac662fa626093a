"""What a service function works with: the state, who asks, and how to wake whoever waits for a job."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from moreh_tools.services.caller import Caller

if TYPE_CHECKING:
    from state.session import Session


class Database(Protocol):
    """The state as a service sees it: the file under its lock (a tool alone) or the daemon's open connection."""

    home: Path

    def transaction(self, command: str = "", origin: str | None = None) -> AbstractContextManager[Session]:
        """One write transaction."""
        ...

    def reading(self) -> AbstractContextManager[Session]:
        """One read-only snapshot."""
        ...


class Notifier(Protocol):
    """Wakes whoever waits for news of a job (a launcher waiting for devices, or watching its running job)."""

    def jobs_changed(self, job_ids: Iterable[int]) -> None:
        """The jobs' state changed (allocated, released, ended): wake their waiters."""
        ...


class FifoNotifier:
    """Without a daemon: one byte into each job's FIFO in ``$MOREH_HOME/run`` (see :mod:`moreh_tools.jobs.wakeup`)."""

    def __init__(self, home: Path) -> None:
        """Wake launchers of the state in ``home``."""
        self.home = home

    def jobs_changed(self, job_ids: Iterable[int]) -> None:
        """Write to each job's FIFO; a job nobody waits for costs one failed open."""
        from moreh_tools.jobs import wakeup

        for job_id in job_ids:
            wakeup.wake(self.home, job_id)


@dataclass
class ServiceContext:
    """The state, the caller, the notifier, and this host's name (jobs started here are ended here)."""

    db: Database
    caller: Caller
    notifier: Notifier
    host: str
    machine_id: str
    #: Whether this process is the daemon that owns the state (it then also watches this host's processes).
    in_daemon: bool = False
    #: Whether a daemon owns the state (in the daemon itself, or while a tool talks to one).
    daemon_running: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        """The state directory."""
        return self.db.home

    @contextmanager
    def write(self, command: str) -> Iterator[Session]:
        """One write transaction, its events recorded with the caller's origin."""
        with self.db.transaction(command, origin=self.caller.origin) as session:
            yield session

    def read(self) -> AbstractContextManager[Session]:
        """One read-only snapshot."""
        return self.db.reading()

    def who(self, s: Session) -> Caller:
        """The caller with its token's access level read from ``s`` when the way in did not resolve it (the file)."""
        caller = self.caller
        if caller.token is not None and caller.level is None:
            from dataclasses import replace

            self.caller = caller = replace(caller, level=s.tokens.access_level(caller.token) or "")
        return caller

    def wake(self, job_ids: Iterable[int]) -> None:
        """Wake the waiters of ``job_ids`` (after the change committed)."""
        ids = list(job_ids)
        if ids:
            self.notifier.jobs_changed(ids)
