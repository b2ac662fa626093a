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


def start_running_job(token: str, sda_id: int, host: str = "job-node") -> int:
    """Give the token's SDA a RUNNING job with devices on ``host`` (registered with 8 devices if new)."""
    from state.store import StateStore

    with StateStore().transaction("test: start a running job") as s:
        if s.backends.local_id(host) is None:
            s.backends.create(host, "10.9.9.9", 8)
        job = s.jobs.submit(
            token, sda_id, host=host, launcher_pid=1, launcher_create_time=0.0, process_name="python train.py"
        )
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(job.id, 1, 0.0)
    return job.id


def grid_lines(header: str, *rows: str) -> list[str]:
    """The seed grid around a literal header line and row lines: ``+---+``, header, ``+===+``, rows, ``+---+``."""
    inner = len(header) - 2
    return ["+" + "-" * inner + "+", header, "+" + "=" * inner + "+", *rows, "+" + "-" * inner + "+"]


# -- the REST API (issue 6): a real `sdamanager --api` on a loopback port ---------------------------------------------

API_LISTENING = re.compile(r"serving the API on (?P<url>http://\S+) ")


@dataclass
class ApiServer:
    """A running ``sdamanager --api 127.0.0.1:0``: its base URL, state directory and an ADMIN token."""

    url: str
    home: Path
    admin_token: str
    process: Any
    log_path: Path

    def make_token(self, description: str = "api-user", level: str = "USER", priority: int = 0) -> str:
        """Create a token with ``level`` in the server's state (directly, as the admin console would)."""
        from state.store import StateStore

        with StateStore(self.home).transaction(f"test: create {level} token") as s:
            value = s.tokens.create(description, priority)
            if level != "USER":
                s.tokens.update_access_level(value, level)
        return value

    def client(self, token: str | None = None, **kwargs: Any) -> Any:
        """An httpx client on the server, sending ``token`` (default: the ADMIN token) as a Bearer header."""
        import httpx

        headers = {"Authorization": f"Bearer {token or self.admin_token}"} if token != "" else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=20.0, **kwargs)

    def log(self) -> str:
        """What the server wrote on stderr so far."""
        return self.log_path.read_text(errors="replace")


def start_api_server(home: Path, log_path: Path, env: dict[str, str] | None = None) -> ApiServer:
    """Start ``sdamanager --api 127.0.0.1:0`` on ``home`` (with 2 simulated GPUs) and wait until it listens."""
    import os
    import subprocess
    import time

    from state.store import StateStore

    with StateStore(home).transaction("test: create the ADMIN token") as s:
        admin = s.tokens.create("api-admin", 0)
        s.tokens.update_access_level(admin, "ADMIN")
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
            return ApiServer(match["url"], home, admin, process, log_path)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"sdamanager --api did not start: {log_path.read_text(errors='replace')}")


def stop_api_server(server: ApiServer) -> None:
    """SIGTERM the server and assert it stops cleanly."""
    import subprocess

    server.process.terminate()
    try:
        code = server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise AssertionError(f"sdamanager --api ignored SIGTERM: {server.log()}") from None
    assert code == 0, (code, server.log())
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def api_server(moreh_home: Path, tmp_path: Path) -> Iterator[ApiServer]:
    """A real API server on a loopback port serving this test's ``MOREH_HOME``."""
    server = start_api_server(moreh_home, tmp_path / "sdamanager-api.log")
    yield server
    stop_api_server(server)


@pytest.fixture
def api_client(api_server: ApiServer) -> Iterator[Any]:
    """An httpx client on ``api_server`` with its ADMIN token."""
    with api_server.client() as client:
        yield client
