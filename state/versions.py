"""Worker versions: where each is installed, how to run it, and its environment."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from state.checks import check_name
from state.errors import ConflictError, InvalidValueError, NotFoundError
from state.records import Version
from state.tokens import check_env_format

if TYPE_CHECKING:
    from state.session import Session

_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
_COLUMNS = "version, supported, latest, path, query_command, worker_command, health_check_command"
COMMAND_FIELDS = {
    "query": "query_command",
    "worker": "worker_command",
    "health_check": "health_check_command",
}


def check_version_name(version: str) -> str:
    """Return ``version`` if it looks like a version string (e.g. 23.9.2)."""
    if not _VERSION.match(version):
        raise InvalidValueError(
            f"'{version}' is not a version name: use letters, digits, '.', '+', '_' or '-' (e.g. 23.9.2)."
        )
    return version


class VersionRepository:
    """Reads and changes worker versions."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    def all(self, version: str | None = None) -> list[Version]:
        """Return every version (or just ``version``) with its worker environment."""
        if version is not None:
            self.get(version)
        env: dict[str, list[tuple[str, str]]] = {}
        for v, name, value in self.s.all("SELECT version, name, value FROM worker_env ORDER BY version, position"):
            env.setdefault(v, []).append((name, value))
        rows = self.s.all(f"SELECT {_COLUMNS} FROM versions ORDER BY version")
        return [
            Version(row[0], row[1], row[2], row[3], row[4], row[5], row[6], env=tuple(env.get(row[0], ())))
            for row in rows
            if version is None or row[0] == version
        ]

    def get(self, version: str) -> Version:
        """Return one version or raise NotFoundError."""
        row = self.s.one(f"SELECT {_COLUMNS} FROM versions WHERE version = ?", [version])
        if row is None:
            raise NotFoundError(f"Version '{version}' not found; list versions with 'show version'.")
        return Version(*row)

    def create(self, version: str, path: str) -> None:
        """Register a version installed at ``path``."""
        check_version_name(version)
        check_name(path, "installed path")
        if self.s.one("SELECT 1 FROM versions WHERE version = ?", [version]) is not None:
            raise ConflictError(f"Version '{version}' already exists; change it with 'update version path'.")
        self.s.execute("INSERT INTO versions (version, path) VALUES (?, ?)", [version, path])
        self.s.events.record("CREATE_VERSION", f"version={version} path={path}")

    def delete(self, version: str) -> None:
        """Remove a version and its worker environment."""
        self.get(version)
        self.s.execute("DELETE FROM worker_env WHERE version = ?", [version])
        self.s.execute("DELETE FROM versions WHERE version = ?", [version])
        self.s.events.record("DELETE_VERSION", f"version={version}")

    def set_path(self, version: str, path: str) -> None:
        """Change where the version is installed."""
        self.get(version)
        check_name(path, "installed path")
        self.s.execute("UPDATE versions SET path = ? WHERE version = ?", [path, version])
        self.s.events.record("UPDATE_VERSION", f"version={version} path={path}")

    def set_command(self, version: str, which: str, command: str) -> None:
        """Set the query, worker or health_check command of a version."""
        self.get(version)
        column = COMMAND_FIELDS[which]
        if len(command) > 4096 or "\x00" in command:
            raise InvalidValueError("The command must be at most 4096 characters without NUL bytes.")
        self.s.execute(f"UPDATE versions SET {column} = ? WHERE version = ?", [command, version])
        self.s.events.record("UPDATE_VERSION", f"version={version} {which}={command}")

    def set_supported(self, version: str, supported: bool) -> None:
        """Mark a version supported or not; the latest version must stay supported."""
        current = self.get(version)
        if not supported and current.latest:
            raise ConflictError(f"Version '{version}' is the latest; make another version latest first.")
        self.s.execute("UPDATE versions SET supported = ? WHERE version = ?", [supported, version])
        self.s.events.record("UPDATE_VERSION", f"version={version} supported={supported}")

    def set_latest(self, version: str) -> None:
        """Make ``version`` the one latest version (it must be supported)."""
        current = self.get(version)
        if not current.supported:
            raise ConflictError(
                f"Version '{version}' is not supported; run 'update version support {version} true' first."
            )
        self.s.execute("UPDATE versions SET latest = (version = ?)", [version])
        self.s.events.record("UPDATE_VERSION", f"version={version} latest=True")

    def add_env(self, version: str, name: str, value: str) -> None:
        """Add (or replace) one environment value of the version's worker."""
        self.get(version)
        check_env_format(name)
        if len(value) > 4096 or "\x00" in value:
            raise InvalidValueError("The environment value must be at most 4096 characters without NUL bytes.")
        if self.s.one("SELECT 1 FROM worker_env WHERE version = ? AND name = ?", [version, name]) is not None:
            self.s.execute(
                "UPDATE worker_env SET value = ? WHERE version = ? AND name = ?", [value, version, name]
            )
        else:
            pos = self.s.one("SELECT coalesce(max(position), 0) + 1 FROM worker_env WHERE version = ?", [version])
            self.s.execute(
                "INSERT INTO worker_env VALUES (?, ?, ?, ?)", [version, name, value, pos[0] if pos else 1]
            )
        self.s.events.record("ADD_WORKER_ENV", f"version={version} {name}={value}")

    def remove_env(self, version: str, name: str) -> None:
        """Remove one environment value of the version's worker."""
        self.get(version)
        if self.s.one("SELECT 1 FROM worker_env WHERE version = ? AND name = ?", [version, name]) is None:
            raise NotFoundError(f"Version '{version}' has no worker environment variable '{name}'.")
        self.s.execute("DELETE FROM worker_env WHERE version = ? AND name = ?", [version, name])
        self.s.events.record("REMOVE_WORKER_ENV", f"version={version} name={name}")

    def latest(self) -> str | None:
        """Return the version marked latest, if any."""
        row = self.s.one("SELECT version FROM versions WHERE latest")
        return str(row[0]) if row else None
