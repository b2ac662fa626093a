"""Entry point of ``sdamanager``: the daemon that owns the state while it runs.

On a master (or a single machine) it opens the state once and keeps it, serves every tool on its
Unix socket ``$MOREH_HOME/sdamanager.sock`` (and the REST API with ``--api``), and ticks (see
:mod:`moreh_tools.daemon.owner`: sample this host, end jobs nobody will end, schedule). On a host of
a remote master (``MOREH_SDA_MANAGER_ADDRESS``) it only reports this host's GPUs and job processes
there (:mod:`moreh_tools.daemon.host`).

Only one daemon may run per ``MOREH_HOME``: it holds an exclusive ``flock`` on
``$MOREH_HOME/sdamanager.pid`` (which also holds its pid) for as long as it runs, so a crashed
daemon never blocks the next one. Jobs run without a daemon too: the tools then work on the state
file themselves, and launchers drive the scheduler.
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
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from moreh_tools import __version__

if TYPE_CHECKING:
    from moreh_tools.gpus.base import GpuProvider
    from scheduler_core.gpu_health import ForeignPolicy

PROG = "sdamanager"
DAEMON_PID_FILE = "sdamanager.pid"
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
        self.path = home / DAEMON_PID_FILE
        self.fd: int | None = None

    def acquire(self) -> int | None:
        """Take the lock and write our pid; return None, or the pid of the daemon that holds it.

        The state directory must be one only the daemon's user (or root) can write (StateUnavailableError
        otherwise); the pid file is opened in it without following a link, and only its owner may open it
        (anyone who could would be able to hold the lock and keep the daemon from starting).
        """
        from state.safety import DAEMON, checked_home

        with checked_home(self.path.parent, purpose=DAEMON) as home:
            fd = home.open(self.path.name, os.O_RDWR | os.O_CREAT, 0o600)
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
            st = os.stat(self.path, follow_symlinks=False)
            if _same_file(st, self.fd):
                self.path.unlink()  # ours still, not something put in its place
        os.close(self.fd)
        self.fd = None


def _same_file(st: os.stat_result, fd: int) -> bool:
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


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


def main(argv: list[str] | None = None) -> int:
    """Run the daemon; return its exit status."""
    try:
        ns = _parser().parse_args(sys.argv[1:] if argv is None else argv)
        if not 0.05 <= ns.interval <= 3600:
            raise _UsageError(f"interval {ns.interval:g} is out of range: use 0.05 to 3600 seconds")
        address = _api_address(ns.api, ns.once)
        policy = _foreign_policy()
    except _UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from moreh_tools.port import master_address
    from state.paths import state_home

    home = state_home()
    lock = PidLock(home)
    from state.errors import StateError

    try:
        holder = lock.acquire()
    except StateError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"{PROG}: cannot lock {lock.path}: {exc.strerror}; check that you may write to {home}.", file=sys.stderr)
        return EXIT_FAILED
    if holder is not None:
        print(f"{PROG} is already running (pid {holder})", file=sys.stderr)
        return EXIT_FAILED
    try:
        if address is None and master_address() is not None:  # a host of a remote master: report, not schedule
            return _serve_host(home, ns.interval, ns.once, policy)
        return _serve_state(home, ns.interval, ns.once, address, policy)
    finally:
        lock.release()


def _api_address(text: str | None, once: bool) -> tuple[str, int] | None:
    """The API's (host, port) from ``--api``, or None without it."""
    if text is None:
        return None
    if once:
        raise _UsageError("--api serves until stopped; it cannot be combined with --once")
    from moreh_tools.api.server import AddressError, parse_address

    try:
        return parse_address(text)
    except AddressError as exc:
        raise _UsageError(str(exc)) from None


def _warn_if_exposed(address: tuple[str, int] | None) -> None:
    """Say so when the API (listening by now) is reachable from other machines."""
    from moreh_tools.api.server import is_loopback

    if address is not None and not is_loopback(address[0]):
        print(
            f"{PROG}: warning: the API on {address[0]}:{address[1]} is reachable from other machines; every request "
            "still needs a token, but put TLS (a reverse proxy) in front of it",
            file=sys.stderr,
        )


def _foreign_policy() -> ForeignPolicy:
    """``MOREH_FOREIGN_POLICY`` / ``MOREH_FOREIGN_GRACE`` (a usage error in one line when malformed)."""
    from moreh_tools.daemon.guardian import policy_from_env
    from scheduler_core.gpu_health import PolicyError

    try:
        return policy_from_env()
    except PolicyError as exc:
        raise _UsageError(str(exc)) from None


def _provider() -> GpuProvider | None:
    """This host's GPUs (the reason said on stderr when none can be used)."""
    from moreh_tools import gpus
    from moreh_tools.gpus.base import GpuUnavailableError

    try:
        return gpus.get_provider()
    except GpuUnavailableError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return None


def _serve_state(
    home: Path, interval: float, once: bool, address: tuple[str, int] | None, policy: ForeignPolicy
) -> int:
    """Own the state: open it once, tick, and serve the tools' socket (and the REST API with ``--api``)."""
    from moreh_tools.api.server import AddressError
    from moreh_tools.daemon.state_daemon import StateDaemon
    from state.errors import StateError

    stopper = Stopper()
    provider = _provider()
    if provider is None:
        return EXIT_FAILED
    daemon = StateDaemon(home, provider, interval=interval, address=address, log=_log, foreign_policy=policy)
    try:
        try:
            daemon.open()
        except (StateError, AddressError) as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        _warn_if_exposed(address)  # only once it listens: an address that cannot be served gets its error alone
        _log(
            f"running (pid {os.getpid()}, backend {daemon.backend_id} '{daemon.owner.ctx.host if daemon.owner else ''}', "
            f"{provider.description}, every {interval:g} s, state {home})"
        )
        _log(f"state check: {daemon.state_check}")
        from moreh_tools.jobs import contain

        offered = contain.probe(home)
        who = " for moreh-run as root (other users' jobs: process group and MOREH_JOB_ID scan)" if offered.active else ""
        _log(f"job containment{who}: {offered.describe()}")
        if once:
            return 0
        return daemon.serve(lambda: stopper.stopping is not None)
    finally:
        daemon.close()
        provider.close()
        if stopper.stopping is not None:
            _log(f"stopped ({signal.Signals(stopper.stopping).name})")


def _serve_host(home: Path, interval: float, once: bool, policy: ForeignPolicy) -> int:
    """A host of a remote master: report this host's GPUs and job processes there every tick."""
    from moreh_tools import identity
    from moreh_tools.daemon.host import HostAgent, MasterSink
    from moreh_tools.daemon.state_daemon import tick_loop
    from moreh_tools.port import open_port

    stopper = Stopper()
    try:
        token: str | None = identity.find_token()
    except identity.TokenNotGiven:
        print(f"{PROG}: a host of a remote master needs a HOST or ADMIN token: set MOREH_SDA_TOKEN.", file=sys.stderr)
        return EXIT_FAILED
    provider = _provider()
    if provider is None:
        return EXIT_FAILED
    port = open_port(token, tool=PROG)
    host = identity.host_name()
    from moreh_tools.daemon.guardian import HostGuard

    sink = MasterSink(port, host, identity.host_ip(host), identity.machine_id())
    agent = HostAgent(provider, sink, home, _log, HostGuard(str(home), policy, _log))
    _log(
        f"reporting to the SDA Manager at {port.describe()} (pid {os.getpid()}, host '{host}', "
        f"{provider.description}, every {interval:g} s)"
    )
    try:
        tick_loop(agent.tick, interval, lambda: stopper.stopping is not None, _log, once=once, what="report",
                  sleep=stopper.sleep)
    finally:
        provider.close()
        port.close()
    if stopper.stopping is not None:
        _log(f"stopped ({signal.Signals(stopper.stopping).name})")
    return 0
