"""Serving with uvicorn: the daemon's Unix socket, and with ``sdamanager --api HOST:PORT`` the REST API too.

uvicorn runs in the main thread (it owns SIGTERM/SIGINT and shuts down gracefully); the caller's daemon loop runs
in a background thread on the same state, and is told to stop when the server does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8737


class AddressError(ValueError):
    """A HOST:PORT that cannot be served; the message says how to write it."""


def parse_address(text: str) -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT``, ``:PORT``, ``PORT`` or ``HOST`` (``[v6]:PORT`` for IPv6)."""
    text = text.strip()
    host, port_text = DEFAULT_HOST, str(DEFAULT_PORT)
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        host = inner
        if rest:
            if not rest.startswith(":"):
                raise AddressError(f"'{text}' is not HOST:PORT; write an IPv6 address as [::1]:{DEFAULT_PORT}")
            port_text = rest[1:]
    elif text.isdigit():
        port_text = text
    elif text.count(":") == 1:
        host_part, port_text = text.split(":")
        host = host_part or DEFAULT_HOST
    elif ":" in text:
        raise AddressError(f"'{text}' is not HOST:PORT; write an IPv6 address as [::1]:{DEFAULT_PORT}")
    elif text:
        host = text
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"port '{port_text}' is not a number from 0 to 65535 (e.g. --api 127.0.0.1:{DEFAULT_PORT})")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening; AddressError with the reason when it cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AddressError(f"cannot resolve '{host}': {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise AddressError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


MOREH_PHRASES = {
    600: b"Syntax Error",
    601: b"Invalid Token",
    602: b"Backend Error",
    603: b"IPMI Error",
    604: b"Signal Error",
}


def allow_moreh_status_codes() -> None:
    """Teach uvicorn the reason phrases of 600..604 for ``MOREH_API_LITERAL_STATUS=1`` (it knows 100..599 only)."""
    import importlib

    try:
        h11_impl = importlib.import_module("uvicorn.protocols.http.h11_impl")
        h11_impl.STATUS_PHRASES.update(MOREH_PHRASES)
    except (ImportError, AttributeError):
        pass
    try:
        httptools_impl = importlib.import_module("uvicorn.protocols.http.httptools_impl")
        httptools_impl.STATUS_LINE.update(
            {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in MOREH_PHRASES.items()}
        )
    except (ImportError, AttributeError):  # httptools is optional
        pass


def trusted_proxies() -> str | None:
    """The proxies whose X-Forwarded-For the API believes (``MOREH_API_TRUSTED_PROXIES``); None: no one.

    Off by default: a client that may set the header could otherwise claim any address and dodge the
    per-client budget that guessing tokens spends.
    """
    value = os.environ.get("MOREH_API_TRUSTED_PROXIES", "").strip()
    return value or None


def bind_unix(path: Path, mode: int) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode`` (a stale socket there is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)  # created with the right mode: no moment when others may connect early
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise AddressError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    # No chmod by name afterwards (it would follow a link put in the socket's place): bind made it with the
    # mode already, and the state directory (checked by the daemon) is writable by its owner alone.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app: Any) -> Any:
    """A uvicorn server for ``app``: peer credentials on Unix sockets, a deadline per request, forwarded headers
    only from named proxies."""
    import uvicorn

    from moreh_tools.api.errors import literal_status
    from moreh_tools.api.protocol import DaemonProtocol, request_deadline_s

    if literal_status():
        allow_moreh_status_codes()
    proxies = trusted_proxies()
    protocol = type("DaemonProtocol", (DaemonProtocol,), {"deadline_s": request_deadline_s()})
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        http=protocol,
        proxy_headers=proxies is not None,
        forwarded_allow_ips=proxies or "",
    )
    return uvicorn.Server(config)


def serve(
    server: Any,
    sockets: list[socket.socket],
    background: Callable[[Callable[[], bool]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """Run ``server`` on ``sockets`` until it is told to stop (SIGTERM/SIGINT in the main thread, or its
    ``should_exit``); run ``background(should_stop)`` in a thread meanwhile.

    ``background`` gets a function telling it whether the server is stopping; when ``background`` returns on its
    own (e.g. the daemon got SIGHUP), the server is stopped too. Returns 0 on a clean stop.
    """
    worker: threading.Thread | None = None
    if background is not None:
        task = background

        def run_background() -> None:
            try:
                task(lambda: server.should_exit)
            finally:
                server.should_exit = True

        worker = threading.Thread(target=run_background, name="sdamanager-ticks", daemon=True)
        worker.start()
    for sock in sockets:
        if log is not None and sock.family != socket.AF_UNIX:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            log(f"serving the API on http://{shown}:{port} (docs at /docs)")
    try:
        server.run(sockets=sockets)
    finally:
        server.should_exit = True
        if worker is not None:
            worker.join(timeout=30)
    return 0 if server.started else 1
