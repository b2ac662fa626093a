"""User group, SDA model group, membership and relationship commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from moreh_tools.grid import Column
from moreh_tools.smclient.args import is_null, to_bool, to_int, to_int_list, to_list
from moreh_tools.smclient.output import Message, Output, Table
from moreh_tools.smclient.registry import Context, command
from state.errors import NotFoundError
from state.records import ModelGroup, UserGroup
from state.tokens import looks_like_token

if TYPE_CHECKING:
    from state.session import Session

_LIST_HINT = "[token 1,token 2,token 3,...]"


def _force(args: list[str], index: int) -> bool:
    return to_bool(args[index], "force delete flag") if len(args) > index else False


def _group_created(group_id: int) -> Message:
    return Message(f"Create Group Success (id : {group_id})", {"id": group_id})


# -- user groups ---------------------------------------------------------------------------


def usergroup_table(groups: list[UserGroup]) -> Table:
    """The seed's ``show usergroup`` table (001's form, with Description)."""
    return Table(
        [Column("ID", "right"), Column("Name"), Column("Description"), Column("Childs")],
        [[str(g.id), g.name, g.description, ", ".join(g.tokens)] for g in groups],
        [{"id": g.id, "name": g.name, "description": g.description, "tokens": list(g.tokens)} for g in groups],
    )


@command(
    "create usergroup",
    "Create UserGroup",
    f"create usergroup {{name}} {{token list {_LIST_HINT} : optional}}",
    extra_args=1,
)
def create_usergroup(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        name, description, tokens = args[0], "", []
        if len(args) == 3:  # 001's form: name, description, token list
            description, tokens = args[1], to_list(args[2])
        elif len(args) == 2:
            listed = _token_list_or_none(s, name, args[1])
            if listed is None:
                description = args[1]
            else:
                tokens = listed
        return _group_created(s.user_groups.create(name, description, tokens))


def _token_list_or_none(s: Session, name: str, text: str) -> list[str] | None:
    """The second argument of ``create usergroup NAME X``: X's tokens, or None when X is the description.

    X is a token list when every comma-separated item is a token (``null``: none); when X has a comma and
    one of its items is a token or looks like one (:func:`state.tokens.looks_like_token`: a token typed
    with a character too many or too few); or when X is one token-like word ending with '=' as tokens
    do. Then an unknown item is refused, where taking X for a description would quietly make a group
    without members (and keep a token in its description). Anything else is the description ('Seoul,
    Korea', 'alpha,beta', 'TEST', '').
    """
    if not text.strip():
        return None  # '' is an empty description, not a bad list
    if is_null(text.strip()):
        return []
    items = [item.strip() for item in text.split(",")]
    if all(items) and all(s.tokens.exists(t) for t in items):
        return items
    if "," in text:
        if not any(looks_like_token(item) or s.tokens.exists(item) for item in items if item):
            return None
    elif not (text.rstrip().endswith("=") and looks_like_token(text.strip())):
        return None
    tokens = to_list(text)  # a token list with an empty item ('A,,B') is bad usage
    unknown = ", ".join(f"'{t}'" for t in tokens if not s.tokens.exists(t))
    raise NotFoundError(
        f"Token{'s' if ',' in unknown else ''} {unknown} not found, so no group was created; list tokens with "
        f"'show token' (a description, not tokens: create usergroup {name} 'DESCRIPTION' null)."
    )


@command(
    "delete usergroup",
    "Delete UserGroup",
    "delete usergroup {user group id} {force delete [true|false] : optional}",
)
def delete_usergroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "user group id")
    with ctx.write() as s:
        s.user_groups.delete(group_id, _force(args, 1))
    return Message("Delete UserGroup success.")


@command("update usergroup name", "Update UserGroup Name", "update usergroup name {user group id} {name}")
def update_usergroup_name(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "user group id")
    with ctx.write() as s:
        s.user_groups.rename(group_id, args[1])
    return Message("Update UserGroup Name success.")


@command(
    "update usergroup list",
    "Update UserGroup Token List (remove all if null)",
    "update usergroup list {user group id} {token list [token 1,token 2,... | null]}",
)
def update_usergroup_list(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "user group id")
    with ctx.write() as s:
        s.user_groups.replace_members(group_id, to_list(args[1]))
    return Message("Update UserGroup Token list success.")


@command("add usergroup", "Add Token to User Group", "add usergroup {user group id} {token}")
def add_usergroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "user group id")
    with ctx.write() as s:
        s.user_groups.add_member(group_id, args[1])
    return Message("Add Token to User Group success.")


@command("remove usergroup", "Remove Token from User Group", "remove usergroup {user group id} {token}")
def remove_usergroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "user group id")
    with ctx.write() as s:
        s.user_groups.remove_member(group_id, args[1])
    return Message("Remove UserGroup Token list success.")


# 001 shows this spelling too.
command(
    "remove usergroup list",
    "Remove Token from User Group",
    "remove usergroup list {user group id} {token}",
    hidden=True,
)(remove_usergroup)


@command("show usergroup", "Show UserGroup", "show usergroup {user group id : optional}")
def show_usergroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "user group id") if args else None
    with ctx.read() as s:
        return usergroup_table(s.user_groups.all(group_id))


# -- SDA model groups ----------------------------------------------------------------------


def modelgroup_table(groups: list[ModelGroup]) -> Table:
    """The seed's ``show sdamodelgroup`` table."""
    return Table(
        [Column("ID", "right"), Column("Name"), Column("Backend Group"), Column("Childs")],
        [
            [
                str(g.id),
                g.name,
                f"{g.backend_group_name}({g.backend_group_id})",
                ", ".join(m.name for m in g.models),
            ]
            for g in groups
        ],
        [
            {
                "id": g.id,
                "name": g.name,
                "backend_group": {"id": g.backend_group_id, "name": g.backend_group_name},
                "models": [{"id": m.id, "name": m.name} for m in g.models],
            }
            for g in groups
        ],
    )


@command(
    "create sdamodelgroup",
    "Create SDAModel Group",
    "create sdamodelgroup {name} {backend group id} "
    "{SDAModel list [SDAModel id 1,SDAModel id 2,SDAModel id 3,...] : optional}",
)
def create_sdamodelgroup(ctx: Context, args: list[str]) -> Output:
    backend_group = to_int(args[1], "backend group id")
    models = to_int_list(args[2], "SDA model id") if len(args) > 2 else []
    with ctx.write() as s:
        return _group_created(s.model_groups.create(args[0], backend_group, models))


@command(
    "delete sdamodelgroup",
    "Delete SDAModel Group",
    "delete sdamodelgroup {SDAModel group id} {force delete [true|false] : optional}",
)
def delete_sdamodelgroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "SDA model group id")
    with ctx.write() as s:
        s.model_groups.delete(group_id, _force(args, 1))
    return Message("Delete SDAModel Group success.")


@command(
    "update sdamodelgroup name",
    "Update SDAModel Group Name",
    "update sdamodelgroup name {SDAModel group id} {name}",
)
def update_sdamodelgroup_name(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "SDA model group id")
    with ctx.write() as s:
        s.model_groups.rename(group_id, args[1])
    return Message("Update SDAModel Group Name success.")


@command(
    "update sdamodelgroup backendgroup",
    "Update SDAModel Group BackendGroup",
    "update sdamodelgroup backendgroup {SDAModel group id} {backend group id}",
)
def update_sdamodelgroup_backendgroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "SDA model group id")
    backend_group = to_int(args[1], "backend group id")
    with ctx.write() as s:
        s.model_groups.set_backend_group(group_id, backend_group)
    return Message("Update SDAModel Group BackendGroup success.")


@command(
    "update sdamodelgroup list",
    "Update SDAModel Group Model List (remove all if null)",
    "update sdamodelgroup list {SDAModel group id} {SDAModel list [SDAModel id 1,SDAModel id 2,... | null]}",
)
def update_sdamodelgroup_list(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "SDA model group id")
    models = to_int_list(args[1], "SDA model id")
    with ctx.write() as s:
        s.model_groups.replace_members(group_id, models)
    return Message("Update SDAModel Group SDAModel list success.")


@command(
    "add sdamodelgroup",
    "Add SDAModel to SDAModel Group",
    "add sdamodelgroup {SDAModel group id} {SDAModel id}",
)
def add_sdamodelgroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "SDA model group id")
    model_id = to_int(args[1], "SDA model id")
    with ctx.write() as s:
        s.model_groups.add_member(group_id, model_id)
    return Message("Add SDAModel to SDAModel Group success.")


@command(
    "remove sdamodelgroup",
    "Remove SDAModel from SDAModel Group",
    "remove sdamodelgroup {SDAModel group id} {SDAModel id}",
)
def remove_sdamodelgroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "SDA model group id")
    model_id = to_int(args[1], "SDA model id")
    with ctx.write() as s:
        s.model_groups.remove_member(group_id, model_id)
    return Message("Remove SDAModel from SDAModel Group success.")


@command("show sdamodelgroup", "Show SDAModel Group", "show sdamodelgroup {SDAModel group id : optional}")
def show_sdamodelgroup(ctx: Context, args: list[str]) -> Output:
    group_id = to_int(args[0], "SDA model group id") if args else None
    with ctx.read() as s:
        return modelgroup_table(s.model_groups.all(group_id))


# -- memberships and relationships ---------------------------------------------------------


@command(
    "add membership",
    "Add Membership between User Group and SDAModel Group",
    "add membership {user group id} {SDAModel group id}",
)
def add_membership(ctx: Context, args: list[str]) -> Output:
    user_group = to_int(args[0], "user group id")
    model_group = to_int(args[1], "SDA model group id")
    with ctx.write() as s:
        s.memberships.add(user_group, model_group)
    return Message("Add Membership between User Group and SDAModel group success.")


@command(
    "remove membership",
    "Remove Membership between User Group and SDAModel Group",
    "remove membership {user group id} {SDAModel group id}",
)
def remove_membership(ctx: Context, args: list[str]) -> Output:
    user_group = to_int(args[0], "user group id")
    model_group = to_int(args[1], "SDA model group id")
    with ctx.write() as s:
        s.memberships.remove(user_group, model_group)
    return Message("Remove Membership between User Group and SDAModel group success.")


def _links(ctx: Context, args: list[str]) -> tuple[list[UserGroup], dict[int, list[ModelGroup]]]:
    group_id = to_int(args[0], "user group id") if args else None
    with ctx.read() as s:
        user_groups = s.user_groups.all(group_id)
        model_groups = {g.id: g for g in s.model_groups.all()}
        links: dict[int, list[ModelGroup]] = {}
        for ug, mg in s.memberships.pairs():
            links.setdefault(ug, []).append(model_groups[mg])
    return user_groups, links


@command(
    "show membership",
    "Show Membership between User Group SDAModel Group",
    "show membership {user group id : optional}",
)
def show_membership(ctx: Context, args: list[str]) -> Output:
    user_groups, links = _links(ctx, args)
    return Table(
        [Column("ID", "right"), Column("Name"), Column("Childs")],
        [[str(g.id), g.name, ", ".join(m.name for m in links.get(g.id, []))] for g in user_groups],
        [
            {
                "id": g.id,
                "name": g.name,
                "sdamodel_groups": [{"id": m.id, "name": m.name} for m in links.get(g.id, [])],
            }
            for g in user_groups
        ],
    )


@command(
    "show relationship",
    "Show Relations between User Group, SDAModel Group, Backend Group",
    "show relationship {user group id : optional}",
)
def show_relationship(ctx: Context, args: list[str]) -> Output:
    user_groups, links = _links(ctx, args)
    rows: list[list[str]] = []
    records: list[dict[str, object]] = []
    for g in user_groups:
        model_groups = links.get(g.id, [])
        if not model_groups:
            rows.append([f"{g.name}({g.id})", "", ""])
        for n, m in enumerate(model_groups):
            rows.append(
                [
                    f"{g.name}({g.id})" if n == 0 else "",
                    f"{m.name}({m.id})",
                    f"{m.backend_group_name}({m.backend_group_id})",
                ]
            )
            records.append(
                {
                    "user_group": {"id": g.id, "name": g.name},
                    "sdamodel_group": {"id": m.id, "name": m.name},
                    "backend_group": {"id": m.backend_group_id, "name": m.backend_group_name},
                }
            )
    return Table([Column("User Group(id)"), Column("SDAModel Group(id)"), Column("Backend Group(id)")], rows, records)
