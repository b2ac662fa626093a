"""Serving the API with uvicorn: ``sdamanager --api HOST:PORT``.

uvicorn runs in the main thread (it owns SIGTERM/SIGINT and shuts down gracefully); the caller's daemon loop runs
in a background thread on the same state, and is told to stop when the server does.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from state.store import StateStore

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


def serve(
    store: StateStore,
    sock: socket.socket,
    background: Callable[[Callable[[], bool]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """Serve the API on ``sock`` until SIGTERM/SIGINT; run ``background(should_stop)`` in a thread meanwhile.

    ``background`` gets a function telling it whether the server is stopping; when ``background`` returns on its
    own (e.g. the daemon got SIGHUP), the server is stopped too. Returns 0 on a clean stop.
    """
    import uvicorn

    from moreh_tools.api.app import create_app
    from moreh_tools.api.errors import literal_status

    app = create_app(store)
    if literal_status():
        allow_moreh_status_codes()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
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
    host, port = sock.getsockname()[:2]
    if log is not None:
        shown = f"[{host}]" if ":" in host else host
        log(f"serving the API on http://{shown}:{port} (docs at /docs)")
    try:
        server.run(sockets=[sock])
    finally:
        server.should_exit = True
        if worker is not None:
            worker.join(timeout=30)
    return 0 if server.started else 1
