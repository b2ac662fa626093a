"""The trust boundary between Unix users who share one machine (issue 16), with real users made for the test.

Each test makes its own users and group (``useradd``/``groupadd``) and removes them afterwards. The users run
the real tools from this checkout with the system's Python (the test's own interpreter may sit in a
directory they cannot enter). Without root, ``useradd`` or a system Python that can import the tools, the
tests skip and say which.

* The group-shared set-up (a 2770 directory): every member's waiting ``moreh-run`` is woken by another
  member's job ending, at once and without a PermissionError, and a member's crash leaves a write-ahead
  log the others can replay.
* A hostile member of such a group plants links where root's tools write (the WAL, the pid file, a FIFO,
  ``run/``): root's tools refuse the directory, and nothing is written through the links.
* The recommended set-up (the daemon's directory, 0711, reached through its socket): a hostile user cannot
  plant anything, cannot read the state, and is refused what her token does not allow; the event log
  records each request's Unix uid.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SITE = Path(sys.executable).parent.parent / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")

TOOLS = {
    "moreh-run": "moreh_tools.launcher.cli",
    "moreh_smclient": "moreh_tools.smclient.main",
    "moreh-smi": "moreh_tools.smi.main",
    "sdamanager": "moreh_tools.daemon.cli",
}
LAUNCH = "import sys; from {module} import main; sys.argv[0] = {tool!r}; sys.exit(main(sys.argv[1:]))"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "making Unix users for the test needs root"
    for tool in ("useradd", "userdel", "groupadd", "groupdel"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if SYSTEM_PYTHON is None:
        return "no system python3 that other users may run"
    return None


REASON = _why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@dataclass
class User:
    name: str
    uid: int
    gid: int
    groups: list[int]


@dataclass
class Users:
    group: str
    gid: int
    alice: User
    bob: User
    mallory: User
    base: Path

    @property
    def scratch(self) -> Path:
        """A directory everyone may write (sticky, like /tmp), for the jobs' marks."""
        return self.base / "scratch"

    def env(self, user: User, home: Path, **extra: str) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.base),
            "LANG": "C.UTF-8",
            "PYTHONPATH": f"{REPO}:{SITE}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MOREH_HOME": str(home),
            "MOREH_FAKE_GPUS": "8",
            "MOREH_HOSTNAME": "trust-host",
            "MOREH_RELEASE_GRACE": "1",
            "MOREH_TOKEN_FILE": "/nonexistent/moreh-token",
            "MOREH_LOCK_TIMEOUT": "20",
        }
        env.update(extra)
        return env

    def argv(self, tool: str, *args: str) -> list[str]:
        assert SYSTEM_PYTHON is not None
        return [SYSTEM_PYTHON, "-c", LAUNCH.format(module=TOOLS[tool], tool=tool), *args]

    def run(self, user: User, home: Path, tool: str, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        """Run one tool as ``user`` to completion."""
        return subprocess.run(
            self.argv(tool, *args),
            env=self.env(user, home, **env),
            user=user.uid,
            group=user.gid,
            extra_groups=user.groups,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, user: User, home: Path, tool: str, *args: str, **env: str) -> subprocess.Popen[str]:
        """Start one tool as ``user`` (stderr piped)."""
        proc = subprocess.Popen(
            self.argv(tool, *args),
            env=self.env(user, home, **env),
            user=user.uid,
            group=user.gid,
            extra_groups=user.groups,
            cwd=self.base,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _started.append(proc)
        return proc

    def python(self, user: User, code: str, home: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` as ``user`` (with the tools importable)."""
        assert SYSTEM_PYTHON is not None
        return subprocess.run(
            [SYSTEM_PYTHON, "-c", code],
            env=self.env(user, home or self.base / "nowhere"),
            user=user.uid,
            group=user.gid,
            extra_groups=user.groups,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


_started: list[subprocess.Popen[str]] = []


def _add_user(name: str, group: str) -> User:
    subprocess.run(["useradd", "-M", "-N", "-g", group, "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid, [grp.getgrnam(group).gr_gid])


@pytest.fixture
def users() -> Iterator[Users]:
    """Three Unix users (alice, bob, mallory) in one new group, and a root-owned base directory they may enter."""
    tag = secrets.token_hex(3)
    group = f"mtg{tag}"
    names = [f"mta{tag}", f"mtb{tag}", f"mtm{tag}"]
    base = Path(f"/tmp/moreh-trust-{tag}")
    made: list[str] = []
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        for name in names:
            _add_user(name, group)
            made.append(name)
        base.mkdir(mode=0o755)
        (base / "scratch").mkdir()
        (base / "scratch").chmod(0o1777)
        users = [pwd.getpwnam(n) for n in names]
        gid = grp.getgrnam(group).gr_gid
        probe = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import moreh_tools.launcher.cli, _duckdb, psutil, uvicorn"],
            env={"PYTHONPATH": f"{REPO}:{SITE}", "PATH": "/usr/bin:/bin"},
            user=users[0].pw_uid,
            group=gid,
            cwd=base,
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            pytest.skip(f"the system python3 cannot import the tools as another user: {probe.stderr.strip()[-200:]}")
        yield Users(
            group,
            gid,
            *(User(u.pw_name, u.pw_uid, gid, [gid]) for u in users),
            base=base,
        )
    finally:
        while _started:
            proc = _started.pop()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for name in made:
            # Whatever they left running (guardians, commands) goes first: userdel refuses a logged-in user.
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        time.sleep(0.2)
        for name in made:
            subprocess.run(["userdel", "-f", name], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def shared_home(users: Users) -> Path:
    """A group-shared state directory, as the README's older set-up made it: root:group, 2770."""
    home = users.base / "shared"
    home.mkdir()
    os.chown(home, 0, users.gid)
    home.chmod(0o2770)
    return home


def token_of(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout.strip().rsplit(" ", 1)[-1].rstrip(")")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def read_stderr_until(proc: subprocess.Popen[str], needle: str, timeout: float = 30) -> str:
    import select

    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} on stderr; got {seen!r}"
        ready, _, _ = select.select([proc.stderr], [], [], left)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
            assert chunk, f"stderr closed before {needle!r}; got {seen!r}"
            seen += chunk
    return seen


# -- the group-shared set-up works for every member -----------------------------------------------------------


def test_group_members_wake_each_other_at_once_and_survive_each_others_crash(users: Users) -> None:
    home = shared_home(users)
    alice, bob = users.alice, users.bob
    ta = token_of(users.run(alice, home, "moreh_smclient", "-c", "create token alice"))
    tb = token_of(users.run(alice, home, "moreh_smclient", "-c", "create token bob"))
    for token, name in ((ta, "a"), (tb, "b")):
        done = users.run(alice, home, "moreh_smclient", "-c", f"create sda {token} sda-{name} 4")  # 8 GPUs each
        assert done.returncode == 0, done.stderr

    # Bob's job holds all 8 GPUs until told to stop.
    stop = users.scratch / "stop"
    running = users.scratch / "running"
    script = f"touch {running}; while [ ! -e {stop} ]; do sleep 0.05; done"
    blocker = users.start(bob, home, "moreh-run", "--", "/bin/sh", "-c", script, MOREH_SDA_TOKEN=tb)
    wait_until(running.exists, 30, "bob's job to start")

    # Alice's job waits for them, asleep on her FIFO (made by her, usable by the group).
    waiter = users.start(alice, home, "moreh-run", "--", "/bin/sh", "-c", "echo alice-ran", MOREH_SDA_TOKEN=ta)
    read_stderr_until(waiter, "waits in the queue")
    run_dir = home / "run"
    run_mode = stat.S_IMODE(run_dir.stat().st_mode)
    fifo_modes = [stat.S_IMODE(p.stat().st_mode) for p in run_dir.iterdir() if p.name.endswith(".wake")]

    # Bob's job ends: his launcher wakes Alice's at once (not at her next look, 20 to 30 s later).
    assert users.run(bob, home, "moreh_smclient", "-c", "show job").returncode == 0  # bob's tools work there too
    stop.touch()
    ended = time.monotonic()
    out, err = waiter.communicate(timeout=60)
    took = time.monotonic() - ended
    assert waiter.returncode == 0, err
    assert "alice-ran" in out
    assert "PermissionError" not in err, err
    assert "internal error" not in err, err
    assert took < 8, f"alice's job started {took:.1f} s after bob's ended: she was not woken"
    assert blocker.wait(30) == 0, blocker.stderr.read() if blocker.stderr else ""
    assert run_mode == 0o2770, oct(run_mode)
    assert fifo_modes == [0o660], [oct(m) for m in fifo_modes]

    # Alice crashes with a committed change still only in the write-ahead log; Bob replays it and writes on.
    crash = (
        "import os, signal\n"
        "from state.store import StateStore\n"
        "from state.session import Session\n"
        "store = StateStore()\n"
        "with store._locked(), store._connection() as conn:\n"
        "    conn.execute('BEGIN TRANSACTION')\n"
        "    Session(conn, 'crash test').tokens.create('made-before-the-crash')\n"
        "    conn.execute('COMMIT')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = users.python(alice, crash, home)
    assert done.returncode == -signal.SIGKILL, done.stderr
    wal = home / "state.duckdb.wal"
    assert wal.exists(), "the crash left no write-ahead log to replay"
    assert wal.stat().st_uid == alice.uid
    assert wal.stat().st_mode & 0o060 == 0o060, oct(wal.stat().st_mode)  # the umask held for the connection's life
    done = users.run(bob, home, "moreh_smclient", "-c", "create token bob-after-the-crash")
    assert done.returncode == 0, done.stderr
    listed = users.run(bob, home, "moreh_smclient", "--json", "-c", "show token")
    names = {t["description"] for t in json.loads(listed.stdout)}
    assert {"made-before-the-crash", "bob-after-the-crash"} <= names


# -- a hostile member of a shared group against root's tools -----------------------------------------------------


def _victim(base: Path, name: str) -> Path:
    victim = base / name
    victim.write_text("root's precious data\n")
    victim.chmod(0o600)
    return victim


def test_links_a_group_member_plants_are_never_followed_by_roots_tools(users: Users) -> None:
    home = shared_home(users)
    alice, mallory = users.alice, users.mallory
    assert users.run(alice, home, "moreh_smclient", "-c", "create token alice").returncode == 0
    victims = {name: _victim(users.base, f"victim-{name}") for name in ("wal", "pid", "fifo", "stamp", "lock")}
    plant = (
        "import os, sys\n"
        "home, base = sys.argv[1], sys.argv[2]\n"
        "os.symlink(base + '/victim-wal', home + '/state.duckdb.wal')\n"
        "os.symlink(base + '/victim-pid', home + '/sdamanager.pid')\n"
        "os.rename(home + '/run', home + '/run.old') if os.path.exists(home + '/run') else None\n"
        "os.mkdir(home + '/run'); os.chmod(home + '/run', 0o2777)\n"
        "os.symlink(base + '/victim-fifo', home + '/run/job-1.wake')\n"
        "os.symlink(base + '/victim-stamp', home + '/run/last-schedule')\n"
    )
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", plant, str(home), str(users.base)],
        env={"PATH": "/usr/bin:/bin"},
        user=mallory.uid,
        group=mallory.gid,
        extra_groups=mallory.groups,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr

    # Root's tools refuse the directory outright: non-root users can write it.
    env = {**os.environ, "MOREH_HOME": str(home), "MOREH_FAKE_GPUS": "2"}
    bin_dir = Path(sys.executable).parent
    for argv in ([bin_dir / "moreh_smclient", "-c", "create token root"], [bin_dir / "sdamanager", "--once"]):
        result = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, (argv, result.stdout, result.stderr)
        assert "non-root users can write" in result.stderr or "others can write" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    # Root waking a job (as the daemon's hub or a tool would) writes through no link.
    from moreh_tools.jobs import wakeup

    assert wakeup.wake(home, 1) is False
    assert wakeup.claim_turn(home, "last-schedule", 10.0) is True
    for name, victim in victims.items():
        assert victim.read_text() == "root's precious data\n", f"{name} victim overwritten"
        assert stat.S_IMODE(victim.stat().st_mode) == 0o600


# -- the recommended set-up: the daemon's directory, reached through its socket -----------------------------------


def _start_daemon(home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "MOREH_HOME": str(home), "MOREH_FAKE_GPUS": "8", "MOREH_HOSTNAME": "trust-host"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "sdamanager"), "--interval", "0.3"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _started.append(proc)
    read_stderr_until(proc, "running (pid")  # type: ignore[arg-type]
    return proc


def test_the_daemons_directory_keeps_users_to_their_tokens(users: Users) -> None:
    home = users.base / "daemon-home"
    home.mkdir(mode=0o711)
    home.chmod(0o711)
    from state.store import StateStore

    with StateStore(home).transaction("test: tokens") as s:
        admin = s.tokens.create("admin")
        s.tokens.update_access_level(admin, "ADMIN")
        alice_token = s.tokens.create("alice")
        mallory_token = s.tokens.create("mallory")
    daemon = _start_daemon(home)
    try:
        alice, mallory = users.alice, users.mallory
        assert stat.S_IMODE((home / "sdamanager.sock").stat().st_mode) == 0o666
        for name in ("state.duckdb", "state.lock", "sdamanager.pid"):
            assert (home / name).stat().st_mode & 0o077 == 0, name

        # Mallory can plant nothing in the directory, nor read the state.
        attempt = users.python(
            mallory,
            "import os, sys\n"
            "home = sys.argv[1] if len(sys.argv) > 1 else os.environ['MOREH_HOME']\n"
            "errors = []\n"
            "for name in ('state.duckdb.wal', 'sdamanager.pid', 'run', 'evil'):\n"
            "    try:\n"
            "        os.symlink('/etc/passwd', os.path.join(home, name))\n"
            "        errors.append('planted ' + name)\n"
            "    except OSError as exc:\n"
            "        pass\n"
            "try:\n"
            "    open(os.path.join(home, 'state.duckdb'), 'rb').read(16)\n"
            "    errors.append('read the state')\n"
            "except OSError:\n"
            "    pass\n"
            "print(errors)\n",
            home,
        )
        assert attempt.stdout.strip() == "[]", (attempt.stdout, attempt.stderr)

        # Without a token she is nobody; with her USER token she is a USER, wherever she runs the tools.
        done = users.run(mallory, home, "moreh_smclient", "-c", "show token")
        assert done.returncode != 0, done.stderr
        assert "token" in done.stderr.lower(), done.stderr
        done = users.run(mallory, home, "moreh_smclient", "-c", "show token", MOREH_SDA_TOKEN=mallory_token)
        assert done.returncode != 0, done.stderr
        assert "ADMIN" in done.stderr, done.stderr
        done = users.run(
            mallory, home, "moreh_smclient", "-c", f"update token access level {mallory_token} ADMIN",
            MOREH_SDA_TOKEN=mallory_token,
        )
        assert done.returncode != 0, done.stdout
        # Even an ADMIN cannot give a token an environment value that hijacks its user's processes.
        done = users.run(
            mallory, home, "moreh_smclient", "-c", f"add token env {alice_token} BASH_ENV /tmp/payload.sh",
            MOREH_SDA_TOKEN=admin,
        )
        assert done.returncode == 1, done.stderr
        assert "BASH_ENV" in done.stderr, done.stderr

        # Alice's own requests work through the socket, and the event log says it was her uid.
        done = users.run(alice, home, "moreh-smi", "device", "--add", "1", MOREH_SDA_TOKEN=alice_token)
        assert done.returncode == 0, done.stderr
        events = json.loads(
            subprocess.run(
                [str(Path(sys.executable).parent / "moreh_smclient"), "--json", "-c", "show eventlog"],
                env={**os.environ, "MOREH_HOME": str(home)},
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        )
        mine = [e for e in events if e["token"] == alice_token and e["action"] == "CREATE_SDA"]
        assert mine, mine
        assert mine[-1]["origin"] == f"uid={alice.uid} socket", mine
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
    # The daemon stopped: other users are told so, in one line, and cannot reach the state at all.
    done = users.run(users.alice, home, "moreh-smi", MOREH_SDA_TOKEN=alice_token)
    assert done.returncode != 0
    assert "served to other users by its sdamanager only, which is not running" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_sdamanager_refuses_a_directory_others_can_write(users: Users) -> None:
    home = shared_home(users)
    done = users.run(users.alice, home, "sdamanager", "--once")
    assert done.returncode == 1
    assert "sdamanager does not own a state directory that others can write" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_directory_another_user_owns_is_refused_in_process(users: Users) -> None:
    home = users.base / "alices"
    home.mkdir(mode=0o755)
    os.chown(home, users.alice.uid, users.gid)
    home.chmod(0o711)
    done = users.run(users.bob, home, "moreh_smclient", "-c", "show token")
    assert done.returncode == 1
    assert f"belongs to {users.alice.name}" in done.stderr, done.stderr
    assert "sdamanager" in done.stderr
    # Root too: a directory a non-root user owns is that user's to change.
    env = {**os.environ, "MOREH_HOME": str(home)}
    result = subprocess.run([str(Path(sys.executable).parent / "moreh_smclient"), "-c", "show token"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"belongs to {users.alice.name}" in result.stderr, result.stderr
