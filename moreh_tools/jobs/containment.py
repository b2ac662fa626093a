"""Job containment in cgroups: every process of a job found and killed, whatever it does to escape.

A job's command runs in its own process group and carries ``MOREH_JOB_ID``; both can be shed
(``setsid env -u MOREH_JOB_ID sleep 20 &``), after which the job's end leaves a process on its GPU
while the GPU shows idle. A cgroup cannot be shed by an unprivileged process: a child is born in
its parent's group and only a writer of ``cgroup.procs`` (root, or a delegated owner) can move it.
So each job gets a group ``<parent>/job-<id>`` (``moreh/job-12``) in every usable hierarchy:

* cgroup v2 where it is writable (the root itself on a v2 host, ``<root>/unified`` on a hybrid one),
  for membership, ``cgroup.freeze`` and ``cgroup.kill``; no controller is enabled;
* the v1 ``devices``, ``freezer`` and ``pids`` controllers where they are mounted and writable.

GPU devices are restricted as Slurm's ConstrainDevices does: of the NVIDIA character major 195,
only the job's ``/dev/nvidiaN`` minors and ``nvidiactl`` (255) stay usable; ``nvidia-uvm`` (own
major) and every other device are left alone. With v1 ``devices`` that is its deny/allow lists;
on v2 alone it is an eBPF device program (:mod:`moreh_tools.jobs.devfilter`). The restriction is
in place before any process of the job runs.

Where no hierarchy is usable, :meth:`Containment.probe` says so and every operation is a harmless
no-op: the caller keeps today's process group and ``MOREH_JOB_ID`` scan. Nothing here raises on a
kernel or permission failure; failures are kept as text in :attr:`JobCgroup.problems` and shown by
``describe()``.

Use (root launcher, guardian, daemon)::

    containment = Containment.probe()
    job = containment.create(job_id, nvidia_minors(gpu_indexes))   # launcher, before the command
    with job.entered():                                            # the child is born inside
        pid = os.posix_spawn(path, argv, env, setpgroup=0)
    ...
    job.kill_all(grace); job.remove()                              # at the job's end or release

    found = Containment.probe().find(job_id)                       # guardian / daemon, launcher gone
    if found is not None:
        found.kill_all(grace); found.remove()

:meth:`JobCgroup.entered` moves the *calling* process into the job group while it spawns, then
back: ``posix_spawn`` has no hook between fork and exec, and a child that enters by itself after
it started races with its own first fork. A non-root launcher could enter a delegated group but
not move back to its own (root-owned) group, so for that case a root daemon creates the group and
hands it over with :meth:`JobCgroup.delegate`, and the launcher starts the command through
:meth:`JobCgroup.entry_argv` (a shell that moves itself in, then execs the command: it is inside
before the command's first instruction). That works with v1 hierarchies; cgroup v2 also requires
the mover to own the common ancestor of the two groups, which a user's session never does under a
root-made group.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field

from moreh_tools.jobs import cgroups, devfilter
from moreh_tools.jobs.cgroups import V1_CONTROLLERS, Hierarchy, nvidia_minors

__all__ = ["FALLBACK", "Containment", "JobCgroup", "nvidia_minors"]

DEFAULT_ROOT = "/sys/fs/cgroup"
DEFAULT_PARENT = "moreh"

#: What cleans up a job where no cgroup can be used (today's mechanism, kept by the caller).
FALLBACK = "process group and MOREH_JOB_ID scan"

#: How long kill_all waits for a freeze to complete before it signals anyway (a task in
#: uninterruptible sleep, e.g. inside the GPU driver, can hold a freeze back).
FREEZE_WAIT_S = 1.0

#: After SIGKILL, how long kill_all keeps killing (new forks, slow exits) before it gives up.
KILL_WAIT_S = 5.0

_JOB_DIR = re.compile(r"^job-(\d+)$")

# One thread at a time moves this process in and out of job groups: two overlapping entries would
# each record the other's job group as "where I was".
_ENTRY_LOCK = threading.Lock()


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


@dataclass(frozen=True)
class Containment:
    """What cgroup containment this process can use, and where job groups live.

    ``hierarchies`` are the mounted hierarchies this process may create groups in and move
    processes into (empty: no containment, see ``reason``); ``mounted`` are all the relevant
    mounted ones, writable or not, through which a group someone else made can still be read
    (:meth:`find`).
    """

    root: str
    parent: str
    hierarchies: tuple[Hierarchy, ...]
    mounted: tuple[Hierarchy, ...]
    reason: str = ""

    @classmethod
    def probe(
        cls,
        root: str = DEFAULT_ROOT,
        parent: str = DEFAULT_PARENT,
        *,
        controllers: Iterable[str] = V1_CONTROLLERS,
        use_v2: bool = True,
    ) -> Containment:
        """Find what this process can use under ``root``; never raises.

        ``parent`` is the group (relative to each hierarchy's top, may be nested: ``a/b``) under
        which job groups are made; tests pass a private one. ``controllers`` and ``use_v2`` narrow
        the hierarchies considered (a test of the eBPF device filter leaves out v1 ``devices``).
        A hierarchy counts as usable when the parent group, or the hierarchy's top where the
        parent does not exist yet, is writable by this process.
        """
        parent = parent.strip("/")
        try:
            mounted = cgroups.mounted_hierarchies(root, controllers, use_v2)
        except (OSError, ValueError) as exc:
            return cls(root, parent, (), (), f"cgroup mounts unreadable: {_why(exc)}")
        if not mounted:
            return cls(root, parent, (), (), f"no cgroup file system under {root}")
        usable = tuple(h for h in mounted if _writable(h, parent))
        return cls(root, parent, usable, tuple(mounted), "" if usable else "cgroup not writable")

    @property
    def active(self) -> bool:
        """Whether job groups can be made here."""
        return bool(self.hierarchies)

    @property
    def device_method(self) -> str | None:
        """How GPU devices are restricted: ``v1 devices``, ``eBPF`` (v2 only) or None."""
        return _device_method(self.hierarchies)

    def describe(self) -> str:
        """One line: ``cgroup v2 + v1 (devices, freezer, pids) /moreh, GPU devices by v1 devices``."""
        if not self.active:
            return f"none ({self.reason}: {FALLBACK})"
        method = self.device_method
        devices = f"GPU devices by {method}" if method else "GPU devices not restricted (no devices controller)"
        return f"{_kinds(self.hierarchies)} /{self.parent}, {devices}"

    def _dirs(self, hierarchies: Iterable[Hierarchy], job_id: int) -> list[tuple[Hierarchy, str]]:
        return [(h, os.path.join(h.mountpoint, self.parent, f"job-{job_id}")) for h in hierarchies]

    def create(self, job_id: int, gpu_minors: Iterable[int]) -> JobCgroup:
        """Make (or re-use) the job's group in every usable hierarchy, devices restricted; never raises.

        ``gpu_minors`` are the ``/dev/nvidiaN`` minors the job may use (see :func:`nvidia_minors`
        for NVML indexes). Idempotent: an existing group is kept and its device rules re-applied.
        A hierarchy that fails is left out and named in the result's ``problems``; with none left,
        the result is inactive and describes the fallback.
        """
        job = JobCgroup(self, job_id, [], devices=None, minors=tuple(sorted(set(gpu_minors))))
        job._build(self._dirs(self.hierarchies, job_id))
        return job

    def find(self, job_id: int) -> JobCgroup | None:
        """The group of ``job_id`` made by any process (the launcher, now gone), or None; never raises."""
        dirs = [(h, d) for h, d in self._dirs(self.mounted, job_id) if os.path.isdir(d)]
        return JobCgroup(self, job_id, dirs, devices=None) if dirs else None

    def job_ids(self) -> set[int]:
        """The ids of every job that has a group under the parent, in any hierarchy."""
        ids: set[int] = set()
        for h in self.mounted:
            with contextlib.suppress(OSError):
                for name in os.listdir(os.path.join(h.mountpoint, self.parent)):
                    match = _JOB_DIR.match(name)
                    if match:
                        ids.add(int(match.group(1)))
        return ids

    def remove_stale(self, keep: Collection[int] = ()) -> list[int]:
        """Remove the empty groups of jobs not in ``keep``; return their ids.

        ``keep`` must hold every job that may still start (queued and allocated too): a group is
        empty between ``create`` and the spawn. Groups that still hold processes are left alone;
        they are a job's escaped processes, for the caller to ``find(id).kill_all()`` first.
        """
        removed = []
        for job_id in sorted(self.job_ids() - set(keep)):
            job = self.find(job_id)
            if job is not None and not job.pids() and job.remove(timeout=0.0):
                removed.append(job_id)
        return removed


def _writable(hierarchy: Hierarchy, parent: str) -> bool:
    """Whether this process may make groups under ``parent`` in ``hierarchy`` and move processes there."""
    directory = os.path.join(hierarchy.mountpoint, parent)
    while not os.path.isdir(directory) and directory != hierarchy.mountpoint:
        directory = os.path.dirname(directory)
    # access() honours a read-only mount (EROFS), as containers often mount /sys/fs/cgroup.
    return os.access(directory, os.W_OK | os.X_OK) and os.access(os.path.join(directory, "cgroup.procs"), os.W_OK)


def _device_method(hierarchies: Iterable[Hierarchy]) -> str | None:
    hierarchies = list(hierarchies)
    if any("devices" in h.controllers for h in hierarchies):
        return "v1 devices"
    if any(h.version == 2 for h in hierarchies) and devfilter.supported():
        return "eBPF"
    return None


def _summary(problems: list[str]) -> str:
    """Problems as one phrase, each cause once: ``v2, v1 pids: cannot create /moreh/job-1: Not a directory``."""
    labels: dict[str, list[str]] = {}
    for problem in problems:
        label, _, cause = problem.partition(": ")
        labels.setdefault(cause, []).append(label)
    return "; ".join(f"{', '.join(names)}: {cause}" for cause, names in labels.items())


def _kinds(hierarchies: Iterable[Hierarchy]) -> str:
    """``cgroup v2 + v1 (devices, freezer, pids)``."""
    hierarchies = list(hierarchies)
    parts = ["v2"] if any(h.version == 2 for h in hierarchies) else []
    v1 = sorted(c for h in hierarchies if h.version == 1 for c in h.controllers)
    if v1:
        parts.append(f"v1 ({', '.join(v1)})")
    return "cgroup " + " + ".join(parts)


@dataclass
class JobCgroup:
    """One job's group in each hierarchy it could be made in (``dirs``); empty means no containment.

    ``devices`` says how GPU devices are restricted (None for a group found by id, whose rules
    were set by its creator); ``problems`` keeps every failure met, as text.
    """

    containment: Containment
    job_id: int
    dirs: list[tuple[Hierarchy, str]]
    devices: str | None
    minors: tuple[int, ...] = ()
    problems: list[str] = field(default_factory=list)

    def _problem(self, text: str) -> None:
        """Keep a failure once (a wait may meet the same one on every poll)."""
        if text not in self.problems:
            self.problems.append(text)

    @property
    def active(self) -> bool:
        """Whether the job is contained in at least one hierarchy."""
        return bool(self.dirs)

    @property
    def path(self) -> str:
        """The group's path within each hierarchy: ``/moreh/job-12``."""
        return f"/{self.containment.parent}/job-{self.job_id}"

    def describe(self) -> str:
        """One line for ``moreh-smi -p`` and the daemon's log.

        ``cgroup v2 + v1 (devices, freezer, pids) /moreh/job-12, GPU devices: nvidia1 only``, or
        ``none (cgroup not writable: process group and MOREH_JOB_ID scan)``.
        """
        if not self.active:
            reason = self.containment.reason or _summary(self.problems) or "no cgroup"
            return f"none ({reason}: {FALLBACK})"
        line = f"{_kinds(h for h, _ in self.dirs)} {self.path}"
        return f"{line}, GPU devices: {self.devices}" if self.devices else line

    # -- making the group ----------------------------------------------------------------------

    def _build(self, wanted: list[tuple[Hierarchy, str]]) -> None:
        """mkdir in each hierarchy, then restrict devices; keep what worked."""
        made: list[tuple[Hierarchy, str]] = []
        for h, directory in wanted:
            try:
                os.makedirs(directory, exist_ok=True)
                made.append((h, directory))
            except OSError as exc:
                self._problem(f"{h.label}: cannot create {self.path}: {_why(exc)}")
        self.dirs = made
        if made:
            self.devices = self._restrict_devices()

    def _restrict_devices(self) -> str:
        """Apply the GPU rule to the group; return how it stands, for describe()."""
        method = _device_method(h for h, _ in self.dirs)
        if method is None:
            return "not restricted (no devices controller)"
        granted = ",".join(f"nvidia{m}" for m in self.minors) or "none"
        try:
            if method == "v1 devices":
                uvm = cgroups.char_major("nvidia-uvm")
                for h, directory in self.dirs:
                    if "devices" in h.controllers:
                        cgroups.v1_restrict_devices(directory, self.minors, uvm)
            else:
                for h, directory in self.dirs:
                    if h.version == 2:
                        devfilter.attach(directory, self.minors)
        except (OSError, ValueError) as exc:
            self._problem(f"{method}: {_why(exc)}")
            return f"not restricted ({method}: {_why(exc)})"
        return f"{granted} only" if self.minors else "none"

    # -- starting the job inside ---------------------------------------------------------------

    @contextlib.contextmanager
    def entered(self) -> Iterator[list[str]]:
        """Hold the calling process inside the job group; spawn the job's command in the block.

        A child started in the block (``posix_spawn``, ``subprocess``) is born in every hierarchy
        of the group, with no moment outside it. On leaving, this process moves back to the group
        it came from (to the hierarchy's top if that is gone). Yields the hierarchies that could
        not be entered, as ``"v1 pids: Permission denied"`` (empty: fully inside); a group removed
        meanwhile (``remove_stale`` racing the launcher) is made again first.

        Only the thread in the block should start processes meanwhile: the whole process moves.
        While inside, this process is subject to the job's device rules and would be hit by a
        ``kill_all`` from another process, so keep the block to the spawn itself.
        """
        missed: list[str] = []
        inside: list[tuple[Hierarchy, str]] = []
        with _ENTRY_LOCK:
            try:
                origins: dict[str, str] = {}
                try:
                    origins = cgroups.process_cgroups()
                except (OSError, ValueError) as exc:
                    # Without knowing where we are we could not come back: stay out, the caller falls back.
                    missed.append(f"/proc/self/cgroup: {_why(exc)}")
                for h, directory in self.dirs if origins else []:
                    origin = cgroups.directory_of(h, origins) or h.mountpoint
                    try:
                        self._enter(h, directory)
                        inside.append((h, origin))
                    except OSError as exc:
                        missed.append(f"{h.label}: {_why(exc)}")
                for problem in missed:
                    self._problem(problem)
                yield missed
            finally:
                for h, origin in reversed(inside):
                    self._leave(h, origin)

    def _enter(self, h: Hierarchy, directory: str) -> None:
        try:
            cgroups.move(directory)
        except FileNotFoundError:
            if self.devices is None:  # a found group: its creator's device rules cannot be remade
                raise
            self._build(self.dirs)
            cgroups.move(directory)

    def _leave(self, h: Hierarchy, origin: str) -> None:
        for target in (origin, h.mountpoint):
            try:
                cgroups.move(target)
                return
            except OSError as exc:
                self._problem(f"{h.label}: cannot move back to {target}: {_why(exc)}")

    def entry_argv(self, path: str, argv: list[str]) -> tuple[str, list[str]]:
        """The ``(path, argv)`` to spawn instead of the command so that it moves itself in before exec.

        For a launcher that cannot use :meth:`entered` (not root: it could not move back). The
        command runs as ``/bin/sh`` moving itself into each hierarchy's group (writing 0 to
        ``cgroup.procs``) and then exec'ing ``path``; any failure stops it with status 126 and
        the shell's message, before the command ran. The command's ``argv[0]`` becomes ``path``.
        With no group (inactive), returns the command unchanged.
        """
        if not self.active:
            return path, list(argv)
        script = 'while [ "$1" != -- ]; do echo 0 > "$1" || exit 126; shift; done; shift; exec "$@"'
        files = [os.path.join(d, "cgroup.procs") for _, d in self.dirs]
        return "/bin/sh", ["sh", "-c", script, "moreh-job-entry", *files, "--", path, *argv[1:]]

    def delegate(self, uid: int, gid: int = -1) -> bool:
        """Let processes of ``uid`` move themselves into the group (a root daemon does this); never raises.

        Changes the owner of ``cgroup.procs`` (and ``tasks`` / ``cgroup.threads``) in each
        hierarchy, nothing else: the device rules and the freezer stay root's. With v1 that is
        enough for :meth:`entry_argv` run as ``uid``; v2 also wants the common ancestor of the
        source and target groups writable, which this does not grant. Returns whether every
        change succeeded.
        """
        ok = True
        for h, directory in self.dirs:
            for name in ("cgroup.procs", "tasks" if h.version == 1 else "cgroup.threads"):
                try:
                    os.chown(os.path.join(directory, name), uid, gid)
                except OSError as exc:
                    ok = False
                    self._problem(f"{h.label}: cannot delegate {name}: {_why(exc)}")
        return ok

    # -- finding and ending the job's processes ------------------------------------------------

    def pids(self) -> set[int]:
        """Every process in the group, its sub-groups included, in any of its hierarchies."""
        found: set[int] = set()
        for h, directory in self.dirs:
            try:
                found |= cgroups.procs(directory)
            except (OSError, ValueError) as exc:
                self._problem(f"{h.label}: cannot list processes: {_why(exc)}")
        return found

    def _freezer(self) -> tuple[Hierarchy, str] | None:
        """The hierarchy that can freeze the group: v2's ``cgroup.freeze``, else v1 ``freezer``."""
        for h, directory in self.dirs:
            if h.version == 2 and os.path.exists(os.path.join(directory, "cgroup.freeze")):
                return h, directory
        for h, directory in self.dirs:
            if "freezer" in h.controllers:
                return h, directory
        return None

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        """Freeze the group for the block, where possible: a frozen process cannot fork, so the
        list of processes read in the block is complete when the signals go out. Signals sent
        meanwhile are delivered on thawing. Never freezes a group holding this process."""
        freezer = self._freezer()
        if freezer is not None and os.getpid() in self.pids():
            freezer = None
        if freezer is not None:
            try:
                if not cgroups.freeze(*freezer, True, FREEZE_WAIT_S):
                    # Partly frozen still narrows the race; the SIGKILL rounds catch the rest.
                    self._problem(f"{freezer[0].label}: freezing took over {FREEZE_WAIT_S:g} s")
            except OSError as exc:
                self._problem(f"{freezer[0].label}: cannot freeze: {_why(exc)}")
        try:
            yield
        finally:
            if freezer is not None:  # thaw even after a failed freeze: the write may have half-worked
                try:
                    cgroups.freeze(*freezer, False, FREEZE_WAIT_S)
                except OSError as exc:
                    self._problem(f"{freezer[0].label}: cannot thaw: {_why(exc)}")

    def _signal_all(self, sig: int) -> set[int]:
        """Send ``sig`` (then SIGCONT, so a stopped process acts on it) to every process but this one;
        return those signalled."""
        signalled: set[int] = set()
        with self._frozen():
            for pid in self.pids() - {os.getpid()}:
                if self._send(pid, sig):
                    signalled.add(pid)
        return signalled

    def _send(self, pid: int, sig: int) -> bool:
        """Signal ``pid`` if it is still in the group; return whether it was signalled.

        Unfrozen, a listed process may exit and its pid go to someone else's new process before the
        signal. A pidfd pins the process: the membership check and the signal are about the same one.
        """
        fd: int | None = None
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError:
            pass  # no pidfd (kernel before 5.3, seccomp): the plain pid, as before cgroups
        try:
            paths = cgroups.process_cgroups(pid)
            if not any(cgroups.within(cgroups.directory_of(h, paths) or "", d) for h, d in self.dirs):
                return False
            for each in (sig,) if sig == signal.SIGKILL else (sig, signal.SIGCONT):
                if fd is None:
                    os.kill(pid, each)
                else:
                    signal.pidfd_send_signal(fd, each)
            return True
        except (OSError, ValueError):  # gone meanwhile, or not ours to signal
            return False
        finally:
            if fd is not None:
                os.close(fd)

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every process of the group to exit; return whether they did."""
        deadline = time.monotonic() + timeout
        while self.pids() - {os.getpid()}:
            if time.monotonic() >= deadline:
                return False
            time.sleep(cgroups.POLL_S * 4)
        return True

    def kill_all(self, grace: float) -> int:
        """End every process of the job: SIGTERM, ``grace`` seconds, then SIGKILL; return how many were hit.

        The group is frozen while the signals go out, so a process forking in a loop cannot put a
        child out of reach. SIGKILL is repeated (v2: ``cgroup.kill``, which the kernel applies to
        new forks too) until the group is empty or :data:`KILL_WAIT_S` passes. Never signals the
        calling process. Returns 0 at once for an empty or inactive group.
        """
        hit = self._signal_all(signal.SIGTERM)
        if not hit or self.wait_empty(grace):
            return len(hit)
        deadline = time.monotonic() + KILL_WAIT_S
        while True:
            hit |= self._kill_now()
            if self.wait_empty(min(0.5, max(0.0, deadline - time.monotonic()))):
                return len(hit)
            if time.monotonic() >= deadline:
                left = sorted(self.pids() - {os.getpid()})
                self._problem(f"processes {left} survived SIGKILL for {KILL_WAIT_S:g} s")
                return len(hit)

    def _kill_now(self) -> set[int]:
        """SIGKILL the group: first through v2 ``cgroup.kill`` (atomic, forks included) where it
        exists and this process is not inside, then each process still listed (any v1-only member)."""
        everyone = self.pids()
        if os.getpid() not in everyone:
            for h, directory in self.dirs:
                kill_file = os.path.join(directory, "cgroup.kill")
                if h.version == 2 and os.path.exists(kill_file):
                    try:
                        cgroups.write(kill_file, "1")
                    except OSError as exc:
                        self._problem(f"v2: cgroup.kill: {_why(exc)}")
        return (everyone - {os.getpid()}) | self._signal_all(signal.SIGKILL)

    def remove(self, timeout: float = 2.0) -> bool:
        """Remove the group (and sub-groups) from every hierarchy once empty; return whether all are gone.

        A group that still has processes stays (EBUSY, retried for ``timeout`` seconds, since a
        group can stay busy a moment after its last process exited).
        """
        gone = True
        for h, directory in self.dirs:
            try:
                cgroups.remove_tree(directory, timeout)
            except OSError as exc:
                gone = False
                self._problem(f"{h.label}: cannot remove {self.path}: {_why(exc)}")
        return gone

    def exists(self) -> bool:
        """Whether the group is still there in any of its hierarchies."""
        return any(os.path.isdir(directory) for _, directory in self.dirs)
