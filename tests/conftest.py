"""Shared fixtures for the moreh_smclient behaviour tests.

Every test gets its own state directory (``MOREH_HOME``), and ``smc`` runs one console line
through the real entry point, ``moreh_tools.smclient.main.main``, in this process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
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
