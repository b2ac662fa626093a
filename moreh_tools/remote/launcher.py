"""``moreh-run`` against a remote master: the master's queue and scheduler, this host's GPUs and processes.

The steps are the local launcher's (:mod:`moreh_tools.launcher.cli`); only the state changes go to the
master's API: submit (registering this host as a backend with its GPUs the first time), a long-poll wait
for devices, running, and the end. The command still runs here, on the GPUs of this host the master gave.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from moreh_tools import __version__
from moreh_tools.launcher.cli import Launch, LaunchError, _my_create_time, _Queued, _say, _short
from moreh_tools.remote.client import RATE_LIMITED, RemoteError, connect

if TYPE_CHECKING:
    from moreh_tools.launcher.signals import SignalRouter
    from state.records import Job

JOB_PATH = "/api/remote/job"
WAIT_S = 20.0
RETRY_S = 2.0


def job_from_json(data: dict[str, Any]) -> Job:
    """Rebuild a job record from the API's JSON form."""
    from state.records import DeviceRef, Job

    fields = dict(data)
    for key in ("request_time", "submit_time", "start_time"):
        if fields.get(key) is not None:
            fields[key] = datetime.fromisoformat(fields[key])
    fields["devices"] = tuple(DeviceRef(**d) for d in fields.get("devices", ()))
    return Job(**fields)


def call(token: str, method: str, path: str, params: dict[str, Any], *, timeout: float | None = None) -> Any:
    """One API call with ``token``; a refusal becomes the LaunchError line the local launcher would print."""
    try:
        return connect(token).call(method, path, params, timeout=timeout)
    except RemoteError as exc:
        raise launch_error(exc, token) from None


def launch_error(exc: RemoteError, token: str) -> LaunchError:
    """The local launcher's line for a refusal of the master."""
    if exc.status == 401:
        return LaunchError(
            f"moreh::InvalidToken. The token '{_short(token)}' is not known to the SDA Manager; check "
            "--token, MOREH_SDA_TOKEN or the token file (MOREH_TOKEN_FILE, default /etc/moreh/token)."
        )
    return LaunchError(str(exc))


def finish(token: str, job_id: int, exit_code: int | None, reason: str) -> None:
    """Record the job's end on the master."""
    params = {"id": job_id, "reason": reason, "exitCode": exit_code}
    call(token, "POST", f"{JOB_PATH}/finish", params)


def gpu_list() -> list[list[Any]]:
    """This host's GPUs as ``[[uuid, name, MiB], ...]`` for registering it as a backend."""
    from moreh_tools import gpus
    from moreh_tools.gpus.base import GpuUnavailableError

    try:
        provider = gpus.get_provider()
    except GpuUnavailableError as exc:
        raise LaunchError(str(exc)) from None
    try:
        snapshots = sorted(provider.snapshot(), key=lambda snap: snap.index)
    finally:
        provider.close()
    return [[snap.uuid, snap.name, snap.memory_total_mib] for snap in snapshots]


class RemoteLaunch(Launch):
    """One run of ``moreh-run`` whose job is queued on the master at MOREH_SDA_MANAGER_ADDRESS."""

    def run(self) -> int:
        """As the local launcher; the guardian (forked next) reads the token from the environment."""
        os.environ["MOREH_SDA_TOKEN"] = self.token
        return super().run()

    def _call(self, method: str, path: str, params: dict[str, Any], *, timeout: float | None = None) -> Any:
        return call(self.token, method, path, params, timeout=timeout)

    def _submit(self) -> _Queued:
        from moreh_tools import identity

        params: dict[str, Any] = {
            "host": self.host,
            "sda": self.sda_id,
            "priority": self.request.priority,
            "process": self._process_name(),
            "launcherPid": os.getpid(),
            "launcherCreateTime": _my_create_time(),
            "clientVersion": __version__,
        }
        try:
            reply = connect(self.token).call("POST", JOB_PATH, params)
        except RemoteError as exc:
            if not (exc.status == 404 and "send its GPUs" in str(exc)):
                raise launch_error(exc, self.token) from None
            # This host's first job: register it as a backend with its GPUs.
            params.update(ip=identity.host_ip(self.host), devices=_json(gpu_list()))
            reply = self._call("POST", JOB_PATH, params)
        queued = _Queued(job_from_json(reply["job"]), bool(reply["allocated"]), tuple(map(tuple, reply["env"])))
        queued.busy_pid = reply.get("busyPid")
        queued.busy_command = str(reply.get("busyCommand") or "")
        queued.position = reply.get("position")
        queued.reason = str(reply.get("reason") or "")
        return queued

    def _process_name(self) -> str:
        import shlex

        return shlex.join(self.request.command)[:200]

    def _wait_for_devices(self, job: Job, signals: SignalRouter) -> Job:
        signals.interruptible = True
        try:
            signals.check()
            while True:
                try:
                    reply = connect(self.token).call(
                        "GET", f"{JOB_PATH}/wait", {"id": job.id, "timeout": WAIT_S}, timeout=WAIT_S + 15
                    )
                except RemoteError as exc:
                    # Rate limited, or the master unreachable (restarting): the job is still queued there, and
                    # nothing ends a remote host's queued job once its launcher is gone, so ask again.
                    if exc.status not in (RATE_LIMITED, None):
                        raise launch_error(exc, self.token) from None
                    time.sleep(RETRY_S)
                    continue
                if reply["state"] == "allocated":
                    return job_from_json(reply["job"])
                if reply["state"] == "ended":
                    how = "it was removed" if reply["reason"] == "removed" else f"it was {reply['reason']}"
                    raise LaunchError(f"job {job.id} left the queue before it got devices: {how}.")
        finally:
            signals.interruptible = False

    def _cancel(self, job: Job, signum: int) -> int:
        try:
            finish(self.token, job.id, None, "released")
        except LaunchError as exc:
            _say(f"moreh-run: {exc}")
        self.guardian.done()
        _say(f"moreh-run: interrupted; job {job.id} left the queue without running.")
        return 128 + signum

    def _mark_running(self, job: Job, pid: int, started: float) -> bool:
        reply = self._call("POST", f"{JOB_PATH}/running", {"id": job.id, "pid": pid, "createTime": started})
        return bool(reply["withdrawn"])

    def _record_end(self, job: Job, exit_code: int | None, reason: str) -> None:
        from moreh_tools.jobs import control, processes

        processes.end_job_processes(job.id, None, None, str(self.home), control.release_grace())
        try:
            finish(self.token, job.id, exit_code, reason)
        except LaunchError as exc:  # the guardian cannot do better; the master's admin can release the job
            _say(f"moreh-run: the end of job {job.id} was not recorded on the SDA Manager: {exc}")
        self.guardian.done()


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def clean_up_lost(job_id: int | None, child_pid: int | None, child_create_time: float | None, home: str) -> None:
    """The guardian's cleanup against the master: kill the job's processes here, record it lost there."""
    from moreh_tools.jobs import control, processes

    if job_id is None:  # died while submitting: the master cannot be asked which job it was
        return
    processes.end_job_processes(job_id, child_pid, child_create_time, home, control.release_grace())
    token = os.environ.get("MOREH_SDA_TOKEN", "")
    if token:
        try:
            finish(token, job_id, None, "lost")
        except LaunchError:
            pass
