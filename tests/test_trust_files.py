"""The state directory and its files (issue 16, items 1, 2 and "Low"): checked before use, never opened through a link.

Root plants the links here (a non-root user planting them in a shared directory is in test_trust_users.py);
each refusal is one line naming the file and what to do, and nothing is written through the link.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Smc, fails, ok, token_of

BIN = Path(sys.executable).parent
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="changing files' owners to other users needs root")


def _victim(base: Path, name: str) -> Path:
    victim = base / name
    victim.write_text("root's precious data\n")
    victim.chmod(0o600)
    return victim


def _console(home: Path, line: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "MOREH_HOME": str(home), "MOREH_FAKE_GPUS": "2", **env}
    return subprocess.run([str(BIN / "moreh_smclient"), "-c", line], env=full, capture_output=True, text=True, timeout=60)


def _wake_and_wait(home: Path) -> subprocess.CompletedProcess[str]:
    """What a launcher meets when it makes its FIFO: the error line, as a result."""
    from moreh_tools.jobs import wakeup
    from state.errors import StateError

    try:
        wakeup.WakeUp(home, 3).close()
    except StateError as exc:
        return subprocess.CompletedProcess([], 1, "", f"Error: {exc}\n")
    return subprocess.CompletedProcess([], 0, "", "")


# -- links planted before each write --------------------------------------------------------------------------------


def test_links_in_the_state_directory_are_refused_one_line_each(tmp_path: Path) -> None:
    home = tmp_path / "root-only"
    assert _console(home, "create token first").returncode == 0
    cases = {
        "state.duckdb.wal": "state.duckdb.wal is a symbolic link",
        "state.duckdb": "state.duckdb is a symbolic link",
        "state.lock": "state.lock is a symbolic link",
        "run": "run is a symbolic link",
    }
    for name, needle in cases.items():
        victim = _victim(tmp_path, f"victim-{name}")
        target = home / name
        moved = None
        if target.exists() and not target.is_symlink():
            moved = target.rename(tmp_path / f"kept-{name}")
        target.symlink_to(victim)
        result = _wake_and_wait(home) if name == "run" else _console(home, "create token x")
        assert needle in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert victim.read_text() == "root's precious data\n", name
        target.unlink()
        if moved is not None:
            moved.rename(target)
    assert _console(home, "show token").returncode == 0

    # The daemon's pid file.
    victim = _victim(tmp_path, "victim-pid")
    (home / "sdamanager.pid").symlink_to(victim)
    env = {**os.environ, "MOREH_HOME": str(home), "MOREH_FAKE_GPUS": "2"}
    result = subprocess.run([str(BIN / "sdamanager"), "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "sdamanager.pid is a symbolic link" in result.stderr, result.stderr
    assert victim.read_text() == "root's precious data\n"
    (home / "sdamanager.pid").unlink()

    # A FIFO's name linked to a file: the waker opens nothing, the waiter puts its own FIFO in its place.
    (home / "run").mkdir(mode=0o700, exist_ok=True)
    victim = _victim(tmp_path, "victim-fifo")
    (home / "run" / "job-7.wake").symlink_to(victim)
    from moreh_tools.jobs import wakeup

    assert wakeup.wake(home, 7) is False
    waiting = wakeup.WakeUp(home, 7)
    try:
        assert stat.S_ISFIFO(os.lstat(home / "run" / "job-7.wake").st_mode)
        assert wakeup.wake(home, 7) is True
    finally:
        waiting.close()
    # The schedulers' time stamp.
    victim = _victim(tmp_path, "victim-stamp")
    (home / "run" / "last-schedule").symlink_to(victim)
    assert wakeup.claim_turn(home, "last-schedule", 10.0) is True
    assert victim.read_text() == "root's precious data\n"
    assert oct(victim.stat().st_mode) == oct(stat.S_IFREG | 0o600)


def test_a_hard_link_or_a_foreign_file_in_the_state_directory_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _console(home, "create token first").returncode == 0
    victim = _victim(tmp_path, "victim")
    (home / "state.duckdb.wal").unlink(missing_ok=True)
    os.link(victim, home / "state.duckdb.wal")
    result = _console(home, "create token x")
    assert result.returncode == 1, result.stderr
    assert "state.duckdb.wal has 2 hard links" in result.stderr, result.stderr
    assert victim.read_text() == "root's precious data\n"
    (home / "state.duckdb.wal").unlink()
    if IS_ROOT:
        (home / "run").mkdir(mode=0o700, exist_ok=True)
        os.chown(home / "state.lock", 12345, 12345)  # a user who has nothing to do with this state
        result = _console(home, "show token")
        assert result.returncode == 1, result.stderr
        assert "state.lock belongs to uid 12345" in result.stderr, result.stderr


def test_unsafe_state_directories_are_refused_one_line_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    result = _console(link, "show token")
    assert result.returncode == 1, result.stderr
    assert "is a symbolic link" in result.stderr, result.stderr
    assert str(real) in result.stderr, result.stderr

    # A parent everyone may write without the sticky bit: anyone could rename the state directory away.
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    result = _console(open_parent / "home", "show token")
    assert result.returncode == 1, result.stderr
    assert "which everyone may write (without the sticky bit)" in result.stderr, result.stderr
    open_parent.chmod(0o1777)  # sticky, as /tmp: only owners rename their entries
    assert _console(open_parent / "home", "show token").returncode == 0

    if IS_ROOT:
        # A parent another user owns (who could rename it), and a directory another user owns.
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, 12345, 12345)
        result = _console(theirs / "home", "show token")
        assert result.returncode == 1, result.stderr
        assert "belongs to uid 12345, who could replace it" in result.stderr, result.stderr
        owned = tmp_path / "owned"
        owned.mkdir(mode=0o700)
        os.chown(owned, 12345, 12345)
        result = _console(owned, "show token")
        assert result.returncode == 1, result.stderr
        assert "belongs to uid 12345, not to you" in result.stderr, result.stderr
        # Root and a directory a non-root group may write: not opened in process.
        shared = tmp_path / "shared"
        shared.mkdir()
        os.chown(shared, 0, 12345)
        shared.chmod(0o2770)
        result = _console(shared, "show token")
        assert result.returncode == 1, result.stderr
        assert "root does not open a state directory that non-root users can write" in result.stderr
        assert "sdamanager" in result.stderr
        env = {**os.environ, "MOREH_HOME": str(shared), "MOREH_FAKE_GPUS": "2"}
        result = subprocess.run([str(BIN / "sdamanager"), "--once"], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert "sdamanager does not own a state directory that others can write" in result.stderr, result.stderr


def test_a_socket_someone_else_made_is_not_used(tmp_path: Path) -> None:
    """A planted socket would collect the tokens tools send: tools use a socket of the directory's owner only."""
    import socket

    home = tmp_path / "home"
    assert _console(home, "create token first").returncode == 0
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(home / "sdamanager.sock"))
    listener.listen(1)
    try:
        if IS_ROOT:
            os.chown(home / "sdamanager.sock", 12345, 12345, follow_symlinks=False)
            result = _console(home, "show token")
            assert result.returncode == 0, result.stderr  # through the file, not the stranger's socket
        from state.safety import check_socket

        assert check_socket(home, "sdamanager.sock") is (not IS_ROOT)
    finally:
        listener.close()


def test_the_daemon_keeps_its_files_private(tmp_path: Path) -> None:
    home = tmp_path / "daemon"
    home.mkdir(mode=0o711)
    home.chmod(0o711)
    env = {**os.environ, "MOREH_HOME": str(home), "MOREH_FAKE_GPUS": "2"}
    done = subprocess.run([str(BIN / "sdamanager"), "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "state check: " in done.stderr
    assert "no damage found" in done.stderr
    assert "job containment" in done.stderr
    for entry in home.iterdir():
        if entry.is_file():
            assert entry.stat().st_mode & 0o077 == 0, (entry.name, oct(entry.stat().st_mode))


# -- token environment values that hijack a process --------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "BASH_ENV", "ENV", "PYTHONSTARTUP", "PYTHONPATH", "PYTHONHOME",
     "PERL5OPT", "PERL5LIB", "RUBYOPT", "NODE_OPTIONS", "GCONV_PATH", "BASH_FUNC_ls%%", "bash_env"],
)
def test_token_env_names_that_hijack_a_process_are_refused(smc: Smc, name: str) -> None:
    token = token_of(ok(smc("create token victim")))
    message = fails(smc(f"add token env {token} {name} /tmp/payload"), 1)
    assert name in message
    assert "/tmp/payload" not in ok(smc(f"get token {token}", json=True)).out


def test_the_denylist_lives_in_one_place_and_the_launcher_applies_it_again(capsys: pytest.CaptureFixture[str]) -> None:
    from moreh_tools.launcher.launch import safe_token_env
    from state.tokens import HIJACKING_ENV_NAMES, check_env_name, hijacks

    assert {"BASH_ENV", "ENV", "PYTHONSTARTUP", "PYTHONPATH", "PERL5OPT", "NODE_OPTIONS", "GCONV_PATH"} <= HIJACKING_ENV_NAMES
    assert hijacks("LD_PRELOAD")
    assert hijacks("ld_preload")
    assert not hijacks("MOREH_WHOLE_SYSTEM_PROFILING_MODE")
    assert check_env_name("MODNN_SEND_RECV_PIPE") == "MODNN_SEND_RECV_PIPE"
    # A value that got into the state some other way (an older version, an edited file) is not passed on.
    kept = safe_token_env((("FOO", "1"), ("LD_PRELOAD", "/tmp/x.so"), ("BASH_ENV", "/tmp/p.sh"), ("BAR", "2")))
    assert kept == {"FOO": "1", "BAR": "2"}
    err = capsys.readouterr().err
    assert "'LD_PRELOAD' is not passed on" in err
    assert "'BASH_ENV' is not passed on" in err


# -- the event log says who asked ----------------------------------------------------------------------------------


def test_show_eventlog_json_carries_the_origin(smc: Smc) -> None:
    ok(smc("create token who-asked"))
    [event] = ok(smc("show eventlog 1", json=True)).json
    assert event["origin"] == f"uid={os.getuid()} file"


# -- check state, a full disk ---------------------------------------------------------------------------------------


def test_check_state_reads_every_table_and_finds_damage(smc: Smc, moreh_home: Path) -> None:
    from state.store import StateStore

    with StateStore().transaction("test: many rows") as s:
        for i in range(3000):
            s.events.record("TEST", f"row {i} " + "x" * 200)
    ok(smc("create token t"))
    with StateStore().transaction("checkpoint") as s:
        s.execute("CHECKPOINT")
    message = ok(smc("check state")).out
    assert message.startswith("State check: ")
    assert "no damage found" in message
    assert "check state" not in ok(smc("help")).out  # the manual's listing stays as it is
    tables = {t["table"]: t["rows"] for t in ok(smc("check state", json=True)).json["tables"]}
    assert tables["events"] >= 3000
    assert "tokens" in tables

    path = moreh_home / "state.duckdb"
    data = bytearray(path.read_bytes())
    rng = random.Random(16)
    for _ in range(8):  # random bytes in the middle of the file, where the event rows are
        at = rng.randrange(len(data) // 3, len(data) * 2 // 3)
        data[at : at + 64] = rng.randbytes(64)
    path.write_bytes(bytes(data))
    fails(smc("check state"), 1, "is damaged", "damage found")


@pytest.mark.skipif(not IS_ROOT or shutil.which("mount") is None, reason="mounting a small tmpfs needs root and mount")
def test_a_full_disk_says_so(tmp_path: Path) -> None:
    disk = tmp_path / "small"
    disk.mkdir(mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")

    def fill() -> None:
        with open(disk / "filler", "wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass

    try:
        home = disk / "home"
        fill()  # no room for a fresh state
        result = _console(home, "create token x")
        assert result.returncode == 1
        assert result.stderr.strip() == f"Error: The disk holding {home} is full; nothing was changed. Free space there and try again."
        shutil.rmtree(home)
        (disk / "filler").unlink()
        # A state that fits, then a disk filled by something else: the next changes say the same.
        assert _console(home, "create token before").returncode == 0
        fill()
        said = ""
        for i in range(200):
            result = _console(home, f"create token filler-{i}-{'y' * 100}")
            if result.returncode != 0:
                said = result.stderr
                break
        assert said, "the disk never filled up"
        assert f"The disk holding {home} is full" in said, said
        assert "Traceback" not in said
        (disk / "filler").unlink()
        assert "before" in _console(home, "show token").stdout
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# -- item 4: the priority ceiling, also without a daemon (the state file in process) ------------------------------------


def test_a_user_token_cannot_raise_its_priority_through_the_file(smc: Smc, tmp_path: Path) -> None:
    token = token_of(ok(smc("create token ceiling 3")))
    ok(smc(f"create sda {token} mine 1"))
    env = {**os.environ, "MOREH_SDA_TOKEN": token, "MOREH_FAKE_GPUS": "2", "MOREH_HOSTNAME": "ceiling-host"}
    done = subprocess.run([str(BIN / "moreh-run"), "--priority", "99", "--", "true"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "priority up to its token priority (3), not 99" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert ok(smc("show job", json=True)).json == []
    assert ok(smc("show history", json=True)).json == []
    allowed = subprocess.run([str(BIN / "moreh-run"), "--priority", "3", "--", "true"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert allowed.returncode == 0, allowed.stderr
