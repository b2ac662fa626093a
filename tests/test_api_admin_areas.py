"""REST API, the admin areas (issue 6): User, Check, Hardware/Signal, Backend, SDAModel, and /metrics.

One real ``sdamanager --api`` on a loopback port serves the whole module (starting one per test would cost a
second each); tests use names of their own so they do not depend on each other's order.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ApiServer, start_api_in_process, start_api_server, stop_api_server

_names = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One API server for the module, with a fake ipmitool the power tests can point at."""
    base = tmp_path_factory.mktemp("api-admin")
    srv = start_api_in_process(base / "home")
    yield srv
    stop_api_server(srv)


@pytest.fixture(scope="module")
def admin(server: ApiServer) -> Iterator[httpx.Client]:
    """An ADMIN client."""
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def user_token(server: ApiServer) -> str:
    """A USER token."""
    return server.make_token(unique("user"))


@pytest.fixture(scope="module")
def user(server: ApiServer, user_token: str) -> Iterator[httpx.Client]:
    """A USER client."""
    with server.client(user_token) as client:
        yield client


@pytest.fixture(scope="module")
def developer(server: ApiServer) -> Iterator[httpx.Client]:
    """A DEVELOPER client."""
    with server.client(server.make_token(unique("dev"), "DEVELOPER")) as client:
        yield client


def error(response: httpx.Response, code: int, *needles: str) -> str:
    """Assert ``response`` is the Moreh error ``code`` whose details name every needle; return the details."""
    assert response.headers.get("x-moreh-code") == str(code), (response.status_code, response.text)
    body = response.json()
    if code in (603, 604):
        assert isinstance(body, str), body  # the document's bare-string bodies
        details = body
    else:
        assert body["code"] == code, body
        details = body["details"]
    assert 400 <= response.status_code < 600
    for needle in needles:
        assert needle in details, (needle, details)
    return details


def ok(response: httpx.Response) -> Any:
    """Assert success and return the body."""
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def succeeded(response: httpx.Response) -> Any:
    """Assert the ``{"code": "SUCCESS"...}`` body and return it."""
    body = ok(response)
    assert body["code"] == "SUCCESS", body
    return body


# -- User -------------------------------------------------------------------------------------------------------------


def test_user_store_list_signin_qna_and_reset(server: ApiServer, admin: httpx.Client) -> None:
    uid = unique("kim")
    stored = ok(
        admin.post(
            "/api/user",
            params={"id": uid, "name": "Kim", "salt": "s4lt", "password": "pw-1", "question": "pet?", "answer": "cat"},
        )
    )
    assert stored["affectedRows"] == 1
    assert stored["warningStatus"] == 0
    assert stored["insertId"] >= 1
    listed = ok(admin.get("/api/user", params={"id": uid}))
    assert listed == [{"nId": stored["insertId"], "sId": uid, "sName": "Kim", "sSalt": "s4lt", "sQuestion": "pet?"}]
    assert uid in [u["sId"] for u in ok(admin.get("/api/user"))]

    assert ok(admin.get("/api/user/signin", params={"id": uid, "password": "pw-1"})) == "success"
    error(admin.get("/api/user/signin", params={"id": uid, "password": "wrong"}), 601, "wrong id or password")
    error(admin.get("/api/user/signin", params={"id": "nobody", "password": "pw-1"}), 601, "wrong id or password")
    assert ok(admin.get("/api/user/qna", params={"id": uid, "salt": "s4lt", "answer": "cat"})) == "success"
    error(admin.get("/api/user/qna", params={"id": uid, "salt": "other", "answer": "cat"}), 601)
    error(admin.get("/api/user/qna", params={"id": uid, "salt": "s4lt", "answer": "dog"}), 601)

    error(admin.put("/api/user", params={"id": uid, "password": "pw-2", "answertoken": "dog"}), 601, "QnA")
    assert ok(admin.put("/api/user", params={"id": uid, "password": "pw-2", "answertoken": "cat"}))["affectedRows"] == 1
    error(admin.get("/api/user/signin", params={"id": uid, "password": "pw-1"}), 601)
    assert ok(admin.get("/api/user/signin", params={"id": uid, "password": "pw-2"})) == "success"


def test_user_passwords_are_stored_only_as_salted_slow_hashes(server: ApiServer, admin: httpx.Client) -> None:

    first, second = unique("a"), unique("b")
    for uid in (first, second):
        params = {"id": uid, "name": "N", "salt": "x", "password": "same-secret", "question": "q", "answer": "same-ans"}
        ok(admin.post("/api/user", params=params))
    with server.store.reading() as s:
        rows = s.all("SELECT password_hash, answer_hash FROM users WHERE id IN (?, ?)", [first, second])
        dump = repr(s.all("SELECT * FROM users")) + repr(s.all("SELECT * FROM events"))
    assert "same-secret" not in dump
    assert "same-ans" not in dump
    assert all(h.startswith("scrypt$16384$") for row in rows for h in row)
    assert rows[0][0] != rows[1][0], "equal passwords must hash differently (per-user salt)"
    # Nothing the API answers holds a hash either.
    assert "scrypt" not in admin.get("/api/user").text


def test_user_bad_input(admin: httpx.Client, user: httpx.Client) -> None:
    error(admin.post("/api/user", params={"id": "x", "name": "N"}), 600, "'salt'")
    error(admin.get("/api/user/signin", params={"id": "x"}), 600, "'password'")
    error(admin.get("/api/user", params={"id": "nobody-here"}), 601, "nobody-here")
    uid = unique("dup")
    params = {"id": uid, "name": "N", "salt": "x", "password": "p", "question": "q", "answer": "a"}
    ok(admin.post("/api/user", params=params))
    error(admin.post("/api/user", params=params), 601, "already exists")
    # Sign-in records are the portal's business: a USER token may not read or test them.
    for response in (
        user.get("/api/user"),
        user.get("/api/user/signin", params={"id": uid, "password": "p"}),
        user.post("/api/user", params={**params, "id": unique("u")}),
    ):
        error(response, 601, "ADMIN")
        assert response.status_code == 403


# -- Check ------------------------------------------------------------------------------------------------------------


def test_check_types(server: ApiServer, admin: httpx.Client, user: httpx.Client) -> None:
    for kind in ("api", "db", "grpc"):
        assert ok(admin.get("/api/check", params={"type": kind})) == "success"
    assert ok(user.get("/api/check")) == "success"
    assert ok(admin.get("/api/check", params={"type": "api", "node": "127.0.0.1", "param_name": "usage"})) == "success"
    # This machine has no ipmitool: the IPMI check reports it as 603.
    error(admin.get("/api/check", params={"type": "ipmi"}), 603, "ipmitool")
    error(admin.get("/api/check", params={"type": "nope"}), 600, "'type'")
    error(admin.get("/api/check", params={"param_name": "watts"}), 600, "'param_name'")
    error(admin.get("/api/check", params={"node": "10.255.255.1"}), 601, "10.255.255.1")


# -- Signal and /metrics ----------------------------------------------------------------------------------------------


def _wait_for_samples(admin: httpx.Client, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        series = ok(admin.get("/api/signal", params={"period": "h", "param_name": "temp_gpu"}))
        if series and min(len(s["values"]) for s in series) >= count:
            return series
        assert time.monotonic() < deadline, series
        time.sleep(0.2)


def test_signal_reports_sampled_metrics_per_node_and_device(server: ApiServer, admin: httpx.Client) -> None:
    series = _wait_for_samples(admin, 2)  # the daemon samples every 0.5 s
    assert {s["metric"]["device_index"] for s in series} == {"0", "1"}
    for entry in series:
        metric = entry["metric"]
        assert metric["__name__"] == "gpu_info"
        assert metric["param_name"] == "temp_gpu"
        assert metric["ip"] == "127.0.0.1"
        assert entry["value"] == entry["values"][-1]
        times = [point[0] for point in entry["values"]]
        assert times == sorted(times)
        assert time.time() - times[-1] < 60
        assert all(isinstance(point[1], str) and float(point[1]) > 0 for point in entry["values"])
    every = ok(admin.get("/api/signal", params={"node": "127.0.0.1"}))
    names = {(s["metric"]["device_index"], s["metric"]["param_name"]) for s in every}
    assert names == {(d, p) for d in ("0", "1") for p in ("temp_gpu", "temp_mem", "util_gpu", "util_mem", "usage")}
    # Without a period: only the latest sample of each series.
    assert all(len(s["values"]) == 1 for s in ok(admin.get("/api/signal", params={"param_name": "usage"})))
    # A period shorter than the sampling interval still reports the latest sample.
    assert ok(admin.get("/api/signal", params={"period": "1ms"}))


def test_signal_bad_input(admin: httpx.Client) -> None:
    error(admin.get("/api/signal", params={"period": "fortnight"}), 600, "'period'")
    error(admin.get("/api/signal", params={"param_name": "power"}), 600, "'param_name'")
    error(admin.get("/api/signal", params={"node": "192.0.2.77"}), 601, "192.0.2.77")


def test_signal_user_sees_only_devices_its_sdas_hold(server: ApiServer, admin: httpx.Client) -> None:

    token = server.make_token(unique("holder"))
    with server.client(token) as client:
        assert ok(client.get("/api/signal")) == []  # no SDA: no devices of its own
        with server.store.transaction("test: reserved SDA") as s:
            s.sdas.create(token, "", 1, reserved=True)  # 1 device
        held = ok(client.get("/api/signal"))
    assert len({s["metric"]["device_index"] for s in held}) == 1


def test_metrics_is_prometheus_text_of_the_same_samples(server: ApiServer, admin: httpx.Client) -> None:
    _wait_for_samples(admin, 1)
    response = httpx.get(server.url + "/metrics")  # no token: the API listens on loopback only
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_prometheus(response.text)
    temps = {labels["device_index"]: value for name, labels, value in samples if name == "moreh_gpu_temp_gpu_celsius"}
    assert set(temps) == {"0", "1"}
    assert all(v > 0 for v in temps.values())
    names = {name for name, _, _ in samples}
    assert {"moreh_gpu_util_gpu_percent", "moreh_gpu_memory_used_mib", "moreh_gpu_temp_mem_celsius"} <= names
    assert ("moreh_api_up", {}, 1.0) in samples


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """A strict reader of the exposition format: every line is a comment or ``name{labels} value``."""
    import re

    line_form = re.compile(
        r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? (\S+)$'
    )
    label_form = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    typed: set[str] = set()
    out: list[tuple[str, dict[str, str], float]] = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        match = line_form.match(line)
        assert match, f"not Prometheus text: {line!r}"
        assert match[1] in typed, f"sample before its # TYPE: {line!r}"
        out.append((match[1], dict(label_form.findall(match[2] or "")), float(match[3])))
    return out


# -- Backend ----------------------------------------------------------------------------------------------------------


def test_backend_create_list_update_delete(admin: httpx.Client, developer: httpx.Client) -> None:
    name = unique("node")
    created = succeeded(
        admin.post(
            "/api/backend",
            params={"node": "10.1.0.5", "label": name, "group": 0, "workerip": "10.0.0.5", "devices": 4},
        )
    )["result"]
    backend_id = created["id"]
    assert created["name"] == name
    assert created["ip"] == "10.0.0.5"
    assert len(created["devices"]) == 4
    assert created["ipmi"] == {"ip": "10.1.0.5", "status": -1}
    assert created["group"]["id"] == 0
    listed = ok(developer.get("/api/backend", params={"id": backend_id}))
    assert listed == [created]
    assert backend_id in [b["id"] for b in ok(admin.get("/api/backend"))]

    renamed = unique("renamed")
    succeeded(
        admin.put(
            "/api/backend",
            params={
                "command": "update",
                "id": backend_id,
                "label": renamed,
                "workerip": "10.0.0.6",
                "node": "10.1.0.6",
            },
        )
    )
    again = ok(admin.get("/api/backend", params={"id": backend_id}))[0]
    assert (again["name"], again["ip"], again["ipmi"]["ip"]) == (renamed, "10.0.0.6", "10.1.0.6")

    for status, shown in (("shutdown", "SHUTDOWN"), ("BUSY", "PROCESSING"), ("idle", "IDLE")):
        succeeded(admin.put("/api/backend/device/status", params={"id": backend_id, "status": status}))
        assert {d["status"] for d in ok(admin.get("/api/backend", params={"id": backend_id}))[0]["devices"]} == {shown}
    succeeded(admin.get("/api/backend/device/status", params={"id": backend_id, "status": "IDLE"}))

    succeeded(admin.delete("/api/backend", params={"id": backend_id}))
    error(admin.get("/api/backend", params={"id": backend_id}), 601, str(backend_id))


def test_backend_bad_input(admin: httpx.Client) -> None:
    error(admin.get("/api/backend", params={"id": "user101"}), 600, "'id'", "integer")
    error(admin.get("/api/backend", params={"id": 999999}), 601, "999999")
    error(admin.post("/api/backend", params={"node": "10.1.0.9", "label": "x", "group": 0}), 600, "'workerip'")
    error(
        admin.post(
            "/api/backend", params={"node": "not-an-ip", "label": unique("n"), "group": 0, "workerip": "10.0.0.1"}
        ),
        602,
        "not-an-ip",
    )
    error(
        admin.post(
            "/api/backend", params={"node": "10.1.0.9", "label": unique("n"), "group": 4242, "workerip": "10.0.0.1"}
        ),
        601,
        "4242",
    )
    error(admin.put("/api/backend", params={"command": "explode", "id": 1}), 600, "'command'")
    error(admin.put("/api/backend", params={"command": "update"}), 600, "'id'")
    error(admin.put("/api/backend", params={"command": "reconnect"}), 600, "'node'")
    error(admin.put("/api/backend", params={"command": "on", "id": 1}), 600, "'user'")
    error(admin.put("/api/backend", params={"command": "update", "id": 999999, "label": "z"}), 601, "999999")
    error(admin.put("/api/backend/device/status", params={"id": 1, "status": "melting"}), 600, "'status'")
    error(admin.put("/api/backend/device/status", params={"id": 999999, "status": "IDLE"}), 601)
    error(admin.delete("/api/backend"), 600, "'id'")
    error(admin.delete("/api/backend", params={"id": 999999}), 601)


def _backend(admin: httpx.Client, ipmi: str = "10.1.2.3") -> int:
    params: dict[str, str | int] = {
        "node": ipmi,
        "label": unique("b"),
        "group": 0,
        "workerip": "10.0.9.9",
        "devices": 1,
    }
    return int(succeeded(admin.post("/api/backend", params=params))["result"]["id"])


def test_power_commands_report_ipmitool_failure_as_603(admin: httpx.Client) -> None:
    backend_id = _backend(admin)
    for command in ("on", "off", "cycle", "reset"):
        response = admin.put("/api/backend", params={"command": command, "id": backend_id, "user": "u", "pwd": "p"})
        assert response.status_code == 502
        error(response, 603, "ipmitool")
    response = admin.put("/api/backend", params={"command": "reconnect", "node": "10.1.2.3", "user": "u", "pwd": "p"})
    error(response, 603)
    error(admin.put("/api/backend", params={"command": "reconnect", "node": "10.77.77.77"}), 601, "10.77.77.77")


@pytest.fixture
def fake_ipmitool(tmp_path: Path) -> Path:
    """An ``ipmitool`` stand-in that logs its arguments and IPMI_PASSWORD, and fails for host 10.66.0.1."""
    log = tmp_path / "ipmitool.log"
    script = tmp_path / "ipmitool"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$* pw=$IPMI_PASSWORD" >> {log}\n'
        'case "$*" in *10.66.0.1*) echo "Error: Unable to establish IPMI v2 / RMCP+ session" >&2; exit 1;; esac\n'
        'echo "Chassis Power Control: Up/On"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_power_commands_run_ipmitool(tmp_path: Path, fake_ipmitool: Path) -> None:
    base = tmp_path / "ipmi"
    base.mkdir()
    srv = start_api_server(base / "home", base / "log", {"MOREH_IPMITOOL": str(fake_ipmitool)})
    try:
        with srv.client() as admin:
            good, bad = _backend(admin, "10.66.0.2"), _backend(admin, "10.66.0.1")
            succeeded(admin.put("/api/backend", params={"command": "cycle", "id": good, "user": "root", "pwd": "s3"}))
            assert ok(admin.get("/api/backend", params={"id": good}))[0]["ipmi"]["status"] == 0
            response = admin.put(
                "/api/backend", params={"command": "off", "node": "10.66.0.1", "user": "r", "pwd": "x"}
            )
            assert error(response, 603) == "Error: Unable to establish IPMI v2 / RMCP+ session"
            assert ok(admin.get("/api/backend", params={"id": bad}))[0]["ipmi"]["status"] == -1
            assert ok(admin.get("/api/check", params={"type": "ipmi"})) == "success"
    finally:
        stop_api_server(srv)
    calls = (fake_ipmitool.parent / "ipmitool.log").read_text().splitlines()
    # The password travels in the environment (-E), never on the command line.
    assert calls[0] == "-I lanplus -H 10.66.0.2 -U root -E chassis power cycle pw=s3"
    assert "10.66.0.1" in calls[1]
    assert "power off" in calls[1]


def test_backend_groups_and_grouping(admin: httpx.Client, developer: httpx.Client) -> None:
    label = unique("ktc")
    group = succeeded(admin.post("/api/backend/group", params={"label": label}))["result"]
    assert group["name"] == label
    assert group["backendlist"] == []
    other = succeeded(admin.post("/api/backend/group", params={"group": unique("declared-name")}))["result"]
    backend_id = _backend(admin)

    succeeded(admin.post("/api/backend/grouping", params={"group": group["id"], "backend": backend_id}))
    assert ok(admin.get("/api/backend", params={"id": backend_id}))[0]["group"]["id"] == group["id"]
    error(admin.post("/api/backend/grouping", params={"group": group["id"], "backend": backend_id}), 602, "already")
    succeeded(admin.put("/api/backend/grouping", params={"group": other["id"], "backend": backend_id}))
    listed = {g["id"]: g for g in ok(developer.get("/api/backend/group"))}
    assert [b["id"] for b in listed[other["id"]]["backendlist"]] == [backend_id]
    succeeded(admin.delete("/api/backend/grouping", params={"backend": backend_id}))
    assert ok(admin.get("/api/backend", params={"id": backend_id}))[0]["group"]["id"] == 0
    error(admin.delete("/api/backend/grouping"), 600, "'backend'")
    error(admin.delete("/api/backend/grouping", params={"group": group["id"], "backend": backend_id}), 601)

    renamed = succeeded(admin.put("/api/backend/group", params={"id": group["id"], "label": unique("r")}))["result"]
    assert renamed["id"] == group["id"]
    assert renamed["name"] != label
    succeeded(admin.post("/api/backend/grouping", params={"group": group["id"], "backend": backend_id}))
    error(admin.delete("/api/backend/group", params={"id": group["id"]}), 602, "force")
    succeeded(admin.delete("/api/backend/group", params={"id": group["id"], "force": "true"}))
    assert ok(admin.get("/api/backend", params={"id": backend_id}))[0]["group"]["id"] == 0
    error(admin.delete("/api/backend/group", params={"id": group["id"]}), 601)
    error(admin.post("/api/backend/group"), 600, "'label'")
    error(admin.put("/api/backend/group", params={"id": "one", "label": "x"}), 600, "'id'")
    error(admin.delete("/api/backend/group", params={"id": 0}), 602, "default")


def test_backend_area_refuses_user_tokens(server: ApiServer, user: httpx.Client, admin: httpx.Client) -> None:
    backend_id = _backend(admin)
    before = ok(admin.get("/api/backend", params={"id": backend_id}))
    attempts = [
        user.get("/api/backend"),
        user.get("/api/backend/group"),
        user.post(
            "/api/backend", params={"node": "10.1.1.1", "label": unique("x"), "group": 0, "workerip": "10.0.0.1"}
        ),
        user.put("/api/backend", params={"command": "update", "id": backend_id, "label": "mine"}),
        user.put("/api/backend", params={"command": "off", "id": backend_id, "user": "u", "pwd": "p"}),
        user.delete("/api/backend", params={"id": backend_id}),
        user.put("/api/backend/device/status", params={"id": backend_id, "status": "SHUTDOWN"}),
        user.post("/api/backend/group", params={"label": unique("g")}),
        user.delete("/api/backend/grouping", params={"backend": backend_id}),
    ]
    for response in attempts:
        error(response, 601)
        assert response.status_code == 403
    assert ok(admin.get("/api/backend", params={"id": backend_id})) == before


def test_developer_reads_but_does_not_change_backends(developer: httpx.Client, admin: httpx.Client) -> None:
    assert ok(developer.get("/api/backend"))
    error(developer.delete("/api/backend", params={"id": _backend(admin)}), 601, "ADMIN")


# -- SDAModel ---------------------------------------------------------------------------------------------------------


def test_sdamodel_create_list_group_delete(admin: httpx.Client) -> None:
    name = unique("micro")
    model = succeeded(admin.post("/api/sdamanager/sdamodel", params={"name": name, "numDevices": 2, "desc": "tiny"}))
    created = model["result"]
    assert (created["name"], created["numDevices"], created["description"], created["group"]) == (name, 2, "tiny", None)
    assert created in ok(admin.get("/api/sdamanager/sdamodel"))

    group = succeeded(admin.post("/api/sdamanager/sdamodel/group", params={"label": unique("flavors")}))["result"]
    assert group["backendGroupId"] == 0
    assert group["sdamodellist"] == []
    succeeded(admin.post("/api/sdamanager/sdamodel/grouping", params={"sdamodel": created["id"], "group": group["id"]}))
    shown = next(m for m in ok(admin.get("/api/sdamanager/sdamodel")) if m["id"] == created["id"])
    assert shown["group"]["id"] == group["id"]
    groups = {g["id"]: g for g in ok(admin.get("/api/sdamanager/sdamodel/group"))}
    assert [m["id"] for m in groups[group["id"]]["sdamodellist"]] == [created["id"]]
    error(
        admin.post("/api/sdamanager/sdamodel/grouping", params={"sdamodel": created["id"], "group": group["id"]}), 602
    )

    new_label = unique("renamed")
    succeeded(admin.put("/api/sdamanager/sdamodel/group", params={"id": group["id"], "label": new_label}))
    assert {g["id"]: g["name"] for g in ok(admin.get("/api/sdamanager/sdamodel/group"))}[group["id"]] == new_label
    # DELETE with sdaid removes only that model from the group.
    succeeded(admin.delete("/api/sdamanager/sdamodel/group", params={"id": group["id"], "sdaid": created["id"]}))
    groups = {g["id"]: g for g in ok(admin.get("/api/sdamanager/sdamodel/group"))}
    assert groups[group["id"]]["sdamodellist"] == []
    succeeded(admin.post("/api/sdamanager/sdamodel/grouping", params={"sdamodel": created["id"], "group": group["id"]}))
    succeeded(
        admin.delete("/api/sdamanager/sdamodel/grouping", params={"sdamodel": created["id"], "group": group["id"]})
    )
    succeeded(admin.delete("/api/sdamanager/sdamodel/group", params={"id": group["id"]}))
    assert group["id"] not in [g["id"] for g in ok(admin.get("/api/sdamanager/sdamodel/group"))]
    succeeded(admin.delete("/api/sdamanager/sdamodel", params={"sdamodel": created["id"]}))
    assert created["id"] not in [m["id"] for m in ok(admin.get("/api/sdamanager/sdamodel"))]


def test_sdamodel_bad_input(admin: httpx.Client) -> None:
    error(admin.post("/api/sdamanager/sdamodel", params={"name": unique("m"), "desc": "d"}), 600, "'numDevices'")
    error(admin.post("/api/sdamanager/sdamodel", params={"name": unique("m"), "numDevices": "two", "desc": "d"}), 600)
    error(admin.post("/api/sdamanager/sdamodel", params={"name": unique("m"), "numDevices": 0, "desc": "d"}), 602)
    error(admin.post("/api/sdamanager/sdamodel", params={"name": "Small.64GB", "numDevices": 1, "desc": "d"}), 602)
    error(admin.delete("/api/sdamanager/sdamodel", params={"sdamodel": 999999}), 601, "999999")
    error(admin.post("/api/sdamanager/sdamodel/grouping", params={"sdamodel": 1, "group": 999999}), 601)
    error(admin.post("/api/sdamanager/sdamodel/group", params={"label": unique("g"), "groupId": 999999}), 601)
    error(admin.put("/api/sdamanager/sdamodel/group", params={"id": 999999, "label": "x"}), 601)
    error(admin.delete("/api/sdamanager/sdamodel/group", params={"id": 999999}), 601)
    error(admin.get("/api/sdamanager/sdamodel", params={"token": "no-such-token"}), 601, "no-such-token")


def test_sdamodel_user_sees_its_own_models_only(server: ApiServer, admin: httpx.Client, user_token: str) -> None:
    other = server.make_token(unique("other"))
    with server.client(user_token) as user:
        own = ok(user.get("/api/sdamanager/sdamodel"))
        assert own == ok(user.get("/api/sdamanager/sdamodel", params={"token": user_token}))
        assert {m["name"] for m in own} >= {"Small.64GB"}
        # Another token's list, the group list and every change are refused like a missing token.
        error(user.get("/api/sdamanager/sdamodel", params={"token": other}), 601, other)
        for response in (
            user.get("/api/sdamanager/sdamodel/group"),
            user.post("/api/sdamanager/sdamodel", params={"name": unique("m"), "numDevices": 1, "desc": "d"}),
            user.delete("/api/sdamanager/sdamodel", params={"sdamodel": 1}),
            user.post("/api/sdamanager/sdamodel/group", params={"label": unique("g")}),
        ):
            error(response, 601)
    assert ok(admin.get("/api/sdamanager/sdamodel", params={"token": other}))


def test_a_lone_surrogate_in_a_json_body_is_a_600_not_a_500(server: ApiServer, admin: httpx.Client) -> None:
    # JSON's "\ud800" escape decodes to a string no UTF-8 consumer takes; hashing the password used to 500.
    user_id = unique("surrogate")
    fields = {"id": user_id, "name": "n", "salt": "s", "password": "\ud800", "question": "q", "answer": "a"}
    body = json.dumps(fields).encode()  # ensure_ascii writes the surrogate as the escape \ud800
    response = admin.post("/api/user", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 600
    assert "'password'" in response.json()["details"]
    assert admin.get("/api/user", params={"id": user_id}).status_code == 404
    assert "Traceback" not in server.log()
