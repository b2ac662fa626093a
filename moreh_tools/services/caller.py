"""Who is asking, and the access rules that depend on it, for every way into the state.

Access levels (the manual's USER, ADMIN, DEVELOPER, and HOST for a GPU host's daemon):

* ADMIN may do everything, and so may the state's *owner* when it presents no token. The owner is
  whoever can open the state file (direct file access means admin rights: the personal, single-user
  set-up) or, through the daemon's socket, a process of the daemon's own Unix user or root. A request
  that carries a token is judged by the token's level, whoever sends it: a user tool acts as its
  user. The owner may also register the machine it runs on as a backend and report its GPUs.
* DEVELOPER reads the cluster-wide catalogue like an ADMIN but changes only its own token's things.
* USER reads and changes only its own token's things.
* HOST registers its host as a backend and reports its GPUs and job processes; nothing else.

A token's own actions (its jobs' priority, its devices) follow the token's level whoever sends them:
``moreh-run --priority 99`` with a USER token is capped at the token's priority on every way in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from state.errors import PermissionDeniedError

ADMIN, DEVELOPER, USER, HOST = "ADMIN", "DEVELOPER", "USER", "HOST"
REDACTED_PREFIX = "hidden-"


@dataclass(frozen=True)
class Caller:
    """The authenticated caller.

    ``token`` is the token presented (None: none); ``level`` its access level as the server resolved it
    (None when no token, or when the service reads it itself); ``owner`` whether the caller owns the
    state (see the module docstring); ``uid`` the peer's Unix uid when known; ``via`` the way in:
    ``file``, ``socket`` or ``http``.
    """

    token: str | None
    level: str | None = None
    owner: bool = False
    uid: int | None = None
    via: str = "file"

    @property
    def is_admin(self) -> bool:
        """Whether the caller may do everything: an ADMIN token, or the owner without a token."""
        return self.level == ADMIN or (self.owner and self.token is None)

    @property
    def reads_all(self) -> bool:
        """Whether the caller may read the cluster-wide catalogue (ADMIN, DEVELOPER, the owner)."""
        return self.is_admin or self.level == DEVELOPER

    @property
    def is_host(self) -> bool:
        """Whether the caller may register hosts and report their GPUs (HOST, ADMIN, the owner)."""
        return self.owner or self.level in (HOST, ADMIN)

    def owns(self, token: str | None) -> bool:
        """Whether ``token`` is the caller's own token."""
        return token is not None and token == self.token

    @property
    def origin(self) -> str:
        """Who asked, as the event log records it: ``uid=1000 socket``."""
        who = f"uid={self.uid}" if self.uid is not None else "uid=?"
        return f"{who} {self.via}"


def require_admin(caller: Caller, doing: str = "This operation") -> None:
    """Refuse unless the caller is an ADMIN (or the owner)."""
    if not caller.is_admin:
        raise PermissionDeniedError(f"{doing} needs an ADMIN token; yours is {caller.level or 'not given'}.")


def require_reader(caller: Caller) -> None:
    """Refuse unless the caller may read the cluster-wide catalogue (ADMIN or DEVELOPER)."""
    if not caller.reads_all:
        raise PermissionDeniedError("This listing needs an ADMIN or DEVELOPER token; a USER token sees only its own.")


def require_host(caller: Caller, doing: str = "Registering a host") -> None:
    """Refuse unless the caller may speak for a GPU host (HOST or ADMIN)."""
    if not caller.is_host:
        raise PermissionDeniedError(
            f"{doing} needs a HOST or ADMIN token (the host's sdamanager uses one); yours is "
            f"{caller.level or 'not given'}."
        )


def redact(token_value: str | None, caller: Caller) -> str | None:
    """``token_value`` for an ADMIN or its owner; otherwise a stable handle that does not reveal it.

    The handle (``hidden-`` + 8 hex digits of a SHA-256) lets a USER tell two other tokens' jobs apart.
    """
    if token_value is None or caller.is_admin or caller.owns(token_value):
        return token_value
    return REDACTED_PREFIX + hashlib.sha256(token_value.encode()).hexdigest()[:8]
