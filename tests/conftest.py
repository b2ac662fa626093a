"""Shared fixtures for the moreh_smclient behaviour tests.

Every test gets its own state directory (``MOREH_HOME``), and ``smc`` runs one console line
through the real entry point, ``moreh_tools.smclient.main.main``, in this process.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TOKEN_CREATED = re.compile(r"^Create SDA Success \(Token : (?P<token>\S+)\)$")
GROUP_CREATED = re.compile(r"^Create (?:Group|SDAModel|Backend) Success \(id : (?P<id>\d+)\)$")


@dataclass
class Result:
    """What one console line printed and how it exited."""

    out: str
    err: str
    code: int

    @property
    def json(self) -> Any:
        """The standard output parsed as JSON (run the line with ``json=True``)."""
        return json.loads(self.out)

    @property
    def lines(self) -> list[str]:
        """The standard output as lines, without the final newline."""
        return self.out.splitlines()


Smc = Callable[..., Result]

# The installed console scripts sit next to the interpreter running the tests (the venv's bin/).
BIN = Path(sys.executable).parent
SMCLIENT = str(BIN / "moreh_smclient")


@pytest.fixture(autouse=True)
def moreh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the state directory at a fresh temporary directory for every test."""
    home = tmp_path / "moreh_home"
    monkeypatch.setenv("MOREH_HOME", str(home))
    monkeypatch.delenv("MOREH_SDA_MANAGER_ADDRESS", raising=False)
    monkeypatch.delenv("MOREH_DEBUG", raising=False)
    return home


@pytest.fixture
def smc(capsys: pytest.CaptureFixture[str]) -> Smc:
    """Run one console line through ``main(["--command", line])`` and return what it printed."""
    from moreh_tools.smclient.main import main

    def run(line: str, *, json: bool = False) -> Result:
        capsys.readouterr()  # drop anything printed before
        argv = ["--command", line] + (["--json"] if json else [])
        code: int | str | None = 0
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return Result(captured.out, captured.err, code if isinstance(code, int) else 1)

    return run


def token_of(result: Result) -> str:
    """Return the token value from ``Create SDA Success (Token : X)``."""
    match = TOKEN_CREATED.match(result.out.strip())
    assert match, f"not a token creation message: {result.out!r} {result.err!r}"
    return match["token"]


def id_of(result: Result) -> int:
    """Return the id from ``Create Group Success (id : N)`` (and the SDAModel/Backend forms)."""
    match = GROUP_CREATED.match(result.out.strip())
    assert match, f"not a creation message: {result.out!r} {result.err!r}"
    return int(match["id"])


def ok(result: Result, expected: str | None = None) -> Result:
    """Assert the line succeeded quietly on stderr (and printed ``expected`` exactly, if given)."""
    assert result.code == 0, (result.out, result.err)
    assert result.err == ""
    if expected is not None:
        assert result.out == expected + "\n"
    return result


def fails(result: Result, code: int = 1, *needles: str) -> str:
    """Assert the line failed with ``code`` and exactly one ``Error: `` line naming every needle."""
    assert result.code == code, (result.code, result.out, result.err)
    assert result.out == ""
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("Error: "), result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def new_token(smc: Smc) -> Callable[..., str]:
    """Create a token and return its value."""

    def make(description: str = "user@gmail.com_test", priority: int | None = None) -> str:
        line = f"create token {description}" + ("" if priority is None else f" {priority}")
        return token_of(ok(smc(line)))

    return make


def dump_state() -> dict[str, list[str]]:
    """Every row of every state table (as sorted text), read in one transaction."""
    from state.store import StateStore

    with StateStore().reading() as s:
        tables = [r[0] for r in s.all("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'")]
        return {t: sorted(map(repr, s.all(f"SELECT * FROM {t}"))) for t in sorted(tables)}


@contextmanager
def state_unchanged() -> Iterator[None]:
    """Assert that nothing inside the block changed the state (for runs of lines that must all fail)."""
    before = dump_state()
    yield
    assert dump_state() == before, "state changed by lines that failed"


@pytest.fixture
def rejects(smc: Smc) -> Callable[..., str]:
    """Run a line that must fail: one ``Error:`` line naming every needle, exit ``code``, state unchanged."""

    def check(line: str, code: int = 1, *needles: str) -> str:
        before = dump_state()
        message = fails(smc(line), code, *needles)
        assert dump_state() == before, f"state changed by failing line {line!r}"
        return message

    return check


def start_running_job(token: str, sda_id: int, host: str = "job-node", store: Any = None) -> int:
    """Give the token's SDA a RUNNING job with devices on ``host`` (registered with 8 devices if new).

    ``store``: the state to change (default: the file; a running daemon's own store while it runs).
    """
    from state.store import StateStore

    with (store or StateStore()).transaction("test: start a running job") as s:
        if s.backends.local_id(host) is None:
            s.backends.create(host, "10.9.9.9", 8)
        job = s.jobs.submit(
            token, sda_id, backend_id=s.backends.local_id(host), launcher_pid=1, launcher_create_time=0.0, process_name="python train.py"
        )
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(job.id, 1, 0.0)
    return job.id


def local_context(host: str | None = None) -> Any:
    """The services' context this test process gets on the state file (MOREH_HOME), as a tool alone would."""
    from dataclasses import replace

    from moreh_tools.port import LocalPort
    from state.paths import state_home

    ctx = LocalPort(state_home(), None, "test").context()
    return replace(ctx, host=host) if host is not None else ctx


def ensure_local_backend(store: Any, provider: Any, host: str | None = None) -> int:
    """Register this host (``host``, default MOREH_HOSTNAME) with ``provider``'s GPUs in ``store``'s state."""
    from moreh_tools.services.hosts import register_with

    ctx = local_context(host)
    ctx.db = store
    return register_with(ctx, provider)


def sample_into_state(store: Any, provider: Any, host: str | None = None) -> None:
    """Sample ``provider`` into ``store``'s state as this host's daemon would."""
    from moreh_tools.services.hosts import sample_with

    ctx = local_context(host)
    ctx.db = store
    sample_with(ctx, provider)


def grid_lines(header: str, *rows: str) -> list[str]:
    """The seed grid around a literal header line and row lines: ``+---+``, header, ``+===+``, rows, ``+---+``."""
    inner = len(header) - 2
    return ["+" + "-" * inner + "+", header, "+" + "=" * inner + "+", *rows, "+" + "-" * inner + "+"]


# -- the REST API (issue 6): sdamanager serving it, in this process or as a real process ----------------------

API_LISTENING = re.compile(r"serving the API on (?P<url>http://\S+) ")


@dataclass
class ApiServer:
    """A running ``sdamanager --api 127.0.0.1:0``: its base URL, state directory and an ADMIN token.

    ``store`` is the daemon's own open state when it runs in this process (tests change the state through
    it, as the daemon's requests do); a daemon in its own process owns the file, so tests reach its state
    through its socket only (``console``).
    """

    url: str
    home: Path
    admin_token: str
    process: Any = None
    log_path: Path | None = None
    store: Any = None
    daemon: Any = None
    thread: Any = None
    lines: list[str] | None = None

    def console(self, line: str) -> Any:
        """Run one admin console line against the server's state (through its socket, as its owner); the JSON."""
        from moreh_tools.port import LocalPort, ops

        result = LocalPort(self.home, None, "test").call(ops.CONSOLE, line=line, json=True)
        assert result.exit_code == 0, (line, result.stderr)
        return json.loads(result.stdout) if result.stdout.strip() else None

    def make_token(self, description: str = "api-user", level: str = "USER", priority: int = 0) -> str:
        """Create a token with ``level`` in the server's state, as the admin console would."""
        value = str(self.console(f"create token {description} {priority}")["token"])
        if level != "USER":
            self.console(f"update token access level {value} {level}")
        return value

    def client(self, token: str | None = None, **kwargs: Any) -> Any:
        """An httpx client on the server, sending ``token`` (default: the ADMIN token) as a Bearer header."""
        import httpx

        headers = {"Authorization": f"Bearer {token or self.admin_token}"} if token != "" else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=20.0, **kwargs)

    def op(self, name: str, token: str | None = None, **args: Any) -> tuple[int, Any]:
        """Call one op of the tools' protocol over HTTP as ``token`` (default: the ADMIN token): (status, JSON)."""
        import httpx

        from moreh_tools.port.codec import encode
        from moreh_tools.port.ops import OP_PATH, PROTOCOL

        headers = {"X-Moreh-Protocol": str(PROTOCOL), "Authorization": f"Bearer {token or self.admin_token}"}
        response = httpx.post(self.url + OP_PATH + name, json=encode(args), headers=headers, timeout=60.0)
        return response.status_code, response.json()

    def log(self) -> str:
        """What the server wrote so far."""
        if self.log_path is not None:
            return self.log_path.read_text(errors="replace")
        return "\n".join(self.lines or [])


def _admin_token(home: Path) -> str:
    from state.store import StateStore

    with StateStore(home).transaction("test: create the ADMIN token") as s:
        admin = s.tokens.create("api-admin", 0)
        s.tokens.update_access_level(admin, "ADMIN")
    return admin


def start_api_server(home: Path, log_path: Path, env: dict[str, str] | None = None) -> ApiServer:
    """Start ``sdamanager --api 127.0.0.1:0`` on ``home`` (with 2 simulated GPUs) and wait until it listens."""
    import os
    import subprocess
    import time

    admin = _admin_token(home)
    full_env = {**os.environ, "MOREH_HOME": str(home), "MOREH_FAKE_GPUS": "2", **(env or {})}
    log = log_path.open("wb")
    process = subprocess.Popen(
        [str(BIN / "sdamanager"), "--api", "127.0.0.1:0", "--interval", "0.5"],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = API_LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return ApiServer(match["url"], home, admin, process=process, log_path=log_path)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"sdamanager --api did not start: {log_path.read_text(errors='replace')}")


def stop_api_server(server: ApiServer) -> None:
    """Stop the server (SIGTERM for a process) and assert it stops cleanly."""
    import subprocess

    if server.daemon is not None:
        server.daemon.stop()
        server.thread.join(timeout=30)
        assert not server.thread.is_alive(), server.log()
        server.daemon.close()
        server.daemon.provider.close()
        assert "Traceback" not in server.log(), server.log()
        return
    server.process.terminate()
    try:
        code = server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise AssertionError(f"sdamanager --api ignored SIGTERM: {server.log()}") from None
    assert code == 0, (code, server.log())
    assert "Traceback" not in server.log(), server.log()


def start_api_in_process(home: Path, env: dict[str, str] | None = None) -> ApiServer:
    """sdamanager's daemon (state, socket, API on a loopback port, ticks every 0.5 s) in a thread of this process.

    ``env`` is in force while the daemon opens (the rate limit, for one, is read then); its GPUs are 2
    simulated ones. Tests change the daemon's state through ``server.store``, as its requests do.
    """
    import os
    import threading

    from moreh_tools.daemon.state_daemon import StateDaemon
    from moreh_tools.gpus.simulated import SimulatedGpuProvider

    admin = _admin_token(home)
    lines: list[str] = []
    saved = {name: os.environ.get(name) for name in ["MOREH_HOME", *(env or {})]}
    os.environ.update({"MOREH_HOME": str(home), **(env or {})})
    try:
        daemon = StateDaemon(
            home, SimulatedGpuProvider(2, 81920), interval=0.5, address=("127.0.0.1", 0), log=lines.append
        )
        daemon.open()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    host, port = daemon.sockets[0].getsockname()[:2]
    thread = threading.Thread(target=daemon.serve, name="test-sdamanager", daemon=True)
    thread.start()
    server = ApiServer(f"http://{host}:{port}", home, admin, store=daemon.store, daemon=daemon, thread=thread, lines=lines)
    _wait_until_serving(server)
    return server


def _wait_until_serving(server: ApiServer) -> None:
    import time

    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(server.url + "/api/check", timeout=2.0)
            return
        except httpx.HTTPError:
            time.sleep(0.02)
    raise AssertionError(f"the in-process sdamanager did not start serving: {server.log()}")


@pytest.fixture
def api_server(moreh_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    """sdamanager serving this test's ``MOREH_HOME`` and the API on a loopback port, in this process."""
    monkeypatch.setenv("MOREH_FAKE_GPUS", "2")
    server = start_api_in_process(moreh_home)
    yield server
    stop_api_server(server)


@pytest.fixture
def api_client(api_server: ApiServer) -> Iterator[Any]:
    """An httpx client on ``api_server`` with its ADMIN token."""
    with api_server.client() as client:
        yield client
