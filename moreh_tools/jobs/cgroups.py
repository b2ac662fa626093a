"""Low-level cgroup access for job containment: the mounted hierarchies, their files, GPU device rules.

:mod:`moreh_tools.jobs.containment` is the interface; this module holds what it is built from, so
that each piece can be read (and tested) on its own:

* which cgroup hierarchies are mounted under a root, from ``/proc/self/mountinfo`` (cgroup v2, at
  the root itself or at ``<root>/unified`` on a hybrid host, and the v1 controllers we use);
* where a process sits in each of them, from ``/proc/<pid>/cgroup``;
* reading a group's processes, moving a process, freezing;
* the v1 ``devices`` rules that keep a job to its own ``/dev/nvidiaN`` nodes.

Every function raises ``OSError`` on a failed file operation; the caller turns it into a described
fallback. Nothing here keeps state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

#: The v1 controllers a job group joins where they are mounted and writable: ``devices`` to keep the
#: job off other GPUs, ``freezer`` to stop fork races while killing, ``pids`` to track membership.
V1_CONTROLLERS = ("devices", "freezer", "pids")

#: The NVIDIA character major: ``/dev/nvidiaN`` is 195:N, ``/dev/nvidiactl`` 195:255 and
#: ``/dev/nvidia-modeset`` 195:254 (denied like any GPU the job was not given).
NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255

#: Polling step for bounded waits on the kernel (freezing, a group emptying, rmdir after exit).
POLL_S = 0.005


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy.

    ``controllers`` are the v1 controllers of :data:`V1_CONTROLLERS` the mount carries (a v1 mount
    may combine several); empty for v2, whose groups we use for membership, ``cgroup.freeze`` and
    ``cgroup.kill`` without enabling any controller. ``mount_root`` is the cgroup path shown at the
    top of the mount (``/`` unless a sub-tree was bind-mounted, as some containers do).
    """

    version: int
    controllers: frozenset[str]
    mountpoint: str
    mount_root: str = "/"

    @property
    def label(self) -> str:
        """``v2`` or ``v1 devices`` (for messages)."""
        return "v2" if self.version == 2 else "v1 " + ",".join(sorted(self.controllers))

    def directory(self, cgroup_path: str) -> str | None:
        """The directory of a cgroup path as ``/proc/<pid>/cgroup`` gives it; None when outside this mount."""
        root = self.mount_root.rstrip("/")
        if cgroup_path != root and not cgroup_path.startswith(root + "/"):
            return None
        return self.mountpoint.rstrip("/") + cgroup_path[len(root) :]


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounted_hierarchies(
    root: str, controllers: Iterable[str] = V1_CONTROLLERS, use_v2: bool = True, mountinfo: str = "/proc/self/mountinfo"
) -> list[Hierarchy]:
    """The cgroup hierarchies mounted at ``root`` or directly under it: v2 first, then v1 for ``controllers``.

    Only the mount table is read; whether they are writable is the caller's question.
    """
    wanted = set(controllers)
    root = os.path.normpath(root)
    v2: list[Hierarchy] = []
    v1: dict[frozenset[str], Hierarchy] = {}
    with open(mountinfo, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        mount_root, mountpoint = _unescape(fields[3]), os.path.normpath(_unescape(fields[4]))
        if mountpoint != root and os.path.dirname(mountpoint) != root:
            continue
        fstype, options = after[0], set(after[2].split(","))
        if fstype == "cgroup2" and use_v2:
            hierarchy = Hierarchy(2, frozenset(), mountpoint, mount_root)
            # On a pure v2 host the root itself is the mount; prefer it over any other v2 mount below.
            if mountpoint == root:
                v2.insert(0, hierarchy)
            else:
                v2.append(hierarchy)
        elif fstype == "cgroup":
            carried = frozenset(options & wanted)
            if carried and carried not in v1:  # the first mount of a hierarchy; bind mounts repeat it
                v1[carried] = Hierarchy(1, carried, mountpoint, mount_root)
    return v2[:1] + sorted(v1.values(), key=lambda h: sorted(h.controllers))


def process_cgroups(pid: int | str = "self") -> dict[str, str]:
    """Where a process sits: ``{"": v2 path, "devices": v1 path, ...}`` from ``/proc/<pid>/cgroup``."""
    paths: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            path = path.removesuffix(" (deleted)")
            if not controllers:
                paths[""] = path
            for controller in controllers.split(","):
                if controller:
                    paths[controller] = path
    return paths


def directory_of(hierarchy: Hierarchy, paths: dict[str, str]) -> str | None:
    """The directory of the group a process (given as :func:`process_cgroups`) sits in within ``hierarchy``."""
    key = "" if hierarchy.version == 2 else min(hierarchy.controllers)
    path = paths.get(key)
    return None if path is None else hierarchy.directory(path)


def write(path: str, text: str) -> None:
    """Write one value to a cgroup file in one ``write`` (the kernel parses each write on its own)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read(path: str) -> str:
    """A cgroup file's content."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def move(directory: str, pid: int = 0) -> None:
    """Move a process (all its threads; 0 is the caller) into the group at ``directory``."""
    write(os.path.join(directory, "cgroup.procs"), str(pid))


def procs(directory: str) -> set[int]:
    """Every process in the group at ``directory`` and its sub-groups; empty when the group is gone.

    Processes that have exited (zombies waiting for their parent) are no longer listed: the kernel
    takes them out of the group when they exit. A process outside this process's PID namespace is
    listed as 0, which is dropped: ``kill(0)`` would signal our own process group.
    """
    found: set[int] = set()
    for dirpath, _, _ in os.walk(directory):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found.update(int(word) for word in read(os.path.join(dirpath, "cgroup.procs")).split())
    found.discard(0)
    return found


def within(directory: str, group: str) -> bool:
    """Whether the group at ``directory`` is ``group`` or one of its sub-groups."""
    return directory == group or directory.startswith(group.rstrip("/") + "/")


def remove_tree(directory: str, timeout: float) -> None:
    """``rmdir`` a group and its sub-groups, deepest first.

    EBUSY is retried until ``timeout`` seconds pass: a group can stay busy for a moment after its last
    process exited. Raises the last OSError when the group could not be removed; a missing group is no error.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            for dirpath, _, _ in sorted(os.walk(directory), key=lambda entry: -entry[0].count("/")):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(dirpath)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
        time.sleep(POLL_S)


# -- freezing ----------------------------------------------------------------------------------


def freeze(hierarchy: Hierarchy, directory: str, frozen: bool, timeout: float) -> bool:
    """Freeze (or thaw) the group; return whether the kernel reports it done within ``timeout`` seconds.

    v2 uses ``cgroup.freeze`` and the ``frozen`` key of ``cgroup.events``; v1 writes ``freezer.state``
    and reads it back until ``FREEZING`` turns ``FROZEN`` (a task in uninterruptible sleep can delay that).
    """
    if hierarchy.version == 2:
        write(os.path.join(directory, "cgroup.freeze"), "1" if frozen else "0")
        want = "frozen 1" if frozen else "frozen 0"

        def done() -> bool:
            return want in read(os.path.join(directory, "cgroup.events")).splitlines()

    else:
        state = os.path.join(directory, "freezer.state")
        write(state, "FROZEN" if frozen else "THAWED")
        want = "FROZEN" if frozen else "THAWED"

        def done() -> bool:
            return read(state).strip() == want

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


# -- v1 devices --------------------------------------------------------------------------------


def char_major(name: str, proc_devices: str = "/proc/devices") -> int | None:
    """The character major registered under ``name`` (e.g. ``nvidia-uvm``, whose major is dynamic), or None."""
    try:
        text = read(proc_devices)
    except OSError:
        return None
    section = text.split("Block devices:")[0]
    for line in section.splitlines():
        words = line.split()
        if len(words) == 2 and words[1] == name and words[0].isdigit():
            return int(words[0])
    return None


def v1_restrict_devices(directory: str, minors: Iterable[int], uvm_major: int | None) -> None:
    """Keep the group at ``directory`` (v1 ``devices``) to the GPUs ``minors`` among the NVIDIA major.

    Like Slurm's ConstrainDevices: every ``/dev/nvidiaN`` (195:N) other than the job's is denied,
    ``nvidiactl`` (195:255) and ``nvidia-uvm`` stay allowed, and no other device is touched.

    The v1 controller keeps either an allow-all list with denied exceptions (the default) or a
    deny-all list with allowed exceptions (a container's whitelist, inherited). Exceptions cannot
    say "195:* but N", so in allow-all mode each other minor 0..254 gets its own deny (the driver
    numbers GPUs below 254); in whitelist mode the 195 entries are removed and the job's re-added.
    Writing ``allow`` in allow-all mode only removes a matching deny, which makes re-applying to an
    existing group (create is idempotent) correct. Raises OSError, or ValueError when the resulting
    whitelist still grants another GPU.
    """
    allowed = {m for m in minors if 0 <= m < NVIDIACTL_MINOR} | {NVIDIACTL_MINOR}
    allow_all = read(os.path.join(directory, "devices.list")).split("\n", 1)[0].strip() == "a *:* rwm"
    deny_path, allow_path = os.path.join(directory, "devices.deny"), os.path.join(directory, "devices.allow")
    if allow_all:
        for minor in sorted(allowed):
            write(allow_path, f"c {NVIDIA_MAJOR}:{minor} rwm")
        for minor in range(NVIDIACTL_MINOR):
            if minor not in allowed:
                write(deny_path, f"c {NVIDIA_MAJOR}:{minor} rwm")
        return
    # Whitelist: drop the entries naming major 195, then allow the job's nodes. An entry for every
    # major ("c *:*") is left: removing it would take every other device from the job too. It is
    # reported below instead, and the caller says the GPUs are not restricted.
    for entry in read(os.path.join(directory, "devices.list")).splitlines():
        kind, _, rest = entry.partition(" ")
        device = rest.split(" ")[0]
        if kind == "c" and device.split(":")[0] == str(NVIDIA_MAJOR):
            write(deny_path, f"c {device} rwm")
    for minor in sorted(allowed):
        with contextlib.suppress(PermissionError):  # a node the container never had stays denied
            write(allow_path, f"c {NVIDIA_MAJOR}:{minor} rwm")
    if uvm_major is not None:
        with contextlib.suppress(PermissionError):
            write(allow_path, f"c {uvm_major}:* rwm")
    leaks = v1_whitelist_leaks(read(os.path.join(directory, "devices.list")), allowed)
    if leaks:
        raise ValueError(f"the inherited whitelist still allows {', '.join(leaks)}")


def v1_whitelist_leaks(devices_list: str, allowed: set[int]) -> list[str]:
    """The whitelist entries of ``devices.list`` that still grant a 195 minor outside ``allowed``."""
    leaks = []
    for entry in devices_list.splitlines():
        kind, _, rest = entry.partition(" ")
        major, _, minor = rest.split(" ")[0].partition(":")
        if kind not in ("c", "a") or major not in (str(NVIDIA_MAJOR), "*"):
            continue
        if minor == "*" or (minor.isdigit() and int(minor) not in allowed):
            leaks.append(entry.strip())
    return leaks


def nvidia_minors(indexes: Iterable[int], proc_dir: str = "/proc/driver/nvidia/gpus") -> list[int]:
    """The ``/dev/nvidiaN`` minors of GPUs given by NVML index (PCI bus order).

    The driver lists its GPUs under ``/proc/driver/nvidia/gpus/<PCI address>/information`` with a
    ``Device Minor:`` line; sorted by PCI address they are in NVML index order. Where the driver's
    files are absent (no driver: no node to protect) or an index is unknown, the index stands for
    the minor, which is what the driver assigns on almost every host. NVML's
    ``nvmlDeviceGetMinorNumber`` gives the same answer where NVML is loaded.
    """
    wanted = list(indexes)
    try:
        addresses = sorted(os.listdir(proc_dir))
    except OSError:
        return wanted
    minors: list[int] = []
    for index in wanted:
        minor = index
        if 0 <= index < len(addresses):
            try:
                for line in read(os.path.join(proc_dir, addresses[index], "information")).splitlines():
                    key, _, value = line.partition(":")
                    if key.strip() == "Device Minor" and value.strip().isdigit():
                        minor = int(value.strip())
            except OSError:
                pass
        minors.append(minor)
    return minors
