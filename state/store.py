"""The state store: one DuckDB file, one lock, a short-lived connection per transaction.

DuckDB lets only one process hold a file open read-write, so every access, reads included, takes
the file lock first, opens a connection, does its work in one transaction and closes the
connection before releasing the lock. A process killed at any moment leaves either the whole
transaction or none of it (DuckDB's WAL), and the kernel drops its lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
else:
    try:
        # The engine alone: the `duckdb` package's Python layer (relational API, Arrow and pandas glue) takes
        # ~50 ms to import, more than the rest of a `moreh-smi` run; the state needs only connect() and the errors.
        import _duckdb as duckdb
    except ImportError:  # older duckdb releases keep the engine inside the package
        import duckdb

from state import migrations
from state.errors import InvalidValueError, StateBusyError, StateError, StateOwnedElsewhere, StateUnavailableError
from state.paths import lock_file, state_file, state_home
from state.safety import DAEMON, TOOL, Home, checked_home
from state.stats import LOCK_STATS_VAR, record_stat

if TYPE_CHECKING:
    from state.session import Session

DEFAULT_LOCK_TIMEOUT_S = 30.0
_ABANDON_CHECK_S = 0.2
# What a damaged or unreadable file raises once open (a truncated file opens, then fails on its first read).
_DAMAGE = (duckdb.IOException, duckdb.InternalException, duckdb.SerializationException, duckdb.FatalException)


def _lock_timeout() -> float:
    raw = os.environ.get("MOREH_LOCK_TIMEOUT")
    try:
        value = float(raw) if raw else DEFAULT_LOCK_TIMEOUT_S
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT_S
    if value != value:  # nan would give up at once
        return DEFAULT_LOCK_TIMEOUT_S
    return min(value, threading.TIMEOUT_MAX)  # a longer wait ('inf') raises OverflowError in the wait


class StateStore:
    """Access to the shared state. Every method that yields a session is one atomic transaction."""

    def __init__(
        self,
        home: Path | None = None,
        *,
        lock_timeout: float | None = None,
        origin: str = "",
        abandon_when: Callable[[], bool] | None = None,
    ) -> None:
        """Bind the store to ``home`` (default: ``MOREH_HOME`` or the per-system default).

        ``origin`` is recorded with every event (who changed the state). ``abandon_when`` is asked while
        waiting for the lock: when it says True (a daemon started and owns the state now), the wait ends
        with :class:`StateOwnedElsewhere`, nothing having been done.
        """
        self.home = home or state_home()
        self.path = state_file(self.home)
        self.lock_path = lock_file(self.home)
        self.lock_timeout = _lock_timeout() if lock_timeout is None else lock_timeout
        self.origin = origin
        self.abandon_when = abandon_when
        self._schema_checked = False
        self.lock_wait_s = 0.0
        self._purpose = TOOL
        self._umask = 0o077

    # -- public -------------------------------------------------------------------------------

    @contextmanager
    def transaction(self, command: str = "", origin: str | None = None) -> Iterator[Session]:
        """Yield a session inside one transaction, committed on normal exit, rolled back on error.

        ``command`` is the command line being executed and ``origin`` who asked (default: the store's);
        events recorded in the session carry both.
        """
        from state.session import Session

        with self._locked(), self._connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                session = Session(conn, command, self.origin if origin is None else origin)
                yield session
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """Yield a session for reads only; nothing it does is kept."""
        from state.session import Session

        with self._locked(), self._connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                yield Session(conn, "")
            finally:
                _rollback(conn)

    def schema_version(self) -> int:
        """Return the schema version of the state file (migrating it first if needed)."""
        with self.reading() as session:
            return session.schema_version()

    # -- internals ------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        started = time.perf_counter()
        fd = self._open_lock(TOOL)
        try:
            fd = _lock_in_turn(fd, self.lock_timeout, self.abandon_when)
        except _Abandoned:
            raise StateOwnedElsewhere(f"The state at {self.path} is now served by sdamanager.") from None
        except TimeoutError:
            raise StateBusyError(
                f"The state at {self.path} stayed locked for {self.lock_timeout:g} s by another process; "
                "try again, or raise MOREH_LOCK_TIMEOUT."
            ) from None
        except OSError as exc:
            raise self._lock_error(exc) from None
        acquired = time.perf_counter()
        self.lock_wait_s = acquired - started
        try:
            yield
        finally:
            _unlock(fd)
            if os.environ.get(LOCK_STATS_VAR):  # opt-in measurement (benchmarks/bench_soak.py); a dict lookup otherwise
                asked = time.time() - (time.perf_counter() - started)
                record_stat("wait", self.lock_wait_s, asked)
                record_stat("hold", time.perf_counter() - acquired, asked + self.lock_wait_s)

    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        # The umask holds for the connection's whole life, not only while connecting: DuckDB creates the
        # write-ahead log at the first write, and in a group-shared directory every member must be able to
        # replay and remove it after a crash. The state lock is held, so no other thread of this process
        # changes the umask meanwhile.
        old_umask = os.umask(self._umask)
        try:
            conn = self._open()
            try:
                if not self._schema_checked:
                    conn = self._ensure_schema(conn)
                    self._schema_checked = True
                with self._translated():
                    yield conn
            finally:
                conn.close()
        finally:
            os.umask(old_umask)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Turn DuckDB's errors into the state's, each with a line that says what to do."""
        try:
            yield
        except duckdb.Error as exc:
            raise self._state_error(exc) from None

    def _state_error(self, exc: Exception) -> StateError:
        text = str(exc)
        if "integer too large" in text:  # a number beyond 128 bits reached a query as a parameter
            return InvalidValueError(
                "A number given is far out of range; ids, counts and priorities are at most 2147483647."
            )
        if "surrogate" in text:  # argv or a pipe held bytes that are not UTF-8 (Python keeps them as \udcXX)
            return InvalidValueError(
                "A value given is not valid UTF-8 text (it holds undecodable bytes); type it again as UTF-8, "
                "or set the terminal's and LANG's encoding to UTF-8."
            )
        if "Permission denied" in text:  # e.g. the write-ahead log cannot be created in the directory
            return self._not_permitted()
        if _disk_full(text):
            return self._disk_full()
        if isinstance(exc, _DAMAGE):
            return StateUnavailableError(
                f"State file {self.path} could not be read or written ({_first_line(exc)}). If the disk is "
                "full, free space; if the file is damaged, move it away (a fresh one is created) or point "
                "MOREH_HOME elsewhere."
            )
        return StateError(f"State database error: {_first_line(exc)}")

    def _open(self) -> duckdb.DuckDBPyConnection:
        # DuckDB opens its files by name, following links: look at them first (see state.safety for the race
        # left, and why only those who already hold the state could use it).
        with self._home() as home:
            home.check_files(self.path.name, self.path.name + ".wal")
        try:
            conn = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            if "Permission denied" in str(exc):  # never advise moving away a file that is only not ours to open
                raise self._not_permitted() from None
            if _disk_full(str(exc)):
                raise self._disk_full() from None
            raise StateUnavailableError(
                f"Cannot open the state file {self.path}: {_first_line(exc)}. If it is corrupt or not a "
                "moreh-tools state, move it away (a fresh one is created) or point MOREH_HOME elsewhere."
            ) from None
        return conn

    def _disk_full(self) -> StateUnavailableError:
        return StateUnavailableError(
            f"The disk holding {self.home} is full; nothing was changed. Free space there and try again."
        )

    def _lock_error(self, exc: OSError) -> StateUnavailableError:
        if exc.errno == errno.ENOSPC:
            return self._disk_full()
        return StateUnavailableError(
            f"Cannot lock {self.lock_path}: {exc.strerror}. Check that you may write to {self.home}."
        )

    def _open_lock(self, purpose: str) -> int:
        """The lock file, opened relative to the checked state directory without following links."""
        with checked_home(self.home, purpose=purpose) as home:
            self._umask = home.umask
            try:
                return home.open(self.lock_path.name, os.O_RDWR | os.O_CREAT)
            except OSError as exc:
                raise self._lock_error(exc) from None

    @contextmanager
    def _home(self) -> Iterator[Home]:
        """The state directory, checked and open (the lock was taken through it already)."""
        with checked_home(self.home, purpose=self._purpose, create=False) as home:
            yield home

    def _not_permitted(self) -> StateUnavailableError:
        return StateUnavailableError(
            f"Permission denied on the state in {self.home}: you may not write to it or to the files in it; "
            "ask its owner for access (share it through a group, see the README) or set MOREH_HOME to a "
            "directory you may write to."
        )

    def _ensure_schema(self, conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        if migrations.is_latest(conn):  # the common case, without listing the catalog (a few ms per command)
            return conn
        version = migrations.current_version(conn)
        if version == migrations.LATEST_VERSION:
            return conn
        if version > migrations.LATEST_VERSION:
            conn.close()
            raise StateUnavailableError(
                f"The state file {self.path} has schema version {version}, newer than this moreh-tools "
                f"understands ({migrations.LATEST_VERSION}); upgrade moreh-tools."
            )
        if version > 0:
            # Keep the file as it was before touching its schema, so a failed migration loses nothing.
            conn.execute("CHECKPOINT")
            conn.close()
            self._backup(f"{self.path.name}.bak-v{version}-{int(time.time())}")
            conn = self._open()
        migrations.migrate(conn)
        return conn

    def _backup(self, name: str) -> None:
        """Copy the state file to ``name`` next to it: a new file, never through a link."""
        import shutil  # only here: a migration is rare and shutil is not otherwise loaded

        with self._home() as home:
            out = home.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            src = home.open(self.path.name, os.O_RDONLY)
        with os.fdopen(src, "rb") as source, os.fdopen(out, "wb") as target:
            shutil.copyfileobj(source, target)


class OwnedStore(StateStore):
    """The daemon's state: the lock taken once and held, one connection kept open, transactions serialised.

    DuckDB lets one process hold the file read-write, and opening it costs ~25 ms against ~1 ms for a
    transaction on an open connection, so while ``sdamanager`` runs it owns the file and every tool goes
    through it. Writes take turns on the one connection (DuckDB's optimistic concurrency would make two
    writers conflict anyway); reads run at the same time on per-thread cursors, each in its own snapshot.
    ``kill -9`` at any moment leaves committed transactions in the write-ahead log, replayed at the next
    open; the kernel drops the lock with the process.
    """

    def __init__(self, home: Path | None = None, *, lock_timeout: float | None = None, origin: str = "") -> None:
        """Bind to ``home``; nothing is opened until :meth:`open`."""
        super().__init__(home, lock_timeout=lock_timeout, origin=origin)
        self._fd: int | None = None
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._write = threading.Lock()
        self._local = threading.local()
        self._generation = 0  # bumped by every commit: readers cache what they derive from the state by it
        self._purpose = DAEMON
        self._saved_umask: int | None = None

    @property
    def generation(self) -> int:
        """How many write transactions committed since :meth:`open` (a cache key for derived views)."""
        return self._generation

    def open(self) -> None:
        """Take the lock for good and open the connection (migrating the schema first if needed).

        The state directory must be one that only the daemon's user (or root) can write: the daemon serves
        everyone else through its socket. The umask stays 077 while the state is open, so the files DuckDB
        makes meanwhile (the write-ahead log) are the daemon's alone.
        """
        fd = self._open_lock(DAEMON)
        try:
            self._fd = _lock_in_turn(fd, self.lock_timeout)
        except TimeoutError:
            raise StateBusyError(
                f"The state at {self.path} stayed locked for {self.lock_timeout:g} s by another process; "
                "try again, or raise MOREH_LOCK_TIMEOUT."
            ) from None
        except OSError as exc:
            raise self._lock_error(exc) from None
        self._saved_umask = os.umask(0o077)
        try:
            with self._home() as home:  # files an older version (or the personal set-up) shared with a group
                home.make_private(self.lock_path.name, self.path.name, self.path.name + ".wal")
            self._conn = self._ensure_schema(self._open())
            self._schema_checked = True
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Checkpoint, close the connection and drop the lock (safe to call twice)."""
        with self._write:
            if self._conn is not None:
                with contextlib.suppress(Exception):  # a damaged database cannot checkpoint; the WAL still holds it
                    self._conn.execute("CHECKPOINT")
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
            if self._fd is not None:
                _unlock(self._fd)
                self._fd = None
            if self._saved_umask is not None:
                os.umask(self._saved_umask)
                self._saved_umask = None

    @contextmanager
    def quiesced(self) -> Iterator[None]:
        """Hold every writer off, with every committed change written to the file itself (for a backup copy)."""
        with self._write, self._translated():
            self._connected().execute("CHECKPOINT")
            yield

    def _connected(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            raise StateUnavailableError(f"The state at {self.path} is not open (the daemon is stopping).")
        return self._conn

    @contextmanager
    def transaction(self, command: str = "", origin: str | None = None) -> Iterator[Session]:
        """One write transaction on the open connection; writers take turns.

        With ``MOREH_LOCK_STATS`` set, each turn's wait and hold are recorded as a tool's wait for the file lock
        is: the same figures, side by side, for the state served by the daemon and the state in the file.
        """
        from state.session import Session

        asked = time.perf_counter()
        with self._write:
            acquired = time.perf_counter()
            conn = self._connected()
            try:
                with self._translated():
                    conn.execute("BEGIN TRANSACTION")
                    try:
                        yield Session(conn, command, self.origin if origin is None else origin)
                        conn.execute("COMMIT")
                    except BaseException:
                        _rollback(conn)
                        raise
                    finally:
                        self._generation += 1  # also after a rollback: cheap, and never stale
            finally:
                if os.environ.get(LOCK_STATS_VAR):
                    began = time.time() - (time.perf_counter() - asked)
                    record_stat("wait", acquired - asked, began)
                    record_stat("hold", time.perf_counter() - acquired, began + acquired - asked)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only snapshot on this thread's cursor; runs beside writers and other readers."""
        from state.session import Session

        cursor = getattr(self._local, "cursor", None)
        owner = getattr(self._local, "owner", None)
        if cursor is None or owner is not self._conn:
            cursor = self._connected().cursor()
            self._local.cursor, self._local.owner = cursor, self._conn
        with self._translated():
            cursor.execute("BEGIN TRANSACTION")
            try:
                yield Session(cursor, "")
            finally:
                _rollback(cursor)


class _Abandoned(Exception):
    """The wait for the lock was given up because ``abandon_when`` said so."""


def _lock_in_turn(fd: int, timeout: float, abandon_when: Callable[[], bool] | None = None) -> int:
    """Take the exclusive lock of the open lock file ``fd``, waiting in turn; return it (closed on failure).

    A blocking ``flock`` waits in the kernel's queue, so processes get the lock about in the order
    they asked. Polling for it (filelock's way, every 50 ms) lets newcomers overtake whoever has
    waited longest: 60 processes each taking the lock 4 times for 20 ms waited up to 4-6 s that way
    (p99 3.8-5.1 s), and up to 1.8-2.8 s (p99 1.5-1.9 s) this way. The blocking call runs in a helper
    thread with its own descriptor of the same open file, so the wait can time out (TimeoutError),
    and a helper that gets the lock after its caller gave up hands it straight back.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    helper_fd = os.dup(fd)
    decided = threading.Lock()
    done = threading.Event()
    outcome: list[OSError | None] = []  # the helper's result, once it is decided
    abandoned = [False]

    def wait_in_kernel() -> None:
        error: OSError | None = None
        try:
            fcntl.flock(helper_fd, fcntl.LOCK_EX)
        except OSError as exc:
            error = exc
        with decided:
            if abandoned[0] and error is None:
                fcntl.flock(helper_fd, fcntl.LOCK_UN)
            outcome.append(error)
        os.close(helper_fd)
        done.set()

    threading.Thread(target=wait_in_kernel, name="moreh-state-lock", daemon=True).start()
    waited = False
    gave_up = False
    try:
        if abandon_when is None:
            done.wait(timeout)
        else:
            # The daemon holds the lock for as long as it runs: look for it now and then rather than wait out
            # the whole timeout for a lock that will not come.
            deadline = time.monotonic() + timeout
            while not done.wait(min(_ABANDON_CHECK_S, max(deadline - time.monotonic(), 0.0))):
                if time.monotonic() >= deadline:
                    break
                if abandon_when():
                    gave_up = True
                    break
        waited = True
    finally:
        with decided:
            if not outcome:
                abandoned[0] = True
        # Interrupted (Ctrl-C) after the helper got the lock: nobody would unlock it, so drop it here.
        if abandoned[0] or outcome[0] is not None or not waited:
            os.close(fd)
    if abandoned[0]:
        if gave_up:
            raise _Abandoned
        raise TimeoutError
    if outcome[0] is not None:
        raise outcome[0]
    return fd


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _rollback(conn: Any) -> None:
    try:
        conn.execute("ROLLBACK")
    except Exception:  # the transaction may already be gone; closing the connection discards it
        pass


def _disk_full(text: str) -> bool:
    return "No space left" in text or "disk is full" in text.lower() or "not enough space" in text.lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
