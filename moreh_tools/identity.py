"""Finding the user's token and this host's identity, shared by every user tool."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_TOKEN_FILE = "/etc/moreh/token"


class TokenNotGiven(Exception):
    """No token was found; the message is the real tools' line."""

    def __init__(self) -> None:
        super().__init__("SDA token is not given.")


def find_token(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Return the token: ``explicit``, else MOREH_SDA_TOKEN, else the file MOREH_TOKEN_FILE (/etc/moreh/token)."""
    env = os.environ if env is None else env
    if explicit:
        return explicit.strip()
    value = env.get("MOREH_SDA_TOKEN", "").strip()
    if value:
        return value
    path = Path(env.get("MOREH_TOKEN_FILE") or DEFAULT_TOKEN_FILE)
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        raise TokenNotGiven from None
    if not text:
        raise TokenNotGiven
    return text.split()[0]


def host_name() -> str:
    """This host's name as a backend is registered under (MOREH_HOSTNAME overrides it, for tests)."""
    # uname's node name is what socket.gethostname() returns on POSIX, without loading socket (moreh-smi start-up).
    return os.environ.get("MOREH_HOSTNAME") or os.uname().nodename or "localhost"


def host_ip(name: str) -> str:
    """This host's address, or loopback when the name does not resolve."""
    import socket

    try:
        return socket.gethostbyname(name)
    except OSError:
        return "127.0.0.1"


MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def machine_id() -> str:
    """What this machine is known by as a backend: a name an admin cannot edit and a shell cannot change.

    ``MOREH_MACHINE_ID`` overrides it (to simulate several hosts on one machine); otherwise the systemd /
    D-Bus machine id, else ``boot:<kernel boot id>`` (stable until the next boot), else ``host:<node name>``.
    """
    explicit = os.environ.get("MOREH_MACHINE_ID", "").strip()
    if explicit:
        return explicit[:128]
    for path in MACHINE_ID_FILES:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return value[:128]
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii", errors="replace") as f:
            return "boot:" + f.read().strip()
    except OSError:
        return "host:" + (os.uname().nodename or "localhost")
