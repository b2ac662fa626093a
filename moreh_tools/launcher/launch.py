"""One run of ``moreh-run``: queue the job, wait for its devices, run the command on exactly them, record the end.

The steps, and who cleans up when a step is cut short:

1. Fork the guardian (:mod:`moreh_tools.launcher.guardian`) before any connection or state file is opened.
2. Submit through the port: the job is queued and a scheduling pass runs, in one transaction wherever
   the state is (this process on the file, the local daemon, or a master).
3. If no devices were given, say why on stderr in the runtime's words and wait: a long poll through
   the daemon or the master, or a sleep on the job's FIFO without a daemon (whoever frees devices
   wakes it; every 20-40 s the launcher looks again and drives the scheduler itself, at most once per
   10 s across all launchers).
4. Run the command in its own process group with ``CUDA_VISIBLE_DEVICES`` set to the allocated GPUs,
   forwarding signals to it. Meanwhile a watcher (:mod:`.watcher`) hears when someone asks the job to
   stop and stops the command itself, saying who asked; it also stops the command at the job's time
   limit (``timeout``) and when a scheduling pass preempts the job (``preempted``).
5. When it ends: stragglers of the job killed (devices CLEANING meanwhile), the job into history, a
   scheduling pass for the next jobs; exit with the command's status (128+15 after a timeout or a
   preemption). With ``--requeue``, a preempted job is submitted again with its original request time
   (the service keeps its place in the queue) and the launcher goes back to step 3.

If ``moreh-run`` dies anywhere after step 1 without recording the end, the guardian does step 5 itself
with the end reason ``lost``.
"""

from __future__ import annotations

import os
import random
import shlex
from typing import TYPE_CHECKING

from moreh_tools import __version__
from moreh_tools.launcher.request import EXIT_CANNOT_EXECUTE, PROG, LaunchError, Request
from moreh_tools.runtime import say

if TYPE_CHECKING:
    from pathlib import Path

    from moreh_tools.jobs.containment import JobCgroup
    from moreh_tools.launcher.child import Child
    from moreh_tools.launcher.guardian import Guardian
    from moreh_tools.launcher.signals import SignalRouter
    from moreh_tools.port import Port
    from moreh_tools.services.records import Submitted
    from state.records import Job

RESOURCES_WARNING = (
    "[warning] Not enough resources are currently available for the Moreh SDA. All resources in the system are "
    "being used by other users. The program will resume automatically when resources become available..."
)
READY_INFO = "[info] Moreh SDA is ready to use."
#: A waiting launcher looks at its job again after this long even if nobody woke it (jittered, so
#: a hundred launchers that started together do not all look at once).
WAIT_S = (20.0, 30.0)


class Launch:
    """One run of ``moreh-run`` once its arguments are valid."""

    def __init__(self, request: Request, path: str, token: str, sda_id: int | None) -> None:
        """Remember what to run; nothing happens until :meth:`run`."""
        from moreh_tools import identity
        from state.paths import state_home

        self.request = request
        self.path = path
        self.token = token
        self.sda_id = sda_id
        self.home: Path = state_home()
        self.host = identity.host_name()
        self.machine_id = identity.machine_id()
        self.process = shlex.join(request.command)[:200]
        self.group: JobCgroup | None = None  # the job's cgroup, once it has devices (see _contain)
        self.containment = ""  # how the job is contained, when entering its cgroup fell short

    def run(self) -> int:
        """Queue, wait, run and record; return the exit status."""
        from moreh_tools.launcher import guardian
        from moreh_tools.launcher.signals import Cancelled, SignalRouter
        from moreh_tools.port import open_port

        signals = SignalRouter()
        self.guardian: Guardian = guardian.start(self.home, self.token, self.machine_id, self.host)
        try:
            signals.check()
        except Cancelled as exc:
            self.guardian.done()
            return 128 + exc.signum
        self.port: Port = open_port(self.token, tool=PROG)
        from moreh_tools.jobs import processes
        from state.errors import StateError

        self.started = processes.create_time(os.getpid()) or 0.0
        try:
            self.guardian.tell(f"submitting {self.started!r}")
            submitted = self._submit()
        except (StateError, LaunchError):
            self.guardian.done()  # the submission was refused or rolled back: nothing was queued
            raise
        while True:
            job = submitted.job
            self.guardian.tell(f"job {job.id}")
            try:
                signals.check()
                if not submitted.allocated:
                    self._tell_waiting(submitted)
                    job = self._wait_for_devices(job, signals)
                    say(READY_INFO)
                    signals.check()
                job = self._check_devices(job, signals)
            except Cancelled as exc:
                return self._cancel(job, exc.signum)
            except (StateError, LaunchError):
                self.guardian.done()
                raise
            status, ended = self._run_command(job, submitted.env, signals)
            if ended != "preempted" or not self.request.requeue:
                return status
            # --requeue: the same command again, as a new job that keeps the preempted one's place in the queue.
            self.guardian.tell("requeue")
            try:
                submitted = self._submit(requeue_of=job.id)
            except (StateError, LaunchError):
                self.guardian.done()
                raise
            say(f"{PROG}: job {job.id} goes back to the queue as job {submitted.job.id} (--requeue).")

    # -- queueing -------------------------------------------------------------------------------

    def _submit(self, requeue_of: int | None = None) -> Submitted:
        """Queue the job and run a scheduling pass; the first job of an unregistered host sends its GPUs (and every
        job of a host with simulated GPUs, whose count ``MOREH_FAKE_GPUS`` may have raised since).

        ``requeue_of``: the preempted job this one replaces (``--requeue``).
        """
        from moreh_tools.jobs import processes
        from moreh_tools.port import ops
        from state.errors import NotFoundError

        base = {
            "sda": self.sda_id,
            "priority": self.request.priority,
            "process": self.process,
            "launcher_pid": os.getpid(),
            "launcher_create_time": self.started,
            "guardian_pid": self.guardian.pid,
            "guardian_create_time": processes.create_time(self.guardian.pid),
            "host": self.host,
            "machine_id": self.machine_id,
            "client_version": __version__,
        }
        # Only what was asked for is sent: an older SDA Manager refuses arguments it does not know.
        if self.request.time_limit is not None:
            base["time_limit"] = self.request.time_limit
        if requeue_of is not None:
            base["requeue_of"] = requeue_of
        from moreh_tools import gpus, identity
        from moreh_tools.gpus.base import GpuUnavailableError

        try:
            simulated = gpus.simulated_requested()
        except GpuUnavailableError as exc:
            raise LaunchError(str(exc)) from None
        if simulated:  # cheap to list, and the count may have changed since the host registered: always sent
            return self.port.call(ops.JOB_SUBMIT, ip=identity.host_ip(self.host), gpus=this_hosts_gpus(), **base)
        try:
            return self.port.call(ops.JOB_SUBMIT, ip="", **base)
        except NotFoundError as exc:
            if "not a registered backend" not in str(exc):
                raise
        return self.port.call(ops.JOB_SUBMIT, ip=identity.host_ip(self.host), gpus=this_hosts_gpus(), **base)

    def _tell_waiting(self, submitted: Submitted) -> None:
        job = submitted.job
        if submitted.busy_pid is not None:
            say("[warning] Moreh SDA is already in use by another process:")
            say(f"[warning]   (pid: {submitted.busy_pid}) {submitted.busy_command}")
            say(
                "[warning] Two or more processes cannot use the same SDA at the same time. The program will "
                f"resume automatically after the process {submitted.busy_pid} terminates..."
            )
        else:
            say(RESOURCES_WARNING)
        where = f" at position {submitted.position}" if submitted.position is not None else ""
        code = f" ({submitted.reason_code})" if submitted.reason_code else ""
        why = f": {submitted.reason}" if submitted.reason else ""
        when = ""
        if submitted.expected_start is not None:
            when = f" Estimated start: {submitted.expected_start.strftime('%Y-%m-%d %H:%M:%S')}."
        say(f"[info] Job {job.id} waits in the queue{where}{code}{why}.{when}")

    def _wait_for_devices(self, job: Job, signals: SignalRouter) -> Job:
        """Wait until the job has devices; LaunchError if it left the queue meanwhile."""
        from moreh_tools.port import ops

        signals.interruptible = True
        try:
            signals.check()  # a signal that came before the wait became interruptible
            while True:
                update = self.port.call(ops.JOB_WAIT, job_id=job.id, timeout=random.uniform(*WAIT_S), seen="queued")
                if update.state == "allocated" and update.job is not None:
                    return update.job
                if update.state == "ended":
                    how = "it was removed" if update.reason == "removed" else f"it was {update.reason}"
                    raise LaunchError(f"job {job.id} left the queue before it got devices: {update.detail or how}.")
        finally:
            signals.interruptible = False

    def _check_devices(self, job: Job, signals: SignalRouter) -> Job:
        """Before the command starts, have the job's devices checked once more (the GPU guardian).

        A process outside the job on its GPUs (or a GPU that failed meanwhile) sends the job back to the queue with
        the reason, instead of starting it on a busy GPU; it then waits for devices again.
        """
        from moreh_tools.port import ops

        while True:
            check = self.port.call(ops.JOB_CHECK_DEVICES, job_id=job.id, processes=self._processes_on(job))
            if check.ok:
                return job
            say(f"[warning] Job {job.id} went back to the queue instead of starting: {check.reason}.")
            job = self._wait_for_devices(job, signals)
            say(READY_INFO)
            signals.check()

    def _processes_on(self, job: Job) -> list[object] | None:
        """The processes on the job's GPUs of this host now; None when the local daemon watches them every tick
        (its flags are what the check reads: no GPU library loads on the way to the command) or they cannot be read.
        """
        from moreh_tools.port import master_address

        indexes = {d.index for d in job.devices if job.backend_id is None or d.backend_id == job.backend_id}
        if not indexes or (master_address() is None and self.port.daemon_running()):
            return None
        from moreh_tools import gpus
        from moreh_tools.gpus.base import GpuUnavailableError
        from moreh_tools.gpus.watch import processes_on

        try:
            provider = gpus.get_provider()
        except GpuUnavailableError:
            return None
        try:
            snapshots = provider.snapshot()
        finally:
            provider.close()
        if not snapshots:  # NVML fails: that says nothing about the processes
            return None
        return list(processes_on(snapshots, str(self.home), indexes=indexes))

    def _cancel(self, job: Job, signum: int) -> int:
        """Take the job out of the queue (it never ran) after a signal; exit 128 + the signal."""
        import signal

        from moreh_tools.port import ops

        self.port.close()  # the interrupted call may have left the connection half-read
        name = signal.Signals(signum).name
        self.port.call(
            ops.JOB_FINISH, job_id=job.id, exit_code=None, reason="cancelled", detail=f"interrupted by its user ({name})"
        )
        self.guardian.done()
        say(f"{PROG}: interrupted; job {job.id} left the queue without running.")
        return 128 + signum

    # -- running --------------------------------------------------------------------------------

    def _command_env(self, job: Job, token_env: tuple[tuple[str, str], ...]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(safe_token_env(token_env))
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

    def _run_command(
        self, job: Job, token_env: tuple[tuple[str, str], ...], signals: SignalRouter
    ) -> tuple[int, str]:
        """Run the command on the job's devices and record its end; (exit status, end reason)."""
        import signal
        import time

        from moreh_tools.jobs import processes
        from moreh_tools.launcher.child import exit_status
        from moreh_tools.launcher.watcher import Watcher
        from moreh_tools.port import ops

        if job.backend_id is not None and len({d.backend_id for d in job.devices} - {job.backend_id}) > 0:
            self._record_end(job, None, "failed")
            other = next(d.backend_host for d in job.devices if d.backend_id != job.backend_id)
            raise LaunchError(
                f"job {job.id} was given devices of backend '{other}', not of this host '{self.host}'; run "
                "moreh-run on that backend."
            )
        env = self._command_env(job, token_env)
        containment = self._contain(job)
        try:
            child = self._spawn(env)
        except OSError as exc:
            self._record_end(job, EXIT_CANNOT_EXECUTE, "failed")
            raise LaunchError(f"cannot run {self.request.command[0]}: {exc.strerror}", EXIT_CANNOT_EXECUTE) from None
        signals.forward_to(child)
        started = processes.create_time(child.pid)
        self.guardian.tell(f"child {child.pid} {started if started is not None else 0.0!r}")
        withdrawn = self.port.call(
            ops.JOB_STARTED,
            job_id=job.id,
            pid=child.pid,
            create_time=started if started is not None else 0.0,
            containment=self.containment or containment,
        )
        deadline = None
        if job.time_limit is not None:  # the limit counts from when the job got its devices
            held = job.submit_time.timestamp() if job.submit_time is not None else time.time()
            deadline = held + job.time_limit
        watcher = Watcher(self.token, job.id, child, str(self.home), deadline, job.time_limit)
        if withdrawn:  # released (or ended) between allocation and start: it must not keep the devices
            watcher.stop_command("it was released before its command started")
        else:
            watcher.start()
        status = exit_status(child.wait())
        watcher.close()
        signals.forward_to(None)
        reason = watcher.end_reason or ("finished" if status == 0 else "failed")
        again = reason == "preempted" and self.request.requeue
        said = watcher.said
        if said:
            say(f"{PROG}: {said}")
        stopped_by = self._record_end(job, status, reason, last=not again)
        if not said and stopped_by is not None:  # the host's daemon ended the command before the watcher heard
            say(f"{PROG}: job {job.id} was stopped: {stopped_by}.")
        # The end just recorded wakes the watcher's wait; let it return before the interpreter exits: a
        # thread still inside DuckDB at exit aborts the process ("exception not rethrown").
        watcher.join(3.0)
        if watcher.end_reason is not None:
            status = 128 + signal.SIGTERM  # stopped for its limit or a preemption, as a signalled job exits
        return status, reason

    def _contain(self, job: Job) -> str:
        """Make the job's cgroup (its GPUs the only NVIDIA devices it may open) where this process can;
        return how the job is contained, for moreh-smi -p."""
        from moreh_tools.jobs import contain

        self.group = contain.create(self.home, job.id, [d.index for d in job.devices])
        return self.group.describe()

    def _spawn(self, env: dict[str, str]) -> Child:
        """Start the command: born inside the job's cgroup when there is one (no moment outside it)."""
        from moreh_tools.launcher.child import Child

        group = self.group
        if group is None or not group.active:
            return Child(self.path, self.request.command, env)
        with group.entered() as missed:
            child = Child(self.path, self.request.command, env)
        if missed:  # a hierarchy refused the move: the command is not in it (the others, and the fallback, hold)
            self.containment = f"{group.describe()}; not entered: {', '.join(missed)}"
        return child

    def _record_end(self, job: Job, exit_code: int | None, reason: str, *, last: bool = True) -> str | None:
        """The job's stragglers killed (devices CLEANING meanwhile), the job into history, the next jobs started.

        Returns who stopped the job, when someone asked it to stop (None otherwise).

        Stragglers are the processes tagged with the job's id and everything left in its cgroup (which also
        holds those that left its session and dropped the tag). ``last``: the launcher is done after this (the
        guardian may go); False before a ``--requeue``.
        """
        from moreh_tools.jobs import processes
        from moreh_tools.port import ops

        group = self.group
        in_group = group is not None and group.active and bool(group.pids() - {os.getpid()})
        if in_group or processes.job_processes(job.id, str(self.home)):
            # The devices stay CLEANING, visibly, for as long as the grace period may take.
            self.port.call(ops.JOB_CLEANING, job_id=job.id)
            processes.end_job_processes(job.id, None, None, str(self.home), processes.release_grace())
        elif group is not None and group.active and group.remove(timeout=0.5):
            from moreh_tools.jobs import contain

            contain.remove_parent(self.home)
        # With nothing left to clean, CLEANING and the end are one transaction: one lock turn less per job.
        try:
            stopped_by = self.port.call(ops.JOB_FINISH, job_id=job.id, exit_code=exit_code, reason=reason)
        except BaseException:
            self.guardian.done()
            raise
        if last:
            self.guardian.done()
        return stopped_by


def safe_token_env(token_env: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The token's env values a job may get: names that hijack a process (``LD_PRELOAD``, ``BASH_ENV``, ...,
    see ``state.tokens.check_env_name``) are left out with a warning, however they got into the state."""
    from state.tokens import hijacks

    kept: dict[str, str] = {}
    for name, value in token_env:
        if hijacks(name) or "=" in name or "\0" in name or "\0" in value:
            say(f"[warning] {PROG}: the token's environment variable {name!r} is not passed on: it could make "
                "the job run code of someone else's choosing (ask an admin to remove it).")
            continue
        kept[name] = value
    return kept


def this_hosts_gpus() -> list[object]:
    """This host's GPUs, for registering it as a backend (LaunchError when no GPU provider is usable)."""
    from moreh_tools import gpus
    from moreh_tools.gpus.base import GpuUnavailableError
    from moreh_tools.services.records import GpuInfo

    try:
        provider = gpus.get_provider()
    except GpuUnavailableError as exc:
        raise LaunchError(str(exc)) from None
    try:
        snapshots = sorted(provider.snapshot(), key=lambda snap: snap.index)
    finally:
        provider.close()
    return [GpuInfo(snap.uuid, snap.name, snap.memory_total_mib) for snap in snapshots]
