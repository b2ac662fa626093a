"""User groups, SDA model groups, memberships and relationships in moreh_smclient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import Smc, fails, grid_lines, id_of, ok, state_unchanged

NewToken = Callable[..., str]
Cases = list[tuple[str, int, tuple[str, ...]]]


def check_failures(smc: Smc, cases: Cases, **values: str) -> None:
    """Every line fails with its code and needles, and none of them changes the state."""
    with state_unchanged():
        for line, code, needles in cases:
            fails(smc(line.format(**values)), code, *(n.format(**values) for n in needles))


def records(smc: Smc, line: str) -> list[dict[str, Any]]:
    """The ``--json`` records of a show command."""
    found: list[dict[str, Any]] = ok(smc(line, json=True)).json
    return found


def last_action(smc: Smc) -> str:
    """The action of the newest event."""
    action: str = ok(smc("show eventlog 1", json=True)).json[0]["action"]
    return action


# -- user groups -----------------------------------------------------------------------------


def test_create_usergroup_in_every_seed_form(smc: Smc, new_token: NewToken) -> None:
    a, b = new_token("a"), new_token("b")
    assert id_of(ok(smc("create usergroup group_A"), "Create Group Success (id : 1)")) == 1
    assert id_of(ok(smc(f"create usergroup ug1 {a},{b}"))) == 2  # 000: name and token list
    assert id_of(ok(smc(f"create usergroup group_C TEST {a}"))) == 3  # 001: name, description, tokens
    assert id_of(ok(smc("create usergroup group_D 'just a description'"))) == 4
    assert id_of(ok(smc("create usergroup group_E ''"))) == 5
    assert [(g["name"], g["description"], g["tokens"]) for g in records(smc, "show usergroup")] == [
        ("group_A", "", []),
        ("ug1", "", [a, b]),
        ("group_C", "TEST", [a]),
        ("group_D", "just a description", []),
        ("group_E", "", []),
    ]
    assert last_action(smc) == "CREATE_USERGROUP"


def test_show_usergroup_prints_the_001_grid(smc: Smc, new_token: NewToken) -> None:
    a, b = new_token("a"), new_token("b")
    ok(smc("create usergroup group_A"))
    ok(smc(f"create usergroup group_B '' {a},{b}"))
    ok(smc(f"create usergroup group_C TEST {b}"))
    assert ok(smc("show usergroup")).lines == grid_lines(
        "|  ID  |   Name    |  Description  |                        Childs                        |",
        "|   1  |  group_A  |               |                                                      |",
        f"|   2  |  group_B  |               |  {a}, {b}  |",
        f"|   3  |  group_C  |  TEST         |  {b}                            |",
    )
    assert ok(smc("show usergroup 3")).lines == grid_lines(
        "|  ID  |   Name    |  Description  |           Childs           |",
        f"|   3  |  group_C  |  TEST         |  {b}  |",
    )


def test_usergroup_list_add_remove_rename_and_delete(smc: Smc, new_token: NewToken) -> None:
    a, b, c = new_token("a"), new_token("b"), new_token("c")
    group = id_of(ok(smc(f"create usergroup ug {a}")))
    ok(smc(f"update usergroup list {group} {b},{c}"), "Update UserGroup Token list success.")
    assert records(smc, f"show usergroup {group}")[0]["tokens"] == [b, c]
    ok(smc(f"update usergroup list {group} Null"), "Update UserGroup Token list success.")
    assert records(smc, f"show usergroup {group}")[0]["tokens"] == []
    ok(smc(f"add usergroup {group} {a}"), "Add Token to User Group success.")
    ok(smc(f"add usergroup {group} {c}"))
    assert records(smc, f"show usergroup {group}")[0]["tokens"] == [a, c]
    ok(smc(f"remove usergroup {group} {a}"), "Remove UserGroup Token list success.")
    ok(smc(f"remove usergroup list {group} {c}"), "Remove UserGroup Token list success.")  # 001's spelling
    assert records(smc, f"show usergroup {group}")[0]["tokens"] == []
    ok(smc(f"update usergroup name {group} renamed"), "Update UserGroup Name success.")
    assert records(smc, f"show usergroup {group}")[0]["name"] == "renamed"
    ok(smc(f"delete usergroup {group}"), "Delete UserGroup success.")
    assert records(smc, "show usergroup") == []
    assert last_action(smc) == "DELETE_USERGROUP"


def test_deleting_a_usergroup_with_members_needs_force(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create usergroup ug {token}"))
    ok(smc("create sdamodelgroup mg 0 1"))
    ok(smc("add membership 1 1"))
    check_failures(smc, [("delete usergroup 1", 1, ("still has 1 member(s)", "true"))])
    check_failures(smc, [("delete usergroup 1 false", 1, ("still has 1 member(s)",))])
    ok(smc("delete usergroup 1 true"), "Delete UserGroup success.")
    assert records(smc, "show usergroup") == []
    assert records(smc, "show membership") == []
    assert records(smc, "show sdamodelgroup 1")[0]["name"] == "mg"  # the other side stays


def test_usergroup_commands_reject_bad_input(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create usergroup ug1 {token}"))
    ok(smc("create usergroup ug2"))
    cases: Cases = [
        ("create usergroup ug1", 1, ("A user group named 'ug1' already exists (id 1)",)),
        ("create usergroup ''", 1, ("must not be empty",)),
        ("create usergroup g d nosuch", 1, ("Token 'nosuch' not found",)),
        ("create usergroup g d {t},{t}", 1, ("names the same member twice",)),
        ("create usergroup g d {t},", 2, ("has an empty item",)),
        ("create usergroup", 2, ("usages : create usergroup {{name}}",)),
        ("create usergroup a b c d", 2, ("takes 1 to 3 argument(s), got 4",)),
        ("delete usergroup 9", 1, ("User group 9 not found", "show usergroup")),
        ("delete usergroup x", 2, ("user group id must be an integer, not 'x'",)),
        ("delete usergroup 1 maybe", 2, ("force delete flag must be true or false",)),
        ("update usergroup name 1 ug2", 1, ("A user group named 'ug2' already exists",)),
        ("update usergroup name 9 x", 1, ("User group 9 not found",)),
        ("update usergroup name 1", 2, ("usages : update usergroup name {{user group id}} {{name}}",)),
        ("update usergroup list 1 nosuch", 1, ("Token 'nosuch' not found",)),
        ("update usergroup list 9 null", 1, ("User group 9 not found",)),
        ("update usergroup list 1", 2, ("usages : update usergroup list",)),
        ("add usergroup 1 {t}", 1, ("is already in user group 1",)),
        ("add usergroup 1 nosuch", 1, ("Token 'nosuch' not found",)),
        ("add usergroup 9 {t}", 1, ("User group 9 not found",)),
        ("remove usergroup 2 {t}", 1, ("is not in user group 2",)),
        ("remove usergroup 9 {t}", 1, ("User group 9 not found",)),
        ("remove usergroup 1", 2, ("usages : remove usergroup {{user group id}} {{token}}",)),
        ("show usergroup 9", 1, ("User group 9 not found",)),
        ("show usergroup one", 2, ("user group id must be an integer",)),
    ]
    check_failures(smc, cases, t=token)


# -- SDA model groups --------------------------------------------------------------------------


def test_create_and_show_sdamodelgroup_like_the_seed(smc: Smc) -> None:
    for name in ("micro", "small", "large"):
        ok(smc(f"create sdamodel {name} 1"))
    ok(smc("create backendgroup bg1"))
    assert id_of(ok(smc("create sdamodelgroup mg1 0 53,54,55"), "Create Group Success (id : 1)")) == 1
    assert id_of(ok(smc("create sdamodelgroup mg2 1"))) == 2
    assert ok(smc("show sdamodelgroup")).lines == grid_lines(
        "|  ID  |  Name  |        Backend Group       |        Childs         |",
        "|   1  |  mg1   |  default_backend_group(0)  |  micro, small, large  |",
        "|   2  |  mg2   |  bg1(1)                    |                       |",
    )
    assert records(smc, "show sdamodelgroup 2") == [
        {"id": 2, "name": "mg2", "backend_group": {"id": 1, "name": "bg1"}, "models": []}
    ]
    assert last_action(smc) == "CREATE_SDAMODELGROUP"


def test_sdamodelgroup_list_add_remove_rename_and_backendgroup(smc: Smc) -> None:
    ok(smc("create backendgroup bg1"))
    group = id_of(ok(smc("create sdamodelgroup mg 0 1")))

    def models() -> list[int]:
        return [m["id"] for m in records(smc, f"show sdamodelgroup {group}")[0]["models"]]

    ok(smc(f"update sdamodelgroup list {group} 3,2"), "Update SDAModel Group SDAModel list success.")
    assert models() == [3, 2]
    ok(smc(f"update sdamodelgroup list {group} null"))
    assert models() == []
    ok(smc(f"add sdamodelgroup {group} 4"), "Add SDAModel to SDAModel Group success.")
    ok(smc(f"add sdamodelgroup {group} 52"))
    assert models() == [4, 52]
    ok(smc(f"remove sdamodelgroup {group} 4"), "Remove SDAModel from SDAModel Group success.")
    assert models() == [52]
    ok(smc(f"update sdamodelgroup name {group} renamed"), "Update SDAModel Group Name success.")
    ok(smc(f"update sdamodelgroup backendgroup {group} 1"), "Update SDAModel Group BackendGroup success.")
    assert records(smc, f"show sdamodelgroup {group}")[0]["backend_group"] == {"id": 1, "name": "bg1"}
    assert records(smc, f"show sdamodelgroup {group}")[0]["name"] == "renamed"


def test_deleting_an_sdamodelgroup_with_models_needs_force_and_frees_its_sdas(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc("create sdamodelgroup mg 0 1"))
    ok(smc(f"create sda {token} d 1 1"))
    check_failures(smc, [("delete sdamodelgroup 1", 1, ("SDA model group 1 still has 1 member(s)",))])
    ok(smc("delete sdamodelgroup 1 true"), "Delete SDAModel Group success.")
    assert records(smc, "show sdamodelgroup") == []
    assert records(smc, f"get sda {token}")[0]["sdamodel_group"] is None


def test_sdamodelgroup_commands_reject_bad_input(smc: Smc) -> None:
    ok(smc("create sdamodelgroup mg1 0 1"))
    ok(smc("create sdamodelgroup mg2 0"))
    cases: Cases = [
        ("create sdamodelgroup mg1 0", 1, ("SDA model group named 'mg1' already exists (id 1)",)),
        ("create sdamodelgroup g 7", 1, ("Backend group 7 not found",)),
        ("create sdamodelgroup g x", 2, ("backend group id must be an integer",)),
        ("create sdamodelgroup g 0 1,999", 1, ("SDA model 999 not found",)),
        ("create sdamodelgroup g 0 1,1", 1, ("names the same member twice",)),
        ("create sdamodelgroup g 0 1,a", 2, ("SDA model id must be an integer, not 'a'",)),
        ("create sdamodelgroup g", 2, ("usages : create sdamodelgroup {{name}} {{backend group id}}",)),
        ("delete sdamodelgroup 9", 1, ("SDA model group 9 not found", "show sdamodelgroup")),
        ("update sdamodelgroup name 1 mg2", 1, ("named 'mg2' already exists",)),
        ("update sdamodelgroup name 9 x", 1, ("SDA model group 9 not found",)),
        ("update sdamodelgroup backendgroup 1 5", 1, ("Backend group 5 not found",)),
        ("update sdamodelgroup backendgroup 9 0", 1, ("SDA model group 9 not found",)),
        ("update sdamodelgroup list 1 999", 1, ("SDA model 999 not found",)),
        ("update sdamodelgroup list 1", 2, ("usages : update sdamodelgroup list",)),
        ("add sdamodelgroup 1 1", 1, ("SDA model 1 is already in SDA model group 1",)),
        ("add sdamodelgroup 1 999", 1, ("SDA model 999 not found",)),
        ("add sdamodelgroup 9 1", 1, ("SDA model group 9 not found",)),
        ("remove sdamodelgroup 2 1", 1, ("SDA model 1 is not in SDA model group 2",)),
        ("remove sdamodelgroup 1 x", 2, ("SDA model id must be an integer",)),
        ("show sdamodelgroup 9", 1, ("SDA model group 9 not found",)),
    ]
    check_failures(smc, cases)


# -- memberships and relationships -------------------------------------------------------------


def build_seed_groups(smc: Smc) -> None:
    """The group layout of the seeds' examples: ug1, ug2 -> mg1 (default group), mg2 (bg1)."""
    ok(smc("create usergroup ug1"))
    ok(smc("create usergroup ug2"))
    ok(smc("create backendgroup bg1"))
    ok(smc("create sdamodelgroup mg1 0 1,2,3"))
    ok(smc("create sdamodelgroup mg2 1"))
    for user_group, model_group in ((1, 1), (1, 2), (2, 1), (2, 2)):
        ok(smc(f"add membership {user_group} {model_group}"))


def test_membership_add_show_remove(smc: Smc) -> None:
    build_seed_groups(smc)
    assert ok(smc("show membership")).lines == grid_lines(
        "|  ID  |  Name  |   Childs   |",
        "|   1  |  ug1   |  mg1, mg2  |",
        "|   2  |  ug2   |  mg1, mg2  |",
    )
    ok(smc("remove membership 1 1"), "Remove Membership between User Group and SDAModel group success.")
    assert last_action(smc) == "REMOVE_MEMBERSHIP"
    assert records(smc, "show membership 1") == [
        {"id": 1, "name": "ug1", "sdamodel_groups": [{"id": 2, "name": "mg2"}]}
    ]
    ok(smc("add membership 1 1"), "Add Membership between User Group and SDAModel group success.")
    assert last_action(smc) == "ADD_MEMBERSHIP"
    assert [g["name"] for g in records(smc, "show membership 1")[0]["sdamodel_groups"]] == ["mg1", "mg2"]


def test_show_relationship_like_the_seed(smc: Smc) -> None:
    build_seed_groups(smc)
    ok(smc("create usergroup ug3"))  # no membership yet: listed alone
    assert ok(smc("show relationship")).lines == grid_lines(
        "|  User Group(id)  |  SDAModel Group(id)  |      Backend Group(id)     |",
        "|  ug1(1)          |  mg1(1)              |  default_backend_group(0)  |",
        "|                  |  mg2(2)              |  bg1(1)                    |",
        "|  ug2(2)          |  mg1(1)              |  default_backend_group(0)  |",
        "|                  |  mg2(2)              |  bg1(1)                    |",
        "|  ug3(3)          |                      |                            |",
    )
    assert records(smc, "show relationship 2") == [
        {
            "user_group": {"id": 2, "name": "ug2"},
            "sdamodel_group": {"id": 1, "name": "mg1"},
            "backend_group": {"id": 0, "name": "default_backend_group"},
        },
        {
            "user_group": {"id": 2, "name": "ug2"},
            "sdamodel_group": {"id": 2, "name": "mg2"},
            "backend_group": {"id": 1, "name": "bg1"},
        },
    ]


def test_membership_commands_reject_bad_input(smc: Smc) -> None:
    build_seed_groups(smc)
    ok(smc("create usergroup lonely"))
    cases: Cases = [
        ("add membership 1 1", 1, ("User group 1 is already a member of SDA model group 1",)),
        ("add membership 9 1", 1, ("User group 9 not found",)),
        ("add membership 1 9", 1, ("SDA model group 9 not found",)),
        ("add membership 1", 2, ("usages : add membership {{user group id}} {{SDAModel group id}}",)),
        ("add membership x 1", 2, ("user group id must be an integer",)),
        ("remove membership 3 1", 1, ("User group 3 has no membership with SDA model group 1", "show membership")),
        ("remove membership 1 9", 1, ("SDA model group 9 not found",)),
        ("remove membership 1 2 3", 2, ("takes 2 argument(s), got 3",)),
        ("show membership 9", 1, ("User group 9 not found",)),
        ("show relationship 9", 1, ("User group 9 not found",)),
        ("show relationship x", 2, ("user group id must be an integer",)),
    ]
    check_failures(smc, cases)


def test_create_usergroup_description_that_is_not_a_clean_list(smc: Smc) -> None:
    ok(smc('create usergroup research "Research team, Seoul,"'), "Create Group Success (id : 1)")
    groups = ok(smc("show usergroup", json=True)).json
    assert [(g["name"], g["description"], g["tokens"]) for g in groups] == [("research", "Research team, Seoul,", [])]


def test_create_usergroup_refuses_a_token_list_naming_an_unknown_token(smc: Smc, new_token: NewToken) -> None:
    a, b = new_token("a"), new_token("b")
    unknown = "dGFlczE2NzY2MDAwNDAzMTk="  # a token's shape (the 000 manual's), but no such token here
    cases: Cases = [
        ("create usergroup team {a},{b}x", 1, ("Token '{b}x' not found", "no group was created", "show token")),
        ("create usergroup team {a},{b_short}", 1, ("Token '{b_short}' not found",)),
        ("create usergroup team {a},{unknown}", 1, ("Token '{unknown}' not found",)),
        ("create usergroup team {unknown},{a}x", 1, ("Tokens '{unknown}', '{a}x' not found",)),
        ("create usergroup team {unknown}", 1, ("Token '{unknown}' not found",)),  # one token: it ends in '='
        ("create usergroup team {a},zzzz", 1, ("Token 'zzzz' not found",)),  # a token beside a typo: a list
        ("create usergroup team zz,{b}x", 1, ("Tokens 'zz', '{b}x' not found",)),
        ("create usergroup team {a},,{b}", 2, ("has an empty item",)),
        ("create usergroup team TEST {a},{b}x", 1, ("Token '{b}x' not found",)),  # 001's form already did this
    ]
    check_failures(smc, cases, a=a, b=b, b_short=b[:-1], unknown=unknown)
    assert "'DESCRIPTION' null" in fails(smc(f"create usergroup team {a},{b}x"), 1)
    ok(smc(f"create usergroup team {a},{b}"))
    assert records(smc, "show usergroup") == [{"id": 1, "name": "team", "description": "", "tokens": [a, b]}]


def test_create_usergroup_text_that_is_no_token_list_is_the_description(smc: Smc) -> None:
    for n, description in enumerate(["Seoul, Korea", "alpha,beta", "MachineLearningTeam2024", "TEST", "a=b"]):
        ok(smc(f"create usergroup g{n} '{description}'"))
    ok(smc("create usergroup none_of_them null"))
    assert [(g["description"], g["tokens"]) for g in records(smc, "show usergroup")] == [
        ("Seoul, Korea", []),
        ("alpha,beta", []),
        ("MachineLearningTeam2024", []),
        ("TEST", []),
        ("a=b", []),
        ("", []),
    ]
