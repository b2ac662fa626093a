"""The state store: one DuckDB file, one lock, a short-lived connection per transaction.

DuckDB lets only one process hold a file open read-write, so every access, reads included, takes
the file lock first, opens a connection, does its work in one transaction and closes the
connection before releasing the lock. A process killed at any moment leaves either the whole
transaction or none of it (DuckDB's WAL), and the kernel drops its lock.
"""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
from collections.abc import Iterator
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
from state.errors import InvalidValueError, StateBusyError, StateError, StateUnavailableError
from state.paths import lock_file, state_file, state_home
from state.stats import LOCK_STATS_VAR, record_stat

if TYPE_CHECKING:
    from state.session import Session

DEFAULT_LOCK_TIMEOUT_S = 30.0
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

    def __init__(self, home: Path | None = None, *, lock_timeout: float | None = None) -> None:
        """Bind the store to ``home`` (default: ``MOREH_HOME`` or the per-system default)."""
        self.home = home or state_home()
        self.path = state_file(self.home)
        self.lock_path = lock_file(self.home)
        self.lock_timeout = _lock_timeout() if lock_timeout is None else lock_timeout
        self._schema_checked = False
        self.lock_wait_s = 0.0

    # -- public -------------------------------------------------------------------------------

    @contextmanager
    def transaction(self, command: str = "") -> Iterator[Session]:
        """Yield a session inside one transaction, committed on normal exit, rolled back on error.

        ``command`` is the command line being executed; events recorded in the session carry it.
        """
        from state.session import Session

        with self._locked(), self._connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                session = Session(conn, command)
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
            return migrations.current_version(session.conn)

    # -- internals ------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._prepare_home()
        started = time.perf_counter()
        try:
            fd = _lock_in_turn(self.lock_path, self.lock_timeout)
        except TimeoutError:
            raise StateBusyError(
                f"The state at {self.path} stayed locked for {self.lock_timeout:g} s by another process; "
                "try again, or raise MOREH_LOCK_TIMEOUT."
            ) from None
        except OSError as exc:
            raise StateUnavailableError(
                f"Cannot lock {self.lock_path}: {exc.strerror}. Check that you may write to {self.home}."
            ) from None
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
        conn = self._open()
        try:
            if not self._schema_checked:
                conn = self._ensure_schema(conn)
                self._schema_checked = True
            yield conn
        except duckdb.Error as exc:
            if "integer too large" in str(exc):  # a number beyond 128 bits reached a query as a parameter
                raise InvalidValueError(
                    "A number given is far out of range; ids, counts and priorities are at most 2147483647."
                ) from None
            if "surrogate" in str(exc):  # argv or a pipe held bytes that are not UTF-8 (Python keeps them as \udcXX)
                raise InvalidValueError(
                    "A value given is not valid UTF-8 text (it holds undecodable bytes); type it again as UTF-8, "
                    "or set the terminal's and LANG's encoding to UTF-8."
                ) from None
            if "Permission denied" in str(exc):  # e.g. the write-ahead log cannot be created in the directory
                raise self._not_permitted() from None
            if isinstance(exc, _DAMAGE):
                raise StateUnavailableError(
                    f"State file {self.path} could not be read or written ({_first_line(exc)}). If the disk is "
                    "full, free space; if the file is damaged, move it away (a fresh one is created) or point "
                    "MOREH_HOME elsewhere."
                ) from None
            raise StateError(f"State database error: {_first_line(exc)}") from exc
        finally:
            conn.close()

    def _open(self) -> duckdb.DuckDBPyConnection:
        if self.path.exists() and not self.path.is_file():  # DuckDB would block forever reading a FIFO
            raise StateUnavailableError(
                f"The state path {self.path} is not a regular file; move it away or point MOREH_HOME elsewhere."
            )
        old_umask = os.umask(0o007)
        try:
            conn = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            if "Permission denied" in str(exc):  # never advise moving away a file that is only not ours to open
                raise self._not_permitted() from None
            raise StateUnavailableError(
                f"Cannot open the state file {self.path}: {_first_line(exc)}. If it is corrupt or not a "
                "moreh-tools state, move it away (a fresh one is created) or point MOREH_HOME elsewhere."
            ) from None
        finally:
            os.umask(old_umask)
        _never_world_writable(self.path)
        return conn

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
            backup = self.path.with_name(f"{self.path.name}.bak-v{version}-{int(time.time())}")
            import shutil  # only here: a migration is rare and shutil is not otherwise loaded

            shutil.copy2(self.path, backup)
            conn = self._open()
        migrations.migrate(conn)
        return conn

    def _prepare_home(self) -> None:
        home = self.home
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateUnavailableError(
                f"Cannot create the state directory {home}: {exc.strerror}. Set MOREH_HOME to a directory "
                "you may write to."
            ) from None
        if not home.is_dir():
            raise StateUnavailableError(f"MOREH_HOME {home} is not a directory; point it at a directory.")
        if home.stat().st_mode & stat.S_IWOTH:
            raise StateUnavailableError(
                f"The state directory {home} is world-writable, so anyone could replace the state; "
                f"run 'chmod o-w {home}' (share it through a group instead, see the README)."
            )


def _lock_in_turn(path: Path, timeout: float) -> int:
    """Open the lock file and take its exclusive lock, waiting in turn; return the descriptor.

    A blocking ``flock`` waits in the kernel's queue, so processes get the lock about in the order
    they asked. Polling for it (filelock's way, every 50 ms) lets newcomers overtake whoever has
    waited longest: 60 processes each taking the lock 4 times for 20 ms waited up to 4-6 s that way
    (p99 3.8-5.1 s), and up to 1.8-2.8 s (p99 1.5-1.9 s) this way. The blocking call runs in a helper
    thread with its own descriptor of the same open file, so the wait can time out (TimeoutError),
    and a helper that gets the lock after its caller gave up hands it straight back.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o660)
        os.fchmod(fd, 0o660)  # group members share the state (README); the umask must not take that away
    except FileExistsError:
        fd = os.open(path, os.O_RDWR)
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
    try:
        done.wait(timeout)
        waited = True
    finally:
        with decided:
            if not outcome:
                abandoned[0] = True
        # Interrupted (Ctrl-C) after the helper got the lock: nobody would unlock it, so drop it here.
        if abandoned[0] or outcome[0] is not None or not waited:
            os.close(fd)
    if abandoned[0]:
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


def _never_world_writable(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + ".wal")):
        try:
            mode = candidate.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & stat.S_IWOTH:
            candidate.chmod(mode & ~stat.S_IWOTH)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
