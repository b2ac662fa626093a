"""A property-based fuzzer for the REST API (schemathesis-like, on hypothesis): it walks the served
``/openapi.json`` and sends every operation random and malformed query parameters and bodies with ADMIN,
DEVELOPER and USER tokens. Properties: no 5xx, every error is a documented Moreh error body, a USER never sees
another token's value it did not send itself, and the server stays up.

Bounded for the normal suite (fixed seed, about 200 requests); ``MOREH_API_FUZZ_EXAMPLES=5000`` runs longer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from conftest import ApiServer, start_api_in_process, stop_api_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("MOREH_API_FUZZ_EXAMPLES", "150"))
NO_JSON = {"/metrics", "/docs"}


@dataclass(frozen=True)
class Operation:
    """One method on one path with the query parameters the OpenAPI description lists."""

    method: str
    path: str
    params: tuple[tuple[str, str, bool], ...]  # (name, OpenAPI type, required)


@dataclass
class World:
    """The running server, its tokens and the operations it describes."""

    server: ApiServer
    tokens: dict[str, str]  # role -> token value
    operations: list[Operation]
    client: httpx.Client


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server with an ADMIN, a DEVELOPER, a USER and a victim USER token, some SDAs, groups and a backend."""

    base = tmp_path_factory.mktemp("api-fuzz")
    # No rate limit here (test_api_core tests it): a long fuzz run sends more than a token's budget.
    server = start_api_in_process(base / "home", {"MOREH_API_RATE": "0"})
    tokens = {
        "ADMIN": server.admin_token,
        "DEVELOPER": server.make_token("fuzz-dev", "DEVELOPER"),
        "USER": server.make_token("fuzz-user"),
        "VICTIM": server.make_token("fuzz-victim"),
    }
    with server.store.transaction("test: fuzz fixtures") as s:
        # The ADMIN token holds an SDA, so a fuzzed DELETE of it is refused and the fuzz keeps its admin.
        s.sdas.create(tokens["ADMIN"], "admin-sda", 1)
        s.sdas.create(tokens["USER"], "user-sda", 1, reserved=True)
        s.sdas.create(tokens["VICTIM"], "victim-sda", 2)
        s.user_groups.create("fuzz-users", "", [tokens["USER"], tokens["VICTIM"]])
        s.backends.create("fuzz-node", "10.9.0.1", 4)
    spec = httpx.get(server.url + "/openapi.json").json()
    operations = [
        Operation(
            method.upper(),
            path,
            tuple((p["name"], p["schema"].get("type", "string"), p["required"]) for p in op.get("parameters", [])),
        )
        for path, item in sorted(spec["paths"].items())
        for method, op in sorted(item.items())
    ]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield World(server, tokens, operations, client)
    stop_api_server(server)


def values_for(kind: str, world_tokens: list[str]) -> st.SearchStrategy[str]:
    """Well-typed values (small ids hit real rows), known token values, and malformed text."""
    text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
    nasty = st.sampled_from(["", " ", "-1", "0", "1e3", "true", "null", "%00", "'; DROP TABLE tokens; --", "x" * 5000])
    numbers = st.integers(-3, 12).map(str) | st.integers(-(2**70), 2**70).map(str)
    typed: dict[str, st.SearchStrategy[str]] = {
        "integer": numbers,
        "number": st.floats(allow_nan=True).map(str),
        "boolean": st.sampled_from(["true", "false", "1", "0", "TRUE"]),
        "string": st.sampled_from(world_tokens) | st.sampled_from(["IDLE", "running", "usage", "api", "update"]) | text,
    }
    return st.one_of(typed.get(kind, text), text, nasty)


@st.composite
def requests(draw: st.DrawFn, world: World) -> tuple[str, Operation, dict[str, str], dict[str, Any]]:
    """A role, an operation, its query parameters (some missing, some malformed) and extra request options."""
    role = draw(st.sampled_from(["ADMIN", "DEVELOPER", "USER"]))
    operation = draw(st.sampled_from(world.operations))
    known = [t for r, t in world.tokens.items() if r != "ADMIN"]  # never hand the fuzzer the admin's own value
    params: dict[str, str] = {}
    for name, kind, required in operation.params:
        if draw(st.integers(0, 9)) < (8 if required else 5):
            params[name] = draw(values_for(kind, known))
    if draw(st.integers(0, 9)) == 0:
        params[draw(st.text(min_size=1, max_size=10))] = draw(st.text(max_size=10))
    extra: dict[str, Any] = {}
    if operation.method != "GET" and draw(st.booleans()):
        body = draw(
            st.one_of(
                st.dictionaries(st.sampled_from([p[0] for p in operation.params] or ["x"]), st.text(max_size=12)),
                st.dictionaries(st.text(max_size=5), st.recursive(st.none() | st.integers(), st.lists)),
                st.just("not json {"),
                st.binary(max_size=30),
            )
        )
        if isinstance(body, dict):
            extra["json"] = body
        else:
            extra["content"] = body if isinstance(body, bytes) else body.encode()
            extra["headers"] = {"content-type": "application/json"}
    return role, operation, params, extra


def check_response(
    world: World, role: str, params: dict[str, str], extra: dict[str, Any], response: httpx.Response
) -> None:
    """The properties every answer must have."""
    request = f"{response.request.method} {response.request.url} {extra}"
    assert response.status_code < 500, f"{request} -> {response.status_code} {response.text[:500]}"
    if response.request.url.path in NO_JSON:
        return
    body = response.json()  # always JSON
    if response.status_code >= 400:
        code = response.headers.get("x-moreh-code")
        assert code in {"600", "601", "602", "603", "604", "429"}, (request, response.status_code, body)
        if code not in ("603", "604"):
            assert body["code"] == int(code), (request, body)
            assert isinstance(body["details"], str), (request, body)
            assert body["details"], (request, body)
            assert "\n" not in body["details"], (request, body)
    if role == "USER":
        sent = json.dumps([params, extra.get("json")], default=str)
        for other_role in ("ADMIN", "DEVELOPER", "VICTIM"):
            secret = world.tokens[other_role]
            if secret not in sent:
                assert secret not in response.text, f"{request} leaked the {other_role} token to a USER"


def send(world: World, role: str, operation: Operation, params: dict[str, str], extra: dict[str, Any]) -> None:
    """Send one request and check the answer."""
    headers = {"Authorization": f"Bearer {world.tokens[role]}", **extra.pop("headers", {})}
    response = world.client.request(operation.method, operation.path, params=params, headers=headers, **extra)
    check_response(world, role, params, extra, response)


def test_every_operation_answers_bare_calls_from_every_role(world: World) -> None:
    """A deterministic sweep: each operation with no parameters, as USER, DEVELOPER and ADMIN."""
    assert len(world.operations) >= 52
    for operation in world.operations:
        for role in ("USER", "DEVELOPER", "ADMIN"):
            send(world, role, operation, {}, {})


def test_fuzzed_requests_never_break_the_server(world: World) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def one_request(data: st.DataObject) -> None:
        role, operation, params, extra = data.draw(requests(world))
        send(world, role, operation, params, extra)

    one_request()
    # Still up and still answering its ADMIN.
    check = world.client.get("/api/check", headers={"Authorization": f"Bearer {world.tokens['ADMIN']}"})
    assert check.status_code == 200, check.text
    assert world.server.thread.is_alive()
    assert "Traceback" not in world.server.log(), world.server.log()
