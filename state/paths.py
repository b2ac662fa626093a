"""Where the state lives: one directory, named by MOREH_HOME, holding the DuckDB file and its lock."""

import os
from pathlib import Path

STATE_FILE_NAME = "state.duckdb"
LOCK_FILE_NAME = "state.lock"


def state_home() -> Path:
    """Return the state directory.

    ``MOREH_HOME`` wins. Otherwise root uses ``/var/lib/moreh-tools`` (the master node's shared
    state) and everyone else ``$XDG_STATE_HOME/moreh-tools`` (``~/.local/state/moreh-tools``).
    """
    explicit = os.environ.get("MOREH_HOME")
    if explicit:
        return Path(explicit).expanduser()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/moreh-tools")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "moreh-tools"


def state_file(home: Path | None = None) -> Path:
    """Return the path of the DuckDB state file inside ``home`` (default: :func:`state_home`)."""
    return (home or state_home()) / STATE_FILE_NAME


def lock_file(home: Path | None = None) -> Path:
    """Return the path of the lock file that serialises every access to the state file."""
    return (home or state_home()) / LOCK_FILE_NAME
