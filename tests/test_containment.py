"""Job containment in cgroups, with real processes and the real kernel (no mocks of either).

Every test that touches the kernel works in a private parent group (``moreh-test-<pid>-<random>``
instead of ``moreh``) and removes it afterwards. They need root and a writable cgroup hierarchy
and skip, saying which, where that is missing; the device tests also need to ``mknod``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from moreh_tools.jobs import cgroups, devfilter
from moreh_tools.jobs.cgroups import V1_CONTROLLERS, Hierarchy
from moreh_tools.jobs.containment import FALLBACK, Containment, JobCgroup, nvidia_minors

ROOT = "/sys/fs/cgroup"
NOBODY = 65534
WAIT_S = 10.0  # upper bound of every wait for a process to appear or go; a pass takes milliseconds

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="cgroup containment tests need root (to make cgroups)")


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    """Wait until ``condition()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """Whether a process has exited (a zombie waiting for its parent counts: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def own_cgroups() -> str:
    with open("/proc/self/cgroup") as f:
        return f.read()


class Jobs:
    """Spawns test commands inside job groups and reaps them, so no test leaves a process behind."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, job: JobCgroup, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``job`` (as the launcher will) and check this process came back out."""
        before = own_cgroups()
        with job.entered() as missed:
            assert missed == []
            child = subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        assert own_cgroups() == before, "entered() did not move the caller back"
        self.children.append(child)
        return child

    def reap(self) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait(WAIT_S)


@pytest.fixture
def jobs() -> Iterator[Jobs]:
    spawned = Jobs()
    yield spawned
    spawned.reap()


def _private(controllers: tuple[str, ...] = V1_CONTROLLERS, use_v2: bool = True) -> Iterator[Containment]:
    parent = f"moreh-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    containment = Containment.probe(ROOT, parent, controllers=controllers, use_v2=use_v2)
    if not containment.active:
        pytest.skip(f"no writable cgroup hierarchy here: {containment.describe()}")
    try:
        yield containment
    finally:
        for job_id in containment.job_ids():
            job = containment.find(job_id)
            if job is not None:
                job.kill_all(0.0)
                job.remove()
        for h in containment.mounted:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(h.mountpoint, parent))


@pytest.fixture
def containment() -> Iterator[Containment]:
    """Every usable hierarchy, under a private parent group."""
    if not IS_ROOT:
        pytest.skip("cgroup containment tests need root (to make cgroups)")
    yield from _private()


# -- finding and killing what escaped the process group and the tag ------------------------------

ESCAPE = textwrap.dedent(
    """
    # The trust-boundary issue's escape, double-forked: new session, no MOREH_JOB_ID, orphaned sleep.
    setsid env -u MOREH_JOB_ID sh -c '(sleep 300 & echo $! > "$1.tmp" && mv "$1.tmp" "$1")' sh "$1"
    """
)


def start_escapee(jobs: Jobs, job: JobCgroup, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Run the escape as the job's command; return the command and the escaped sleep's pid."""
    pidfile = tmp_path / "escapee.pid"
    env = dict(os.environ, MOREH_JOB_ID=str(job.job_id))
    command = jobs.spawn(job, ["sh", "-c", ESCAPE, "sh", str(pidfile)], env=env)
    wait_for(pidfile.exists, "the escaped sleep's pid file")
    return command, int(pidfile.read_text())


def test_probe_sees_the_writable_hierarchies(containment: Containment) -> None:
    labels = {h.label for h in containment.hierarchies}
    assert labels, containment.describe()
    assert containment.describe().startswith("cgroup ")
    assert f"/{containment.parent}" in containment.describe()
    if "v1 devices" in labels:
        assert containment.describe().endswith("GPU devices by v1 devices")


def test_escaped_process_is_found_and_killed_through_the_cgroup(
    containment: Containment, jobs: Jobs, tmp_path: Path
) -> None:
    from moreh_tools.jobs import processes

    job = containment.create(41, [0])
    assert job.active, job.problems
    assert job.problems == [], job.problems
    command, escapee = start_escapee(jobs, job, tmp_path)
    assert command.wait(WAIT_S) == 0  # the job's command has ended; its escapee has not

    # Today's mechanisms miss it: another session, no tag.
    assert os.getsid(escapee) not in (command.pid, os.getsid(0))  # the command led its own session
    assert b"MOREH_JOB_ID=" not in Path(f"/proc/{escapee}/environ").read_bytes()
    assert escapee not in {p.pid for p in processes.job_processes(41)}

    assert escapee in job.pids()
    assert job.kill_all(grace=5.0) >= 1
    wait_for(lambda: gone(escapee), "the escaped sleep to die")
    assert job.pids() == set()
    assert job.remove()
    assert not job.exists()
    assert containment.find(41) is None


def test_another_process_finds_the_job_by_id_and_kills_it(containment: Containment, jobs: Jobs, tmp_path: Path) -> None:
    """What the guardian and the daemon do after the launcher died: find by id, kill, remove."""
    job = containment.create(42, [1])
    command, escapee = start_escapee(jobs, job, tmp_path)
    guardian = textwrap.dedent(
        f"""
        import json
        from moreh_tools.jobs.containment import Containment
        found = Containment.probe({ROOT!r}, {containment.parent!r}).find(42)
        killed = found.kill_all(grace=5.0)
        print(json.dumps([found.describe(), killed, found.remove(), found.problems]))
        """
    )
    out = subprocess.run([sys.executable, "-c", guardian], capture_output=True, text=True, timeout=60, check=True)
    described, killed, removed, problems = json.loads(out.stdout)
    assert described.startswith("cgroup ")
    assert described.endswith(f"/{containment.parent}/job-42")
    assert killed >= 1
    assert removed
    assert problems == []
    assert gone(escapee)
    assert containment.find(42) is None
    command.wait(WAIT_S)


@pytest.fixture(params=["v2 cgroup.kill", "v1 freezer", "v1 pids only"])
def kill_containment(request: pytest.FixtureRequest) -> Iterator[Containment]:
    """Each way kill_all can work: v2 freeze and cgroup.kill, v1 freezer and signals, signals alone."""
    if not IS_ROOT:
        pytest.skip("cgroup containment tests need root (to make cgroups)")
    controllers, use_v2 = {
        "v2 cgroup.kill": ((), True),
        "v1 freezer": (("freezer",), False),
        "v1 pids only": (("pids",), False),
    }[request.param]
    for containment in _private(controllers, use_v2):
        if not containment.hierarchies:
            pytest.skip(f"{request.param} not available here: {containment.describe()}")
        yield containment


def test_kill_all_ends_a_forking_job_that_ignores_sigterm(kill_containment: Containment, jobs: Jobs) -> None:
    job = kill_containment.create(43, [])
    # Forks a TERM-ignoring sleep every 10 ms for as long as it lives: SIGTERM alone never empties the group.
    command = jobs.spawn(job, ["sh", "-c", "trap '' TERM; while :; do sleep 300 & sleep 0.01; done"])
    wait_for(lambda: len(job.pids()) >= 6, "the job to fork")
    killed = job.kill_all(grace=0.2)
    assert killed >= 6
    assert job.pids() == set()
    assert command.wait(WAIT_S) == -signal.SIGKILL
    assert job.remove(), job.problems


def test_kill_all_never_signals_the_caller_inside_the_group(containment: Containment, jobs: Jobs) -> None:
    job = containment.create(44, [])
    with job.entered():
        child = subprocess.Popen(["sleep", "300"])
        jobs.children.append(child)
        assert {os.getpid(), child.pid} <= job.pids()
        assert job.kill_all(grace=5.0) == 1  # the child, not us (nor a freeze of ourselves)
    assert child.wait(WAIT_S) == -signal.SIGTERM
    assert job.pids() == set()
    assert job.remove()


def test_create_is_idempotent_and_a_removed_group_is_made_again_on_entry(containment: Containment, jobs: Jobs) -> None:
    first = containment.create(45, [2])
    again = containment.create(45, [2])
    assert again.describe() == first.describe()
    assert again.problems == []
    assert again.remove()
    assert not again.exists()
    # remove_stale (or anyone) removed the group between create and spawn: entry makes it again.
    child = jobs.spawn(again, ["sleep", "300"])
    assert again.exists()
    assert child.pid in again.pids()
    assert again.kill_all(grace=5.0) == 1
    assert again.remove()


def test_entered_moves_the_caller_back_when_the_spawn_fails(containment: Containment) -> None:
    job = containment.create(46, [])
    before = own_cgroups()
    inside = []

    def spawn_missing_command() -> None:
        with job.entered():
            inside.append(os.getpid() in job.pids())
            subprocess.Popen(["/nonexistent/command"])

    with pytest.raises(FileNotFoundError):
        spawn_missing_command()
    assert inside == [True]
    assert own_cgroups() == before
    assert job.pids() == set()
    assert job.remove()


def test_a_listed_pid_no_longer_in_the_group_is_not_signalled(containment: Containment, jobs: Jobs) -> None:
    """The pidfd check behind kill_all: a pid that left the group (or was reused) is left alone."""
    job = containment.create(47, [])
    outsider = subprocess.Popen(["sleep", "300"])
    jobs.children.append(outsider)
    assert not job._send(outsider.pid, signal.SIGKILL)
    assert outsider.poll() is None
    member = jobs.spawn(job, ["sleep", "300"])
    assert job._send(member.pid, signal.SIGKILL)
    assert member.wait(WAIT_S) == -signal.SIGKILL


def test_a_group_that_cannot_be_made_is_described_not_raised() -> None:
    if not IS_ROOT:
        pytest.skip("needs root, for the cgroup hierarchy to look writable")
    containment = Containment.probe(ROOT, "cgroup.procs/moreh")  # under a file: every mkdir fails
    if not containment.active:
        pytest.skip(f"no writable cgroup hierarchy here: {containment.describe()}")
    job = containment.create(48, [0])
    assert not job.active
    labels = ", ".join(h.label for h in containment.hierarchies)
    assert job.describe() == f"none ({labels}: cannot create /cgroup.procs/moreh/job-48: Not a directory: {FALLBACK})"
    with job.entered() as missed:
        pass
    assert missed == []
    assert job.kill_all(0.1) == 0
    assert job.remove()


def test_remove_stale_keeps_live_and_populated_groups(containment: Containment, jobs: Jobs) -> None:
    idle, busy, kept = (containment.create(job_id, []) for job_id in (51, 52, 53))
    jobs.spawn(busy, ["sleep", "300"])
    assert containment.job_ids() == {51, 52, 53}
    assert containment.remove_stale(keep={53}) == [51]
    assert not idle.exists()
    assert busy.exists()
    assert kept.exists()
    assert busy.kill_all(grace=5.0) == 1
    assert containment.remove_stale(keep={53}) == [52]
    assert containment.job_ids() == {53}


# -- GPU device restriction ---------------------------------------------------------------------

NODES = {"nvidia0": (195, 0), "nvidia1": (195, 1), "nvidiactl": (195, 255), "null": (1, 3)}

OPEN_EACH = textwrap.dedent(
    """
    import errno, json, os, sys
    result = {}
    for path in sys.argv[1:]:
        try:
            os.close(os.open(path, os.O_RDONLY))
            result[os.path.basename(path)] = "opened"
        except OSError as exc:
            result[os.path.basename(path)] = errno.errorcode[exc.errno]
    print(json.dumps(result))
    """
)

#: A node the cgroup allows gets as far as the driver: none is loaded here (ENXIO/ENODEV); on a
#: GPU host it may open. A denied node fails in the cgroup check, before any driver: EPERM.
ALLOWED = {"opened", "ENXIO", "ENODEV"}


@pytest.fixture
def nodes(tmp_path: Path) -> Path:
    """Device nodes with the NVIDIA numbers (and /dev/null's), in a private directory."""
    directory = tmp_path / "dev"
    directory.mkdir()
    try:
        for name, (major, minor) in NODES.items():
            os.mknod(directory / name, 0o666 | 0o020000, os.makedev(major, minor))  # S_IFCHR
    except OSError as exc:
        pytest.skip(f"cannot make device nodes in {directory}: {exc.strerror}")
    return directory


def open_each(jobs: Jobs, job: JobCgroup | None, nodes: Path) -> dict[str, str]:
    """Open every node from a process started inside ``job`` (outside any job with None)."""
    argv = [sys.executable, "-c", OPEN_EACH, *(str(nodes / name) for name in NODES)]
    if job is None:
        return json.loads(subprocess.run(argv, capture_output=True, check=True, timeout=60).stdout)
    child = jobs.spawn(job, argv, stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    return json.loads(out)


@pytest.fixture(params=["v1 devices", "eBPF"])
def device_containment(request: pytest.FixtureRequest) -> Iterator[Containment]:
    """Containment whose GPU restriction is made by v1 ``devices``, or by the eBPF filter on v2."""
    if not IS_ROOT:
        pytest.skip("device restriction tests need root")
    if request.param == "v1 devices":
        private = _private()
    else:
        if not devfilter.supported():
            pytest.skip("no bpf system call number known for this architecture")
        private = _private(controllers=("freezer", "pids"))
    for containment in private:
        if containment.device_method != request.param:
            pytest.skip(f"{request.param} not available here: {containment.describe()}")
        yield containment


def test_job_opens_its_gpu_nvidiactl_and_other_devices_but_not_other_gpus(
    device_containment: Containment, jobs: Jobs, nodes: Path
) -> None:
    outside = open_each(jobs, None, nodes)
    assert outside["nvidia0"] in ALLOWED, outside
    assert outside["null"] == "opened", outside

    job = device_containment.create(61, [1])
    assert job.problems == [], job.describe()
    assert job.describe().endswith("GPU devices: nvidia1 only"), job.describe()
    inside = open_each(jobs, job, nodes)
    assert inside["nvidia0"] == "EPERM", inside
    assert inside["nvidia1"] in ALLOWED, inside
    assert inside["nvidiactl"] in ALLOWED, inside
    assert inside["null"] == "opened", inside


def test_job_without_gpus_keeps_only_nvidiactl(device_containment: Containment, jobs: Jobs, nodes: Path) -> None:
    job = device_containment.create(62, [])
    assert job.describe().endswith("GPU devices: none"), job.describe()
    inside = open_each(jobs, job, nodes)
    assert inside["nvidia0"] == inside["nvidia1"] == "EPERM", inside
    assert inside["nvidiactl"] in ALLOWED, inside
    assert inside["null"] == "opened", inside


def test_creating_again_with_other_gpus_moves_the_restriction(
    device_containment: Containment, jobs: Jobs, nodes: Path
) -> None:
    device_containment.create(63, [0])
    job = device_containment.create(63, [1])
    inside = open_each(jobs, job, nodes)
    assert inside["nvidia0"] == "EPERM", inside
    assert inside["nvidia1"] in ALLOWED, inside


def _v1_devices_parent(containment: Containment, *rules: str) -> str:
    """Make the private parent a whitelist (deny all, then ``rules``), as a container's group is."""
    devices = next((h for h in containment.hierarchies if "devices" in h.controllers), None)
    if devices is None:
        pytest.skip(f"no writable v1 devices hierarchy: {containment.describe()}")
    parent = os.path.join(devices.mountpoint, containment.parent)
    os.makedirs(parent, exist_ok=True)
    cgroups.write(os.path.join(parent, "devices.deny"), "a")
    for rule in rules:
        cgroups.write(os.path.join(parent, "devices.allow"), rule)
    return parent


def test_v1_whitelist_parent_is_narrowed_to_the_jobs_gpu(containment: Containment, jobs: Jobs, nodes: Path) -> None:
    _v1_devices_parent(containment, "c 1:3 rwm", "c 195:* rwm")
    job = containment.create(64, [1])
    assert job.problems == [], job.problems
    inside = open_each(jobs, job, nodes)
    assert inside["nvidia0"] == "EPERM", inside
    assert inside["nvidia1"] in ALLOWED, inside
    assert inside["nvidiactl"] in ALLOWED, inside
    assert inside["null"] == "opened", inside


def test_v1_whitelist_that_cannot_be_narrowed_is_reported_not_hidden(
    containment: Containment, jobs: Jobs, nodes: Path
) -> None:
    _v1_devices_parent(containment, "c *:* rwm")
    job = containment.create(65, [1])
    assert job.active
    assert job.describe().endswith(
        "GPU devices: not restricted (v1 devices: the inherited whitelist still allows c *:* rwm)"
    )
    # Nothing else was taken from the job to narrow it.
    assert open_each(jobs, job, nodes)["null"] == "opened"


# -- a non-root launcher: delegation and entry by exec wrapper ------------------------------------


@pytest.fixture
def v1_containment() -> Iterator[Containment]:
    """v1 hierarchies only: delegation to a user works there (v2 wants the common ancestor too)."""
    if not IS_ROOT:
        pytest.skip("delegation tests need root to delegate")
    yield from _private(use_v2=False)


def test_delegated_group_is_entered_by_a_non_root_command_before_it_runs(
    v1_containment: Containment, jobs: Jobs
) -> None:
    job = v1_containment.create(71, [1])
    assert job.delegate(NOBODY)
    path, argv = job.entry_argv("/bin/sleep", ["sleep", "300"])
    child = subprocess.Popen(argv, executable=path, user=NOBODY, start_new_session=True)
    jobs.children.append(child)
    wait_for(lambda: child.pid in job.pids() and Path(f"/proc/{child.pid}/exe").resolve().name == "sleep", "entry")
    assert f"{job.path}\n" in Path(f"/proc/{child.pid}/cgroup").read_text()
    assert job.kill_all(grace=5.0) == 1
    assert job.remove()


def test_entry_without_delegation_fails_before_the_command_runs(v1_containment: Containment, tmp_path: Path) -> None:
    job = v1_containment.create(72, [])
    marker = tmp_path / "ran"
    path, argv = job.entry_argv("/usr/bin/touch", ["touch", str(marker)])
    result = subprocess.run(argv, executable=path, user=NOBODY, capture_output=True, timeout=60)
    assert result.returncode == 126
    assert b"Permission denied" in result.stderr
    assert not marker.exists()
    assert job.remove()


# -- where no cgroup can be used ----------------------------------------------------------------


def test_no_cgroup_mount_is_no_containment_and_nothing_raises(tmp_path: Path) -> None:
    containment = Containment.probe(str(tmp_path), "moreh")
    assert not containment.active
    assert containment.describe() == f"none (no cgroup file system under {tmp_path}: {FALLBACK})"
    job = containment.create(81, [0])
    assert not job.active
    assert job.describe() == containment.describe()
    with job.entered() as missed:
        child = subprocess.Popen(["true"])
    assert missed == []
    assert child.wait(WAIT_S) == 0
    assert job.pids() == set()
    assert job.kill_all(grace=1.0) == 0
    assert job.remove()
    assert job.entry_argv("/bin/true", ["true"]) == ("/bin/true", ["true"])
    assert containment.find(81) is None
    assert containment.job_ids() == set()
    assert containment.remove_stale() == []


def test_unreadable_mount_table_is_no_containment(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(*args: object, **kwargs: object) -> list[Hierarchy]:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cgroups, "mounted_hierarchies", unreadable)
    containment = Containment.probe()
    assert containment.describe() == f"none (cgroup mounts unreadable: Permission denied: {FALLBACK})"


def as_user(uid: int, work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child that dropped to ``uid``; return what it returned (or its error).

    A fork, not a new interpreter: the user may be unable to read this interpreter's files.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                out = work()
            except BaseException as exc:  # the test wants to see it, not a silent exit
                out, code = f"raised {type(exc).__name__}: {exc}", 1
            os.write(write_fd, out.encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    return out


@needs_root
def test_non_root_user_gets_no_containment_and_no_traceback() -> None:
    def probe() -> str:
        c = Containment.probe(ROOT, "moreh-test-nobody")
        job = c.create(82, [0])
        with job.entered() as missed:
            pass
        return "\n".join([c.describe(), job.describe(), repr((missed, job.kill_all(0.1), job.remove(), c.find(82)))])

    none = f"none (cgroup not writable: {FALLBACK})"
    assert as_user(NOBODY, probe).splitlines() == [none, none, "([], 0, True, None)"]


# -- parsing, without the kernel ----------------------------------------------------------------

HYBRID = textwrap.dedent(
    """\
    31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
    32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
    36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
    37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime shared:9 - cgroup cgroup rw,freezer
    39 31 0:36 /docker/abc /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
    50 27 0:40 / /mnt/other\\040cgroup rw,relatime - cgroup cgroup rw,devices
    """
)


def test_mountinfo_of_a_hybrid_host(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(HYBRID)
    found = cgroups.mounted_hierarchies(ROOT, mountinfo=str(mountinfo))
    assert [h.label for h in found] == ["v2", "v1 devices", "v1 freezer", "v1 pids"]
    assert found[0].mountpoint == "/sys/fs/cgroup/unified"
    pids = found[3]
    assert pids.directory("/docker/abc/moreh/job-1") == "/sys/fs/cgroup/pids/moreh/job-1"
    assert pids.directory("/elsewhere") is None
    assert cgroups.directory_of(found[1], {"devices": "/a/b", "": "/"}) == "/sys/fs/cgroup/devices/a/b"
    only_v1 = cgroups.mounted_hierarchies(ROOT, controllers=("pids",), use_v2=False, mountinfo=str(mountinfo))
    assert [h.label for h in only_v1] == ["v1 pids"]


def test_mountinfo_of_a_v2_host(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "26 22 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        "27 22 0:24 / /mnt/x\\040y rw - cgroup2 cgroup2 rw\n"
    )
    assert cgroups.mounted_hierarchies(ROOT, mountinfo=str(mountinfo)) == [Hierarchy(2, frozenset(), ROOT, "/")]
    assert cgroups.mounted_hierarchies("/mnt", mountinfo=str(mountinfo))[0].mountpoint == "/mnt/x y"


def test_whitelist_leaks() -> None:
    assert cgroups.v1_whitelist_leaks("c 1:3 rwm\nc 195:1 rwm\nc 195:255 rwm\n", {1, 255}) == []
    assert cgroups.v1_whitelist_leaks("c 195:0 rwm\na *:* rwm\nb 195:0 rwm\n", {1}) == ["c 195:0 rwm", "a *:* rwm"]


def test_char_major_reads_dynamic_majors(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    devices.write_text("Character devices:\n  1 mem\n195 nvidia-frontend\n508 nvidia-uvm\n\nBlock devices:\n 7 loop\n")
    assert cgroups.char_major("nvidia-uvm", str(devices)) == 508
    assert cgroups.char_major("loop", str(devices)) is None
    assert cgroups.char_major("nvidia-uvm", str(tmp_path / "absent")) is None


def test_nvidia_minors_follow_the_drivers_pci_order(tmp_path: Path) -> None:
    for address, minor in (("0000:b1:00.0", 0), ("0000:3b:00.0", 5)):
        (tmp_path / address).mkdir()
        (tmp_path / address / "information").write_text(f"Model: H200\nDevice Minor: \t {minor}\nBus Type: PCIe\n")
    assert nvidia_minors([0, 1, 7], str(tmp_path)) == [5, 0, 7]
    assert nvidia_minors([2, 3], str(tmp_path / "absent")) == [2, 3]


def test_device_filter_program_shape() -> None:
    code = devfilter.program([3, 1, 1])
    assert len(code) % 8 == 0
    # 4 loads, 2 type/major checks, 3 minor checks (1, 3, 255), deny, exit, allow, exit.
    assert len(code) // 8 == 4 + 2 + 3 + 4
