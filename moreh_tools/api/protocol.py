"""The daemon's HTTP/1.1 protocol: uvicorn's, plus the Unix peer's uid and a deadline for each request.

uvicorn closes a keep-alive connection that stays silent after a response, but not one that never sends
a request, nor one that sends half a request and then nothing: each would hold a connection (and a file
descriptor) for ever, and enough of them would lock everyone out of the daemon. Here a connection has
:func:`request_deadline_s` to deliver each whole request, from its first byte (or from the connection
itself); past it, the connection is closed. A request being answered is not timed: a long poll may
wait as long as it says.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from moreh_tools.api.peer import UNIX_CLIENT, peer_uid

DEADLINE_ENV = "MOREH_API_REQUEST_TIMEOUT"
DEFAULT_DEADLINE_S = 10.0
_RECEIVING = (h11.IDLE, h11.SEND_BODY)  # the client's side of h11's state machine while a request comes in


def request_deadline_s() -> float:
    """Seconds a client may take to send one whole request (``MOREH_API_REQUEST_TIMEOUT``, default 10)."""
    try:
        value = float(os.environ.get(DEADLINE_ENV, "") or DEFAULT_DEADLINE_S)
    except ValueError:
        return DEFAULT_DEADLINE_S
    return value if value > 0 and math.isfinite(value) else DEFAULT_DEADLINE_S


class DaemonProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the peer's uid as a Unix-socket request's client, and a request deadline."""

    deadline_s = DEFAULT_DEADLINE_S  # set from the environment by make_server

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            uid = peer_uid(sock)
            self.client = (UNIX_CLIENT, uid if uid is not None else -1)
        self._deadline: Any = None
        self._arm()  # the first request is due from the moment the connection is made

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in _RECEIVING and not self.transport.is_closing():
            if self._deadline is None:
                self._arm()  # the first bytes of the next request on a kept-alive connection
        else:
            self._disarm()  # the request is in (or the connection is done): answering it is not timed

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn's keep-alive timer now covers the silence before the next request; ours restarts with its bytes.
        self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.deadline_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state in _RECEIVING and not self.transport.is_closing():
            self.transport.close()
