"""Token commands of moreh_smclient: create/delete/show/get, updates and env values."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Smc, fails, grid_lines, ok, start_running_job, state_unchanged, token_of

Rejects = Callable[..., str]
NewToken = Callable[..., str]


def get_token(smc: Smc, token: str) -> dict[str, Any]:
    """The token's ``get token --json`` record."""
    records = ok(smc(f"get token {token}", json=True)).json
    assert len(records) == 1
    record: dict[str, Any] = records[0]
    return record


def last_event(smc: Smc) -> dict[str, Any]:
    """The newest event-log entry."""
    event: dict[str, Any] = ok(smc("show eventlog 1", json=True)).json[-1]
    return event


# -- create token --------------------------------------------------------------------------


def test_create_token_prints_the_seed_message_and_a_24_character_file_safe_token(smc: Smc) -> None:
    result = ok(smc("create token user@gmail.com_moreh-test-for-doc"))
    assert re.fullmatch(r"Create SDA Success \(Token : [A-Za-z0-9_=-]{24}\)\n", result.out)
    token = token_of(result)
    assert token.endswith("=")  # the seed's shape
    assert token[0].isalnum()  # never an option-like "-x"
    record = get_token(smc, token)
    assert record["description"] == "user@gmail.com_moreh-test-for-doc"
    assert (record["priority"], record["access_level"], record["max_sda"]) == (0, "USER", 1)
    assert (record["current_sda"], record["duplicable"], record["env"]) == (None, "off", {})


def test_tokens_are_unique_and_not_derived_from_the_description(new_token: NewToken) -> None:
    # Real MCP tokens are base64(description[:4] + milliseconds); ours must not share a prefix.
    tokens = [new_token("same-description") for _ in range(12)]
    assert len(set(tokens)) == 12
    assert len({t[:6] for t in tokens}) > 1


def test_create_token_with_priority_and_a_quoted_description(smc: Smc, new_token: NewToken) -> None:
    token = token_of(ok(smc("create token 'two words' -99")))
    record = get_token(smc, token)
    assert (record["description"], record["priority"]) == ("two words", -99)
    assert get_token(smc, new_token("top", 99))["priority"] == 99


def test_create_token_records_an_event(smc: Smc, new_token: NewToken) -> None:
    token = new_token("evented", 3)
    event = last_event(smc)
    assert (event["action"], event["token"], event["command"]) == ("CREATE_TOKEN", token, "create token evented 3")


def test_create_token_rejects_bad_input(smc: Smc) -> None:
    cases: list[tuple[str, int, tuple[str, ...]]] = [
        ("create token x 100", 1, ("100", "-99 to 99")),
        ("create token x -100", 1, ("-100", "-99 to 99")),
        ("create token x high", 2, ("priority", "high")),
        ("create token ''", 1, ("must not be empty",)),
        ("create token " + "d" * 129, 1, ("at most 128",)),
        ("create token", 2, ("usages : create token {description} {priority : optional}",)),
        ("create token a 1 extra", 2, ("takes 1 to 2 argument(s), got 3",)),
    ]
    with state_unchanged():
        for line, code, needles in cases:
            fails(smc(line), code, *needles)
    assert ok(smc("show token", json=True)).json == []


# -- show / get token ------------------------------------------------------------------------


def test_show_token_prints_the_seed_grid(smc: Smc, new_token: NewToken) -> None:
    first = new_token("usertest1", 1)
    second = new_token("user@gmail.com_testMOREH")
    ok(smc(f"add token env {second} FOO bar"))
    assert ok(smc("show token")).lines == grid_lines(
        "|            Token           |         Description        |  Cur SDA  |  Max SDA  |  Priority  |  Access Level  |  ENV value  |",
        f"|  {first}  |  usertest1                 |           |  1        |  1         |  USER          |             |",
        f"|  {second}  |  user@gmail.com_testMOREH  |           |  1        |  0         |  USER          |  FOO=bar    |",
    )


def test_show_token_json_lists_every_token_in_creation_order(smc: Smc, new_token: NewToken) -> None:
    tokens = [new_token(f"user{i}", i) for i in range(4)]
    records = ok(smc("show token", json=True)).json
    assert [r["token"] for r in records] == tokens
    assert [r["priority"] for r in records] == [0, 1, 2, 3]


def test_get_token_prints_the_seed_columns(smc: Smc, new_token: NewToken) -> None:
    token = new_token("test...")
    ok(smc(f"update token sda max {token} 4"))
    ok(smc(f"add token env {token} MOREH_WHOLE_SYSTEM_PROFILING_MODE 1"))
    assert ok(smc(f"get token {token}")).lines == grid_lines(
        "|            Token           |  Description  |  Cur SDA  |  Max SDA  |  Duplicable  |  Priority  |  Access Level  "
        "|  Worker Execute Info  |               ENV value               |",
        f"|  {token}  |  test...      |           |  4        |  off         |  0         |  USER          "
        "|                       |  MOREH_WHOLE_SYSTEM_PROFILING_MODE=1  |",
    )


def test_get_unknown_token_names_it(rejects: Rejects) -> None:
    rejects("get token nosuchtoken", 1, "Token 'nosuchtoken' not found", "show token")


def test_show_token_running_lists_only_tokens_with_a_running_job(smc: Smc, new_token: NewToken) -> None:
    busy, idle = new_token("busy"), new_token("idle")
    ok(smc(f"create sda {busy} d 1"))
    ok(smc(f"create sda {idle} d 1"))
    assert ok(smc("show token running", json=True)).json == []
    start_running_job(busy, 1)
    assert [r["token"] for r in ok(smc("show token running", json=True)).json] == [busy]
    assert idle not in ok(smc("show token running")).out


# -- delete token ----------------------------------------------------------------------------


def test_delete_token_removes_it_everywhere(smc: Smc, new_token: NewToken) -> None:
    token, other = new_token("gone"), new_token("stays")
    ok(smc(f"add token env {token} A 1"))
    ok(smc(f"create usergroup ug1 {token},{other}"))
    ok(smc(f"delete token {token}"), "Delete Token success.")
    assert [r["token"] for r in ok(smc("show token", json=True)).json] == [other]
    assert ok(smc("show usergroup 1", json=True)).json[0]["tokens"] == [other]
    assert last_event(smc)["action"] == "DELETE_TOKEN"


def test_delete_token_with_sdas_is_refused_until_they_are_deleted(
    smc: Smc, rejects: Rejects, new_token: NewToken
) -> None:
    token = new_token()
    ok(smc(f"create sda {token} d 1"))
    rejects(f"delete token {token}", 1, "still has 1 SDA(s)", f"delete sda {token}")
    ok(smc(f"delete sda {token}"), "Delete SDA success.")
    ok(smc(f"delete token {token}"), "Delete Token success.")


def test_delete_token_with_a_job_is_refused(smc: Smc, rejects: Rejects, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create sda {token} d 1"))
    start_running_job(token, 1)
    rejects(f"delete token {token}", 1, "still has 1 SDA(s)")


def test_delete_token_rejects_bad_input(smc: Smc, new_token: NewToken) -> None:
    new_token()
    with state_unchanged():
        fails(smc("delete token nosuchtoken"), 1, "Token 'nosuchtoken' not found")
        fails(smc("delete token"), 2, "usages : delete token {token}")
        fails(smc("delete token a b"), 2, "takes 1 argument(s), got 2")


# -- updates ---------------------------------------------------------------------------------


def test_update_token_desc_and_priority(smc: Smc, new_token: NewToken) -> None:
    token = new_token("old")
    ok(smc(f"update token desc {token} 'new name'"), "Update Token success.")
    ok(smc(f"update token priority {token} -7"), "Update Token Priority success.")
    record = get_token(smc, token)
    assert (record["description"], record["priority"]) == ("new name", -7)
    assert last_event(smc)["action"] == "UPDATE_TOKEN_PRIORITY"


@pytest.mark.parametrize(("given", "stored"), [("admin", "ADMIN"), ("DEVELOPER", "DEVELOPER"), ("User", "USER")])
def test_update_token_access_level(smc: Smc, new_token: NewToken, given: str, stored: str) -> None:
    token = new_token()
    ok(smc(f"update token access level {token} {given}"), "Update Token Access Level success.")
    assert get_token(smc, token)["access_level"] == stored


def test_update_token_sda_current_switches_between_own_sdas(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"update token sda max {token} 2"), "Update Token Max SDA success.")
    ok(smc(f"create sda {token} a 1"))
    ok(smc(f"create sda {token} b 2"))
    assert get_token(smc, token)["current_sda"] == 1  # the first SDA becomes current
    ok(smc(f"update token sda current {token} 2"), "Update Token Current SDA success.")
    assert get_token(smc, token)["current_sda"] == 2


def test_update_token_sda_max_and_duplicable_follow_the_guide(smc: Smc, rejects: Rejects, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"update token sda max {token} 4"))
    rejects(f"update token duplicable {token} 4", 1, "max SDA 4", f"update token sda max {token} 1")
    ok(smc(f"update token sda max {token} 1"))
    ok(smc(f"update token duplicable {token} 4"), "Update Token Duplicable success.")
    assert get_token(smc, token)["duplicable"] == "4"
    rejects(f"update token sda max {token} 2", 1, "duplicable", f"update token duplicable {token} 1")
    ok(smc(f"update token duplicable {token} 0"))
    assert get_token(smc, token)["duplicable"] == "unlimited"
    ok(smc(f"update token duplicable {token} 1"))
    assert get_token(smc, token)["duplicable"] == "off"
    ok(smc(f"update token sda max {token} 2"))


def test_update_token_sda_max_cannot_go_below_the_sdas_held(smc: Smc, rejects: Rejects, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"update token sda max {token} 2"))
    ok(smc(f"create sda {token} a 1"))
    ok(smc(f"create sda {token} b 1"))
    rejects(f"update token sda max {token} 1", 1, "already holds 2 SDAs")


def test_token_updates_reject_bad_input(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    cases: list[tuple[str, int, tuple[str, ...]]] = [
        ("update token desc {t} ''", 1, ("must not be empty",)),
        ("update token desc nosuch x", 1, ("Token 'nosuch' not found",)),
        ("update token priority {t} 100", 1, ("100", "-99 to 99")),
        ("update token priority {t} -100", 1, ("-100", "-99 to 99")),
        ("update token priority {t} 1.5", 2, ("must be an integer", "1.5")),
        ("update token priority nosuch 1", 1, ("Token 'nosuch' not found",)),
        ("update token priority {t}", 2, ("usages : update token priority {token} {priority}",)),
        ("update token access level {t} ROOT", 1, ("ROOT", "USER|ADMIN|DEVELOPER")),
        ("update token access level nosuch USER", 1, ("Token 'nosuch' not found",)),
        ("update token sda current {t} 7", 1, ("SDA 7 does not belong",)),
        ("update token sda current {t} x", 2, ("SDA ID must be an integer",)),
        ("update token sda max {t} 0", 1, ("Max SDA 0 is out of range",)),
        ("update token sda max {t} 65", 1, ("Max SDA 65 is out of range",)),
        ("update token sda max nosuch 2", 1, ("Token 'nosuch' not found",)),
        ("update token duplicable {t} -1", 1, ("out of range",)),
        ("update token duplicable {t} 1025", 1, ("out of range",)),
        ("update token duplicable nosuch 1", 1, ("Token 'nosuch' not found",)),
        ("update token duplicable {t} 1 2", 2, ("takes 2 argument(s), got 3",)),
    ]
    with state_unchanged():
        for line, code, needles in cases:
            fails(smc(line.replace("{t}", token)), code, *needles)


def test_update_sda_current_refuses_another_tokens_sda(smc: Smc, rejects: Rejects, new_token: NewToken) -> None:
    mine, theirs = new_token("mine"), new_token("theirs")
    ok(smc(f"create sda {theirs} d 1"))
    rejects(f"update token sda current {mine} 1", 1, "SDA 1 does not belong to token", mine)


# -- env values ------------------------------------------------------------------------------


def test_token_env_add_replace_and_remove(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"add token env {token} MOREH_WHOLE_SYSTEM_PROFILING_MODE 1"), "Add Token Env success.")
    ok(smc(f"add token env {token} MODNN_SEND_RECV_PIPE 1"))
    ok(smc(f"add token env {token} MOREH_WHOLE_SYSTEM_PROFILING_MODE 2"))  # replaces, keeps its place
    assert get_token(smc, token)["env"] == {"MOREH_WHOLE_SYSTEM_PROFILING_MODE": "2", "MODNN_SEND_RECV_PIPE": "1"}
    assert "MOREH_WHOLE_SYSTEM_PROFILING_MODE=2, MODNN_SEND_RECV_PIPE=1" in ok(smc("show token")).out
    ok(smc(f"remove token env {token} MOREH_WHOLE_SYSTEM_PROFILING_MODE"), "Remove Token Env success.")
    assert get_token(smc, token)["env"] == {"MODNN_SEND_RECV_PIPE": "1"}
    assert last_event(smc)["action"] == "REMOVE_TOKEN_ENV"


def test_token_env_rejects_bad_input(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    cases: list[tuple[str, int, tuple[str, ...]]] = [
        ("add token env {t} 1BAD x", 1, ("'1BAD' is not a valid environment variable name",)),
        ("add token env {t} A-B x", 1, ("'A-B' is not a valid environment variable name",)),
        ("add token env nosuch A x", 1, ("Token 'nosuch' not found",)),
        ("add token env {t} A", 2, ("usages : add token env {token} {name} {value}",)),
        ("remove token env {t} MISSING", 1, ("has no environment variable 'MISSING'",)),
        ("remove token env nosuch A", 1, ("Token 'nosuch' not found",)),
        ("remove token env {t}", 2, ("usages : remove token env {token} {name}",)),
    ]
    with state_unchanged():
        for line, code, needles in cases:
            fails(smc(line.replace("{t}", token)), code, *needles)


def test_every_token_change_is_logged_once_with_its_command(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    lines = [
        f"update token desc {token} renamed",
        f"update token priority {token} 5",
        f"update token access level {token} ADMIN",
        f"update token sda max {token} 1",
        f"update token duplicable {token} 2",
        f"add token env {token} K v",
        f"remove token env {token} K",
    ]
    previous = last_event(smc)["id"]
    for line in lines:
        ok(smc(line))
        event = last_event(smc)
        assert (event["id"], event["command"], event["token"]) == (previous + 1, line, token)
        previous = event["id"]
