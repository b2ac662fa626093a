"""A small HTTP/1.1 client over a Unix socket or TCP: what the tools use to reach a daemon or a master.

Only ``socket`` is needed (``http.client`` and ``urllib`` cost 10-20 ms to import, a fifth of a whole
``moreh-smi`` run); TLS loads ``ssl`` only for ``https://`` addresses. One request at a time per
connection, kept alive between requests.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024


class TransportError(Exception):
    """The request could not be completed; ``sent`` says whether the server may have received it."""

    def __init__(self, message: str, *, sent: bool, refused: bool = False, nothing_back: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.refused = refused  # nothing listens there (a stale socket, a stopped server)
        # The server answered nothing at all: on a kept-alive connection, it closed it while idle.
        self.nothing_back = nothing_back


class UnsendableError(ValueError):
    """The request holds what HTTP cannot carry (a header outside latin-1); nothing was sent."""


@dataclass(frozen=True)
class Address:
    """Where a server listens: a Unix socket path, or a TCP host and port (``tls`` for https)."""

    unix_path: str | None = None
    host: str = ""
    port: int = 0
    tls: bool = False

    def __str__(self) -> str:
        if self.unix_path is not None:
            return self.unix_path
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{shown}:{self.port}"


def parse_address(text: str, default_port: int) -> Address:
    """``host:port``, ``host``, ``[v6]:port``, ``http://host:port`` or ``https://...``; ValueError when malformed."""
    raw = text.strip().rstrip("/")
    tls = raw.startswith("https://")
    if raw.startswith(("http://", "https://")):
        raw = raw.split("://", 1)[1]
    if "/" in raw:
        raise ValueError(f"'{text}' is not host:port")
    host, port_text = raw, ""
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    if not host or (port_text and not (port_text.isascii() and port_text.isdigit())):
        raise ValueError(f"'{text}' is not host:port")
    port = int(port_text) if port_text else (443 if tls else default_port)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} of '{text}' is out of range")
    return Address(host=host, port=port, tls=tls)


@dataclass(frozen=True)
class Response:
    """A server's answer."""

    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One kept-alive connection to a server; reconnects when the server closed it meanwhile."""

    def __init__(self, address: Address, timeout: float = 30.0) -> None:
        """A connection to ``address`` (opened on the first request)."""
        self.address = address
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def open(self) -> None:
        """Connect now unless connected (TransportError with ``refused`` set when nothing listens there)."""
        if self._sock is None:
            self._sock = self._connect(self.timeout)
            self._buffer = b""

    def close(self) -> None:
        """Close the socket (a later request opens a new one)."""
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
            self._buffer = b""

    def _connect(self, timeout: float) -> socket.socket:
        try:
            if self.address.unix_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(self.address.unix_path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((self.address.host, self.address.port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.address.tls:
                    import ssl

                    sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.address.host)
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise TransportError(_reason(exc), sent=False, refused=True) from None
        except (OSError, UnicodeError) as exc:
            raise TransportError(_reason(exc), sent=False) from None
        return sock

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        timeout: float | None = None,
        retry_idle: bool = True,
    ) -> Response:
        """Send one request and read the whole answer.

        A kept-alive connection the server closed while idle fails before any answer byte: the request is
        sent again once on a new connection when ``retry_idle`` (safe for requests that may be repeated).
        """
        limit = self.timeout if timeout is None else timeout
        reused = self._sock is not None
        try:
            return self._exchange(method, path, body, headers or {}, limit)
        except TransportError as exc:
            self.close()
            if reused and retry_idle and not exc.refused and exc.nothing_back:
                return self._exchange(method, path, body, headers or {}, limit)
            raise

    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict[str, str], limit: float) -> Response:
        host = "localhost" if self.address.unix_path is not None else self.address.host
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        payload = body or b""
        if body is not None or method in ("POST", "PUT", "DELETE"):
            lines.append(f"Content-Length: {len(payload)}")
        try:  # before connecting: a request that cannot be sent is refused the same wherever the server is
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise UnsendableError(
                "The request was not sent: the token or the address holds characters that cannot be sent; check "
                "MOREH_SDA_TOKEN (or the token file) and the address."
            ) from None
        if self._sock is None:
            self._sock = self._connect(limit)
            self._buffer = b""
        sock = self._sock
        sock.settimeout(limit)
        try:
            sock.sendall(head + payload)
        except OSError as exc:
            raise TransportError(_reason(exc), sent=False, nothing_back=True) from None
        try:
            return self._read_response(sock, method)
        except TransportError:
            raise
        except OSError as exc:
            raise TransportError(_reason(exc), sent=True, nothing_back=not self._buffer) from None

    def _fill(self, sock: socket.socket) -> bool:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def _read_response(self, sock: socket.socket, method: str) -> Response:
        got_any = bool(self._buffer)
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise TransportError("the server sent an oversized header", sent=True)
            if not self._fill(sock):
                raise TransportError(
                    "the server closed the connection without answering", sent=True, nothing_back=not got_any
                )
            got_any = True
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise TransportError("the server did not answer in HTTP", sent=True)
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked(sock)
        elif "content-length" in headers:
            length = int(headers["content-length"]) if headers["content-length"].isdigit() else -1
            if not 0 <= length <= MAX_BODY_BYTES:
                raise TransportError("the server sent an invalid Content-Length", sent=True)
            body = self._take(sock, length)
        else:
            while self._fill(sock):
                if len(self._buffer) > MAX_BODY_BYTES:
                    raise TransportError("the server's answer is too large", sent=True)
            body, self._buffer = self._buffer, b""
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body)

    def _take(self, sock: socket.socket, length: int) -> bytes:
        while len(self._buffer) < length:
            if not self._fill(sock):
                raise TransportError("the server's answer was cut off", sent=True)
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body

    def _read_chunked(self, sock: socket.socket) -> bytes:
        out = b""
        while True:
            while b"\r\n" not in self._buffer:
                if not self._fill(sock):
                    raise TransportError("the server's answer was cut off", sent=True)
            size_line, _, self._buffer = self._buffer.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise TransportError("the server sent a malformed chunk", sent=True) from None
            if size == 0:
                while b"\r\n" not in self._buffer:  # the (empty) trailer
                    if not self._fill(sock):
                        break
                self._buffer = self._buffer.partition(b"\r\n")[2]
                return out
            out += self._take(sock, size + 2)[:size]
            if len(out) > MAX_BODY_BYTES:
                raise TransportError("the server's answer is too large", sent=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)
