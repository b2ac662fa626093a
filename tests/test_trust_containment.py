"""Job containment wired into moreh-run (issue 16, item 6): a job's processes cannot outlive it.

Real ``moreh-run`` jobs on simulated GPUs; the command starts a process that leaves the job's session and
drops ``MOREH_JOB_ID`` (``setsid env -u MOREH_JOB_ID sleep ...``), which the process-group and tag scan
cannot find. The cgroup the launcher puts the command in still holds it, so every way a job ends (its
command exits, a release, its launcher killed, launcher and guardian killed together) kills it. Needs root
and a writable cgroup hierarchy; skips saying which is missing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import BIN, Smc, ok

MOREH_RUN = str(BIN / "moreh-run")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "cgroup containment needs root (to make cgroups)"
    from moreh_tools.jobs.containment import Containment

    found = Containment.probe()
    if not found.active:
        return f"no writable cgroup hierarchy here ({found.reason})"
    return None


REASON = _why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(autouse=True)
def simulated_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOREH_FAKE_GPUS", "8")
    monkeypatch.setenv("MOREH_HOSTNAME", "contain-host")
    monkeypatch.setenv("MOREH_RELEASE_GRACE", "1")
    monkeypatch.setenv("MOREH_TOKEN_FILE", "/nonexistent/moreh-token")
    for name in ("MOREH_SDA_TOKEN", "MOREH_VISIBLE_DEVICE", "CUDA_VISIBLE_DEVICES", "MOREH_JOB_ID", "MOREH_CGROUPS"):
        monkeypatch.delenv(name, raising=False)


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def clean_groups(moreh_home: Path) -> Iterator[None]:
    """Kill what a test left and remove this state's cgroups (every hierarchy) afterwards."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    from moreh_tools.jobs import contain

    containment = contain.probe(moreh_home)
    for job_id in containment.job_ids():
        found = containment.find(job_id)
        if found is not None:
            found.kill_all(0.2)
            found.remove()
    for hierarchy in containment.mounted:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(hierarchy.mountpoint, containment.parent))


@pytest.fixture
def user(smc: Smc) -> Callable[..., str]:
    count = [0]

    def make(model: int = 1) -> str:
        count[0] += 1
        token = ok(smc(f"create token contained{count[0]}")).out.strip().rsplit(" ", 1)[-1].rstrip(")")
        ok(smc(f"create sda {token} sda{count[0]} {model}"))
        return token

    return make


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def escaping_job(marks: Path, then: str = "") -> list[str]:
    """A command that starts an escaping sleeper (its pid written to ``marks``), then runs ``then``.

    The sleeper leaves the job's session, drops the job's tag, and is started from a subshell that exits at
    once, so it is not even a descendant of the job's command any more (its parent is init).
    """
    script = (
        f"(setsid env -u MOREH_JOB_ID sleep 60 < /dev/null > /dev/null 2>&1 & echo $! > {marks}.tmp); "
        f"mv {marks}.tmp {marks}; {then}"
    )
    return ["/bin/sh", "-c", script]


def start(args: list[str], token: str, **env: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([MOREH_RUN, "--", *args], env={**os.environ, "MOREH_SDA_TOKEN": token, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _started.append(proc)
    return proc


def escaped_pid(marks: Path) -> int:
    wait_until(marks.exists, 20, "the job to start its escaping process")
    pid = int(marks.read_text())
    wait_until(lambda: psutil.Process(pid).name() == "sleep", 10, "setsid and env to exec sleep")
    with open(f"/proc/{pid}/environ", "rb") as f:
        assert b"MOREH_JOB_ID=" not in f.read()  # it dropped the tag...
    assert os.getsid(pid) != os.getsid(os.getpid())  # ...and left the session...
    wait_until(lambda: psutil.Process(pid).ppid() != 0 and not _below_a_moreh_run(pid), 10, "the subshell to exit")
    return pid


def _below_a_moreh_run(pid: int) -> bool:
    """Whether ``pid`` descends from a moreh-run (the tree kill of the job's command would find it)."""
    return any(parent.pid in {p.pid for p in _started} for parent in psutil.Process(pid).parents())


def test_a_process_that_escapes_the_session_and_the_tag_dies_with_its_job(user: Callable[..., str], tmp_path: Path) -> None:
    token = user()
    marks = tmp_path / "escaped"
    smi = f"{BIN / 'moreh-smi'} -p > {tmp_path / 'smi'} 2>&1"
    done = subprocess.run([MOREH_RUN, "--", *escaping_job(marks, smi)], env={**os.environ, "MOREH_SDA_TOKEN": token},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pid = int(marks.read_text())
    wait_until(lambda: not alive(pid), 5, "the escaped process to be killed with its job")
    shown = (tmp_path / "smi").read_text()
    assert "Job containment: cgroup " in shown, shown
    assert "GPU devices: nvidia0 only" in shown, shown
    from moreh_tools.jobs import contain

    assert contain.probe(os.environ["MOREH_HOME"]).job_ids() == set()  # its group went with it


def test_release_and_a_killed_launcher_kill_escaped_processes_too(smc: Smc, user: Callable[..., str], tmp_path: Path) -> None:
    # Released: the launcher stops the command and kills what is left in its group.
    token = user()
    launcher = start(escaping_job(tmp_path / "released", "sleep 60"), token)
    pid = escaped_pid(tmp_path / "released")
    released = subprocess.run([str(BIN / "moreh-smi"), "-r"], env={**os.environ, "MOREH_SDA_TOKEN": token},
                              capture_output=True, text=True, timeout=60)
    assert released.returncode == 0, released.stderr
    launcher.wait(30)
    wait_until(lambda: not alive(pid), 5, "the released job's escaped process to die")

    # moreh-run killed: its guardian kills the job's processes through the group.
    token = user()
    launcher = start(escaping_job(tmp_path / "orphaned", "sleep 60"), token)
    pid = escaped_pid(tmp_path / "orphaned")
    launcher.kill()
    launcher.wait(10)
    wait_until(lambda: not alive(pid), 15, "the guardian to kill the dead launcher's escaped process")


def test_launcher_and_guardian_killed_together_the_next_pass_kills_escaped_processes(
    smc: Smc, user: Callable[..., str], tmp_path: Path
) -> None:
    token = user(model=4)
    launcher = start(escaping_job(tmp_path / "both", "sleep 60"), token)
    pid = escaped_pid(tmp_path / "both")
    guardian = [p for p in psutil.Process(launcher.pid).children() if p.name() != "sh"]
    for process in guardian:
        process.kill()
    launcher.kill()
    launcher.wait(10)
    # The next job on this host ends the abandoned one first, through its group.
    done = subprocess.run([MOREH_RUN, "--", "true"], env={**os.environ, "MOREH_SDA_TOKEN": user(model=4)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: not alive(pid), 5, "the abandoned job's escaped process to die")


def test_the_daemon_sweeps_groups_of_jobs_that_ended(moreh_home: Path, user: Callable[..., str]) -> None:
    from moreh_tools.jobs import contain

    user()  # a state exists
    group = contain.create(moreh_home, 999_999, [0])  # a job the state does not hold (any more)
    assert group.active
    with group.entered():
        stray = subprocess.Popen(["setsid", "sleep", "60"])
    _started.append(stray)  # type: ignore[arg-type]
    daemon = subprocess.run([str(BIN / "sdamanager"), "--once"], capture_output=True, text=True, timeout=60)
    assert daemon.returncode == 0, daemon.stderr
    assert "job containment" in daemon.stderr
    assert "cgroup" in daemon.stderr
    assert "job 999999 had ended, but processes were left in its cgroup: they were killed" in daemon.stderr
    wait_until(lambda: not alive(stray.pid), 5, "the stray process to be killed")
    assert 999_999 not in contain.probe(moreh_home).job_ids()


def test_a_job_may_open_only_its_own_gpu_device_nodes(user: Callable[..., str], tmp_path: Path) -> None:
    """The device rule in force, with /dev/nvidiaN nodes made by mknod (no driver: opening one's own gives ENXIO)."""
    nodes = tmp_path / "dev"
    nodes.mkdir()
    for minor in (0, 1, 255):
        os.mknod(nodes / f"nvidia{minor}", 0o666 | 0o020000, os.makedev(195, minor))
    probe = (
        "import errno, os, sys\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        os.close(os.open(name, os.O_RDWR))\n"
        "        print(name.rsplit('/', 1)[1], 'opened')\n"
        "    except OSError as exc:\n"
        "        print(name.rsplit('/', 1)[1], errno.errorcode[exc.errno])\n"
    )
    argv = [sys.executable, "-c", probe, *(str(nodes / f"nvidia{m}") for m in (0, 1, 255))]
    done = subprocess.run([MOREH_RUN, "--", *argv], env={**os.environ, "MOREH_SDA_TOKEN": user()},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split() for line in done.stdout.splitlines())
    assert seen["nvidia1"] == "EPERM", seen  # another job's GPU: refused by the cgroup
    assert seen["nvidia0"] != "EPERM", seen  # its own GPU: allowed (no driver behind the node here)
    assert seen["nvidia255"] != "EPERM", seen  # nvidiactl


def test_without_cgroups_the_fallback_is_said(user: Callable[..., str], tmp_path: Path) -> None:
    smi = f"{BIN / 'moreh-smi'} -p --json > {tmp_path / 'smi'} 2>&1"
    done = subprocess.run([MOREH_RUN, "--", "/bin/sh", "-c", smi],
                          env={**os.environ, "MOREH_SDA_TOKEN": user(), "MOREH_CGROUPS": "0"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import json

    shown = json.loads((tmp_path / "smi").read_text())
    assert shown["containment"] == "none (turned off by MOREH_CGROUPS=0: process group and MOREH_JOB_ID scan)"
