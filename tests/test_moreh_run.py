"""``moreh-run`` end to end: real console scripts, 8 simulated GPUs, jobs that record what they saw.

Each job here is a short Python program that writes what it observed (its devices, its
environment, when it ran) to a file; the assertions are about those files, the launcher's exit
status and stderr, and what ``moreh_smclient`` then shows.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, SMCLIENT, Smc, dump_state, id_of, ok

MOREH_RUN = str(BIN / "moreh-run")
PY = sys.executable
HOST = "h5-test-host"

# A job that records its devices, its environment and when it ran, then exits with argv[2].
RECORDER = """
import json, os, sys, time
started = time.time()
time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 0)
keys = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "MOREH_JOB_ID", "MOREH_SDA_TOKEN", "FOO", "BAR")
record = {k: os.environ.get(k) for k in keys}
record.update(start=started, end=time.time(), pid=os.getpid())
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(record) + "\\n")
sys.exit(int(sys.argv[2]))
"""

# A job that starts a grandchild, records both pids, and then sleeps until killed.
SLEEPER = """
import os, subprocess, sys, time
grandchild = subprocess.Popen(["sleep", "60"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""


@pytest.fixture(autouse=True)
def simulated_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 simulated GPUs on a fixed host name, a short release grace, no token from the environment."""
    monkeypatch.setenv("MOREH_FAKE_GPUS", "8")
    monkeypatch.setenv("MOREH_HOSTNAME", HOST)
    monkeypatch.setenv("MOREH_RELEASE_GRACE", "1")
    monkeypatch.setenv("MOREH_TOKEN_FILE", "/nonexistent/moreh-token")
    for name in ("MOREH_SDA_TOKEN", "MOREH_VISIBLE_DEVICE", "CUDA_VISIBLE_DEVICES", "MOREH_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def user(smc: Smc) -> Callable[..., str]:
    """Create a token with an SDA of ``model`` (1: one device, 3: four, 4: eight) and return the token."""
    count = [0]

    def make(model: int = 1, priority: int | None = None) -> str:
        count[0] += 1
        line = f"create token user{count[0]}" + ("" if priority is None else f" {priority}")
        token = ok(smc(line)).out.strip().rsplit(" ", 1)[-1].rstrip(")")
        ok(smc(f"create sda {token} sda{count[0]} {model}"))
        return token

    return make


def moreh_run(*args: str, token: str | None = None, env: dict[str, str] | None = None, timeout: float = 30) -> Any:
    """Run moreh-run to completion."""
    full = dict(os.environ)
    if token is not None:
        full["MOREH_SDA_TOKEN"] = token
    full.update(env or {})
    return subprocess.run([MOREH_RUN, *args], env=full, capture_output=True, text=True, timeout=timeout)


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Kill every launcher a test left running (its guardian then ends the job and its processes)."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(*args: str, token: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start moreh-run in the background (stderr piped, to watch for its queue notice)."""
    full = dict(os.environ, MOREH_SDA_TOKEN=token, **(env or {}))
    proc = subprocess.Popen([MOREH_RUN, *args], env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _started.append(proc)
    return proc


def wait_for_stderr(proc: subprocess.Popen[bytes], needle: str, timeout: float = 15) -> str:
    """Read the launcher's stderr until ``needle`` appears; return what was read."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} on stderr; got {seen!r}"
        ready, _, _ = select.select([proc.stderr], [], [], left)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, f"stderr closed before {needle!r}; got {seen!r}"
            seen += chunk
    return seen.decode()


def start_blocker(token: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a job that holds its devices until the returned file exists; return once it runs."""
    stop, mark = tmp_path / f"stop-{token[:6]}", tmp_path / f"running-{token[:6]}"
    script = (
        f"import os, time\nopen({str(mark)!r}, 'w').close()\nwhile not os.path.exists({str(stop)!r}): time.sleep(0.02)"
    )
    proc = start(PY, "-c", script, token=token)
    wait_until(mark.exists, what="the blocking job to start")
    return proc, stop


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def history(smc: Smc, job_id: int) -> dict[str, Any]:
    entries = ok(smc(f"get history feid {job_id}", json=True)).json
    return entries[0] if isinstance(entries, list) else entries


def queue(smc: Smc) -> list[dict[str, Any]]:
    return list(ok(smc("show job", json=True)).json)


def wait_until(check: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def sda_of(token: str) -> int:
    from state.store import StateStore

    with StateStore().reading() as s:
        return s.sdas.of_token(token)[0].id


@pytest.fixture
def registered() -> None:
    """This host registered as a backend already (so a refused job leaves the state exactly as it was)."""
    from conftest import ensure_local_backend

    from moreh_tools.gpus import get_provider
    from state.store import StateStore

    ensure_local_backend(StateStore(), get_provider())


# -- running a job ------------------------------------------------------------------------------


def test_job_sees_exactly_its_devices_and_the_token_env(smc: Smc, user: Callable[..., str], tmp_path: Path) -> None:
    other = user(model=1)
    ok(smc(f"add token env {other} FOO wrong"))
    assert moreh_run(PY, "-c", "pass", token=other).returncode == 0  # device 0 was used once; it is free again
    token = user(model=3)
    ok(smc(f"add token env {token} FOO from-the-token"))
    ok(smc(f"add token env {token} BAR 'two words'"))
    out = tmp_path / "seen.jsonl"

    result = moreh_run(PY, "-c", RECORDER, str(out), "0", token=token)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [seen] = records(out)
    assert seen["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert seen["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert seen["MOREH_SDA_TOKEN"] == token
    assert (seen["FOO"], seen["BAR"]) == ("from-the-token", "two words")
    entry = history(smc, int(seen["MOREH_JOB_ID"]))
    assert entry["token"] == token
    assert (entry["exit_code"], entry["end_reason"]) == (0, "finished")
    assert entry["device_count"] == 4
    assert [(d["host"], d["index"]) for d in entry["devices"]] == [(HOST, i) for i in range(4)]
    assert entry["process_name"].startswith(f"{PY} -c ")
    assert queue(smc) == []
    devices = ok(smc("show backend", json=True)).json[0]["devices"]
    assert {d["status"] for d in devices} == {"IDLE"}


def test_exit_codes_pass_through_and_land_in_history(smc: Smc, user: Callable[..., str], tmp_path: Path) -> None:
    token = user()
    out = tmp_path / "seen.jsonl"
    assert moreh_run("--", PY, "-c", RECORDER, str(out), "7", token=token).returncode == 7
    killed = moreh_run("sh", "-c", 'echo "$MOREH_JOB_ID" > "$0"; kill -TERM $$', str(tmp_path / "id"), token=token)
    assert killed.returncode == 128 + signal.SIGTERM
    first = history(smc, int(records(out)[0]["MOREH_JOB_ID"]))
    assert (first["exit_code"], first["end_reason"]) == (7, "failed")
    second = history(smc, int((tmp_path / "id").read_text()))
    assert (second["exit_code"], second["end_reason"]) == (143, "failed")


def test_signals_sent_to_moreh_run_reach_the_job(user: Callable[..., str], tmp_path: Path) -> None:
    token = user()
    mark = tmp_path / "ready"
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(42))\n"
        f"open({str(mark)!r}, 'w').close()\n"
        "time.sleep(30)\n"
    )
    proc = start(PY, "-c", script, token=token)
    wait_until(mark.exists, what="the job to start")
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=10) == 42


# -- sharing the GPUs -----------------------------------------------------------------------------


def test_four_jobs_of_four_devices_never_share_a_device(user: Callable[..., str], tmp_path: Path) -> None:
    out = tmp_path / "seen.jsonl"
    launchers = [start(PY, "-c", RECORDER, str(out), "0", "0.4", token=user(model=3)) for _ in range(4)]
    errors = [proc.communicate(timeout=30)[1].decode() for proc in launchers]

    assert [proc.returncode for proc in launchers] == [0, 0, 0, 0], errors
    assert sum("Not enough resources are currently available" in e for e in errors) >= 1, errors
    seen = records(out)
    assert len(seen) == 4
    for i, a in enumerate(seen):
        devices_a = set(a["CUDA_VISIBLE_DEVICES"].split(","))
        assert len(devices_a) == 4
        for b in seen[i + 1 :]:
            overlap_in_time = a["start"] < b["end"] and b["start"] < a["end"]
            if overlap_in_time:
                assert devices_a.isdisjoint(b["CUDA_VISIBLE_DEVICES"].split(",")), (a, b)


def test_high_priority_job_queued_later_runs_first(user: Callable[..., str], tmp_path: Path) -> None:
    blocker, stop = start_blocker(user(model=4), tmp_path)
    out = tmp_path / "order.jsonl"
    low = start(PY, "-c", RECORDER, str(out), "0", token=user(model=4, priority=-5))
    notice = wait_for_stderr(low, "[info] Job")
    assert "[warning] Not enough resources are currently available for the Moreh SDA." in notice
    high = start(PY, "-c", RECORDER, str(out), "0", token=user(model=4, priority=10))
    assert "at position 1" in wait_for_stderr(high, "[info] Job")

    stop.touch()
    assert [p.wait(timeout=20) for p in (blocker, high, low)] == [0, 0, 0]
    first, second = records(out)
    assert first["MOREH_SDA_TOKEN"] != second["MOREH_SDA_TOKEN"]
    assert first["end"] <= second["start"]
    assert first["MOREH_JOB_ID"] > second["MOREH_JOB_ID"]  # the later (high-priority) job ran first


def test_second_process_on_one_sda_waits_for_the_first(smc: Smc, user: Callable[..., str], tmp_path: Path) -> None:
    token = user()
    first, stop = start_blocker(token, tmp_path)
    wait_until(lambda: [j["status"] for j in queue(smc)] == ["RUNNING"], what="the first job to be RUNNING")
    [running] = queue(smc)
    second = start(PY, "-c", "pass", token=token)
    notice = wait_for_stderr(second, "[info] Job")
    assert f"(pid: {running['pid']})" in notice
    assert (
        "[warning] Two or more processes cannot use the same SDA at the same time. The program will resume "
        f"automatically after the process {running['pid']} terminates..."
    ) in notice
    stop.touch()
    assert first.wait(timeout=20) == 0
    assert second.wait(timeout=20) == 0


def test_release_ends_a_running_job_within_seconds(smc: Smc, user: Callable[..., str], tmp_path: Path) -> None:
    token = user(model=3)
    pids = tmp_path / "pids"
    proc = start(PY, "-c", SLEEPER, str(pids), token=token)
    wait_until(pids.exists, what="the job to start")
    [job] = queue(smc)
    assert job["status"] == "RUNNING"

    started = time.monotonic()
    released = subprocess.run([SMCLIENT, "-c", f"release {job['id']}"], capture_output=True, text=True, timeout=30)
    assert released.returncode == 0, released.stderr
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 5
    child, grandchild = map(int, pids.read_text().split())
    wait_until(lambda: gone(child) and gone(grandchild), timeout=5, what="the job's processes to end")
    assert history(smc, job["id"])["end_reason"] == "released"
    assert queue(smc) == []


def test_sigkill_of_moreh_run_ends_the_job_and_frees_its_devices(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    token = user(model=4)
    pids = tmp_path / "pids"
    proc = start(PY, "-c", SLEEPER, str(pids), token=token)
    wait_until(pids.exists, what="the job to start")
    [job] = queue(smc)

    proc.kill()
    proc.wait(timeout=5)

    child, grandchild = map(int, pids.read_text().split())
    wait_until(lambda: gone(child) and gone(grandchild), timeout=10, what="the job's processes to end")
    wait_until(lambda: queue(smc) == [], timeout=10, what="the job to leave the queue")
    entry = history(smc, job["id"])
    assert (entry["end_reason"], entry["exit_code"]) == ("lost", None)
    # All 8 devices are free again: an 8-device job starts at once.
    result = moreh_run(PY, "-c", "pass", token=user(model=4))
    assert (result.returncode, result.stderr) == (0, "")


def test_interrupting_a_waiting_launcher_takes_its_job_out_of_the_queue(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    blocker, stop = start_blocker(user(model=4), tmp_path)
    waiting = start(PY, "-c", "pass", token=user(model=1))
    wait_for_stderr(waiting, "[info] Job")
    waiting.send_signal(signal.SIGTERM)  # not SIGINT: a test run from a background shell inherits it ignored
    assert waiting.wait(timeout=10) == 128 + signal.SIGTERM
    assert [j["status"] for j in queue(smc)] == ["RUNNING"]
    stop.touch()
    assert blocker.wait(timeout=10) == 0


def test_a_queued_job_that_is_released_or_whose_launcher_dies_leaves_the_queue(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    blocker, stop = start_blocker(user(model=4), tmp_path)
    released = start(PY, "-c", "pass", token=user(model=1))
    killed = start(PY, "-c", "pass", token=user(model=1))
    wait_for_stderr(released, "[info] Job")
    wait_for_stderr(killed, "[info] Job")
    running, *waiting = queue(smc)
    by_launcher = {j["launcher_pid"]: j for j in waiting}
    first, second = by_launcher[released.pid], by_launcher[killed.pid]

    ok(smc(f"release {first['id']}"))
    assert released.wait(timeout=10) == 1
    assert released.stderr is not None
    assert (
        released.stderr.read()
        .decode()
        .endswith(f"moreh-run: job {first['id']} left the queue before it got devices: released by an admin.\n")
    )
    killed.kill()
    killed.wait()
    wait_until(lambda: [j["id"] for j in queue(smc)] == [running["id"]], what="the dead launcher's job to leave")
    assert history(smc, second["id"])["end_reason"] == "lost"
    stop.touch()
    assert blocker.wait(timeout=10) == 0


@pytest.mark.parametrize("entry", ["moreh_tools.launcher.cli", "moreh_tools.daemon.cli"])
def test_help_loads_nothing_heavy(entry: str) -> None:
    probe = (
        f"import sys\nfrom {entry} import main\ntry:\n    main(['--help'])\nexcept SystemExit as exc:\n"
        "    code = exc.code\nheavy = [m for m in ('duckdb', 'filelock', 'psutil', 'pynvml') if m in sys.modules]\n"
        "print(code, heavy, file=sys.stderr)"
    )
    result = subprocess.run([PY, "-c", probe], capture_output=True, text=True, timeout=30)
    assert result.stderr == "0 []\n"
    assert "usage:" in result.stdout


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "code", "needle"),
    [
        ([], {}, 2, "no command to run; usage: moreh-run"),
        (["--"], {}, 2, "no command to run"),
        (["--priority", "100", "true"], {}, 2, "priority 100 is out of range"),
        (["--priority", "high", "true"], {}, 2, "invalid int value"),
        (["--bogus", "true"], {}, 2, "unrecognized arguments: --bogus"),
        (["no-such-command-h5"], {}, 127, "command not found: no-such-command-h5"),
        (["/etc/passwd"], {}, 126, "cannot run /etc/passwd: permission denied (not executable)"),
        (["/tmp"], {}, 126, "cannot run /tmp: it is a directory"),
        (["--token", "nope", "true"], {}, 1, "moreh::InvalidToken"),
        (["true"], {"MOREH_SDA_TOKEN": ""}, 1, "SDA token is not given."),
        (["--sda", "999", "true"], {}, 1, "SDA 999 does not exist"),
        (["true"], {"MOREH_VISIBLE_DEVICE": "abc"}, 1, "MOREH_VISIBLE_DEVICE='abc' is not an SDA id"),
    ],
)
def test_bad_input_is_one_line_and_queues_nothing(
    user: Callable[..., str], registered: None, args: list[str], env: dict[str, str], code: int, needle: str
) -> None:
    token = user()
    before = dump_state()
    result = moreh_run(*args, token=token, env=env)
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("moreh-run: ")
    assert needle in result.stderr
    assert dump_state() == before


def test_refusals_about_the_sda_queue_nothing(smc: Smc, user: Callable[..., str], registered: None) -> None:
    mine, theirs = user(), user()
    their_sda_id = sda_of(theirs)
    bare = ok(smc("create token nobody")).out.strip().rsplit(" ", 1)[-1].rstrip(")")
    # A token whose user group reaches no model group: its SDA's model is not allowed any more.
    group = id_of(ok(smc("create usergroup locked")))
    ok(smc(f"add usergroup {group} {mine}"))
    before = dump_state()

    cases = [
        (moreh_run("--sda", str(their_sda_id), "true", token=mine), "belongs to another token"),
        (moreh_run("true", token=bare), "This token has no SDA"),
        (moreh_run("true", token=mine), "may not use SDA model"),
    ]
    for result, needle in cases:
        assert result.returncode == 1, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert needle in result.stderr
    assert dump_state() == before


def test_a_job_released_before_its_command_started_never_keeps_its_devices(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    # The launcher is slow to start the command (here: stopped) while 'release' flags its SUBMITTED job;
    # the command that then starts anyway ignores SIGTERM. It must still die before its devices are free.
    blocker, stop = start_blocker(user(model=4), tmp_path)
    pid_file = tmp_path / "pid"
    victim = start(
        "sh",
        "-c",
        'trap "" TERM; echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; exec sleep 30',
        str(pid_file),
        token=user(model=1),
    )
    wait_for_stderr(victim, "[info] Job")
    # Stopped while it sleeps on its FIFO, not while it reads the state (it would hold the lock for everyone).
    wait_until(lambda: sleeping_in_select(victim.pid), what="the waiting launcher to sleep")
    victim.send_signal(signal.SIGSTOP)
    stop.touch()
    assert blocker.wait(timeout=10) == 0
    wait_until(lambda: [j["status"] for j in queue(smc)] == ["SUBMITTED"], what="the job to get its devices")
    [job] = queue(smc)
    release = subprocess.Popen([SMCLIENT, "-c", f"release {job['id']}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _started.append(release)
    wait_until(lambda: all(j["release_requested"] for j in queue(smc)), what="the release to be requested")
    victim.send_signal(signal.SIGCONT)
    wait_until(pid_file.exists, what="the command to start")
    assert release.wait(timeout=30) == 0

    assert gone(int(pid_file.read_text())), "the released job's command still runs after 'release' freed its devices"
    assert history(smc, job["id"])["end_reason"] == "released"
    assert victim.wait(timeout=10) == 128 + signal.SIGKILL


# Plays an interactive shell: owns a terminal, starts moreh-run in the background ('moreh-run ... &'),
# and, once moreh-run shows as stopped, brings it to the foreground ('fg') and types a line and Ctrl-D.
JOB_CONTROL_SHELL = """
import json, os, signal, subprocess, sys, time
slave, master, moreh_run, pid_file, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
tty = os.open(slave, os.O_RDWR)  # a session leader's first terminal becomes its controlling terminal
job = subprocess.Popen(
    [moreh_run, "sh", "-c", 'echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; exec cat > "$1"', pid_file, out],
    stdin=tty, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0,
)

def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return "gone"

def until(check, timeout):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True

result = {}
if until(lambda: os.path.exists(pid_file) and state(int(open(pid_file).read())) == "T", 15):
    result["moreh_run_stopped"] = until(lambda: state(job.pid) == "T", 5)
    if result["moreh_run_stopped"]:
        os.tcsetpgrp(tty, job.pid)
        os.killpg(job.pid, signal.SIGCONT)
        os.write(master, b"hello\\n\\x04")
        try:
            result["code"] = job.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
if job.poll() is None:
    job.kill()
    job.wait()
    if os.path.exists(pid_file):
        os.kill(int(open(pid_file).read()), signal.SIGKILL)
print(json.dumps(result))
"""


def test_a_background_job_reading_the_terminal_stops_moreh_run_and_resumes_on_fg(
    user: Callable[..., str], tmp_path: Path
) -> None:
    master, slave = os.openpty()
    try:
        env = dict(os.environ, MOREH_SDA_TOKEN=user())
        shell = subprocess.run(
            [
                PY,
                "-c",
                JOB_CONTROL_SHELL,
                os.ttyname(slave),
                str(master),
                MOREH_RUN,
                str(tmp_path / "pid"),
                str(tmp_path / "out"),
            ],
            env=env,
            pass_fds=(master,),
            start_new_session=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(master)
        os.close(slave)
    assert shell.returncode == 0, shell.stderr
    result = json.loads(shell.stdout)
    assert result.get("moreh_run_stopped"), "the command stopped on SIGTTIN but moreh-run kept running"
    assert result.get("code") == 0, result
    assert (tmp_path / "out").read_text() == "hello\n"


def test_release_acts_on_the_jobs_as_they_are_when_it_releases_them(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    # 'release all' reads the queue, then releases; jobs move in between. Replayed here in that order:
    # the first job ends and the queued one starts running after the read.
    from conftest import local_context

    from moreh_tools.services import jobs
    from state.store import StateStore

    first, stop_first = start_blocker(user(model=4), tmp_path)
    second = start(PY, "-c", "import time; time.sleep(60)", token=user(model=1))
    wait_for_stderr(second, "[info] Job")
    store = StateStore()
    with store.reading() as s:
        read_before = s.jobs.all()
    assert [j.status for j in read_before] == ["RUNNING", "QUEUED"]
    stop_first.touch()
    assert first.wait(timeout=10) == 0
    wait_until(lambda: [j["status"] for j in queue(smc)] == ["RUNNING"], what="the second job to run")

    released = jobs.release(local_context(), job_ids=[j.id for j in read_before], detail="released by an admin")
    assert released == [read_before[1].id]

    assert second.wait(timeout=10) == 128 + signal.SIGTERM
    assert history(smc, read_before[1].id)["end_reason"] == "released"
    assert queue(smc) == []


# Plays an interactive shell running 'moreh-run ... < /dev/null' in the foreground, and types a line for the
# command, which reads it from the terminal itself (as getpass does).
FOREGROUND_SHELL = """
import json, os, subprocess, sys
slave, master, moreh_run, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
tty = os.open(slave, os.O_RDWR)  # a session leader's first terminal becomes its controlling terminal
job = subprocess.Popen(
    [moreh_run, "sh", "-c", 'read line < /dev/tty; echo "$line" > "$0"', out],
    stdin=subprocess.DEVNULL, stdout=tty, stderr=tty, process_group=0,
)
os.tcsetpgrp(tty, job.pid)
os.write(master, b"hello\\n")
try:
    print(json.dumps({"code": job.wait(timeout=10)}))
except subprocess.TimeoutExpired:
    stat = open(f"/proc/{job.pid}/stat").read().rpartition(")")[2].split()[0]
    os.killpg(job.pid, 9)
    job.kill()
    print(json.dumps({"moreh-run state": stat}))
"""


def test_a_foreground_job_with_stdin_redirected_can_read_the_terminal(user: Callable[..., str], tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        env = dict(os.environ, MOREH_SDA_TOKEN=user())
        shell = subprocess.run(
            [PY, "-c", FOREGROUND_SHELL, os.ttyname(slave), str(master), MOREH_RUN, str(tmp_path / "out")],
            env=env,
            pass_fds=(master,),
            start_new_session=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(master)
        os.close(slave)
    assert shell.returncode == 0, shell.stderr
    assert json.loads(shell.stdout) == {"code": 0}
    assert (tmp_path / "out").read_text() == "hello\n"


def sleeping_in_select(pid: int) -> bool:
    """Whether the process's main thread sleeps in select/poll (the kernel's wait channel says so)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().startswith(("poll_schedule_timeout", "do_select", "do_sys_poll"))
    except OSError:
        return False


def test_a_job_whose_release_was_cut_short_before_its_command_started_still_ends(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    # As above, but 'release' is killed (Ctrl-C, kill) once it has flagged the job: the launcher alone must
    # then end the command it started, even one that ignores SIGTERM, and give the devices back.
    blocker, stop = start_blocker(user(model=4), tmp_path)
    pid_file = tmp_path / "pid"
    victim = start(
        "sh",
        "-c",
        'trap "" TERM; echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; exec sleep 30',
        str(pid_file),
        token=user(model=1),
    )
    wait_for_stderr(victim, "[info] Job")
    # Stopped while it sleeps on its FIFO, not while it reads the state (it would hold the lock for everyone).
    wait_until(lambda: sleeping_in_select(victim.pid), what="the waiting launcher to sleep")
    victim.send_signal(signal.SIGSTOP)
    stop.touch()
    assert blocker.wait(timeout=10) == 0
    wait_until(lambda: [j["status"] for j in queue(smc)] == ["SUBMITTED"], what="the job to get its devices")
    [job] = queue(smc)
    release = subprocess.Popen([SMCLIENT, "-c", f"release {job['id']}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _started.append(release)
    wait_until(lambda: all(j["release_requested"] for j in queue(smc)), what="the release to be requested")
    release.kill()
    release.wait()
    victim.send_signal(signal.SIGCONT)

    assert victim.wait(timeout=10) == 128 + signal.SIGKILL
    assert gone(int(pid_file.read_text()))
    assert history(smc, job["id"])["end_reason"] == "released"
    assert queue(smc) == []


# -- one machine is one backend, whatever its name (issue 15) ----------------------------------------------


@pytest.mark.parametrize("how", ["admin-renames-the-backend", "another-hostname", "both"])
def test_busy_gpus_are_never_handed_out_again_under_another_name(
    smc: Smc, user: Callable[..., str], tmp_path: Path, how: str
) -> None:
    first, second = user(model=4), user(model=4)  # 8 GPUs each: both cannot run at once
    blocker, stop = start_blocker(first, tmp_path)
    env: dict[str, str] = {}
    if how != "another-hostname":
        ok(smc("update backend host 1 gpu-node-01"), "Update Backend Host success.")
    if how != "admin-renames-the-backend":
        env["MOREH_HOSTNAME"] = "the-same-machine"
    waiting = start(PY, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])", token=second, env=env)
    wait_for_stderr(waiting, "waits in the queue")
    backends = ok(smc("show backend", json=True)).json
    assert len(backends) == 1, backends  # the machine's GPUs are registered once
    expected_name = "gpu-node-01" if how != "another-hostname" else HOST
    assert backends[0]["name"] == expected_name
    assert waiting.poll() is None, "the second 8-GPU job ran while the first held every GPU"
    stop.touch()
    assert blocker.wait(timeout=30) == 0
    assert waiting.wait(timeout=30) == 0
    assert queue(smc) == []


def test_simulated_gpus_are_checked_and_counted_on_every_run(smc: Smc, user: Callable[..., str]) -> None:
    """Issue 15: MOREH_FAKE_GPUS raised after registration adds its GPUs; a bad value is refused even then."""
    token = user(model=1)
    assert moreh_run("true", token=token).returncode == 0  # registers the host with 8 GPUs
    assert moreh_run("true", token=token, env={"MOREH_FAKE_GPUS": "10"}).returncode == 0
    [backend] = ok(smc("show backend", json=True)).json
    assert [device["index"] for device in backend["devices"]] == list(range(10))
    for bad in ("abc", "-1", "65"):
        run = moreh_run("true", token=token, env={"MOREH_FAKE_GPUS": bad})
        assert run.returncode == 1, run.stderr
        assert run.stderr.startswith(f"moreh-run: invalid MOREH_FAKE_GPUS='{bad}': use N or N:MiB"), run.stderr
        assert run.stderr.count("\n") == 1, run.stderr
    assert queue(smc) == []
