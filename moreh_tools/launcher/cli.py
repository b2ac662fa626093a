"""Entry point of ``moreh-run``: queue a job, wait for its devices, run the command on exactly them.

The steps, and who cleans up when a step is cut short:

1. Check the arguments and find the command and the token (nothing in the state yet).
2. Fork the guardian (:mod:`moreh_tools.launcher.guardian`) before the state is opened.
3. One transaction: queue the job and run a scheduling pass. (The first job on a host registers
   the host as a backend with its GPUs.)
4. If no devices were given, say why on stderr in the runtime's words and sleep on the job's FIFO
   (:mod:`moreh_tools.jobs.wakeup`); whoever frees devices wakes it. The wait times out after
   20-40 s as a safety net: the launcher then re-reads its job and, when no daemon runs, drives
   the scheduler itself (at most once per 10 s across all launchers).
5. Run the command in its own process group with ``CUDA_VISIBLE_DEVICES`` set to the allocated
   GPUs, forwarding signals to it.
6. When it ends: devices CLEANING, stragglers of the job killed, the job into history, a
   scheduling pass for the next jobs; exit with the command's status.

If ``moreh-run`` dies anywhere after step 2 without recording the end, the guardian does steps 6
itself with the end reason ``lost``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from moreh_tools import __version__

if TYPE_CHECKING:
    from pathlib import Path

    from moreh_tools.launcher.guardian import Guardian
    from moreh_tools.launcher.signals import SignalRouter
    from state.records import Job
    from state.session import Session
    from state.store import StateStore

PROG = "moreh-run"
USAGE = "moreh-run [--token T] [--sda ID] [--priority P] [--] COMMAND..."
EXIT_FAILED, EXIT_USAGE = 1, 2
EXIT_CANNOT_EXECUTE = 126
_VALUE_OPTIONS = ("--token", "--sda", "--priority")
SDA_ID_MAX = 2**31 - 1  # ids are 32-bit in the state

RESOURCES_WARNING = (
    "[warning] Not enough resources are currently available for the Moreh SDA. All resources in the system are "
    "being used by other users. The program will resume automatically when resources become available..."
)
READY_INFO = "[info] Moreh SDA is ready to use."


class LaunchError(Exception):
    """Bad input or a refusal: one line for the user and an exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Request:
    """What the user asked for."""

    token: str | None
    sda: int | None
    priority: int | None
    command: tuple[str, ...]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise LaunchError(f"{message}; usage: {USAGE}", EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=USAGE,
        allow_abbrev=False,
        description=(
            "Run COMMAND on the GPUs of your SDA. The job waits in the SDA Manager's queue until the devices "
            "are free, then COMMAND runs with CUDA_VISIBLE_DEVICES set to exactly those GPUs and moreh-run exits "
            "with its exit status. Signals sent to moreh-run reach COMMAND."
        ),
        epilog=(
            "The token comes from --token, else MOREH_SDA_TOKEN, else the file MOREH_TOKEN_FILE (default "
            "/etc/moreh/token); the SDA from --sda, else MOREH_VISIBLE_DEVICE, else the token's current SDA. "
            "Example: moreh-run -- python train.py --epochs 3"
        ),
    )
    parser.add_argument("--token", metavar="T", help="the SDA token to run as")
    parser.add_argument("--sda", metavar="ID", type=int, help="the SDA (device id in moreh-smi) to run on")
    parser.add_argument(
        "--priority", metavar="P", type=int, help="the job's priority, -99..99 (default: the token's priority)"
    )
    parser.add_argument("--version", action="version", version=f"{PROG} (moreh-tools) {__version__}")
    return parser


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``moreh-run``'s own options from COMMAND: the command starts at ``--`` or the first non-option."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            return argv[:index], argv[index + 1 :]
        if not arg.startswith("-") or arg == "-":
            return argv[:index], argv[index:]
        index += 2 if arg in _VALUE_OPTIONS else 1
    return argv, []


def parse(argv: list[str]) -> Request:
    """Turn the arguments into a request; raise :class:`LaunchError` (usage) for bad ones."""
    options, command = split_argv(argv)
    ns = _parser().parse_args(options)
    from state.records import PRIORITY_MAX, PRIORITY_MIN

    if ns.priority is not None and not PRIORITY_MIN <= ns.priority <= PRIORITY_MAX:
        raise LaunchError(
            f"priority {ns.priority} is out of range: use an integer from {PRIORITY_MIN} to {PRIORITY_MAX}", EXIT_USAGE
        )
    if ns.sda is not None and not 0 <= ns.sda <= SDA_ID_MAX:
        raise LaunchError(f"SDA id {ns.sda} is not valid: use one of your SDA ids (see 'moreh-smi')", EXIT_USAGE)
    if not command or not command[0]:
        raise LaunchError(f"no command to run; usage: {USAGE}", EXIT_USAGE)
    return Request(ns.token, ns.sda, ns.priority, tuple(command))


def _sda_from_env() -> int | None:
    raw = os.environ.get("MOREH_VISIBLE_DEVICE", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > SDA_ID_MAX:  # "²".isdigit(), but int("²") fails
        raise LaunchError(
            f"MOREH_VISIBLE_DEVICE={raw!r} is not an SDA id; set it to one of your SDA ids (see 'moreh-smi') or unset it"
        )
    return int(raw)


def main(argv: list[str] | None = None) -> int:
    """Run ``moreh-run`` and return its exit status (the command's, when it ran)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        request = parse(args)
        path = shutil.which(request.command[0])
        if path is None:
            raise LaunchError(f"command not found: {request.command[0]}")
        from moreh_tools.identity import TokenNotGiven, find_token

        try:
            token = find_token(request.token)
        except TokenNotGiven as exc:
            raise LaunchError(
                f"{exc} Pass --token, set MOREH_SDA_TOKEN, or put it in the file named by MOREH_TOKEN_FILE "
                "(default /etc/moreh/token)."
            ) from None
        sda_id = request.sda if request.sda is not None else _sda_from_env()
        from moreh_tools.remote.client import address

        if address() is not None:  # MOREH_SDA_MANAGER_ADDRESS: the master's queue, this host's GPUs
            from moreh_tools.remote.launcher import RemoteLaunch

            return RemoteLaunch(request, path, token, sda_id).run()
        return Launch(request, path, token, sda_id).run()
    except LaunchError as exc:
        _say(f"{PROG}: {exc}")
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback; the guardian records the job's end if one was queued
        from state.errors import StateError

        if os.environ.get("MOREH_DEBUG"):
            raise
        if isinstance(exc, StateError):
            _say(f"{PROG}: {exc}")
        else:
            _say(f"{PROG}: internal error: {type(exc).__name__}: {exc} (MOREH_DEBUG=1 shows the traceback)")
        return EXIT_FAILED


def _say(line: str) -> None:
    from moreh_tools.messages import one_line

    print(one_line(line), file=sys.stderr, flush=True)


@dataclass
class _Queued:
    """The job as submitted, and what to tell the user if it has to wait."""

    job: Job
    allocated: bool
    env: tuple[tuple[str, str], ...]
    busy_pid: int | None = None
    busy_command: str = ""
    position: int | None = None
    reason: str = ""


class Launch:
    """One run of ``moreh-run`` once its arguments are valid."""

    def __init__(self, request: Request, path: str, token: str, sda_id: int | None) -> None:
        """Remember what to run; nothing happens until :meth:`run`."""
        from moreh_tools.identity import host_name
        from state.paths import state_home

        self.request = request
        self.path = path
        self.token = token
        self.sda_id = sda_id
        self.home: Path = state_home()
        self.host = host_name()
        self.what = f"{PROG} {shlex.join(request.command)}"[:200]

    def run(self) -> int:
        """Queue, wait, run and record; return the exit status."""
        from moreh_tools.launcher import guardian
        from moreh_tools.launcher.signals import Cancelled, SignalRouter

        signals = SignalRouter()
        self.guardian: Guardian = guardian.start(self.home, self.host)
        try:
            signals.check()
        except Cancelled as exc:
            self.guardian.done()
            return 128 + exc.signum
        from state.errors import StateError
        from state.store import StateStore

        self.store: StateStore = StateStore(self.home)
        try:
            self.guardian.tell("submitting")
            queued = self._submit()
        except StateError as exc:
            self.guardian.done()  # the transaction rolled back: nothing was queued
            raise LaunchError(str(exc)) from None
        except LaunchError:
            self.guardian.done()
            raise
        job = queued.job
        self.guardian.tell(f"job {job.id}")
        try:
            signals.check()
            if not queued.allocated:
                self._tell_waiting(queued)
                job = self._wait_for_devices(job, signals)
                _say(READY_INFO)
                signals.check()
        except Cancelled as exc:
            return self._cancel(job, exc.signum)
        except LaunchError:
            self.guardian.done()
            raise
        return self._run_command(job, queued.env, signals)

    # -- queueing -------------------------------------------------------------------------------

    def _submit(self) -> _Queued:
        """Queue the job and run a scheduling pass in one transaction (registering this host first if needed)."""
        for attempt in range(2):
            with self.store.transaction(self.what) as s:
                token_env, sda_id = self._check(s)
                if s.backends.local_id(self.host) is not None:
                    queued = self._queue(s, sda_id, token_env)
                    decision = s.jobs.run_scheduling_pass()
                    queued.allocated = any(a.job_id == queued.job.id for a in decision.allocations)
                    if queued.allocated:
                        queued.job = s.jobs.get(queued.job.id)
                    else:
                        self._explain(s, queued, decision.waiting.get(queued.job.id, ""))
                    break
            if attempt == 0:
                self._register_host()
        else:
            raise LaunchError(f"this host '{self.host}' could not be registered as a backend")
        from moreh_tools.jobs import wakeup

        for allocation in decision.allocations:
            if allocation.job_id != queued.job.id:
                wakeup.wake(self.home, allocation.job_id)
        return queued

    def _register_host(self) -> None:
        from moreh_tools import gpus
        from moreh_tools.gpus.base import GpuUnavailableError
        from moreh_tools.gpus.local import ensure_local_backend

        try:
            provider = gpus.get_provider()
        except GpuUnavailableError as exc:
            raise LaunchError(str(exc)) from None
        try:
            ensure_local_backend(self.store, provider)
        finally:
            provider.close()

    def _check(self, s: Session) -> tuple[tuple[tuple[str, str], ...], int]:
        """Check the token and choose its SDA; raise :class:`LaunchError` for what cannot run."""
        from state.errors import NotFoundError

        if not s.tokens.exists(self.token):
            raise LaunchError(
                f"moreh::InvalidToken. The token '{_short(self.token)}' is not known to the SDA Manager; check "
                "--token, MOREH_SDA_TOKEN or the token file (MOREH_TOKEN_FILE, default /etc/moreh/token)."
            )
        token = s.tokens.get(self.token)
        sda_id = self.sda_id if self.sda_id is not None else token.current_sda
        if sda_id is None:
            raise LaunchError(
                "This token has no SDA; add one with 'moreh-smi device --add', ask an admin to create one, "
                "or use --sda ID."
            )
        try:
            sda = s.sdas.get(sda_id)
        except NotFoundError:
            raise LaunchError(f"SDA {sda_id} does not exist; see your SDAs with 'moreh-smi'.") from None
        if sda.token != self.token:
            raise LaunchError(
                f"SDA {sda_id} belongs to another token; use one of your SDAs (see 'moreh-smi') with --sda or "
                "MOREH_VISIBLE_DEVICE."
            )
        return token.env, sda_id

    def _queue(self, s: Session, sda_id: int, token_env: tuple[tuple[str, str], ...]) -> _Queued:
        """Queue the job (the state refuses what could never run, e.g. a model the token may not use)."""
        job = s.jobs.submit(
            self.token,
            sda_id,
            host=self.host,
            launcher_pid=os.getpid(),
            launcher_create_time=_my_create_time(),
            process_name=shlex.join(self.request.command)[:200],
            priority=self.request.priority,
            client_version=__version__,
        )
        return _Queued(job, False, token_env)

    def _explain(self, s: Session, queued: _Queued, reason: str) -> None:
        """Find out why the job waits: its SDA busy with another process, or not enough free devices."""
        job = queued.job
        for other in s.jobs.of_token(self.token):
            if other.sda_id == job.sda_id and other.id != job.id and other.status != "QUEUED":
                queued.busy_pid = other.pid or other.launcher_pid
                queued.busy_command = other.process_name
                break
        queued.position = s.jobs.queue_position(job.id)
        queued.reason = reason

    def _tell_waiting(self, queued: _Queued) -> None:
        job = queued.job
        if queued.busy_pid is not None:
            _say("[warning] Moreh SDA is already in use by another process:")
            _say(f"[warning]   (pid: {queued.busy_pid}) {queued.busy_command}")
            _say(
                "[warning] Two or more processes cannot use the same SDA at the same time. The program will "
                f"resume automatically after the process {queued.busy_pid} terminates..."
            )
        else:
            _say(RESOURCES_WARNING)
        where = f" at position {queued.position}" if queued.position is not None else ""
        why = f": {queued.reason}" if queued.reason else ""
        _say(f"[info] Job {job.id} waits in the queue{where}{why}.")

    def _wait_for_devices(self, job: Job, signals: SignalRouter) -> Job:
        """Sleep on the job's FIFO until it has devices; raise LaunchError if it left the queue meanwhile."""
        import random

        from moreh_tools.jobs import control, wakeup

        wake = wakeup.WakeUp(self.home, job.id)
        signals.interruptible = True
        try:
            signals.check()  # a signal that came before the wait became interruptible
            # Read once after the FIFO exists: an allocation made before it existed woke nobody.
            while True:
                with self.store.reading() as s:
                    current = s.jobs.find(job.id)
                    ended = s.jobs.history_entry(job.id) if current is None else None
                if current is None:
                    how = f"it was {ended.end_reason}" if ended is not None else "it was removed"
                    raise LaunchError(f"job {job.id} left the queue before it got devices: {how}.")
                if current.status != "QUEUED":
                    return current
                if not wake.wait(random.uniform(20.0, 40.0)) and not control.daemon_running(self.home):
                    control.reconcile_if_due(self.store, self.host)
        finally:
            signals.interruptible = False
            wake.close()

    def _cancel(self, job: Job, signum: int) -> int:
        """Take the job out of the queue (it never ran) after a signal; exit 128 + the signal."""
        from moreh_tools.jobs import control

        with self.store.transaction(f"{self.what} (interrupted)") as s:
            if s.jobs.find(job.id) is not None:
                s.jobs.request_release(job.id)
                s.jobs.finish(job.id, None, "released")
            decision = s.jobs.run_scheduling_pass()
        control.wake_allocated(self.home, decision)
        self.guardian.done()
        _say(f"{PROG}: interrupted; job {job.id} left the queue without running.")
        return 128 + signum

    # -- running --------------------------------------------------------------------------------

    def _command_env(self, job: Job, token_env: tuple[tuple[str, str], ...]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(token_env)
        env.update(
            {
                "CUDA_VISIBLE_DEVICES": ",".join(str(d.index) for d in job.devices),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "MOREH_SDA_TOKEN": self.token,
                "MOREH_JOB_ID": str(job.id),
                "MOREH_HOME": str(self.home),
            }
        )
        return env

    def _run_command(self, job: Job, token_env: tuple[tuple[str, str], ...], signals: SignalRouter) -> int:
        from moreh_tools.jobs import processes
        from moreh_tools.launcher.child import Child, exit_status

        foreign = [d for d in job.devices if d.backend_host != self.host]
        if foreign:
            self._record_end(job, None, "failed")
            raise LaunchError(
                f"job {job.id} was given devices of backend '{foreign[0].backend_host}', not of this host "
                f"'{self.host}'; run moreh-run on that backend."
            )
        try:
            child = Child(self.path, self.request.command, self._command_env(job, token_env))
        except OSError as exc:
            self._record_end(job, EXIT_CANNOT_EXECUTE, "failed")
            raise LaunchError(f"cannot run {self.request.command[0]}: {exc.strerror}", EXIT_CANNOT_EXECUTE) from None
        signals.forward_to(child)
        started = processes.create_time(child.pid)
        self.guardian.tell(f"child {child.pid} {started if started is not None else 0.0!r}")
        withdrawn = self._mark_running(job, child.pid, started if started is not None else 0.0)
        if withdrawn:  # released (or ended) between allocation and start: it must not keep the devices
            from moreh_tools.jobs import control

            # SIGTERM, then SIGKILL after the grace: a command that ignores SIGTERM would hold them forever.
            processes.end_job_processes(job.id, child.pid, started, str(self.home), control.release_grace())
        status = exit_status(child.wait())
        signals.forward_to(None)
        self._record_end(job, status, "finished" if status == 0 else "failed")
        return status

    def _mark_running(self, job: Job, pid: int, started: float) -> bool:
        """Mark the job RUNNING; True when it was withdrawn (released or ended) since it got its devices."""
        with self.store.transaction(self.what) as s:
            current = s.jobs.find(job.id)
            withdrawn = current is None or current.release_requested
            if not withdrawn:
                s.jobs.mark_running(job.id, pid, started)
        return withdrawn

    def _record_end(self, job: Job, exit_code: int | None, reason: str) -> None:
        """Devices CLEANING, the job's stragglers killed, the job into history, the next jobs started."""
        from moreh_tools.jobs import control, processes

        stragglers = processes.job_processes(job.id, str(self.home))
        if stragglers:
            # The devices stay CLEANING, visibly, for as long as the grace period may take.
            with self.store.transaction(self.what) as s:
                s.jobs.mark_cleaning(job.id)
            processes.end_job_processes(job.id, None, None, str(self.home), control.release_grace())
        # With nothing left to clean, CLEANING and the end are one transaction: one lock turn less per job.
        with self.store.transaction(self.what) as s:
            s.jobs.mark_cleaning(job.id)
            s.jobs.finish(job.id, exit_code, reason)
            decision = s.jobs.run_scheduling_pass()
        control.wake_allocated(self.home, decision)
        self.guardian.done()


def _my_create_time() -> float:
    from moreh_tools.jobs import processes

    started = processes.create_time(os.getpid())
    return started if started is not None else 0.0


def _short(token: str) -> str:
    return token if len(token) <= 12 else token[:8] + "..."
