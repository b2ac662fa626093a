"""The tools against a remote SDA Manager (``MOREH_SDA_MANAGER_ADDRESS``): same output as on the master itself."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from state.paths import state_file
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
    assert not state_file(Path(str(remote.home)).parent / "client-home").exists()


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
    status, answer = remote.op("console", user, line="show token")
    assert (status, answer["error"]["type"]) == (403, "PermissionDeniedError")


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
    ["-s"],
    ["-s", "--json"],
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


@pytest.fixture(autouse=True)
def changes_go_to_the_daemon(request: pytest.FixtureRequest) -> Any:
    """While a test's daemon runs in this process it owns the state: the tests' changes go through its store."""
    from tests import test_moreh_smi

    if "api_server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("api_server")
    test_moreh_smi.OWNED.append(server.store)
    yield
    test_moreh_smi.OWNED.remove(server.store)


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
    refused(both(main, ["--dashboard"], remote_only=True), 1, "needs a terminal")  # no longer local-only


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


# moreh-smi device ...: each command runs on a copy of the master's state, then through the API on the master.


@pytest.fixture
def twin(
    api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Result]:
    """Run moreh-smi ``argv`` locally on a copy of the master's state, then remotely; assert the same output.

    Both runs start from the same state (same next device id), so even a change prints the same table.
    """
    import shutil

    from moreh_tools.smi.main import main

    monkeypatch.setenv("MOREH_HOSTNAME", "vm-host")
    monkeypatch.setenv("MOREH_TOKEN_FILE", "/nonexistent/moreh-token")
    copies = iter(range(1000))

    def run(argv: list[str], stdin: str = "") -> Result:
        copy = tmp_path / f"local-{next(copies)}"
        with api_server.store.quiesced():  # nobody writes while we copy, and the file holds every change
            shutil.copytree(
                api_server.home, copy, ignore=shutil.ignore_patterns("*.lock", "run", "*.log", "*.sock", "*.pid", "*.wal")
            )
        with monkeypatch.context() as m:
            m.delenv("MOREH_SDA_MANAGER_ADDRESS", raising=False)
            m.setenv("MOREH_HOME", str(copy))
            m.setattr(sys, "stdin", io.StringIO(stdin))
            here = run_tool(main, argv, capsys)
        with monkeypatch.context() as m:
            m.setenv("MOREH_SDA_MANAGER_ADDRESS", address_of(api_server))
            m.setenv("MOREH_HOME", str(tmp_path / "user-host"))
            m.setattr(sys, "stdin", io.StringIO(stdin))
            there = run_tool(main, argv, capsys)
        assert not (tmp_path / "user-host").exists()
        assert (there.out, there.err, there.code) == (here.out, here.err, here.code), (argv, stdin)
        assert devices_of(api_server.home, api_server.store) == devices_of(copy), argv  # the same change, made on the master
        return there

    return run


def devices_of(home: Path, store: Any = None) -> list[tuple[Any, ...]]:
    with (store or StateStore(home)).reading() as s:
        return s.all(
            "SELECT s.id, s.token, s.model_id, t.current_sda FROM sdas s JOIN tokens t ON t.value = s.token ORDER BY s.id"
        )


def test_moreh_smi_device_commands_are_the_same_remotely(smi_user: User, twin: Callable[..., Result], api_server: ApiServer) -> None:
    listed = twin(["device", "--list"])
    assert listed.out.startswith("1. Small.64GB\n"), listed.out
    added = twin(["device", "--add", "Medium.128GB"])
    assert added.out.endswith("Create device success.\n"), added
    assert added.code == 0
    picked = twin(["device", "--add"], "x\n1\nq\n")  # a wrong answer re-prompts; q stops the picker
    assert picked.out.count("Create device success.") == 1, picked
    assert "Type a model number" in picked.err
    switched = twin(["device", "--switch", "4"])
    assert switched.out.startswith("\n"), switched
    assert switched.out.endswith("Switch Current Device success.\n"), switched
    twin(["device", "--switch"], "2\n")
    removed = twin(["device", "--rm", "3"])
    assert removed.out.endswith("Remove device success.\n"), removed
    twin(["--rm"], "4\n")  # --rm works without 'device' too
    twin(["device", "--rm"], "q\n")
    assert [row[0] for row in devices_of(api_server.home, api_server.store)] == [1, 2]


def test_moreh_smi_device_refusals_are_the_same_remotely(
    smi_user: User, twin: Callable[..., Result], api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused(twin(["device", "--rm", "1"]), 1, "cannot be removed while it is in use")
    refused(twin(["device", "--rm", "99"]), 1, "Device 99 is not one of your devices")
    refused(twin(["device", "--switch", "abc"]), 2, "'abc' is not a device id")
    refused(twin(["device", "--add", "nonsense"]), 1, "'nonsense' is not a model this token may use")
    refused(twin(["device", "--add", "99"]), 1, "There is no model number 99")
    eof = twin(["device", "--add"], "")
    assert eof.code == 1
    assert "The input ended at the selection prompt" in eof.err, eof
    eof = twin(["device", "--switch"], "7\n")  # a wrong id, then the input ends
    assert eof.code == 1
    assert "Type one of your device ids (1, 2)" in eof.err, eof
    # Another token's device: neither removed nor switched to, and its id is not revealed as existing.
    other = api_server.make_token("other@vm")
    other_device = admin(lambda s: s.sdas.create(other, "", 1))
    refused(twin(["device", "--rm", str(other_device)]), 1, f"Device {other_device} is not one of your devices")
    refused(twin(["device", "--switch", str(other_device)]), 1, "your devices are: 1, 2")
    # At the token's max SDA (the admin's limit): --add refused with and without a model.
    admin(lambda s: s.tokens.update_max_sda(smi_user.token, 2))
    refused(twin(["device", "--add", "1"]), 1, "the most this token may have (2)")
    refused(twin(["device", "--add"]), 1, "the most this token may have (2)")
    # A token with no device, and one the master does not know.
    monkeypatch.setenv("MOREH_SDA_TOKEN", api_server.make_token("empty@vm"))
    refused(twin(["device", "--rm"]), 1, "This token has no device yet")
    monkeypatch.setenv("MOREH_SDA_TOKEN", "no-such-token")
    refused(twin(["device", "--list"]), 1, "moreh::InvalidToken")
    assert other_device in [row[0] for row in devices_of(api_server.home, api_server.store)]


def test_device_ops_refuse_bad_arguments(smi_user: User, api_server: ApiServer) -> None:
    option = {"number": 1, "model_id": 1, "name": "Small.64GB", "devices": 1, "group_id": None, "group_name": None}
    for name, args in [
        ("device_add", {}),
        ("device_add", {"model": "1", "option": option}),
        ("device_add", {"option": [1]}),
        ("device_add", {"option": {"number": 1}}),
        ("device_add", {"model": 1}),
        ("device_add", {"modle": "1"}),
        ("device_remove", {}),
        ("device_switch", {}),
        ("device_switch", {"device": "x"}),
    ]:
        status, answer = api_server.op(name, smi_user.token, **args)
        assert status == 400, (name, args, answer)
        assert answer["error"]["type"] == "BadRequestError", answer
    assert len(devices_of(api_server.home, api_server.store)) == 2


def model_name(server: ApiServer, sda_id: int) -> str:
    with server.store.reading() as s:
        return s.models.get(s.sdas.get(sda_id).model_id).name


# moreh-run and the host daemons: two "hosts" (two state directories and host names) and one master.


def host_env(server: ApiServer, root: Path, name: str, token: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("MOREH_TOKEN_FILE", "MOREH_VISIBLE_DEVICE", "MOREH_JOB_ID")}
    env.update(
        MOREH_HOME=str(root / name),
        MOREH_HOSTNAME=name,
        MOREH_MACHINE_ID=f"machine-{name}",  # several simulated hosts on this one machine
        MOREH_FAKE_GPUS="2",
        MOREH_SDA_MANAGER_ADDRESS=address_of(server),
        MOREH_SDA_TOKEN=token,
        MOREH_RELEASE_GRACE="1",
    )
    return env


def register_host(server: ApiServer, root: Path, name: str) -> None:
    """Register a host with the master as its daemon does (one report, with the master's ADMIN token)."""
    env = host_env(server, root, name, server.admin_token)
    done = subprocess.run([str(BIN / "sdamanager"), "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def master_read(server: ApiServer, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with server.store.reading() as s:
        return s.all(sql, params or [])


JOB = "import os, sys, time; print(sys.argv[1], os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(float(sys.argv[2]))"


def test_two_hosts_queue_run_and_account_jobs_through_one_master(api_server: ApiServer, tmp_path: Path) -> None:
    def setup(s: Session) -> tuple[str, str, int, int]:
        user_a, user_b = s.tokens.create("a@host-a"), s.tokens.create("b@host-b")
        return user_a, user_b, s.sdas.create(user_a, "", 2), s.sdas.create(user_b, "", 1)

    with api_server.store.transaction("test: two users") as s:
        user_a, user_b, _sda_a, _sda_b = setup(s)
    daemons = [
        subprocess.Popen(
            [str(BIN / "sdamanager"), "--interval", "0.3"],
            env=host_env(api_server, tmp_path, host, api_server.admin_token),
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{host}.log").open("wb"),
        )
        for host in ("host-a", "host-b")
    ]
    try:
        # Each host's daemon registers it with the master and reports its GPUs' figures.
        wait_until(
            lambda: (
                len(
                    master_read(
                        api_server,
                        "SELECT DISTINCT b.host FROM backends b JOIN devices d ON d.backend_id = b.id "
                        "WHERE b.host IN ('host-a', 'host-b') AND d.sampled_at IS NOT NULL",
                    )
                )
                == 2
            ),
            "both hosts' samples",
        )
        env_a = host_env(api_server, tmp_path, "host-a", user_a)
        env_b = host_env(api_server, tmp_path, "host-b", user_b)
        run = [str(BIN / "moreh-run"), "--", sys.executable, "-c", JOB]
        first = subprocess.Popen(
            [*run, "A1", "1.5"], env=env_a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_until(
            lambda: bool(master_read(api_server, "SELECT 1 FROM jobs WHERE host = 'host-a' AND status = 'RUNNING'")),
            "host-a's first job to run",
        )
        second = subprocess.Popen(
            [*run, "A2", "0"], env=env_a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        on_b = subprocess.run([*run, "B1", "0"], env=env_b, capture_output=True, text=True, timeout=60)
        outputs = [p.communicate(timeout=60) for p in (first, second)]
        # moreh-smi -r on host-b releases its running job through the master; host-b's daemon ends it.
        long = subprocess.Popen(
            [*run, "B2", "60"], env=env_b, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert long.stdout is not None
        assert long.stdout.readline().startswith("B2 ")
        smi = str(BIN / "moreh-smi")
        reset = subprocess.run([smi, "-r"], env=env_b, capture_output=True, text=True, timeout=30)
        long.communicate(timeout=30)
        again = subprocess.run([smi, "-r"], env=env_b, capture_output=True, text=True, timeout=30)
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            assert daemon.wait(timeout=20) == 0, (tmp_path / "host-a.log").read_text()
    assert (first.returncode, second.returncode, on_b.returncode) == (0, 0, 0), (outputs, on_b)
    assert outputs[0][0] == "A1 0,1\n"  # the Medium.128GB SDA holds both GPUs of host-a
    assert outputs[1][0] == "A2 0,1\n"
    assert "waits in the queue" in outputs[1][1]  # the second job of the SDA was queued behind the first
    assert "Moreh SDA is ready to use" in outputs[1][1]
    assert on_b.stdout in ("B1 0\n", "B1 1\n")
    assert (reset.stdout, reset.stderr, reset.returncode) == ("Device release success.\n", "", 0)
    assert long.returncode != 0
    assert (again.stdout, again.stderr, again.returncode) == ("", "Device release failed. (Not running job.)\n", 1)
    *history, last = master_read(api_server, "SELECT token, host, end_reason, exit_code FROM job_history ORDER BY id")
    assert last[:3] in ((user_b, "host-b", "released"), (user_b, "host-b", "failed")), last
    hosts = sorted((h[0], h[1]) for h in history)
    assert hosts == sorted([(user_a, "host-a"), (user_a, "host-a"), (user_b, "host-b")])
    assert all(h[2] == "finished" and h[3] == 0 for h in history)
    with api_server.store.reading() as s:
        entries = s.jobs.history()
    for entry in entries:  # each job held devices of its own host's backend only
        assert entry.device_refs, entry
        assert {ref.backend_host for ref in entry.device_refs} == {entry.host}, entry
    assert not master_read(api_server, "SELECT * FROM jobs")
    assert not state_file(tmp_path / "host-a").exists()  # the hosts kept no state of their own


def test_remote_launcher_refusals_and_lost_and_cancelled_jobs(api_server: ApiServer, tmp_path: Path) -> None:
    import signal

    with api_server.store.transaction("test: a user") as s:
        user = s.tokens.create("c@host-c")
        s.sdas.create(user, "", 1)
    env = host_env(api_server, tmp_path, "host-c", user)
    register_host(api_server, tmp_path, "host-c")
    run = [str(BIN / "moreh-run"), "--", sys.executable, "-c", JOB]
    bad = subprocess.run(
        [*run, "x", "0"], env={**env, "MOREH_SDA_TOKEN": "nope"}, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 1, bad
    assert bad.stderr.count("\n") == 1, bad.stderr
    assert "moreh::InvalidToken" in bad.stderr
    down = {**env, "MOREH_SDA_MANAGER_ADDRESS": f"127.0.0.1:{free_port()}"}
    gone = subprocess.run([*run, "x", "0"], env=down, capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1, gone
    assert gone.stderr.startswith("moreh-run: Cannot reach the SDA Manager"), gone.stderr
    assert gone.stderr.count("\n") == 1, gone.stderr
    # A launcher killed with SIGKILL: its guardian kills the command and records the job as lost on the master.
    holder = subprocess.Popen([*run, "C1", "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert holder.stdout is not None
    assert holder.stdout.readline() == "C1 0\n"
    waiter = subprocess.Popen([*run, "C2", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(master_read(api_server, "SELECT 1 FROM jobs WHERE status = 'QUEUED'")) == 1, "a queued job")
    waiter.send_signal(signal.SIGINT)  # the queued job leaves the queue without running
    _, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 128 + signal.SIGINT, err
    assert "left the queue without running" in err
    holder.kill()
    holder.wait(timeout=10)
    wait_until(
        lambda: (
            sorted(r[0] for r in master_read(api_server, "SELECT end_reason FROM job_history")) == ["cancelled", "lost"]
        ),
        "the killed launcher's job to be recorded as lost",
    )
    import psutil

    [(pid,)] = master_read(api_server, "SELECT pid FROM job_history WHERE end_reason = 'lost'")
    wait_until(lambda: not psutil.pid_exists(pid), "the lost job's command to be killed")
    assert not master_read(api_server, "SELECT * FROM jobs")


def test_remote_tools_load_neither_the_state_nor_the_server_stack(smi_user: User, api_server: ApiServer) -> None:
    import os

    heavy = ("duckdb", "state.store", "fastapi", "httpx", "uvicorn")
    report = f"print(code, sorted(m for m in {heavy!r} if m in sys.modules))"
    env = {**os.environ, "MOREH_SDA_MANAGER_ADDRESS": address_of(api_server), "MOREH_HOME": "/nonexistent/home"}
    smi_probe = f"import sys; from moreh_tools.smi.main import main; code = main([]); {report}"
    done = subprocess.run([sys.executable, "-c", smi_probe], capture_output=True, text=True, env=env, timeout=30)
    assert "python train.py" in done.stdout, done
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout
    env["MOREH_SDA_TOKEN"] = api_server.admin_token
    console_probe = f"import sys; from moreh_tools.smclient.main import run_line; code = run_line('show sda'); {report}"
    done = subprocess.run([sys.executable, "-c", console_probe], capture_output=True, text=True, env=env, timeout=30)
    assert smi_user.token in done.stdout, done
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout


def test_a_bad_address_or_a_non_http_peer_is_one_line(smc: Smc, monkeypatch: pytest.MonkeyPatch) -> None:
    # http.client's own errors (InvalidURL, BadStatusLine, IncompleteRead) are not OSError: they used to reach the
    # tools' "internal error" catch-all.
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    replies = [b"SSH-2.0-OpenSSH_9.0\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}"]

    def answer() -> None:
        for reply in replies:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    peer = f"127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("MOREH_SDA_TOKEN", "whatever")
    for where, expected in (
        ("127.0.0.1:notaport", "MOREH_SDA_MANAGER_ADDRESS='127.0.0.1:notaport' is not usable"),
        (peer, f"Cannot reach the SDA Manager at {peer}"),
        (peer, f"Cannot reach the SDA Manager at {peer}"),
    ):
        monkeypatch.setenv("MOREH_SDA_MANAGER_ADDRESS", where)
        result = smc("show token")
        assert result.code != 0
        assert result.out == ""
        assert result.err.count("\n") == 1, result.err
        assert expected in result.err, result.err
        assert "internal error" not in result.err.lower()
    thread.join(5)
    listener.close()


def test_a_user_cannot_make_the_master_or_a_host_daemon_kill_a_process_of_its_choice(
    api_server: ApiServer, tmp_path: Path
) -> None:
    # The pid a launcher reports when its command starts is only a claim; releasing the job signals that pid's tree,
    # so a USER could name any process (pid and create time are world-readable in /proc) and have it killed.
    import psutil

    from moreh_tools.daemon.host import Releases
    from moreh_tools.services.records import Release

    victim = subprocess.Popen(["sleep", "60"])
    try:
        created = psutil.Process(victim.pid).create_time()
        user = api_server.make_token("pid-claimer")
        with api_server.client() as admin:
            admin.put("/api/sdamanager/token", params={"token": user, "maxSdaCount": 2})
            for _ in range(2):
                assert admin.post("/api/sdamanager/sda", params={"model": 1, "token": user}).status_code == 200
        with api_server.client(user) as client:
            sdas = [sda["id"] for sda in client.get("/api/sdamanager/sda").json()]
        here = api_server.daemon.owner.ctx
        # A live launcher (this test's process): the daemon's ticks end the jobs of dead ones as lost.
        me = psutil.Process()
        launcher = {"launcher_pid": me.pid, "launcher_create_time": me.create_time(), "process": "x", "ip": ""}
        # On the master's own host the server checks the claim at once.
        status, answer = api_server.op("job_submit", user, sda=sdas[0], host=here.host, machine_id=here.machine_id,
                                       **launcher)
        assert status == 200, answer
        job = answer["result"]["job"]["id"]
        status, answer = api_server.op("job_started", user, job_id=job, pid=victim.pid, create_time=created)
        assert status == 409, answer
        assert f"lacks MOREH_JOB_ID={job}" in answer["error"]["message"]
        assert api_server.op("job_finish", user, job_id=job, exit_code=None, reason="failed")[0] == 200
        # On another host the master cannot check it: that host's daemon does before it signals anything.
        gpus = [{"uuid": "GPU-h", "name": "G", "memory_total_mib": 1000}]
        assert api_server.op("host_register", host="pid-host", ip="10.1.2.3", machine_id="pid-host", gpus=gpus)[0] == 200
        status, answer = api_server.op("job_submit", user, sda=sdas[1], host="pid-host", machine_id="pid-host",
                                       **launcher)
        assert status == 200, answer
        job = answer["result"]["job"]["id"]
        assert api_server.op("job_started", user, job_id=job, pid=victim.pid, create_time=created)[0] == 200
        with api_server.client(user) as client:
            assert client.delete("/api/scheduler/queue", params={"id": job}).status_code == 200
        status, report = api_server.op("host_report", host="pid-host", ip="10.1.2.3", machine_id="pid-host",
                                       gpus=gpus, samples=[], processes=[])
        assert status == 200, report
        assert report["result"]["release"] == [{"job_id": job, "pid": victim.pid, "pid_create_time": created}]
        releases = Releases(tmp_path, lambda line: None)
        releases.start([Release(job, victim.pid, created)])
        deadline = time.monotonic() + 5
        while releases.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not releases.busy
        assert victim.poll() is None, "the daemon killed a process that is not the job's"
    finally:
        victim.kill()
        victim.wait()


def test_undecodable_arguments_and_tokens_are_one_line_remotely(tmp_path: Path) -> None:
    # urlencode and http.client raise UnicodeEncodeError for surrogate-escaped argv bytes and non-latin-1 tokens.
    from tests.conftest import BIN

    base = {**os.environ, "MOREH_HOME": str(tmp_path), "MOREH_SDA_MANAGER_ADDRESS": f"127.0.0.1:{free_port()}"}
    runs = [
        ([str(BIN / "moreh-smi"), "device", "--rm", b"\xff".decode(errors="surrogateescape")], "x", "not valid UTF-8"),
        ([str(BIN / "moreh-smi")], b"\xff".decode(errors="surrogateescape"), "cannot be sent"),
    ]
    for argv, token, expected in runs:
        result = subprocess.run(
            argv, env={**base, "MOREH_SDA_TOKEN": token}, capture_output=True, text=True, errors="replace", timeout=30
        )
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr, result.stderr
        assert "internal error" not in result.stderr


def test_a_waiting_moreh_run_outlasts_a_rate_limit(tmp_path: Path) -> None:
    # A 429 on the long poll used to end moreh-run and strand its job QUEUED on the master (nothing reaps a remote
    # host's queued job), where it would later hold devices no command uses.
    from tests.conftest import start_api_in_process, stop_api_server

    server = start_api_in_process(tmp_path / "home", {"MOREH_API_RATE": "4/4"})
    try:
        with server.store.transaction("test: a user") as s:
            user = s.tokens.create("r@host-r")
            s.sdas.create(user, "", 1)
        env = host_env(server, tmp_path, "host-r", user)
        register_host(server, tmp_path, "host-r")
        run = [str(BIN / "moreh-run"), "--", sys.executable, "-c", JOB]
        # The holder spends 3 requests (submit, register, running) and the waiter's submit the 4th: its first
        # long poll is refused.
        holder = subprocess.Popen([*run, "R1", "5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        assert holder.stdout.readline() == "R1 0\n"
        waiter = subprocess.run([*run, "R2", "0"], env=env, capture_output=True, text=True, timeout=60)
        assert waiter.returncode == 0, waiter.stderr
        assert waiter.stdout == "R2 0\n"
        _, err = holder.communicate(timeout=30)
        assert holder.returncode == 0, err
        assert not master_read(server, "SELECT * FROM jobs")
        assert sorted(r[0] for r in master_read(server, "SELECT end_reason FROM job_history")) == ["finished"] * 2
    finally:
        stop_api_server(server)


def test_the_end_of_a_job_is_recorded_even_past_the_rate_limit(tmp_path: Path) -> None:
    # A 429 on /finish left the job RUNNING on the master, holding its devices, with no launcher left to retry:
    # reports of what already happened to one's own job never spend the request budget.
    from tests.conftest import start_api_in_process, stop_api_server

    server = start_api_in_process(tmp_path / "home", {"MOREH_API_RATE": "2/600"})
    try:
        with server.store.transaction("test: a user") as s:
            user = s.tokens.create("f@host-f")
            s.sdas.create(user, "", 1)
        env = host_env(server, tmp_path, "host-f", user)
        register_host(server, tmp_path, "host-f")
        # submit and register spend the budget; running and finish must still get through.
        job = subprocess.run([str(BIN / "moreh-run"), "--", "sh", "-c", "echo F1 $CUDA_VISIBLE_DEVICES; exit 3"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert job.returncode == 3, job.stderr
        assert "not recorded" not in job.stderr, job.stderr
        assert not master_read(server, "SELECT * FROM jobs")
        assert master_read(server, "SELECT end_reason, exit_code FROM job_history") == [("failed", 3)]
    finally:
        stop_api_server(server)


def test_five_hosts_on_one_host_token_outlast_any_rate_budget(tmp_path: Path) -> None:
    """Host reports never spend a per-token budget: 5 hosts sharing one HOST token report past 3 budgets' worth.

    The master allows 10 requests per 10 minutes per token here; the hosts send more than 30 reports in a
    few seconds and every one is recorded. A user's requests with their own token still meet the budget.
    """
    from tests.conftest import start_api_in_process, stop_api_server

    server = start_api_in_process(tmp_path / "master", env={"MOREH_API_RATE": "10/600"})
    try:
        with server.store.transaction("test: a HOST token and a user") as s:
            host_token = s.tokens.create("hosts")
            s.tokens.update_access_level(host_token, "HOST")
            user = s.tokens.create("someone")
        hosts = [f"budget-host-{n}" for n in range(5)]
        daemons = [
            subprocess.Popen(
                [str(BIN / "sdamanager"), "--interval", "0.2"],
                env=host_env(server, tmp_path, host, host_token),
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / f"{host}.log").open("wb"),
            )
            for host in hosts
        ]
        reports: dict[str, set[Any]] = {host: set() for host in hosts}

        def seen() -> bool:
            for host, stamp in master_read(server, "SELECT host, last_seen FROM backends WHERE host LIKE 'budget-host-%'"):
                if stamp is not None:
                    reports[host].add(stamp)  # each report stamps its backend anew
            return all(len(stamps) >= 8 for stamps in reports.values())

        try:
            wait_until(seen, "every host to report 8 times (40 reports, 4 budgets' worth)", timeout=60)
        finally:
            for daemon in daemons:
                daemon.terminate()
            codes = [daemon.wait(timeout=20) for daemon in daemons]
        logs = {host: (tmp_path / f"{host}.log").read_text(errors="replace") for host in hosts}
        assert codes == [0] * 5, logs
        for host, log in logs.items():
            assert "too many requests" not in log.lower(), (host, log)
            assert "rate limit" not in log.lower(), (host, log)
        with server.client(user) as client:
            statuses = [client.get("/api/sdamanager/sda").status_code for _ in range(11)]
        assert statuses[:10] == [200] * 10
        assert statuses[10] == 429  # the same master still limits everyone else
    finally:
        stop_api_server(server)
