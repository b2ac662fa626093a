"""The tools against a remote SDA Manager (``MOREH_SDA_MANAGER_ADDRESS``): same output as on the master itself."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from state.session import Session
from state.store import StateStore
from tests.conftest import BIN, ApiServer, Result, Smc, ok, token_of
from tests.test_moreh_smi import GPU_MIB, GPU_NAME, User, admin, refused, run_job

# Read-only console lines whose output must be the same locally and through the API.
SAME_OUTPUT_LINES = [
    "help",
    "show token",
    "show sda",
    "show sdamodel",
    "show backend",
    "show job",
    "show history",
    "create token ?",
    "show tokn",  # unknown command: the same one-line error and exit status
    "get token no-such-token",
    "show sda 'unclosed",
    "create token",  # too few arguments
]


def address_of(server: ApiServer) -> str:
    return server.url.removeprefix("http://")


@pytest.fixture
def remote(api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ApiServer:
    """Point the tools at ``api_server`` with its ADMIN token, and this "host" at an empty state of its own."""
    monkeypatch.setenv("MOREH_SDA_MANAGER_ADDRESS", address_of(api_server))
    monkeypatch.setenv("MOREH_SDA_TOKEN", api_server.admin_token)
    monkeypatch.setenv("MOREH_HOME", str(tmp_path / "client-home"))
    return api_server


def local(api_server: ApiServer, monkeypatch: pytest.MonkeyPatch, smc: Smc, line: str, *, json: bool = False) -> Result:
    """Run ``line`` on the master's state directly, as the console on the master does."""
    with monkeypatch.context() as m:
        m.delenv("MOREH_SDA_MANAGER_ADDRESS")
        m.setenv("MOREH_HOME", str(api_server.home))
        return smc(line, json=json)


def test_smclient_lines_give_the_same_output_remotely(
    remote: ApiServer, smc: Smc, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = token_of(ok(local(remote, monkeypatch, smc, "create token alice@example.com 3")))
    ok(local(remote, monkeypatch, smc, "create sdamodel Small 1"))
    ok(local(remote, monkeypatch, smc, f"create sda {user} alice-sda 1"))
    for line in SAME_OUTPUT_LINES:
        here = local(remote, monkeypatch, smc, line)
        there = smc(line)
        assert (there.out, there.err, there.code) == (here.out, here.err, here.code), line
    here_json = local(remote, monkeypatch, smc, "show token", json=True)
    there_json = smc("show token", json=True)
    assert there_json.code == 0
    assert there_json.json == here_json.json
    assert user in {t["token"] for t in there_json.json}
    # A change made remotely lands in the master's state, not in this host's.
    created = token_of(ok(smc("create token bob@example.com 1")))
    assert created in local(remote, monkeypatch, smc, "show token").out
    assert not (Path(str(remote.home)).parent / "client-home" / "state.duckdb").exists()


def test_console_script_piped_lines_and_banner(
    remote: ApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    proc = subprocess.run(
        [str(BIN / "moreh_smclient")],
        input="show token\nshow tokn\nq\nshow token\n",
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=30,
    )
    assert proc.returncode == 1, proc  # one piped line failed
    assert proc.stdout.count("api-admin") == 1  # 'q' stopped before the second 'show token'
    assert proc.stderr.startswith("Error: Unknown command"), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    from moreh_tools.smclient import main as smclient_main

    monkeypatch.setattr(sys, "stdin", io.StringIO("show token\nexit\n"))
    assert smclient_main.repl(False) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"SDAManager's Client. Connect to {address_of(remote)}\n"), out
    assert "api-admin" in out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_is_one_line(smc: Smc, monkeypatch: pytest.MonkeyPatch) -> None:
    where = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("MOREH_SDA_MANAGER_ADDRESS", where)
    monkeypatch.setenv("MOREH_SDA_TOKEN", "whatever")
    result = smc("show token")
    assert result.code != 0
    assert result.out == ""
    assert result.err.count("\n") == 1, result.err
    assert f"Cannot reach the SDA Manager at {where}" in result.err
    assert "MOREH_SDA_MANAGER_ADDRESS" in result.err


def test_smclient_endpoint_refuses_user_and_unknown_tokens(
    remote: ApiServer, smc: Smc, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = remote.make_token("plain-user")
    before = local(remote, monkeypatch, smc, "show token").out
    monkeypatch.setenv("MOREH_SDA_TOKEN", user)
    result = smc("create token sneaky 1")
    assert result.code != 0
    assert result.out == ""
    assert result.err.count("\n") == 1
    assert "needs an ADMIN token" in result.err, result.err
    monkeypatch.setenv("MOREH_SDA_TOKEN", "not-a-token")
    result = smc("show token")
    assert result.code != 0
    assert "does not know this token" in result.err
    assert result.err.count("\n") == 1
    assert local(remote, monkeypatch, smc, "show token").out == before
    with remote.client(user) as client:
        response = client.post("/api/smclient/command", params={"line": "show token"})
    assert response.status_code == 403
    assert response.json()["code"] == 601


def test_rate_limit_is_one_line(tmp_path: Path, smc: Smc, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import start_api_server, stop_api_server

    server = start_api_server(tmp_path / "master", tmp_path / "api.log", env={"MOREH_API_RATE": "2/600"})
    try:
        monkeypatch.setenv("MOREH_SDA_MANAGER_ADDRESS", address_of(server))
        monkeypatch.setenv("MOREH_SDA_TOKEN", server.admin_token)
        codes = [smc("show token").code for _ in range(3)]
        result = smc("show token")
        assert codes[:2] == [0, 0]
        assert result.code != 0
        assert "too many requests" in result.err
        assert "retry in" in result.err
        assert result.err.count("\n") == 1
    finally:
        stop_api_server(server)


# moreh-smi and moreh-switch-model: the user's host has no state of its own, only the address and its token.

SMI_VIEWS = [
    [],
    ["--json"],
    ["-t"],
    ["-t", "--json"],
    ["-p"],
    ["-p", "--json"],
    ["-i", "2"],
    ["-i", "2", "--json"],
    ["-i", "9"],  # not one of the token's devices: the same one-line refusal
]


def run_tool(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> Result:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return Result(captured.out, captured.err, code)


@pytest.fixture
def both(
    api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Any]:
    """Run a tool's ``main(argv)`` on the master's state, then through the API; return both results."""
    monkeypatch.setenv("MOREH_HOSTNAME", "vm-host")
    monkeypatch.setenv("MOREH_TOKEN_FILE", "/nonexistent/moreh-token")

    def run(
        main: Callable[[list[str]], int],
        argv: list[str],
        stdin: str = "",
        *,
        remote_only: bool = False,
        local_only: bool = False,
    ) -> Any:
        if not remote_only:
            with monkeypatch.context() as m:
                m.delenv("MOREH_SDA_MANAGER_ADDRESS", raising=False)
                m.setenv("MOREH_HOME", str(api_server.home))
                m.setattr(sys, "stdin", io.StringIO(stdin))
                here = run_tool(main, argv, capsys)
            if local_only:
                return here
        with monkeypatch.context() as m:
            m.setenv("MOREH_SDA_MANAGER_ADDRESS", address_of(api_server))
            m.setenv("MOREH_HOME", str(tmp_path / "user-host"))
            m.setattr(sys, "stdin", io.StringIO(stdin))
            there = run_tool(main, argv, capsys)
        assert not (tmp_path / "user-host").exists()
        return there if remote_only else (here, there)

    return run


@pytest.fixture
def smi_user(api_server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> User:
    """A token with a Large.256GB device running a job on back01 (sampled figures) and an idle Small.64GB one."""

    def setup(s: Session) -> User:
        s.backends.register_local("back01", "10.0.0.1", [(f"GPU-{i}", GPU_NAME, GPU_MIB) for i in range(8)])
        token = s.tokens.create("user@gmail.com_vm")
        s.tokens.update_max_sda(token, 5)
        return User(token, s.sdas.create(token, "", 3))

    monkeypatch.setenv("MOREH_HOME", str(api_server.home))
    made: User = admin(setup)
    run_job(made)
    admin(lambda s: s.sdas.create(made.token, "", 1))
    monkeypatch.setenv("MOREH_SDA_TOKEN", made.token)
    return made


def test_moreh_smi_views_are_the_same_remotely(smi_user: User, both: Callable[..., Any]) -> None:
    from moreh_tools.smi.main import main

    for argv in SMI_VIEWS:
        here, there = both(main, argv)
        assert (there.out, there.err, there.code) == (here.out, here.err, here.code), argv
    here, _ = both(main, [])
    assert "python train.py" in here.out  # the running job's process: the comparison covered a busy device


def test_moreh_smi_remote_refusals(smi_user: User, both: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from moreh_tools.smi.main import main

    monkeypatch.setenv("MOREH_SDA_TOKEN", "no-such-token")
    here, there = both(main, [])
    assert (there.err, there.code) == (here.err, here.code)
    assert "moreh::InvalidToken" in there.err
    monkeypatch.setenv("MOREH_SDA_TOKEN", smi_user.token)
    _, there = both(main, ["device", "--list"])
    refused(there, 1, "not available against a remote SDA Manager")


def test_switch_model_is_the_same_remotely(smi_user: User, both: Callable[..., Any], api_server: ApiServer) -> None:
    from moreh_tools.switch_model.main import main

    here, there = both(main, [], "q\n")
    assert (there.out, there.err, there.code) == (here.out, here.err, here.code)
    assert "3. Large.256GB  *" in there.out
    here, there = both(main, ["--model", "Large.256GB"])  # already that model, both ways
    assert (there.out, there.err, there.code) == (here.out, here.err, here.code)
    here, there = both(main, ["--model", "nonsense"])
    assert (there.out, there.err, there.code) == (here.out, here.err, here.code)
    assert there.code == 1
    here, there = both(main, ["--model", "Small.64GB"])  # the current device runs a job: refused both ways
    assert (there.out, there.err, there.code) == (here.out, here.err, here.code)
    assert "in use" in there.err
    admin(lambda s: s.tokens.update_current_sda(smi_user.token, smi_user.device + 1))  # the idle Small.64GB
    there = both(main, ["--model", "Medium.128GB"], remote_only=True)
    assert there.out == 'The Moreh SDA model is successfully switched to  "Medium.128GB".\n'
    assert model_name(api_server, smi_user.device + 1) == "Medium.128GB"
    there = both(main, [], "1\nq\n", remote_only=True)
    assert model_name(api_server, smi_user.device + 1) == "Small.64GB"
    admin(lambda s: s.sdas.update_model(smi_user.token, 2, None, smi_user.device + 1))
    here = both(main, [], "1\nq\n", local_only=True)
    assert (there.out, there.err, there.code) == (here.out, here.err, here.code)
    assert 'successfully switched to  "Small.64GB"' in there.out


def model_name(server: ApiServer, sda_id: int) -> str:
    with StateStore(server.home).reading() as s:
        return s.models.get(s.sdas.get(sda_id).model_id).name
