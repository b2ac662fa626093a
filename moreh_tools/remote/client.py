"""A small JSON client of the SDA Manager API, with one-line errors for every way a call can fail."""

from __future__ import annotations

import json
import os
from typing import Any

ADDRESS_ENV = "MOREH_SDA_MANAGER_ADDRESS"
DEFAULT_TIMEOUT_S = 30.0
RATE_LIMITED = 429


def address() -> str | None:
    """The SDA Manager address the tools should use (``host:port``), or None to use this host's state."""
    return os.environ.get(ADDRESS_ENV, "").strip() or None


class RemoteError(Exception):
    """A remote call failed; the message is the one line the user sees, ``code`` the Moreh code (or None)."""

    def __init__(self, message: str, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def base_url(text: str) -> str:
    """``http://host:port`` from ``host:port`` (a full ``http(s)://`` URL is kept)."""
    text = text.strip().rstrip("/")
    return text if text.startswith(("http://", "https://")) else f"http://{text}"


class Client:
    """Calls ``/api/...`` on one SDA Manager with one token."""

    def __init__(self, where: str, token: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """A client of the SDA Manager at ``where`` (``host:port``) sending ``token``."""
        self.address = where
        self.url = base_url(where)
        self.token = token
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return its decoded JSON body; RemoteError with one line when it fails."""
        import http.client
        import urllib.error
        import urllib.parse
        import urllib.request

        try:
            query = urllib.parse.urlencode({k: _text(v) for k, v in (params or {}).items() if v is not None})
        except UnicodeEncodeError:  # an argument with undecodable bytes (surrogate escapes from argv)
            raise RemoteError(
                "A value given is not valid UTF-8 text (it holds undecodable bytes); type it again as UTF-8, or set "
                "the terminal's and LANG's encoding to UTF-8."
            ) from None
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        data = json.dumps(body).encode() if body is not None else (b"" if method != "GET" else None)
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(str(getattr(exc.reason, "strerror", None) or exc.reason)) from None
        except (TimeoutError, OSError) as exc:
            raise self._unreachable(str(getattr(exc, "strerror", None) or exc or type(exc).__name__)) from None
        except http.client.HTTPException as exc:  # a bad port in the address, a non-HTTP peer, a cut-off reply
            raise self._unreachable(f"{type(exc).__name__}: {exc}".strip().rstrip(":")) from None
        except UnicodeError:  # http.client sends headers as latin-1 and host names as IDNA
            raise RemoteError(
                f"The request was not sent: the token or {ADDRESS_ENV} holds characters that cannot be sent; check "
                "MOREH_SDA_TOKEN (or the token file) and the address."
            ) from None
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            raise RemoteError(f"The SDA Manager at {self.address} sent a reply that is not JSON.") from None

    def _unreachable(self, reason: str) -> RemoteError:
        return RemoteError(
            f"Cannot reach the SDA Manager at {self.address} ({reason}); check {ADDRESS_ENV} and that "
            "'sdamanager --api' runs there."
        )

    def _refusal(self, exc: Any) -> RemoteError:
        import http.client

        try:
            raw = exc.read() if hasattr(exc, "read") else b""
        except (OSError, http.client.HTTPException):  # an error body cut off mid-way: judge by the status alone
            raw = b""
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        header = exc.headers.get("X-Moreh-Code") if exc.headers is not None else None
        code = int(header) if header and header.isdigit() else None
        if isinstance(payload, dict):
            details = str(payload.get("details", ""))
            if code is None and isinstance(payload.get("code"), int):
                code = payload["code"]
        elif isinstance(payload, str):
            details = payload
        else:
            details = f"HTTP {exc.code}"
        if exc.code == RATE_LIMITED:
            retry = exc.headers.get("Retry-After") if exc.headers is not None else None
            wait = f"; retry in {retry} s" if retry else ""
            return RemoteError(
                f"The SDA Manager at {self.address} refused the request: too many requests from this token{wait}.",
                RATE_LIMITED,
                exc.code,
            )
        if exc.code == 401:
            return RemoteError(
                f"The SDA Manager at {self.address} does not know this token ({details}); check MOREH_SDA_TOKEN "
                "or the token file.",
                code,
                exc.code,
            )
        return RemoteError(details or f"The SDA Manager at {self.address} answered HTTP {exc.code}.", code, exc.code)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def connect(explicit_token: str | None = None) -> Client:
    """A client for ``MOREH_SDA_MANAGER_ADDRESS`` with the user's token; RemoteError when either is missing."""
    from moreh_tools import identity

    where = address()
    if where is None:
        raise RemoteError(f"{ADDRESS_ENV} is not set; set it to the SDA Manager's host:port.")
    try:
        token = identity.find_token(explicit_token)
    except identity.TokenNotGiven as exc:
        raise RemoteError(f"{exc} Set MOREH_SDA_TOKEN or write the token to the token file.") from None
    return Client(where, token)
