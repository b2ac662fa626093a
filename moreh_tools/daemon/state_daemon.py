"""``sdamanager`` owning the state: open it once, tick, and serve every tool on the socket (and the REST API).

:meth:`StateDaemon.open` takes the state (waiting while a tool alone holds its lock), registers this host
and binds the sockets; :meth:`StateDaemon.serve` runs uvicorn and the tick loop until told to stop;
:meth:`StateDaemon.close` unlinks the socket before it closes the state, so a tool that finds no socket
uses the file, once it is free.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moreh_tools.daemon.hub import JobHub
    from moreh_tools.daemon.owner import Owner
    from moreh_tools.gpus.base import GpuProvider
    from scheduler_core.gpu_health import ForeignPolicy
    from state.store import OwnedStore


def socket_mode(home: Path) -> int:
    """The socket's mode, following the state directory's: who may enter the directory may connect."""
    mode = home.stat().st_mode
    if mode & stat.S_IXOTH:
        return 0o666
    if mode & stat.S_IXGRP:
        return 0o660
    return 0o600


class StateDaemon:
    """The daemon of one state directory (see the module docstring)."""

    def __init__(
        self,
        home: Path,
        provider: GpuProvider,
        *,
        interval: float,
        address: tuple[str, int] | None = None,
        log: Callable[[str], None] = print,
        foreign_policy: ForeignPolicy | None = None,
    ) -> None:
        """Own ``home``'s state, sample ``provider``, tick every ``interval`` s, serve the API on ``address`` too.

        ``foreign_policy``: what the GPU guardian does with foreign processes (default: ``warn``).
        """
        self.home = home
        self.provider = provider
        self.interval = interval
        self.address = address
        self.log = log
        self.foreign_policy = foreign_policy
        self.store: OwnedStore | None = None
        self.hub: JobHub | None = None
        self.owner: Owner | None = None
        self.sockets: list[socket.socket] = []
        self.server: Any = None
        self._bound: Path | None = None
        self.state_check = ""

    def open(self) -> None:
        """Take the state, register this host (first tick), create the app and bind the sockets.

        Raises StateError (the state) or AddressError (a socket); what was opened is closed by :meth:`close`.
        """
        from moreh_tools import identity
        from moreh_tools.api.app import create_app
        from moreh_tools.api.server import bind_unix, listen, make_server
        from moreh_tools.daemon.host import HostAgent, StateSink
        from moreh_tools.daemon.hub import JobHub
        from moreh_tools.daemon.owner import Owner
        from moreh_tools.gpus.local import ip_of
        from moreh_tools.port import socket_path
        from moreh_tools.services.caller import Caller
        from moreh_tools.services.context import ServiceContext
        from state.store import OwnedStore

        uid = os.geteuid()
        self.store = OwnedStore(self.home, origin=f"uid={uid} sdamanager")
        self.store.open()
        from state.integrity import check_state, summary

        self.state_check = summary(check_state(self.store))  # logged once the daemon runs
        host, machine_id = identity.host_name(), identity.machine_id()
        self.hub = JobHub(self.home)
        ctx = ServiceContext(
            db=self.store,
            caller=Caller(None, owner=True, uid=uid, via="daemon"),
            notifier=self.hub,
            host=host,
            machine_id=machine_id,
            in_daemon=True,
            daemon_running=True,
        )
        from moreh_tools.daemon.guardian import HostGuard
        from scheduler_core.gpu_health import ForeignPolicy

        guard = HostGuard(str(self.home), self.foreign_policy or ForeignPolicy(), self.log)
        agent = HostAgent(self.provider, StateSink(ctx, ip_of(host)), self.home, self.log, guard)
        self.owner = Owner(ctx, agent, self.log)
        with self.store.transaction("sdamanager: started") as s:
            s.guardian.record_tick(self.interval)  # idle windows shorter than a tick are refused
        self.owner.tick()  # registers this host before anyone asks for its devices
        if self.address is not None:
            self.sockets.append(listen(*self.address))
        path = socket_path(self.home)
        self.sockets.append(bind_unix(path, socket_mode(self.home)))
        self._bound = path
        app = create_app(self.store, self.hub, host=host, machine_id=machine_id, owner_uid=uid)
        self.server = make_server(app)

    @property
    def backend_id(self) -> int | None:
        """This host's backend."""
        return self.owner.agent.backend_id if self.owner is not None else None

    def serve(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Serve and tick until SIGTERM/SIGINT (main thread), :meth:`stop`, or ``should_stop()``; the exit status."""
        from moreh_tools.api.server import serve

        assert self.owner is not None
        owner = self.owner

        def ticks(server_stopping: Callable[[], bool]) -> None:
            tick_loop(owner.tick, self.interval, lambda: server_stopping() or should_stop(), self.log)

        return serve(self.server, self.sockets, ticks, self.log)

    def stop(self) -> None:
        """Ask the server (and so the ticks) to stop."""
        if self.server is not None:
            self.server.should_exit = True

    def close(self) -> None:
        """Close the sockets and unlink ours, then checkpoint and close the state (and drop its lock)."""
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        if self._bound is not None:
            with contextlib.suppress(OSError):
                self._bound.unlink()
            self._bound = None
        if self.store is not None:
            self.store.close()


def tick_loop(
    tick: Callable[[], object],
    interval: float,
    should_stop: Callable[[], bool],
    log: Callable[[str], None],
    *,
    once: bool = False,
    what: str = "tick",
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Call ``tick`` every ``interval`` seconds until ``should_stop()``; a failed tick is logged, never fatal."""
    from state.errors import StateError

    while not should_stop():
        started = time.monotonic()
        try:
            tick()
        except StateError as exc:  # a busy state, or the master restarting: try again next tick
            log(f"{what} skipped: {exc}")
        except Exception as exc:  # the daemon outlives a bad tick; the next one starts clean
            if os.environ.get("MOREH_DEBUG"):
                raise
            log(f"{what} failed: {type(exc).__name__}: {exc}")
        if once:
            break
        # Short sleeps: a stop is noticed within a quarter second.
        deadline = started + interval
        while not should_stop() and time.monotonic() < deadline:
            sleep(min(0.25, deadline - time.monotonic()))
