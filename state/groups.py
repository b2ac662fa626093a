"""User groups, SDA model groups and the memberships between them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scheduler_core.access import ModelChoice, allowed_models
from state.checks import check_name
from state.errors import ConflictError, NotFoundError
from state.records import ModelGroup, SDAModel, UserGroup

if TYPE_CHECKING:
    from state.session import Session


class _ListGroupRepository:
    """What user groups and SDA model groups share: a named group holding an ordered member list."""

    kind = ""  # "user group"
    noun = ""  # "UserGroup" (for events)
    table = ""
    member_table = ""
    member_column = ""
    sequence = ""
    show_command = ""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    # hooks ---------------------------------------------------------------------------------
    def _check_member(self, member: Any) -> None:
        raise NotImplementedError

    def _member_text(self, member: Any) -> str:
        return str(member)

    # shared --------------------------------------------------------------------------------
    @property
    def kind_title(self) -> str:
        """The kind at the start of a sentence; str.capitalize() would turn "SDA" into "Sda"."""
        return self.kind[:1].upper() + self.kind[1:]

    def _require(self, group_id: int) -> tuple[Any, ...]:
        row = self.s.one(f"SELECT * FROM {self.table} WHERE id = ?", [group_id])
        if row is None:
            raise NotFoundError(f"{self.kind_title} {group_id} not found; list them with '{self.show_command}'.")
        return row

    def _check_unique_name(self, name: str, except_id: int | None = None) -> None:
        row = self.s.one(f"SELECT id FROM {self.table} WHERE name = ?", [name])
        if row is not None and row[0] != except_id:
            raise ConflictError(f"A {self.kind} named '{name}' already exists (id {row[0]}); pick another name.")

    def member_ids(self, group_id: int) -> list[Any]:
        """Return the group's members in the order they were added."""
        return [
            r[0]
            for r in self.s.all(
                f"SELECT {self.member_column} FROM {self.member_table} WHERE group_id = ? ORDER BY position",
                [group_id],
            )
        ]

    def _insert_members(self, group_id: int, members: Sequence[Any]) -> None:
        if len(set(members)) != len(members):
            raise ConflictError(f"The {self.kind} member list names the same member twice; list each once.")
        for member in members:
            self._check_member(member)
        start = self.s.one(f"SELECT coalesce(max(position), 0) FROM {self.member_table} WHERE group_id = ?", [group_id])
        base = int(start[0]) if start else 0
        for offset, member in enumerate(members, start=1):
            self.s.execute(
                f"INSERT INTO {self.member_table} (group_id, {self.member_column}, position) VALUES (?, ?, ?)",
                [group_id, member, base + offset],
            )

    def _create_row(self, group_id: int, name: str, extra: Any) -> None:
        raise NotImplementedError

    def create(self, name: str, extra: Any, members: Sequence[Any] = ()) -> int:
        """Create a group with an optional member list and return its id."""
        check_name(name, f"{self.kind} name")
        self._check_unique_name(name)
        row = self.s.one(f"SELECT nextval('{self.sequence}')")
        assert row is not None
        group_id = int(row[0])
        self._create_row(group_id, name, extra)
        self._insert_members(group_id, list(members))
        self.s.events.record(
            f"CREATE_{self.noun.upper()}",
            f"id={group_id} name={name} members={','.join(self._member_text(m) for m in members)}",
        )
        return group_id

    def _before_delete(self, group_id: int) -> None:
        """Hook: clear references held by other tables."""

    def delete(self, group_id: int, force: bool = False) -> None:
        """Delete a group; one that still has members needs ``force``."""
        self._require(group_id)
        members = self.member_ids(group_id)
        if members and not force:
            raise ConflictError(
                f"{self.kind_title} {group_id} still has {len(members)} member(s); empty it first or "
                f"add 'true' to force the delete."
            )
        self._before_delete(group_id)
        self.s.execute(f"DELETE FROM {self.member_table} WHERE group_id = ?", [group_id])
        self.s.execute(f"DELETE FROM {self.table} WHERE id = ?", [group_id])
        self.s.events.record(f"DELETE_{self.noun.upper()}", f"id={group_id} force={force}")

    def rename(self, group_id: int, name: str) -> None:
        """Change the group's name."""
        self._require(group_id)
        check_name(name, f"{self.kind} name")
        self._check_unique_name(name, group_id)
        self.s.execute(f"UPDATE {self.table} SET name = ? WHERE id = ?", [name, group_id])
        self.s.events.record(f"UPDATE_{self.noun.upper()}", f"id={group_id} name={name}")

    def replace_members(self, group_id: int, members: Sequence[Any]) -> None:
        """Replace the member list (an empty list clears it)."""
        self._require(group_id)
        self.s.execute(f"DELETE FROM {self.member_table} WHERE group_id = ?", [group_id])
        self._insert_members(group_id, list(members))
        self.s.events.record(
            f"UPDATE_{self.noun.upper()}",
            f"id={group_id} members={','.join(self._member_text(m) for m in members)}",
        )

    def add_member(self, group_id: int, member: Any) -> None:
        """Add one member."""
        self._require(group_id)
        if member in self.member_ids(group_id):
            raise ConflictError(f"{self._member_text(member)} is already in {self.kind} {group_id}.")
        self._insert_members(group_id, [member])
        self.s.events.record(f"ADD_{self.noun.upper()}", f"id={group_id} member={self._member_text(member)}")

    def remove_member(self, group_id: int, member: Any) -> None:
        """Remove one member."""
        self._require(group_id)
        if member not in self.member_ids(group_id):
            raise NotFoundError(f"{self._member_text(member)} is not in {self.kind} {group_id}.")
        self.s.execute(
            f"DELETE FROM {self.member_table} WHERE group_id = ? AND {self.member_column} = ?",
            [group_id, member],
        )
        self.s.events.record(f"REMOVE_{self.noun.upper()}", f"id={group_id} member={self._member_text(member)}")


class UserGroupRepository(_ListGroupRepository):
    """Groups of tokens."""

    kind = "user group"
    noun = "UserGroup"
    table = "user_groups"
    member_table = "user_group_tokens"
    member_column = "token"
    sequence = "seq_usergroup"
    show_command = "show usergroup"

    def _check_member(self, member: Any) -> None:
        self.s.tokens.get(member)

    def _create_row(self, group_id: int, name: str, extra: Any) -> None:
        self.s.execute("INSERT INTO user_groups VALUES (?, ?, ?)", [group_id, name, extra or ""])

    def _before_delete(self, group_id: int) -> None:
        self.s.execute("DELETE FROM memberships WHERE user_group_id = ?", [group_id])
        self.s.quotas.forget_user_group(group_id)

    def all(self, group_id: int | None = None) -> list[UserGroup]:
        """Return every user group (or just ``group_id``) with its tokens."""
        if group_id is not None:
            self._require(group_id)
        members: dict[int, list[str]] = {}
        for gid, token in self.s.all("SELECT group_id, token FROM user_group_tokens ORDER BY group_id, position"):
            members.setdefault(gid, []).append(token)
        rows = self.s.all("SELECT id, name, description FROM user_groups ORDER BY id")
        return [
            UserGroup(gid, name, desc, tuple(members.get(gid, ())))
            for gid, name, desc in rows
            if group_id is None or gid == group_id
        ]

    def get(self, group_id: int) -> UserGroup:
        """Return one user group."""
        return self.all(group_id)[0]


class ModelGroupRepository(_ListGroupRepository):
    """Groups of SDA models, each tied to one backend group."""

    kind = "SDA model group"
    noun = "SDAModelGroup"
    table = "model_groups"
    member_table = "model_group_models"
    member_column = "model_id"
    sequence = "seq_modelgroup"
    show_command = "show sdamodelgroup"

    def _check_member(self, member: Any) -> None:
        self.s.models.get(member)

    def _member_text(self, member: Any) -> str:
        return f"SDA model {member}"

    def _create_row(self, group_id: int, name: str, extra: Any) -> None:
        self.s.backend_groups.require(int(extra))
        self.s.execute("INSERT INTO model_groups VALUES (?, ?, ?)", [group_id, name, int(extra)])

    def _before_delete(self, group_id: int) -> None:
        # SDAs built through this group fall back to no group (the default backend group).
        self.s.execute("UPDATE sdas SET model_group_id = NULL WHERE model_group_id = ?", [group_id])
        self.s.execute("DELETE FROM memberships WHERE model_group_id = ?", [group_id])

    def set_backend_group(self, group_id: int, backend_group_id: int) -> None:
        """Tie the model group to another backend group."""
        self._require(group_id)
        self.s.backend_groups.require(backend_group_id)
        self.s.execute("UPDATE model_groups SET backend_group_id = ? WHERE id = ?", [backend_group_id, group_id])
        self.s.events.record("UPDATE_SDAMODELGROUP", f"id={group_id} backend_group={backend_group_id}")

    def all(self, group_id: int | None = None) -> list[ModelGroup]:
        """Return every SDA model group (or just ``group_id``) with its models and backend group."""
        if group_id is not None:
            self._require(group_id)
        models: dict[int, list[SDAModel]] = {}
        for gid, mid, name, devices in self.s.all(
            "SELECT g.group_id, m.id, m.name, m.devices FROM model_group_models g "
            "JOIN sda_models m ON m.id = g.model_id ORDER BY g.group_id, g.position"
        ):
            models.setdefault(gid, []).append(SDAModel(mid, name, devices))
        rows = self.s.all(
            "SELECT g.id, g.name, g.backend_group_id, coalesce(b.name, '') FROM model_groups g "
            "LEFT JOIN backend_groups b ON b.id = g.backend_group_id ORDER BY g.id"
        )
        return [
            ModelGroup(gid, name, bgid, bgname, tuple(models.get(gid, ())))
            for gid, name, bgid, bgname in rows
            if group_id is None or gid == group_id
        ]

    def get(self, group_id: int) -> ModelGroup:
        """Return one SDA model group."""
        return self.all(group_id)[0]

    def choices_for(self, token: str) -> list[ModelChoice]:
        """Return the models ``token`` may use and the group each is reached through."""
        return allowed_models(
            token,
            self.s.models.all(),
            self.s.user_groups.all(),
            self.all(),
            self.s.memberships.pairs(),
        )


class MembershipRepository:
    """N:M links between user groups and SDA model groups."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    def pairs(self) -> list[tuple[int, int]]:
        """Return every (user group id, SDA model group id) link."""
        return [
            (int(a), int(b))
            for a, b in self.s.all(
                "SELECT user_group_id, model_group_id FROM memberships ORDER BY user_group_id, model_group_id"
            )
        ]

    def add(self, user_group_id: int, model_group_id: int) -> None:
        """Link a user group to an SDA model group."""
        self.s.user_groups.get(user_group_id)
        self.s.model_groups.get(model_group_id)
        if (user_group_id, model_group_id) in self.pairs():
            raise ConflictError(f"User group {user_group_id} is already a member of SDA model group {model_group_id}.")
        self.s.execute("INSERT INTO memberships VALUES (?, ?)", [user_group_id, model_group_id])
        self.s.events.record("ADD_MEMBERSHIP", f"user_group={user_group_id} model_group={model_group_id}")

    def remove(self, user_group_id: int, model_group_id: int) -> None:
        """Remove the link between a user group and an SDA model group."""
        self.s.user_groups.get(user_group_id)
        self.s.model_groups.get(model_group_id)
        if (user_group_id, model_group_id) not in self.pairs():
            raise NotFoundError(
                f"User group {user_group_id} has no membership with SDA model group {model_group_id}; "
                "see 'show membership'."
            )
        self.s.execute(
            "DELETE FROM memberships WHERE user_group_id = ? AND model_group_id = ?",
            [user_group_id, model_group_id],
        )
        self.s.events.record("REMOVE_MEMBERSHIP", f"user_group={user_group_id} model_group={model_group_id}")
