"""Tokens: creation with unguessable values, updates, environment values."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from state.checks import check_choice, check_name, check_priority
from state.errors import ConflictError, InvalidValueError, NotFoundError
from state.records import ACCESS_LEVELS, Token

if TYPE_CHECKING:
    from state.session import Session

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKEN_COLUMNS = "value, description, priority, access_level, current_sda, max_sda, duplicable, worker_execute_info"
MAX_SDA_LIMIT = 64


def new_token_value() -> str:
    """Return a fresh token: 24 characters of URL-safe base64 from 17 CSPRNG bytes.

    Real MCP tokens are base64 of a name prefix and a timestamp, so they can be guessed; ours keep
    the shape (24 characters ending in '=') and are safe to use as a file name.
    """
    while True:
        value = base64.urlsafe_b64encode(secrets.token_bytes(17)).decode("ascii")
        if value[0].isalnum():  # a leading '-' would read as an option on command lines
            return value


# What a token looks like, loosely enough to catch a mistyped one: 20 to 28 characters of the base64
# alphabets (tokens are 24, see new_token_value; the seeds' real MCP tokens are standard base64).
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_+/=-]{20,28}")


def looks_like_token(value: str) -> bool:
    """Whether ``value`` has a token's shape (a token, or one mistyped by a character or two).

    A description is free text and rarely is 20 to 28 characters of base64 with no space; the console
    uses this to refuse an unknown token instead of quietly taking it for a description.
    """
    return _TOKEN_LIKE.fullmatch(value) is not None


#: Environment names a token may not set for its jobs: each makes a program (the dynamic linker, a shell,
#: Python, Perl, Ruby, Node, glibc's iconv, ...) load or run code of the setter's choosing, as the job's
#: user, before the job's own command does anything. Exact names; see also HIJACKING_ENV_PREFIXES.
HIJACKING_ENV_NAMES = frozenset(
    {
        "BASH_ENV",  # bash runs it at the start of every non-interactive shell
        "ENV",  # sh / dash / ksh do the same for interactive shells
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",  # expanded (commands run) when a shell traces
        "PROMPT_COMMAND",
        "IFS",
        "CDPATH",
        "GLOBIGNORE",
        "PATH",  # which program a name runs
        "HOME",  # dotfiles read by shells and tools
        "ZDOTDIR",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUSERBASE",
        "PYTHONINSPECT",
        "PYTHONBREAKPOINT",
        "PYTHONEXECUTABLE",
        "PERL5OPT",
        "PERL5LIB",
        "PERLLIB",
        "PERL5DB",
        "RUBYOPT",
        "RUBYLIB",
        "NODE_OPTIONS",
        "NODE_PATH",
        "GCONV_PATH",  # glibc loads iconv modules from it
        "GETCONF_DIR",
        "HOSTALIASES",
        "LOCPATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "MALLOC_TRACE",
        "TMPDIR",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_EXEC_PATH",
        "GIT_CONFIG_GLOBAL",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "BROWSER",
        "SSH_ASKPASS",
        "SUDO_ASKPASS",
        "PROFILEREAD",
        "XDG_CONFIG_HOME",
    }
)
#: Prefixes of refused names: the dynamic linker's ``LD_*`` (``LD_PRELOAD``, ``LD_LIBRARY_PATH``,
#: ``LD_AUDIT``), glibc's tunables and ``MALLOC_*``, and every ``BASH_FUNC_*`` (exported shell functions).
#: (``CUDA_VISIBLE_DEVICES``, ``MOREH_SDA_TOKEN``, ``MOREH_JOB_ID`` and ``MOREH_HOME`` are set by the
#: launcher after the token's values, so a token cannot change them.)
HIJACKING_ENV_PREFIXES = ("LD_", "GLIBC_", "MALLOC_", "BASH_FUNC_", "DYLD_")


def hijacks(name: str) -> bool:
    """Whether a token may not set environment variable ``name`` for its jobs (see HIJACKING_ENV_NAMES)."""
    upper = name.upper()
    return upper in HIJACKING_ENV_NAMES or upper.startswith(HIJACKING_ENV_PREFIXES)


def check_env_format(name: str) -> str:
    """Return ``name`` if it is written as an environment variable name (letters, digits, '_')."""
    if not _ENV_NAME.match(name):
        raise InvalidValueError(
            f"'{name}' is not a valid environment variable name: use letters, digits and '_' "
            "and do not start with a digit."
        )
    return name


def check_env_name(name: str) -> str:
    """Return ``name`` if it is a valid environment variable name that a token may set for its jobs.

    Names that would let whoever sets them run code as the job's user (``LD_PRELOAD``, ``BASH_ENV``,
    ``PYTHONPATH``, ...: :data:`HIJACKING_ENV_NAMES` and :data:`HIJACKING_ENV_PREFIXES`) are refused; the
    launcher refuses them again when it applies a token's env (defence in depth).
    """
    check_env_format(name)
    if hijacks(name):
        raise InvalidValueError(
            f"'{name}' may not be set through a token: it makes programs load or run code of the setter's "
            "choosing as the job's user (see the README's list of refused names)."
        )
    return name


class TokenRepository:
    """Reads and changes tokens; every change records an event."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    def _row_to_token(self, row: tuple[Any, ...], env: tuple[tuple[str, str], ...]) -> Token:
        return Token(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], env=env)

    def get(self, value: str) -> Token:
        """Return the token ``value`` or raise NotFoundError."""
        row = self.s.one(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE value = ?", [value])
        if row is None:
            raise NotFoundError(f"Token '{value}' not found; list tokens with 'show token'.")
        env = tuple(
            (r[0], r[1])
            for r in self.s.all("SELECT name, value FROM token_env WHERE token = ? ORDER BY position", [value])
        )
        return self._row_to_token(row, env)

    def access_level(self, value: str) -> str | None:
        """The token's access level, or None for an unknown token (one cheap query: every API request asks)."""
        row = self.s.one("SELECT access_level FROM tokens WHERE value = ?", [value])
        return str(row[0]) if row else None

    def description(self, value: str) -> str:
        """The token's description ("" for an unknown token)."""
        row = self.s.one("SELECT description FROM tokens WHERE value = ?", [value])
        return str(row[0]) if row else ""

    def descriptions(self, values: Collection[str]) -> dict[str, str]:
        """Value -> description of the existing tokens among ``values``."""
        wanted = sorted(set(values))
        if not wanted:
            return {}
        rows = self.s.all(f"SELECT value, description FROM tokens WHERE value IN ({','.join('?' * len(wanted))})", wanted)
        return {str(v): str(d) for v, d in rows}

    def count(self) -> int:
        """How many tokens there are."""
        row = self.s.one("SELECT count(*) FROM tokens")
        return int(row[0]) if row else 0

    def exists(self, value: str) -> bool:
        """Return whether the token exists."""
        return self.s.one("SELECT 1 FROM tokens WHERE value = ?", [value]) is not None

    def all(self) -> list[Token]:
        """Return every token in creation order."""
        env: dict[str, list[tuple[str, str]]] = {}
        for token, name, value in self.s.all("SELECT token, name, value FROM token_env ORDER BY token, position"):
            env.setdefault(token, []).append((name, value))
        rows = self.s.all(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_at, value")
        return [self._row_to_token(row, tuple(env.get(row[0], ()))) for row in rows]

    def many(self, values: Collection[str]) -> dict[str, Token]:
        """Return the existing tokens among ``values``, by value (unknown values are left out)."""
        wanted = sorted(set(values))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        env: dict[str, list[tuple[str, str]]] = {}
        for token, name, value in self.s.all(
            f"SELECT token, name, value FROM token_env WHERE token IN ({marks}) ORDER BY token, position", wanted
        ):
            env.setdefault(token, []).append((name, value))
        rows = self.s.all(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE value IN ({marks})", wanted)
        return {row[0]: self._row_to_token(row, tuple(env.get(row[0], ()))) for row in rows}

    def create(self, description: str, priority: int = 0) -> str:
        """Create a token and return its value."""
        check_name(description, "token description")
        check_priority(priority)
        value = new_token_value()
        while self.exists(value):  # 136 random bits: a collision is astronomically unlikely
            value = new_token_value()
        self.s.execute(
            "INSERT INTO tokens (value, description, priority, created_at) VALUES (?, ?, ?, now())",
            [value, description, priority],
        )
        self.s.events.record("CREATE_TOKEN", f"description={description} priority={priority}", value)
        return value

    def delete(self, value: str) -> None:
        """Delete a token that has no SDAs and no queued or running job."""
        self.get(value)
        count = self.s.one("SELECT count(*) FROM sdas WHERE token = ?", [value])
        if count and count[0]:
            raise ConflictError(
                f"Token '{value}' still has {count[0]} SDA(s); delete them first with 'delete sda {value}'."
            )
        jobs = self.s.one("SELECT count(*) FROM jobs WHERE token = ?", [value])
        if jobs and jobs[0]:
            raise ConflictError(f"Token '{value}' has {jobs[0]} job(s) in the queue; release them first.")
        self.s.execute("DELETE FROM token_env WHERE token = ?", [value])
        self.s.execute("DELETE FROM user_group_tokens WHERE token = ?", [value])
        self.s.limits.forget_token(value)
        self.s.execute("DELETE FROM tokens WHERE value = ?", [value])
        self.s.events.record("DELETE_TOKEN", "", value)

    def _set(self, value: str, column: str, new: Any, action: str) -> None:
        self.s.execute(f"UPDATE tokens SET {column} = ? WHERE value = ?", [new, value])
        self.s.events.record(action, f"{column}={new}", value)

    def update_description(self, value: str, description: str) -> None:
        """Change the description (the token's name)."""
        self.get(value)
        self._set(value, "description", check_name(description, "token description"), "UPDATE_TOKEN")

    def update_priority(self, value: str, priority: int) -> None:
        """Change the token's priority (-99..99); queued jobs keep the priority they were given."""
        self.get(value)
        self._set(value, "priority", check_priority(priority), "UPDATE_TOKEN_PRIORITY")

    def update_access_level(self, value: str, level: str) -> None:
        """Change the access level (USER, ADMIN or DEVELOPER)."""
        self.get(value)
        self._set(value, "access_level", check_choice(level, ACCESS_LEVELS, "access level"), "UPDATE_TOKEN")

    def update_current_sda(self, value: str, sda_id: int) -> None:
        """Make one of the token's SDAs its current one."""
        self.get(value)
        owner = self.s.one("SELECT token FROM sdas WHERE id = ?", [sda_id])
        if owner is None or owner[0] != value:
            raise NotFoundError(f"SDA {sda_id} does not belong to token '{value}'; see 'get sda {value}'.")
        self._set(value, "current_sda", sda_id, "UPDATE_TOKEN")

    def update_max_sda(self, value: str, maximum: int) -> None:
        """Change how many SDAs the token may hold (1..64, not below what it holds now)."""
        token = self.get(value)
        if not 1 <= maximum <= MAX_SDA_LIMIT:
            raise InvalidValueError(f"Max SDA {maximum} is out of range: use an integer from 1 to {MAX_SDA_LIMIT}.")
        if maximum > 1 and token.duplicable != 1:
            raise ConflictError(
                f"Token '{value}' is duplicable ({token.duplicable_text}), which needs max SDA 1; "
                f"turn it off first with 'update token duplicable {value} 1'."
            )
        held = self.s.one("SELECT count(*) FROM sdas WHERE token = ?", [value])
        if held and held[0] > maximum:
            raise ConflictError(
                f"Token '{value}' already holds {held[0]} SDAs; delete some before lowering max SDA to {maximum}."
            )
        self._set(value, "max_sda", maximum, "UPDATE_TOKEN_SDA_MAX")

    def update_duplicable(self, value: str, count: int) -> None:
        """Let ``count`` processes share the token's SDA (1 = off, 0 = unlimited); needs max SDA 1."""
        token = self.get(value)
        if count < 0 or count > 1024:
            raise InvalidValueError(
                f"Duplicable value {count} is out of range: use 1 (off), 2..1024 processes, or 0 (unlimited)."
            )
        if count != 1 and token.max_sda != 1:
            raise ConflictError(
                f"Token '{value}' has max SDA {token.max_sda}; duplicable SDAs need max SDA 1 "
                f"('update token sda max {value} 1')."
            )
        self._set(value, "duplicable", count, "UPDATE_TOKEN_DUPLICABLE")

    def add_env(self, value: str, name: str, env_value: str) -> None:
        """Add (or replace) one environment value passed to the token's jobs."""
        self.get(value)
        check_env_name(name)
        if len(env_value) > 4096 or "\x00" in env_value:
            raise InvalidValueError("The environment value must be at most 4096 characters without NUL bytes.")
        existing = self.s.one("SELECT position FROM token_env WHERE token = ? AND name = ?", [value, name])
        if existing is not None:
            self.s.execute("UPDATE token_env SET value = ? WHERE token = ? AND name = ?", [env_value, value, name])
        else:
            pos = self.s.one("SELECT coalesce(max(position), 0) + 1 FROM token_env WHERE token = ?", [value])
            self.s.execute(
                "INSERT INTO token_env VALUES (?, ?, ?, ?)", [value, name, env_value, pos[0] if pos else 1]
            )
        self.s.events.record("ADD_TOKEN_ENV", f"{name}={env_value}", value)

    def remove_env(self, value: str, name: str) -> None:
        """Remove one environment value from the token."""
        self.get(value)
        if self.s.one("SELECT 1 FROM token_env WHERE token = ? AND name = ?", [value, name]) is None:
            raise NotFoundError(f"Token '{value}' has no environment variable '{name}'; see 'get token {value}'.")
        self.s.execute("DELETE FROM token_env WHERE token = ? AND name = ?", [value, name])
        self.s.events.record("REMOVE_TOKEN_ENV", name, value)

    def running(self) -> list[str]:
        """Return the tokens that have a RUNNING job, in token order."""
        return [r[0] for r in self.s.all("SELECT DISTINCT token FROM jobs WHERE status = 'RUNNING' ORDER BY token")]
