"""A session: the repositories bound to one open transaction."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from state.events import EventLog

if TYPE_CHECKING:
    from state.backends import BackendGroupRepository, BackendRepository
    from state.groups import MembershipRepository, ModelGroupRepository, UserGroupRepository
    from state.guardian import GuardianRepository
    from state.jobs import JobRepository
    from state.limits import TimeLimitRepository
    from state.quotas import FairShareRepository, QuotaRepository
    from state.sdas import SDAModelRepository, SDARepository
    from state.tokens import TokenRepository
    from state.users import UserRepository
    from state.versions import VersionRepository


class Session:
    """Everything one command may read or change, inside one transaction."""

    def __init__(self, conn: Any, command: str, origin: str = "") -> None:
        """Wrap an open connection whose transaction the store manages.

        ``command`` is the command line being executed and ``origin`` who asked for it (a Unix uid and the way
        in, e.g. ``uid=1000 socket``); the events recorded in the session carry both.
        """
        self._conn = conn
        self.events = EventLog(self, command, origin)

    @cached_property
    def tokens(self) -> TokenRepository:
        """Tokens and their environment values."""
        from state.tokens import TokenRepository

        return TokenRepository(self)

    @cached_property
    def models(self) -> SDAModelRepository:
        """SDA models."""
        from state.sdas import SDAModelRepository

        return SDAModelRepository(self)

    @cached_property
    def sdas(self) -> SDARepository:
        """SDAs."""
        from state.sdas import SDARepository

        return SDARepository(self)

    @cached_property
    def user_groups(self) -> UserGroupRepository:
        """User groups (sets of tokens)."""
        from state.groups import UserGroupRepository

        return UserGroupRepository(self)

    @cached_property
    def model_groups(self) -> ModelGroupRepository:
        """SDA model groups (sets of models tied to a backend group)."""
        from state.groups import ModelGroupRepository

        return ModelGroupRepository(self)

    @cached_property
    def memberships(self) -> MembershipRepository:
        """User group <-> SDA model group links."""
        from state.groups import MembershipRepository

        return MembershipRepository(self)

    @cached_property
    def backend_groups(self) -> BackendGroupRepository:
        """Backend groups."""
        from state.backends import BackendGroupRepository

        return BackendGroupRepository(self)

    @cached_property
    def backends(self) -> BackendRepository:
        """Backends and their devices."""
        from state.backends import BackendRepository

        return BackendRepository(self)

    @cached_property
    def jobs(self) -> JobRepository:
        """The job queue, history and usage."""
        from state.jobs import JobRepository

        return JobRepository(self)

    @cached_property
    def guardian(self) -> GuardianRepository:
        """The GPU guardian: device flags, idle policies, jobs' idle bookkeeping and launcher notices."""
        from state.guardian import GuardianRepository

        return GuardianRepository(self)

    @cached_property
    def versions(self) -> VersionRepository:
        """Worker versions and their environment."""
        from state.versions import VersionRepository

        return VersionRepository(self)

    @cached_property
    def users(self) -> UserRepository:
        """Sign-in users of the REST API."""
        from state.users import UserRepository

        return UserRepository(self)

    @cached_property
    def limits(self) -> TimeLimitRepository:
        """Time limits of tokens and SDA models."""
        from state.limits import TimeLimitRepository

        return TimeLimitRepository(self)

    @cached_property
    def quotas(self) -> QuotaRepository:
        """GPU quotas of user groups and quota requests."""
        from state.quotas import QuotaRepository

        return QuotaRepository(self)

    @cached_property
    def fairshare(self) -> FairShareRepository:
        """Decayed GPU usage per user group."""
        from state.quotas import FairShareRepository

        return FairShareRepository(self)

    def schema_version(self) -> int:
        """Return the applied schema version."""
        from state.migrations import current_version

        return current_version(self._conn)

    # -- for the repositories of this package: the only way SQL reaches the connection ------------------

    def execute(self, sql: str, params: list[Any] | None = None) -> None:
        """Run one statement (inside the session's transaction)."""
        self._conn.execute(sql, params or [])

    def executemany(self, sql: str, rows: list[list[Any]]) -> None:
        """Run one statement once per parameter row."""
        self._conn.executemany(sql, rows)

    def one(self, sql: str, params: list[Any] | None = None) -> tuple[Any, ...] | None:
        """Run a query and return its first row (or None)."""
        row = self._conn.execute(sql, params or []).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a query and return all rows."""
        return self._conn.execute(sql, params or []).fetchall()  # DuckDB already returns a list of tuples
