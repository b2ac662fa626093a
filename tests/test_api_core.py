"""REST API core (issue 6): `sdamanager --api`, authentication, error bodies, parameters, rate limit, OpenAPI.

Everything goes through a real server on a loopback port (``sdamanager --api 127.0.0.1:0`` in a subprocess).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import BIN, ApiServer, start_api_in_process, start_api_server, stop_api_server

# The 52 endpoints of the Moreh API document (reference part A.2), as (method, path).
DOCUMENTED = [
    ("GET", "/api/user"), ("POST", "/api/user"), ("PUT", "/api/user"), ("GET", "/api/user/signin"),
    ("GET", "/api/user/qna"), ("GET", "/api/check"), ("GET", "/api/signal"),
    ("GET", "/api/backend"), ("POST", "/api/backend"), ("PUT", "/api/backend"), ("DELETE", "/api/backend"),
    ("PUT", "/api/backend/device/status"), ("POST", "/api/backend/grouping"), ("PUT", "/api/backend/grouping"),
    ("DELETE", "/api/backend/grouping"), ("GET", "/api/backend/group"), ("POST", "/api/backend/group"),
    ("PUT", "/api/backend/group"), ("DELETE", "/api/backend/group"),
    ("GET", "/api/sdamanager/sdamodel"), ("POST", "/api/sdamanager/sdamodel"), ("DELETE", "/api/sdamanager/sdamodel"),
    ("POST", "/api/sdamanager/sdamodel/grouping"), ("DELETE", "/api/sdamanager/sdamodel/grouping"),
    ("GET", "/api/sdamanager/sdamodel/group"), ("POST", "/api/sdamanager/sdamodel/group"),
    ("PUT", "/api/sdamanager/sdamodel/group"), ("DELETE", "/api/sdamanager/sdamodel/group"),
    ("GET", "/api/sdamanager/sda"), ("POST", "/api/sdamanager/sda"), ("PUT", "/api/sdamanager/sda"),
    ("DELETE", "/api/sdamanager/sda"), ("GET", "/api/sdamanager/sdautilizations"),
    ("GET", "/api/sdamanager/token"), ("POST", "/api/sdamanager/token"), ("PUT", "/api/sdamanager/token"),
    ("DELETE", "/api/sdamanager/token"), ("GET", "/api/sdamanager/token/group"),
    ("POST", "/api/sdamanager/token/group"), ("PUT", "/api/sdamanager/token/group"),
    ("DELETE", "/api/sdamanager/token/group"), ("DELETE", "/api/sdamanager/token/grouping"),
    ("POST", "/api/sdamanager/token/grouping"),
    ("GET", "/api/scheduler/queue"), ("PUT", "/api/scheduler/queue"), ("DELETE", "/api/scheduler/queue"),
    ("GET", "/api/scheduler/history"),
    ("GET", "/api/membership"), ("POST", "/api/membership"), ("DELETE", "/api/membership"),
    ("GET", "/api/usage"), ("GET", "/api/log/sdamanager/event"),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One server for the read-mostly tests of this module."""
    base = tmp_path_factory.mktemp("api-core")
    srv = start_api_in_process(base / "home")
    yield srv
    stop_api_server(srv)


def moreh_error(response: httpx.Response, code: int, *needles: str) -> str:
    """Assert the ``{"code": N, "details": ...}`` error body, its X-Moreh-Code header and the needles."""
    body = response.json()
    assert response.headers.get("x-moreh-code") == str(code), (response.status_code, body)
    assert body["code"] == code, body
    for needle in needles:
        assert needle in body["details"], (needle, body)
    return str(body["details"])


def test_every_documented_endpoint_is_served_and_described(server: ApiServer) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    served = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    missing = sorted(set(DOCUMENTED) - served)
    assert not missing, f"documented endpoints not served: {missing}"
    assert len(DOCUMENTED) == 52
    for method, path in DOCUMENTED:
        operation = spec["paths"][path][method.lower()]
        assert operation["security"] == [{"bearer": []}, {"apikey": []}], (method, path)
    # The parameters the endpoints read are described with their documented names and types.
    put_backend = {p["name"]: p for p in spec["paths"]["/api/backend"]["put"]["parameters"]}
    assert put_backend["command"]["required"] is True
    assert put_backend["id"]["schema"]["type"] == "integer"
    assert put_backend["id"]["required"] is False  # required for command=update only
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200
    assert "openapi.json" in docs.text


def test_bearer_and_apikey_authenticate(server: ApiServer) -> None:
    url = server.url + "/api/check"
    assert httpx.get(url, headers={"Authorization": f"Bearer {server.admin_token}"}).json() == "success"
    assert httpx.get(url, params={"apikey": server.admin_token}).json() == "success"
    assert httpx.get(url, headers={"authorization": f"bearer {server.admin_token}"}).status_code == 200


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"Authorization": "Bearer not-a-token"}, {}),
        ({}, {"apikey": "not-a-token"}),
        ({"Authorization": "Basic dXNlcjpwdw=="}, {}),
        ({"Authorization": "Bearer"}, {}),
        ({"Authorization": "Bearer " + "x" * 5000}, {}),
    ],
)
def test_missing_or_unknown_token_is_601_with_401(
    server: ApiServer, headers: dict[str, str], params: dict[str, str]
) -> None:
    response = httpx.get(server.url + "/api/backend", headers=headers, params=params)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    moreh_error(response, 601, "token")


def test_a_deleted_token_stops_working(server: ApiServer) -> None:

    token = server.make_token("short-lived", "ADMIN")
    with server.client(token) as client:
        assert client.get("/api/check").status_code == 200
        with server.store.transaction("test: delete token") as s:
            s.tokens.delete(token)
        time.sleep(1.1)  # token lookups are cached for one second (documented)
        moreh_error(client.get("/api/check"), 601)


def test_parameters_named_in_600_errors(server: ApiServer) -> None:
    with server.client() as client:
        moreh_error(client.delete("/api/backend"), 600, "'id'", "required")
        moreh_error(client.get("/api/backend", params={"id": "1.5"}), 600, "'id'", "integer", "1.5")
        moreh_error(client.get("/api/backend", params={"id": "99999999999999999999"}), 600, "'id'", "64-bit")
        moreh_error(client.get("/api/backend?id=1&id=2"), 600, "'id'", "2 times")
        moreh_error(client.delete("/api/backend/group", params={"id": 1, "force": "maybe"}), 600, "'force'", "boolean")
        moreh_error(client.get("/api/check", params={"type": "x\x00y"}), 600, "'type'")


def test_parameters_also_come_from_a_json_or_form_body(server: ApiServer) -> None:
    with server.client() as client:
        label = f"from-json-{time.monotonic_ns()}"
        created = client.post("/api/backend/group", json={"label": label}).json()
        assert created["result"]["name"] == label
        label2 = f"from-form-{time.monotonic_ns()}"
        created2 = client.post("/api/backend/group", data={"label": label2}).json()
        assert created2["result"]["name"] == label2
        # The query string wins over the body.
        label3 = f"from-query-{time.monotonic_ns()}"
        created3 = client.post("/api/backend/group", params={"label": label3}, json={"label": "ignored"}).json()
        assert created3["result"]["name"] == label3
        bad = client.post("/api/backend/group", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400
        moreh_error(bad, 600, "JSON")
        moreh_error(client.post("/api/backend/group", json=[1, 2]), 600, "JSON object")
        moreh_error(client.post("/api/backend/group", json={"label": {"nested": 1}}), 600, "'label'")
        big = client.post("/api/backend/group", content=b"x" * (2 << 20), headers={"content-type": "text/plain"})
        assert big.status_code == 413
        # The documented curl form: every parameter in the query string, an empty body.
        created4 = client.post("/api/backend/group", params={"label": label + "-q"}, content=b"").json()
        assert created4["code"] == "SUCCESS"


def test_unknown_paths_and_methods(server: ApiServer) -> None:
    with server.client() as client:
        response = client.get("/api/nothing-here")
        assert response.status_code == 404
        moreh_error(response, 601, "/api/nothing-here")
        response = client.patch("/api/backend")
        assert response.status_code == 405
        moreh_error(response, 600, "PATCH")


def test_rate_limit_and_literal_status_codes(tmp_path: Path) -> None:
    srv = start_api_server(
        tmp_path / "home", tmp_path / "log", {"MOREH_API_RATE": "5/60", "MOREH_API_LITERAL_STATUS": "1"}
    )
    try:
        other = srv.make_token("other", "ADMIN")
        with srv.client() as client:
            for _ in range(5):
                assert client.get("/api/check").status_code == 200
            limited = client.get("/api/check")
            assert limited.status_code == 429
            assert 1 <= int(limited.headers["retry-after"]) <= 60
            assert limited.json()["code"] == 429
            assert "retry after" in limited.json()["details"]
        with srv.client(other) as client:  # the budget is per token
            assert client.get("/api/check").status_code == 200
            # MOREH_API_LITERAL_STATUS=1: the HTTP status is the document's code itself.
            assert client.get("/api/backend", params={"id": "x"}).status_code == 600
            assert client.get("/api/backend", params={"id": 424242}).status_code == 601
        # Guessing tokens spends the client's budget: the sixth wrong guess is refused before it is checked.
        codes = [httpx.get(srv.url + "/api/check", params={"apikey": f"guess{i}"}).status_code for i in range(6)]
        assert codes == [601] * 5 + [429]
    finally:
        stop_api_server(srv)


def test_daemon_ticks_while_serving_and_stops_on_sigterm(tmp_path: Path) -> None:

    srv = start_api_server(tmp_path / "home", tmp_path / "log")
    deadline = time.monotonic() + 15
    while True:  # the tick thread samples the 2 simulated GPUs into the state
        with srv.client() as client:
            series = client.get("/api/signal", params={"period": "1m", "param_name": "temp_gpu"}).json()
        if series and len({point[0] for point in series[0]["values"]}) >= 2:
            break
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.1)
    assert (srv.home / "sdamanager.pid").exists()
    started = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    log = srv.log()
    assert "Traceback" not in log
    assert log.rstrip().endswith("sdamanager: stopped (SIGTERM)"), log
    assert not (srv.home / "sdamanager.pid").exists()


def _sdamanager(*args: str, home: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {"MOREH_HOME": str(home), "MOREH_FAKE_GPUS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(BIN / "sdamanager"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize(
    ("address", "needle"),
    [("127.0.0.1:http", "port 'http'"), ("127.0.0.1:70000", "65535"), ("::1:80", "[::1]"), ("[::1]x", "[::1]")],
)
def test_bad_api_addresses_are_usage_errors(tmp_path: Path, address: str, needle: str) -> None:
    done = _sdamanager("--api", address, home=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr


def test_api_with_once_is_refused(tmp_path: Path) -> None:
    done = _sdamanager("--api", "--once", home=tmp_path)
    assert done.returncode == 2
    assert "--once" in done.stderr


def test_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _sdamanager("--api", f"127.0.0.1:{port}", home=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == f"sdamanager: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_an_address_that_cannot_be_served_is_one_line_without_the_exposure_warning(tmp_path: Path) -> None:
    done = _sdamanager("--api", "notaport", home=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("sdamanager: cannot resolve 'notaport': "), done.stderr  # the resolver's words follow
    assert done.stderr.count("\n") == 1, done.stderr


def test_listening_beyond_loopback_warns(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [str(BIN / "sdamanager"), "--api", "0.0.0.0:0"],
        env={"MOREH_HOME": str(tmp_path), "MOREH_FAKE_GPUS": "1", "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        said = []
        while "serving the API" not in (line := process.stderr.readline()):
            assert line, "server ended before serving"
            said.append(line)
        assert any(
            line.startswith("sdamanager: warning: the API on 0.0.0.0:0 is reachable from other machines") for line in said
        ), said
        port = int(line.split("http://0.0.0.0:")[1].split()[0])
        # /metrics needs no token over loopback, but does over any other address.
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
        outside = _non_loopback_ipv4()
        if outside is not None:
            assert httpx.get(f"http://{outside}:{port}/metrics").status_code == 401
            assert httpx.get(f"http://{outside}:{port}/api/check").status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def _non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.255", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_help_stays_light() -> None:
    code = (
        "import sys; from moreh_tools.daemon.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'duckdb'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, timeout=30, check=True
    )
    assert "--api [HOST:PORT]" in done.stdout
    assert json.loads(done.stdout.splitlines()[-1]) == []
