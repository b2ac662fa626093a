"""Entry point of ``sdamanager``: one daemon per state directory, ticking until SIGTERM.

Each tick, in this order:

1. reconcile: a job of this host whose launcher is gone (PID reuse ruled out by the process start
   time) has its processes killed and ends as ``lost``; its devices come back;
2. a scheduling pass; the launchers whose jobs got devices are woken through their FIFOs;
3. a sample of every device (memory, utilisation, temperatures) and of the jobs' GPU processes,
   for ``moreh-smi`` and the dashboard.

Only one daemon may run per ``MOREH_HOME``: it holds an exclusive ``flock`` on
``$MOREH_HOME/sdamanager.pid`` (which also holds its pid) for as long as it runs, so a crashed
daemon never blocks the next one. Jobs run without a daemon too; the launchers then drive the
scheduler themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from moreh_tools import __version__

if TYPE_CHECKING:
    from moreh_tools.gpus.base import GpuProvider
    from state.store import StateStore

PROG = "sdamanager"
DEFAULT_INTERVAL_S = 2.0
EXIT_FAILED, EXIT_USAGE = 1, 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{PROG} --help')")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        allow_abbrev=False,
        description=(
            "The SDA Manager's local daemon: each tick it ends jobs whose launcher died (freeing their devices), "
            "runs a scheduling pass and samples the GPUs into the state. Stops on SIGTERM or Ctrl-C."
        ),
        epilog="State directory: $MOREH_HOME. Examples: sdamanager --interval 2; sdamanager --api 127.0.0.1:8737",
    )
    parser.add_argument(
        "--interval",
        metavar="S",
        type=float,
        default=DEFAULT_INTERVAL_S,
        help=f"seconds between ticks (default {DEFAULT_INTERVAL_S:g})",
    )
    parser.add_argument("--once", action="store_true", help="run one tick and exit")
    parser.add_argument(
        "--api",
        metavar="HOST:PORT",
        nargs="?",
        const="127.0.0.1:8737",
        help="also serve the REST API (default 127.0.0.1:8737, loopback only; port 0 picks a free one)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} (moreh-tools) {__version__}")
    return parser


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {PROG}: {message}", file=sys.stderr, flush=True)


class PidLock:
    """The single-instance lock: an exclusive flock on the pid file, held while the daemon runs."""

    def __init__(self, home: Path) -> None:
        """Bind to ``$MOREH_HOME/sdamanager.pid``."""
        from moreh_tools.jobs.control import DAEMON_PID_FILE

        self.path = home / DAEMON_PID_FILE
        self.fd: int | None = None

    def acquire(self) -> int | None:
        """Take the lock and write our pid; return None, or the pid of the daemon that holds it."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            return int(holder) if holder.isdigit() else 0
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return None

    def release(self) -> None:
        """Remove the pid file and drop the lock."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


class Stopper:
    """SIGTERM/SIGINT/SIGHUP end the loop at the next safe point and cut its sleep short."""

    def __init__(self) -> None:
        """Install the handlers and the wake-up pipe that interrupts the sleep."""
        self.stopping: int | None = None
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self.write_fd = write_fd
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = signum
        with contextlib.suppress(OSError):
            os.write(self.write_fd, b"!")

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less if a stop signal arrives."""
        if self.stopping is None:
            select.select([self.read_fd], [], [], max(seconds, 0.0))


def tick(store: StateStore, host: str, provider: GpuProvider) -> None:
    """One round: reconcile, schedule and wake, sample."""
    from moreh_tools.gpus.local import sample_into_state
    from moreh_tools.jobs import control

    result = control.reconcile_and_schedule(store, host, reason="sdamanager: reconcile and schedule")
    for job_id in result.lost:
        _log(f"job {job_id} ended as lost: its moreh-run is gone; its devices are free again")
    for allocation in result.decision.allocations:
        _log(f"job {allocation.job_id} got devices {', '.join(f'{b}:{i}' for b, i in allocation.devices)}")
    sample_into_state(store, provider, host=host)


def main(argv: list[str] | None = None) -> int:
    """Run the daemon; return its exit status."""
    try:
        ns = _parser().parse_args(sys.argv[1:] if argv is None else argv)
        if not 0.05 <= ns.interval <= 3600:
            raise _UsageError(f"interval {ns.interval:g} is out of range: use 0.05 to 3600 seconds")
        address = _api_address(ns.api, ns.once)
    except _UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from moreh_tools.identity import host_name
    from moreh_tools.remote.client import address as master_address
    from state.paths import state_home

    home = state_home()
    lock = PidLock(home)
    try:
        holder = lock.acquire()
    except OSError as exc:
        print(f"{PROG}: cannot lock {lock.path}: {exc.strerror}; check that you may write to {home}.", file=sys.stderr)
        return EXIT_FAILED
    if holder is not None:
        print(f"{PROG} is already running (pid {holder})", file=sys.stderr)
        return EXIT_FAILED
    try:
        if address is None and master_address() is not None:  # a host of a remote master: report, not schedule
            from moreh_tools.remote.daemon import serve

            return serve(home, host_name(), ns.interval, ns.once)
        if address is None:
            return _serve(home, host_name(), ns.interval, ns.once)
        return _serve_api(home, host_name(), ns.interval, address)
    finally:
        lock.release()


def _api_address(text: str | None, once: bool) -> tuple[str, int] | None:
    """The API's (host, port) from ``--api``, or None without it; warns when it is not loopback-only."""
    if text is None:
        return None
    if once:
        raise _UsageError("--api serves until stopped; it cannot be combined with --once")
    from moreh_tools.api.server import AddressError, is_loopback, parse_address

    try:
        host, port = parse_address(text)
    except AddressError as exc:
        raise _UsageError(str(exc)) from None
    if not is_loopback(host):
        print(
            f"{PROG}: warning: the API on {host}:{port} is reachable from other machines; every request still "
            "needs a token, but put TLS (a reverse proxy) in front of it",
            file=sys.stderr,
        )
    return host, port


@contextlib.contextmanager
def _local_backend(store: StateStore, home: Path, host: str, interval: float) -> Iterator[GpuProvider | None]:
    """This host's GPUs, registered as a backend and logged as running, closed on exit; None (the reason said on
    stderr) when there are no GPUs or the state refuses the registration."""
    from moreh_tools import gpus
    from moreh_tools.gpus.base import GpuUnavailableError
    from moreh_tools.gpus.local import ensure_local_backend
    from state.errors import StateError

    try:
        provider = gpus.get_provider()
    except GpuUnavailableError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        yield None
        return
    try:
        try:
            backend_id = ensure_local_backend(store, provider, host=host)
        except StateError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            yield None
            return
        _log(
            f"running (pid {os.getpid()}, backend {backend_id} '{host}', {provider.description}, "
            f"every {interval:g} s, state {home})"
        )
        yield provider
    finally:
        provider.close()


def _serve(home: Path, host: str, interval: float, once: bool) -> int:
    from state.store import StateStore

    stopper = Stopper()
    store = StateStore(home)
    with _local_backend(store, home, host, interval) as provider:
        if provider is None:
            return EXIT_FAILED
        _tick_loop(store, host, provider, interval, once, stopper, lambda: False)
    if stopper.stopping is not None:
        _log(f"stopped ({signal.Signals(stopper.stopping).name})")
    return 0


def _tick_loop(
    store: StateStore,
    host: str,
    provider: GpuProvider,
    interval: float,
    once: bool,
    stopper: Stopper,
    should_stop: Callable[[], bool],
) -> None:
    from state.errors import StateError

    while stopper.stopping is None and not should_stop():
        started = time.monotonic()
        try:
            tick(store, host, provider)
        except StateError as exc:  # a busy or briefly unavailable state: try again next tick
            _log(f"tick skipped: {exc}")
        except Exception as exc:  # the daemon outlives a bad tick; the next one starts clean
            if os.environ.get("MOREH_DEBUG"):
                raise
            _log(f"tick failed: {type(exc).__name__}: {exc}")
        if once:
            break
        # Short sleeps while serving: the server's stop is noticed within a quarter second.
        deadline = started + interval
        while stopper.stopping is None and not should_stop() and time.monotonic() < deadline:
            stopper.sleep(min(0.25, deadline - time.monotonic()))


def _serve_api(home: Path, host: str, interval: float, address: tuple[str, int]) -> int:
    """Serve the API (uvicorn, main thread) and tick in a background thread until SIGTERM/SIGINT."""
    from moreh_tools.api.server import AddressError, listen, serve
    from state.store import StateStore

    stopper = Stopper()  # SIGHUP stops both; uvicorn takes SIGTERM/SIGINT while it serves and re-raises them after
    store = StateStore(home)
    try:
        sock = listen(*address)
    except AddressError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        with _local_backend(store, home, host, interval) as provider:
            if provider is None:
                return EXIT_FAILED
            code = serve(
                store,
                sock,
                lambda should_stop: _tick_loop(store, host, provider, interval, False, stopper, should_stop),
                _log,
            )
    finally:
        sock.close()
    _log("stopped")
    return code
