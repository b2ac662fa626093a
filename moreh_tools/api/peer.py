"""Who is on the other end of a Unix-socket request: the peer's uid, from the kernel (SO_PEERCRED).

uvicorn puts no peer credentials in the ASGI scope, so the daemon serves with a protocol class
(:mod:`moreh_tools.api.protocol`) that reads them when a Unix-socket connection is made and records
them as the scope's ``client``:
``("unix", uid)``. A TCP client's ``client`` is its IP address and port, never ``"unix"``, so the
mark cannot be forged over the network.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

UNIX_CLIENT = "unix"


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a connected Unix socket (Linux), else None."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


def unix_peer(scope_client: Any) -> int | None:
    """The peer uid of a request that came over the Unix socket; None for a TCP request."""
    if isinstance(scope_client, tuple | list) and len(scope_client) == 2 and scope_client[0] == UNIX_CLIENT:
        uid = int(scope_client[1])
        return uid if uid >= 0 else None
    return None
