"""Using the state directory safely: who may write it, and opening the files in it without following links.

Every file we open ourselves in the state directory (the lock, the daemon's pid file and socket, the
``run/`` directory with its FIFOs and time stamps) is opened relative to a descriptor of the checked
directory, with ``O_NOFOLLOW``, and checked once open (a regular file, or a FIFO, with one link, owned by
someone allowed). The directory itself is refused, with one line saying why and what to do, when:

* it is a symbolic link, or not a directory;
* another user owns it (not you, not root);
* everyone may write it, or its group may write it without the setgid bit (the group-shared set-up
  needs ``chmod 2770``);
* it, or any directory above it, could be replaced by someone else: an ancestor owned by another user,
  or writable by a group or by everyone without the sticky bit;
* root would open it in process while non-root users can write it (its group), or ``sdamanager`` would
  own it while anyone but its owner can write it: both are told to use a directory only its owner can
  write, which users reach through the daemon's socket (the README's multi-user set-up).

DuckDB opens its own files (``state.duckdb`` and ``state.duckdb.wal``) by name, following links; they are
checked with ``lstat`` just before the connection is made (no link, a regular file, one link, owned by
you, the directory's owner or, in a group-shared directory, a member). The residual race: a process that
may write the directory could swap a link in between that check and DuckDB's ``open``. Root and
``sdamanager`` never use a directory that anyone else may write, so only the members of a group-shared
directory can race each other there, and they already hold admin rights over that state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from state.errors import StateUnavailableError

#: Who a check is for: a tool opening the state in process, or sdamanager owning it.
TOOL, DAEMON = "tool", "daemon"

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        import grp

        return f"'{grp.getgrgid(gid).gr_name}'"
    except (KeyError, ImportError):
        return f"gid {gid}"


def _overflow_uid() -> int:
    """The uid a user namespace shows for owners it does not map (container mount points)."""
    try:
        with open("/proc/sys/kernel/overflowuid", "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 65534


@dataclass(frozen=True)
class Home:
    """A checked state directory, open as a descriptor: files in it are opened relative to ``fd``."""

    path: Path
    fd: int
    uid: int
    gid: int
    mode: int

    @property
    def shared(self) -> bool:
        """Whether the directory is shared through its group (group-writable with the setgid bit)."""
        return bool(self.mode & stat.S_IWGRP and self.mode & stat.S_ISGID)

    @property
    def file_mode(self) -> int:
        """The mode of the files we make in it: the group's too when shared, else the owner's only."""
        return 0o660 if self.shared else 0o600

    @property
    def umask(self) -> int:
        """The umask that makes every file DuckDB creates here (the WAL) usable by whoever should use it."""
        return 0o007 if self.shared else 0o077

    def close(self) -> None:
        """Close the directory's descriptor."""
        with contextlib.suppress(OSError):
            os.close(self.fd)

    # -- files in the directory -------------------------------------------------------------

    def _allowed_owner(self, st: os.stat_result) -> bool:
        me = os.geteuid()
        if st.st_uid in (me, self.uid, 0):
            return True
        # A group-shared directory: any member's file, made in the group (the setgid bit gives it the group).
        return self.shared and st.st_gid == self.gid

    def check_entry(self, name: str, st: os.stat_result, kind: str = "file") -> None:
        """Refuse an entry that is not what we expect (``file``, ``fifo`` or ``dir``), has extra links, or
        belongs to someone who should not own it."""
        where = self.path / name
        if stat.S_ISLNK(st.st_mode):
            raise _link(where)
        expected = {"file": stat.S_ISREG, "fifo": stat.S_ISFIFO, "dir": stat.S_ISDIR, "socket": stat.S_ISSOCK}[kind]
        if not expected(st.st_mode):
            raise StateUnavailableError(
                f"{where} is not a {'regular file' if kind == 'file' else kind}; someone put something else "
                "there: remove it (or point MOREH_HOME elsewhere)."
            )
        if kind != "dir" and st.st_nlink > 1:
            raise StateUnavailableError(
                f"{where} has {st.st_nlink} hard links, so writing it could change another file; remove it "
                "(or point MOREH_HOME elsewhere)."
            )
        if not self._allowed_owner(st):
            raise StateUnavailableError(
                f"{where} belongs to {_user(st.st_uid)}, not to you or the owner of {self.path}; someone "
                "else put it there: remove it (or point MOREH_HOME elsewhere)."
            )

    def open(self, name: str, flags: int, mode: int | None = None, kind: str = "file") -> int:
        """Open ``name`` in the directory without following a link; the descriptor, checked (see check_entry).

        A file this call creates gets :attr:`file_mode` whatever the umask.
        """
        created = False
        flags |= _NOFOLLOW | _CLOEXEC
        wanted = self.file_mode if mode is None else mode
        try:
            if flags & os.O_CREAT:
                try:
                    fd = os.open(name, (flags | os.O_EXCL) & ~os.O_TRUNC, wanted, dir_fd=self.fd)
                    created = True
                except FileExistsError:
                    fd = os.open(name, flags & ~os.O_CREAT, dir_fd=self.fd)
            else:
                fd = os.open(name, flags, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _link(self.path / name) from None
            raise
        try:
            st = os.fstat(fd)
            self.check_entry(name, st, kind)
            if created:
                os.fchmod(fd, wanted)
            elif self.shared and st.st_uid == os.geteuid() and (st.st_mode & 0o060) != 0o060:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o060)  # made before the directory was shared
        except BaseException:
            os.close(fd)
            raise
        return fd

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry ``name`` as it is (a link not followed), or None when there is none."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def check_files(self, *names: str) -> None:
        """Check files that others open by name (DuckDB's): each absent, or a regular file we may trust."""
        for name in names:
            st = self.lstat(name)
            if st is not None:
                self.check_entry(name, st)
                if st.st_mode & stat.S_IWOTH and st.st_uid == os.geteuid():
                    fd = self.open(name, os.O_RDONLY | os.O_NONBLOCK)
                    try:
                        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~stat.S_IWOTH)
                    finally:
                        os.close(fd)

    def make_private(self, *names: str) -> None:
        """Take the group's and others' access away from our own files among ``names`` (the daemon's)."""
        me = os.geteuid()
        for name in names:
            st = self.lstat(name)
            if st is None or st.st_uid != me or not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o077:
                continue
            fd = self.open(name, os.O_RDONLY | os.O_NONBLOCK)
            try:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
            finally:
                os.close(fd)

    def subdirectory(self, name: str) -> Home:
        """The sub-directory ``name`` (made if missing: 2770 in a shared directory, else 0700), checked and open.

        It must be a real directory, owned as the files here are, and writable by the directory's group
        only when the directory is shared (``run/``).
        """
        wanted = 0o2770 if self.shared else 0o700
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, wanted, dir_fd=self.fd)
        try:
            fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                st = self.lstat(name)
                if st is not None and stat.S_ISLNK(st.st_mode):
                    raise _link(self.path / name) from None
                raise StateUnavailableError(
                    f"{self.path / name} is not a directory; remove it (or point MOREH_HOME elsewhere)."
                ) from None
            raise
        try:
            st = os.fstat(fd)
            self.check_entry(name, st, "dir")
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid == os.geteuid() and mode != wanted:
                os.fchmod(fd, wanted)  # made by an older version, or before the directory was shared
                mode = wanted
            where = self.path / name
            if mode & stat.S_IWOTH:
                raise StateUnavailableError(f"{where} is world-writable; remove it (it is made again as needed).")
            if mode & stat.S_IWGRP and not (self.shared and st.st_gid == self.gid):
                raise StateUnavailableError(
                    f"{where} is writable by group {_group(st.st_gid)}, which does not share {self.path}; "
                    "remove it (it is made again as needed)."
                )
            if self.shared and (mode & 0o070) != 0o070:
                raise StateUnavailableError(
                    f"{where} was made by {_user(st.st_uid)} for that user alone (mode {mode:o}), so other "
                    f"members of the group cannot use it; they should run 'chmod 2770 {where}'."
                )
            return Home(self.path / name, fd, st.st_uid, st.st_gid, mode)
        except BaseException:
            os.close(fd)
            raise


def _link(where: Path) -> StateUnavailableError:
    return StateUnavailableError(
        f"{where} is a symbolic link; state files are never opened through links (someone may have planted "
        "it): remove it, or point MOREH_HOME elsewhere."
    )


def _ancestors(home: Path) -> list[Path]:
    """Every directory above ``home``, as written and as resolved (either path can be swapped)."""
    seen: list[Path] = []
    absolute = Path(os.path.abspath(home))
    for path in (absolute, Path(os.path.realpath(absolute))):
        for parent in path.parents:
            if parent not in seen:
                seen.append(parent)
    return seen


def _check_ancestors(home: Path) -> None:
    me, overflow = os.geteuid(), _overflow_uid()
    for parent in _ancestors(home):
        try:
            st = os.stat(parent, follow_symlinks=False)
        except OSError:
            continue  # not there (yet), or not ours to look at: the directory's own checks decide
        if stat.S_ISLNK(st.st_mode):
            continue  # the directory holding the link is checked as well, and so is where it leads
        if st.st_uid not in (me, 0, overflow):
            raise StateUnavailableError(
                f"The state directory {home} sits in {parent}, which belongs to {_user(st.st_uid)}, who could "
                "replace it; use a directory whose parents belong to you or root (or point MOREH_HOME elsewhere)."
            )
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if st.st_mode & stat.S_IWOTH and not sticky:
            raise StateUnavailableError(
                f"The state directory {home} sits in {parent}, which everyone may write (without the sticky "
                f"bit), so anyone could replace it; run 'chmod o-w {parent}' or 'chmod +t {parent}', or point "
                "MOREH_HOME elsewhere."
            )
        if st.st_mode & stat.S_IWGRP and not sticky and st.st_gid != 0:
            raise StateUnavailableError(
                f"The state directory {home} sits in {parent}, which group {_group(st.st_gid)} may write, so "
                f"its members could replace it; run 'chmod g-w {parent}' or 'chmod +t {parent}', or point "
                "MOREH_HOME elsewhere."
            )


def _check_directory(home: Path, st: os.stat_result, purpose: str) -> None:
    me = os.geteuid()
    mode = st.st_mode
    if st.st_uid not in (me, 0):
        if purpose == DAEMON:
            why = "sdamanager owns only a state directory that belongs to its own user (or root)"
        else:
            why = (
                "its state is reached through that user's sdamanager (is it running?); direct file access is "
                "for the directory's owner"
            )
        raise StateUnavailableError(
            f"The state directory {home} belongs to {_user(st.st_uid)}, not to you: {why}. Ask its "
            "administrator, or set MOREH_HOME to a directory of your own."
        )
    if purpose == TOOL and st.st_uid != me and not os.access(home, os.W_OK):
        raise StateUnavailableError(
            f"The state in {home} belongs to {_user(st.st_uid)} and is served to other users by its sdamanager "
            "only, which is not running (no socket answers); ask its administrator to start it, or set "
            "MOREH_HOME to a directory of your own."
        )
    if mode & stat.S_IWOTH:
        raise StateUnavailableError(
            f"The state directory {home} is world-writable, so anyone could replace the state; "
            f"run 'chmod o-w {home}' (share it through a group, or better sdamanager, see the README)."
        )
    group_writes = bool(mode & stat.S_IWGRP)
    if group_writes and not mode & stat.S_ISGID:
        raise StateUnavailableError(
            f"The state directory {home} is writable by group {_group(st.st_gid)} without the setgid bit, so "
            f"files made there would not be shared; run 'chmod 2770 {home}' to share it with the group, or "
            f"'chmod g-w {home}'."
        )
    if group_writes and purpose == DAEMON:
        raise StateUnavailableError(
            f"sdamanager does not own a state directory that others can write ({home} is writable by group "
            f"{_group(st.st_gid)}): run 'chmod 0711 {home}' (users then reach the state only through the "
            "daemon's socket, see the README's multi-user set-up)."
        )
    if group_writes and me == 0 and st.st_gid != 0:
        raise StateUnavailableError(
            f"root does not open a state directory that non-root users can write ({home} is writable by group "
            f"{_group(st.st_gid)}): run sdamanager there as its owner and use it through the daemon, or use a "
            "directory only root can write (see the README's multi-user set-up)."
        )


def open_home(home: Path, *, purpose: str = TOOL, create: bool = True) -> Home:
    """Check the state directory ``home`` (made with mode 0700 when missing and ``create``) and open it.

    Raises StateUnavailableError with one line saying what is wrong and what to do.
    """
    _check_ancestors(home)
    if create:
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            pass  # a link or a file: said below
        except OSError as exc:
            raise StateUnavailableError(
                f"Cannot create the state directory {home}: {exc.strerror}. Set MOREH_HOME to a directory "
                "you may write to."
            ) from None
    try:
        st = os.stat(home, follow_symlinks=False)
    except FileNotFoundError:
        raise StateUnavailableError(f"The state directory {home} does not exist.") from None
    except OSError as exc:
        raise StateUnavailableError(f"Cannot use the state directory {home}: {exc.strerror}.") from None
    if stat.S_ISLNK(st.st_mode):
        raise StateUnavailableError(
            f"MOREH_HOME {home} is a symbolic link (to {os.path.realpath(home)}); the state directory is never "
            "used through a link: point MOREH_HOME at the directory itself."
        )
    if not stat.S_ISDIR(st.st_mode):
        raise StateUnavailableError(f"MOREH_HOME {home} is not a directory. Set MOREH_HOME to a directory.")
    _check_directory(home, st, purpose)
    try:
        fd = os.open(home, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        raise StateUnavailableError(f"Cannot use the state directory {home}: {exc.strerror}.") from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):  # swapped between the check and the open
        os.close(fd)
        raise StateUnavailableError(f"The state directory {home} changed while it was being checked; try again.")
    return Home(home, fd, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


@contextlib.contextmanager
def checked_home(home: Path, *, purpose: str = TOOL, create: bool = True) -> Iterator[Home]:
    """:func:`open_home` for the block; the directory's descriptor is closed after it."""
    opened = open_home(home, purpose=purpose, create=create)
    try:
        yield opened
    finally:
        opened.close()


def check_socket(home: Path, name: str) -> bool:
    """Whether ``home/name`` is a socket that the state directory's owner or root made (a daemon's).

    In a directory others may write, anyone could plant a socket to collect the tokens tools send; such a
    socket (or a link) is not used. No checks of the directory itself: the tool's own open does them.
    """
    try:
        st_home = os.stat(home, follow_symlinks=False)
        st = os.stat(home / name, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode) and st.st_uid in (st_home.st_uid, 0) and stat.S_ISDIR(st_home.st_mode)
