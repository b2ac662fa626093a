"""SDA and SDA model commands of moreh_smclient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import Smc, fails, grid_lines, id_of, ok, start_running_job, state_unchanged

NewToken = Callable[..., str]
Cases = list[tuple[str, int, tuple[str, ...]]]

SDA_HEADER = "|  ID  |            Token           |  SDAModel  |  Reserved  |  Be_ID  |  Device_ID  |"


def sdas_of(smc: Smc, token: str) -> list[dict[str, Any]]:
    """The token's SDAs as ``get sda --json`` records."""
    records: list[dict[str, Any]] = ok(smc(f"get sda {token}", json=True)).json
    return records


def current_sda(smc: Smc, token: str) -> int | None:
    """The token's current SDA."""
    value: int | None = ok(smc(f"get token {token}", json=True)).json[0]["current_sda"]
    return value


def check_failures(smc: Smc, cases: Cases, **values: str) -> None:
    """Every line fails with its code and needles, and none of them changes the state."""
    with state_unchanged():
        for line, code, needles in cases:
            fails(smc(line.format(**values)), code, *(n.format(**values) for n in needles))


# -- create sda / create resv_sda ----------------------------------------------------------


def test_create_sda_in_the_000_order_and_get_sda(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create sda {token} sda_name 2"), "Create SDA success.")
    assert ok(smc(f"get sda {token}")).lines == grid_lines(
        SDA_HEADER, f"|  1   |  {token}  |  2         |  False     |         |             |"
    )
    record = sdas_of(smc, token)[0]
    assert (record["description"], record["sdamodel"], record["reserved"]) == ("sda_name", 2, False)
    assert current_sda(smc, token) == 1  # a token's first SDA becomes its current one


def test_create_sda_in_the_001_order(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create sda {token} 1 sda_name"), "Create SDA success.")
    assert [(r["sdamodel"], r["description"]) for r in sdas_of(smc, token)] == [(1, "sda_name")]


def test_create_sda_prefers_the_000_order_when_both_arguments_are_model_ids(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create sda {token} 5 3"))
    assert [(r["sdamodel"], r["description"]) for r in sdas_of(smc, token)] == [(3, "5")]


def test_create_sda_through_an_sdamodel_group(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    group = id_of(ok(smc("create sdamodelgroup mg1 0 1,2")))
    ok(smc(f"create sda {token} desc 2 {group}"), "Create SDA success.")
    assert sdas_of(smc, token)[0]["sdamodel_group"] == group


def test_create_resv_sda_holds_devices_until_deleted(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc("create backend node1 10.0.0.1 8"))
    ok(smc(f"create resv_sda {token} kept 3"), "Create SDA success.")
    row = f"|  1   |  {token}  |  3         |  True      |  1      |  0,1,2,3    |"
    assert ok(smc(f"get sda {token}")).lines[3] == row
    event = ok(smc("show eventlog 1", json=True)).json[0]
    assert (event["action"], event["token"]) == ("CREATE_RESV_SDA", token)
    check_failures(
        smc,
        [
            ("update sda {t} 1", 1, ("SDA 1 is reserved",)),
            ("update device 1 0 SHUTDOWN", 1, ("device 0 is held by reserved SDA 1",)),
            ("delete backend 1", 1, ("held by reserved SDA 1",)),
        ],
        t=token,
    )
    ok(smc(f"delete sda {token}"))
    ok(smc("update device 1 0 SHUTDOWN"))  # the reservation ended with the SDA


def test_create_resv_sda_needs_enough_idle_devices(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc("create backend node1 10.0.0.1 2"))
    check_failures(smc, [("create resv_sda {t} big 3", 1, ("Cannot reserve 4 device(s)", "only 2 idle"))], t=token)
    ok(smc(f"create resv_sda {token} small 2"))


def test_max_sda_limits_how_many_sdas_a_token_holds(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create sda {token} first 1"))
    check_failures(
        smc,
        [("create sda {t} second 1", 1, ("already holds 1 SDA(s)", "update token sda max {t} 2"))],
        t=token,
    )
    ok(smc(f"update token sda max {token} 2"))
    ok(smc(f"create sda {token} second 1"))
    assert [r["id"] for r in sdas_of(smc, token)] == [1, 2]
    assert current_sda(smc, token) == 1


def test_create_sda_rejects_bad_input(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc("create sdamodelgroup mg1 0 1"))
    cases: Cases = [
        ("create sda nosuch d 1", 1, ("Token 'nosuch' not found",)),
        ("create sda {t} d 999", 1, ("Neither 'd' nor '999' is an SDA model id", "show sdamodel")),
        ("create sda {t} d 999 1", 1, ("SDA model 999 not found",)),
        ("create sda {t} d x 1", 2, ("SDA model id must be an integer, not 'x'",)),
        ("create sda {t} d 1 x", 2, ("SDA model group id must be an integer",)),
        ("create sda {t} d 1 7", 1, ("SDA model group 7 not found",)),
        ("create sda {t} d 2 1", 1, ("SDA model 2 is not in SDA model group 1", "add sdamodelgroup 1 2")),
        ("create sda {t} d", 2, ("usages : create sda {{token}} {{description}} {{SDAModel ID}}",)),
        ("create sda {t} d 1 1 extra", 2, ("takes 3 to 4 argument(s), got 5",)),
        ("create resv_sda nosuch d 1", 1, ("Token 'nosuch' not found",)),
        ("create resv_sda {t} d 999", 1, ("Neither 'd' nor '999' is an SDA model id",)),
        ("create resv_sda {t}", 2, ("usages : create resv_sda",)),
    ]
    check_failures(smc, cases, t=token)


def test_a_token_in_a_user_group_may_only_use_the_models_it_reaches(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create usergroup ug1 {token}"))
    check_failures(
        smc,
        [("create sda {t} d 1", 1, ("may not use SDA model 1", "show sdamodel {t}", "show relationship"))],
        t=token,
    )
    ok(smc("create sdamodelgroup mg1 0 1,2"))
    ok(smc("add membership 1 1"))
    ok(smc(f"create sda {token} d 1"))
    assert sdas_of(smc, token)[0]["sdamodel_group"] == 1  # the group the model is reached through
    check_failures(smc, [("update sda {t} 3", 1, ("may not use SDA model 3",))], t=token)
    ok(smc(f"update sda {token} 2"), "Update SDA success.")


# -- show sda ----------------------------------------------------------------------------------


def test_show_sda_lists_every_sda_and_show_sda_token_sorts_by_token(smc: Smc, new_token: NewToken) -> None:
    tokens = [new_token(f"user{i}") for i in range(3)]
    for token in tokens:
        ok(smc(f"create sda {token} d 1"))
    by_id = [(r["id"], r["token"]) for r in ok(smc("show sda", json=True)).json]
    assert by_id == [(1, tokens[0]), (2, tokens[1]), (3, tokens[2])]
    by_token = [r["token"] for r in ok(smc("show sda token", json=True)).json]
    assert by_token == sorted(tokens)
    assert ok(smc("show sda")).lines == grid_lines(
        SDA_HEADER,
        *(f"|  {n}   |  {t}  |  1         |  False     |         |             |" for n, t in enumerate(tokens, 1)),
    )


def test_running_sdas_show_their_backend_and_devices(smc: Smc, new_token: NewToken) -> None:
    token, other = new_token("busy"), new_token("idle")
    ok(smc(f"create sda {token} d 2"))
    ok(smc(f"create sda {other} d 1"))
    assert ok(smc("show sda running", json=True)).json == []
    start_running_job(token, 1)
    assert ok(smc("show sda running")).lines == grid_lines(
        SDA_HEADER, f"|  1   |  {token}  |  2         |  False     |  1      |  0,1        |"
    )
    assert sdas_of(smc, token)[0]["devices"] == [
        {"backend_id": 1, "host": "job-node", "index": 0},
        {"backend_id": 1, "host": "job-node", "index": 1},
    ]


def test_get_sda_of_a_token_without_sdas_prints_an_empty_grid(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    assert ok(smc(f"get sda {token}")).lines == grid_lines(
        "|  ID  |  Token  |  SDAModel  |  Reserved  |  Be_ID  |  Device_ID  |"
    )
    check_failures(
        smc,
        [("get sda nosuch", 1, ("Token 'nosuch' not found",)), ("get sda", 2, ("usages : get sda {{token}}",))],
    )


# -- update sda / update sda id ----------------------------------------------------------------


def test_update_sda_switches_the_current_sda(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"update token sda max {token} 2"))
    ok(smc(f"create sda {token} a 1"))
    ok(smc(f"create sda {token} b 1"))
    ok(smc(f"update token sda current {token} 2"))
    ok(smc(f"update sda {token} 4"), "Update SDA success.")
    assert [(r["id"], r["sdamodel"]) for r in sdas_of(smc, token)] == [(1, 1), (2, 4)]
    ok(smc(f"update sda id {token} 1 3"), "Update SDA success.")
    assert [(r["id"], r["sdamodel"]) for r in sdas_of(smc, token)] == [(1, 3), (2, 4)]
    event = ok(smc("show eventlog 1", json=True)).json[0]
    assert (event["action"], event["detail"]) == ("UPDATE_SDA", "id=1 model=3")


def test_update_sda_with_a_model_group(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create sda {token} a 1"))
    ok(smc("create sdamodelgroup mg1 0 5"))
    ok(smc(f"update sda {token} 5 1"))
    assert (sdas_of(smc, token)[0]["sdamodel"], sdas_of(smc, token)[0]["sdamodel_group"]) == (5, 1)


def test_update_sda_rejects_bad_input(smc: Smc, new_token: NewToken) -> None:
    token, other, empty = new_token("t"), new_token("o"), new_token("e")
    ok(smc(f"update token sda max {token} 2"))
    ok(smc("create backend node1 10.0.0.1 1"))
    ok(smc(f"create sda {token} a 1"))
    ok(smc(f"create resv_sda {token} r 1"))
    ok(smc(f"create sda {other} a 1"))
    cases: Cases = [
        ("update sda nosuch 1", 1, ("Token 'nosuch' not found",)),
        ("update sda {e} 1", 1, ("has no SDA", "create sda")),
        ("update sda {t} 999", 1, ("SDA model 999 not found",)),
        ("update sda {t} two", 2, ("SDA model id must be an integer, not 'two'",)),
        ("update sda {t} 1 9", 1, ("SDA model group 9 not found",)),
        ("update sda {t}", 2, ("usages : update sda {{token}} {{SDAModel ID}}",)),
        ("update sda id {t} 2 3", 1, ("SDA 2 is reserved",)),
        ("update sda id {t} 3 3", 1, ("SDA 3 does not belong to token '{t}'",)),
        ("update sda id {t} 99 3", 1, ("SDA 99 not found",)),
        ("update sda id {t} x 3", 2, ("SDA ID must be an integer",)),
        ("update sda id {t} 1", 2, ("takes 3 to 4 argument(s), got 2",)),
    ]
    check_failures(smc, cases, t=token, e=empty)


def test_update_and_delete_sda_refused_while_a_job_runs_on_it(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create sda {token} a 1"))
    job = start_running_job(token, 1)
    check_failures(
        smc,
        [
            ("update sda {t} 2", 1, (f"while job {job} is RUNNING", f"release {job}")),
            ("delete sda {t}", 1, (f"SDA 1 cannot be deleted while job {job} is RUNNING",)),
            ("delete sda {t} 1", 1, ("cannot be deleted",)),
        ],
        t=token,
    )


# -- delete sda --------------------------------------------------------------------------------


def test_delete_one_sda_moves_current_to_the_remaining_one(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"update token sda max {token} 3"))
    for name in ("a", "b", "c"):
        ok(smc(f"create sda {token} {name} 1"))
    ok(smc(f"delete sda {token} 1"), "Delete SDA success.")
    assert [r["id"] for r in sdas_of(smc, token)] == [2, 3]
    assert current_sda(smc, token) == 2
    ok(smc(f"delete sda {token}"), "Delete SDA success.")  # all the rest
    assert sdas_of(smc, token) == []
    assert current_sda(smc, token) is None
    actions = [e["action"] for e in ok(smc("show eventlog 3", json=True)).json]
    assert actions == ["DELETE_SDA", "DELETE_SDA", "DELETE_SDA"]


def test_delete_sda_rejects_bad_input(smc: Smc, new_token: NewToken) -> None:
    token, other, empty = new_token("t"), new_token("o"), new_token("e")
    ok(smc(f"create sda {token} a 1"))
    ok(smc(f"create sda {other} a 1"))
    cases: Cases = [
        ("delete sda nosuch", 1, ("Token 'nosuch' not found",)),
        ("delete sda {e}", 1, ("Token '{e}' has no SDA to delete",)),
        ("delete sda {t} 2", 1, ("SDA 2 does not belong to token '{t}'",)),
        ("delete sda {t} x", 2, ("SDA ID must be an integer",)),
        ("delete sda", 2, ("usages : delete sda {{token}} {{SDA ID : optional}}",)),
        ("delete sda {t} 1 2", 2, ("takes 1 to 2 argument(s), got 3",)),
    ]
    check_failures(smc, cases, t=token, e=empty)


# -- SDA models --------------------------------------------------------------------------------


def test_show_sdamodel_lists_the_seed_models(smc: Smc) -> None:
    assert ok(smc("show sdamodel")).lines == grid_lines(
        "|  ID  |        Name        |  Devices  |",
        "|   1  |  Small.64GB        |        1  |",
        "|   2  |  Medium.128GB      |        2  |",
        "|   3  |  Large.256GB       |        4  |",
        "|   4  |  xLarge.512GB      |        8  |",
        "|   5  |  2xLarge.1024GB    |       16  |",
        "|   6  |  3xLarge.1536GB    |       24  |",
        "|   7  |  4xLarge.2048GB    |       32  |",
        "|   8  |  6xLarge.3072GB    |       48  |",
        "|   9  |  8xLarge.4096GB    |       64  |",
        "|  10  |  12xLarge.6144GB   |       96  |",
        "|  11  |  24xLarge.12288GB  |      192  |",
        "|  12  |  48xLarge.24576GB  |      384  |",
        "|  52  |  1.5xLarge.768GB   |       12  |",
    )


def test_create_and_delete_sdamodel(smc: Smc) -> None:
    model = id_of(ok(smc("create sdamodel micro 1"), "Create SDAModel Success (id : 53)"))
    assert ok(smc("show sdamodel", json=True)).json[-1] == {"id": model, "name": "micro", "devices": 1}
    assert ok(smc("show sdamodel")).lines[-2] == "|  53  |  micro             |        1  |"
    ok(smc(f"create sdamodelgroup mg1 0 1,{model}"))
    ok(smc(f"delete sdamodel {model}"), "Delete SDAModel success.")
    assert model not in [m["id"] for m in ok(smc("show sdamodel", json=True)).json]
    assert ok(smc("show sdamodelgroup 1", json=True)).json[0]["models"] == [{"id": 1, "name": "Small.64GB"}]
    assert ok(smc("show eventlog 1", json=True)).json[0]["action"] == "DELETE_SDAMODEL"


def test_sdamodel_commands_reject_bad_input(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create sda {token} d 2"))
    cases: Cases = [
        ("create sdamodel Small.64GB 1", 1, ("An SDA model named 'Small.64GB' already exists",)),
        ("create sdamodel tiny 0", 1, ("Device count 0 is out of range",)),
        ("create sdamodel tiny 4097", 1, ("Device count 4097 is out of range",)),
        ("create sdamodel tiny many", 2, ("device count must be an integer, not 'many'",)),
        ("create sdamodel tiny", 2, ("usages : create sdamodel {{name}} {{devices}}",)),
        ("delete sdamodel 2", 1, ("SDA model 2 is used by 1 SDA(s)", "update sda")),
        ("delete sdamodel 99", 1, ("SDA model 99 not found",)),
        ("delete sdamodel x", 2, ("SDA model id must be an integer",)),
        ("delete sdamodel", 2, ("usages : delete sdamodel {{SDAModel ID}}",)),
        ("show sdamodel nosuch", 1, ("Token 'nosuch' not found",)),
        ("show sdamodel a b", 2, ("takes 0 to 1 argument(s), got 2",)),
    ]
    check_failures(smc, cases)


def test_show_sdamodel_for_a_token_shows_only_what_its_groups_reach(smc: Smc, new_token: NewToken) -> None:
    free, limited, stranded = new_token("free"), new_token("limited"), new_token("stranded")
    assert len(ok(smc(f"show sdamodel {free}", json=True)).json) == 13  # in no user group: every model
    ok(smc(f"create usergroup ugA {limited}"))
    ok(smc(f"create usergroup ugB {stranded}"))
    ok(smc("create sdamodelgroup mgA 0 1,2"))
    ok(smc("create sdamodelgroup mgB 0 2,4"))
    ok(smc("add membership 1 1"))
    ok(smc("add membership 1 2"))
    assert ok(smc(f"show sdamodel {limited}")).lines == grid_lines(
        "|  ID  |      Name      |  Devices  |",
        "|   1  |  Small.64GB    |        1  |",
        "|   2  |  Medium.128GB  |        2  |",
        "|   4  |  xLarge.512GB  |        8  |",
    )
    assert ok(smc(f"show sdamodel {stranded}", json=True)).json == []  # ugB reaches no model group


def test_create_sda_with_a_non_ascii_digit_is_one_clear_line(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    with state_unchanged():
        for line in (f"create sda {token} ² d", f"create sda {token} d ²", f"create resv_sda {token} ² d"):
            fails(smc(line), 2, "is an SDA model id", "show sdamodel")
