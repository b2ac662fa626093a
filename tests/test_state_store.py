"""The state store as a user meets it: where it lives, locking, damaged files, permissions, crashes."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
from conftest import Smc, dump_state, fails, ok, token_of

from state.errors import StateBusyError
from state.paths import state_home
from state.store import StateStore

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from filelock import FileLock
    lock = FileLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
    """
)

# Each transaction creates a token, gives it an SDA (which also sets the token's current SDA) and
# an env value; the token is printed only after its transaction committed.
CRASH_WORKER = textwrap.dedent(
    """
    import sys
    from state.store import StateStore
    store = StateStore()
    n = int(sys.argv[1])
    while True:
        with store.transaction(f"crash-test {n}") as s:
            token = s.tokens.create(f"crash-{n}")
            s.sdas.create(token, "crash", 1)
            s.tokens.add_env(token, "ROUND", str(n))
        print(token, flush=True)
        n += 1
    """
)


def hold_lock(home: Path, seconds: float) -> subprocess.Popen[str]:
    """Start another process that holds the state lock for ``seconds``; return once it holds it."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(home / "state.lock"), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "locked\n"
    return holder


# -- where the state lives -------------------------------------------------------------------


def test_moreh_home_holds_a_private_state_file_and_its_lock(smc: Smc, moreh_home: Path) -> None:
    ok(smc("create token placed"))
    assert stat.S_IMODE(moreh_home.stat().st_mode) == 0o700
    for name in ("state.duckdb", "state.lock"):
        assert (moreh_home / name).is_file()
        assert (moreh_home / name).stat().st_mode & 0o007 == 0, name  # nothing for other users


def test_moreh_home_may_use_a_tilde(smc: Smc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    monkeypatch.setenv("MOREH_HOME", "~/moreh")
    ok(smc("create token tilde"))
    assert (tmp_path / "me" / "moreh" / "state.duckdb").is_file()


def test_default_state_directory_without_moreh_home(smc: Smc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOREH_HOME")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    info = ok(smc("show server version", json=True)).json[0]
    assert info["State File"] == str(tmp_path / "xdg" / "moreh-tools" / "state.duckdb")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_home() == tmp_path / "home" / ".local" / "state" / "moreh-tools"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert state_home() == Path("/var/lib/moreh-tools")  # root: the master node's shared state


def test_two_homes_are_two_separate_states(smc: Smc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = token_of(ok(smc("create token first-home")))
    monkeypatch.setenv("MOREH_HOME", str(tmp_path / "other"))
    assert ok(smc("show token", json=True)).json == []
    fails(smc(f"get token {token}"), 1, "not found")


def test_moreh_home_that_is_a_file_is_one_clear_line(smc: Smc, moreh_home: Path) -> None:
    moreh_home.write_text("not a directory")
    fails(smc("show token"), 1, str(moreh_home), "Set MOREH_HOME to a directory")


def test_a_world_writable_state_directory_is_refused(smc: Smc, moreh_home: Path) -> None:
    moreh_home.mkdir()
    moreh_home.chmod(0o777)
    fails(smc("create token x"), 1, "world-writable", f"chmod o-w {moreh_home}")
    assert not (moreh_home / "state.duckdb").exists()
    moreh_home.chmod(0o770)  # group-writable without the setgid bit: files made there would not be shared
    fails(smc("create token x"), 1, "without the setgid bit", f"chmod 2770 {moreh_home}")
    moreh_home.chmod(0o2770)  # shared through a group (root's own group here, so root may open it)
    ok(smc("create token x"))


def test_a_world_writable_state_file_is_tightened(smc: Smc, moreh_home: Path) -> None:
    ok(smc("create token x"))
    (moreh_home / "state.duckdb").chmod(0o666)
    ok(smc("show token"))
    assert not (moreh_home / "state.duckdb").stat().st_mode & stat.S_IWOTH


# -- damaged and foreign files ---------------------------------------------------------------


def test_a_corrupt_state_file_is_one_clear_line(smc: Smc, moreh_home: Path) -> None:
    moreh_home.mkdir(mode=0o700)
    (moreh_home / "state.duckdb").write_bytes(random.Random(7).randbytes(50_000))
    fails(smc("show token"), 1, "Cannot open the state file", "move it away")
    fails(smc("create token x"), 1, "Cannot open the state file")


def test_a_truncated_state_file_is_one_line(smc: Smc, moreh_home: Path) -> None:
    ok(smc("create token x"))
    state = moreh_home / "state.duckdb"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    fails(smc("show token"), 1, "State")


def test_a_foreign_duckdb_file_is_refused_and_left_alone(smc: Smc, moreh_home: Path) -> None:
    moreh_home.mkdir(mode=0o700)
    conn = duckdb.connect(str(moreh_home / "state.duckdb"))
    conn.execute("CREATE TABLE customers (name VARCHAR)")
    conn.execute("INSERT INTO customers VALUES ('kept')")
    conn.close()
    fails(smc("create token x"), 1, "tables that moreh-tools did not create", "MOREH_HOME")
    conn = duckdb.connect(str(moreh_home / "state.duckdb"))
    assert conn.execute("SELECT table_name FROM duckdb_tables()").fetchall() == [("customers",)]
    assert conn.execute("SELECT * FROM customers").fetchall() == [("kept",)]
    conn.close()


def test_a_state_from_a_newer_moreh_tools_is_refused(smc: Smc, moreh_home: Path) -> None:
    ok(smc("create token x"))
    conn = duckdb.connect(str(moreh_home / "state.duckdb"))
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'm099_future', now())")
    conn.close()
    fails(smc("show token"), 1, "schema version 99", "upgrade moreh-tools")


def test_an_empty_duckdb_file_is_set_up(smc: Smc, moreh_home: Path) -> None:
    moreh_home.mkdir(mode=0o700)
    duckdb.connect(str(moreh_home / "state.duckdb")).close()
    assert len(ok(smc("show sdamodel", json=True)).json) == 13
    assert ok(smc("show backendgroup", json=True)).json[0]["name"] == "default_backend_group"


# -- locking ---------------------------------------------------------------------------------


def test_a_lock_held_too_long_by_another_process_is_one_line(
    smc: Smc, moreh_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok(smc("show token"))
    monkeypatch.setenv("MOREH_LOCK_TIMEOUT", "0.5")
    holder = hold_lock(moreh_home, 30)
    try:
        started = time.monotonic()
        fails(smc("create token blocked"), 1, "stayed locked for 0.5 s by another process", "MOREH_LOCK_TIMEOUT")
        waited = time.monotonic() - started
        with pytest.raises(StateBusyError, match="stayed locked"):
            StateStore(lock_timeout=0.2).schema_version()
    finally:
        holder.kill()
        holder.wait()
    assert 0.4 < waited < 10  # about the timeout asked for, not the 30 s default
    assert ok(smc("show token", json=True)).json == []  # the blocked command changed nothing


def test_a_command_waits_for_a_short_lock(smc: Smc, moreh_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok(smc("show token"))
    monkeypatch.setenv("MOREH_LOCK_TIMEOUT", "20")
    holder = hold_lock(moreh_home, 0.6)
    try:
        started = time.monotonic()
        token = token_of(ok(smc("create token patient")))
        assert time.monotonic() - started > 0.3
    finally:
        holder.wait(timeout=20)
    assert [t["token"] for t in ok(smc("show token", json=True)).json] == [token]


def test_the_lock_of_a_killed_holder_is_released(smc: Smc, moreh_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok(smc("show token"))
    monkeypatch.setenv("MOREH_LOCK_TIMEOUT", "10")
    holder = hold_lock(moreh_home, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    ok(smc("create token after-kill"))


# -- transactions ----------------------------------------------------------------------------


def test_a_transaction_that_raises_leaves_nothing(smc: Smc) -> None:
    ok(smc("show token"))
    before = dump_state()
    store = StateStore()

    def half_done() -> None:
        with store.transaction("half done") as s:
            token = s.tokens.create("half")
            s.sdas.create(token, "d", 1)
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        half_done()
    assert dump_state() == before
    with store.reading() as s:
        s.tokens.create("read-only sessions keep nothing")
    assert dump_state() == before


def test_kill_9_at_random_moments_loses_nothing_reported_and_leaves_nothing_half_done(
    smc: Smc, moreh_home: Path
) -> None:
    ok(smc("show token"))
    reported: list[str] = []
    rng = random.Random()
    for round_number in range(5):
        worker = subprocess.Popen(
            [sys.executable, "-c", CRASH_WORKER, str(round_number * 10_000)], stdout=subprocess.PIPE, text=True
        )
        assert worker.stdout is not None
        try:
            for _ in range(2):  # let it get going, then kill it at some moment of its work
                line = worker.stdout.readline().strip()
                assert line, "the crash worker stopped on its own"
                reported.append(line)
            time.sleep(rng.uniform(0, 0.25))
        finally:
            worker.send_signal(signal.SIGKILL)
            out, _ = worker.communicate()
        reported.extend(out.split())
        assert worker.returncode == -signal.SIGKILL

        with StateStore().reading() as s:
            tokens = {t.value: t for t in s.tokens.all()}
            sdas = s.sdas.all()
            events = [e for e in s.events.tail() if e.command.startswith("crash-test")]
        missing = [t for t in reported if t not in tokens]
        assert not missing, f"round {round_number}: reported but lost: {missing}"
        assert len(tokens) - len(reported) <= round_number + 1  # at most one commit per kill went unreported
        by_token = {sda.token: sda for sda in sdas}
        assert len(by_token) == len(sdas) == len(tokens)
        for value, token in tokens.items():
            assert token.current_sda == by_token[value].id
            assert [name for name, _ in token.env] == ["ROUND"]
        assert sorted(e.action for e in events) == sorted(["CREATE_TOKEN", "CREATE_SDA", "ADD_TOKEN_ENV"] * len(tokens))
    ok(smc("create token after-the-crashes"))  # and the console carries on


def test_ctrl_c_just_as_the_lock_is_granted_does_not_keep_it(
    smc: Smc, moreh_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import types

    import state.store

    class LateInterruptEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            super().wait(timeout)
            raise KeyboardInterrupt  # the user's Ctrl-C lands right after the helper thread got the lock

    ok(smc("show token"))
    holder = hold_lock(moreh_home, 0.3)
    monkeypatch.setattr(
        state.store,
        "threading",
        types.SimpleNamespace(
            Lock=threading.Lock, Event=LateInterruptEvent, Thread=threading.Thread, TIMEOUT_MAX=threading.TIMEOUT_MAX
        ),
    )
    fails(smc("create token interrupted"), 130, "Interrupted")
    holder.wait(timeout=20)
    monkeypatch.setattr(state.store, "threading", threading)
    monkeypatch.setenv("MOREH_LOCK_TIMEOUT", "2")
    ok(smc("create token after-interrupt"))  # the REPL's next command must not wait on a lock nobody holds
    assert [t["description"] for t in ok(smc("show token", json=True)).json] == ["after-interrupt"]


@pytest.mark.parametrize("timeout", ["inf", "1e300", "nan"])
def test_an_infinite_or_nan_lock_timeout_still_waits_for_the_lock(
    smc: Smc, moreh_home: Path, monkeypatch: pytest.MonkeyPatch, timeout: str
) -> None:
    ok(smc("show token"))
    monkeypatch.setenv("MOREH_LOCK_TIMEOUT", timeout)
    holder = hold_lock(moreh_home, 0.3)
    try:
        ok(smc("create token patient"))
    finally:
        holder.wait(timeout=20)
    assert [t["description"] for t in ok(smc("show token", json=True)).json] == ["patient"]
