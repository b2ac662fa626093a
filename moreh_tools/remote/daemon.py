"""``sdamanager`` on a host of a remote master: each tick, report this host's GPUs and its jobs' GPU processes.

The master schedules; this daemon only samples. Its token (MOREH_SDA_TOKEN or the token file) must be an
ADMIN token: the figures it reports are what every user sees. Launchers that die are cleaned up by their
guardians, which report the job as lost to the master.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moreh_tools.remote.client import RemoteError, connect

SAMPLES_PATH = "/api/remote/samples"


def serve(home: Path, host: str, interval: float, once: bool) -> int:
    """Report every ``interval`` seconds until SIGTERM/SIGINT (one report with ``once``); the exit status."""
    from moreh_tools import gpus, identity
    from moreh_tools.daemon.cli import EXIT_FAILED, Stopper, _log
    from moreh_tools.gpus.base import GpuUnavailableError
    from moreh_tools.gpus.local import job_processes_on_gpus

    stopper = Stopper()
    try:
        client = connect()
    except RemoteError as exc:
        _log(str(exc))
        return EXIT_FAILED
    try:
        provider = gpus.get_provider()
    except GpuUnavailableError as exc:
        _log(str(exc))
        return EXIT_FAILED
    ip = identity.host_ip(host)
    releasing = Releases()
    _log(
        f"reporting to the SDA Manager at {client.address} (pid {os.getpid()}, host '{host}', "
        f"{provider.description}, every {interval:g} s)"
    )
    try:
        while stopper.stopping is None:
            started = time.monotonic()
            try:
                snapshots = sorted(provider.snapshot(), key=lambda snap: snap.index)
                processes = job_processes_on_gpus(snapshots, str(home))
                reply = client.call(
                    "POST",
                    SAMPLES_PATH,
                    {
                        "host": host,
                        "ip": ip,
                        "devices": json.dumps([[s.uuid, s.name, s.memory_total_mib] for s in snapshots]),
                        "samples": json.dumps([_figures(s) for s in snapshots]),
                        "processes": json.dumps(
                            [
                                {
                                    "job_id": p.job_id,
                                    "pid": p.pid,
                                    "name": p.name,
                                    "memory_mib": p.memory_mib,
                                    "index": p.device_index,
                                }
                                for p in processes
                            ]
                        ),
                    },
                )
                releasing.start(reply.get("release", []) if isinstance(reply, dict) else [], home, _log)
            except RemoteError as exc:  # the master may be restarting: report again next tick
                _log(f"report skipped: {exc}")
            if once:
                break
            stopper.sleep(max(0.0, started + interval - time.monotonic()))
    finally:
        provider.close()
    if stopper.stopping is not None:
        _log(f"stopped ({signal.Signals(stopper.stopping).name})")
    return 0


def _figures(snap: object) -> dict[str, object]:
    names = ("index", "memory_total_mib", "memory_used_mib", "util_gpu", "util_mem", "temp_gpu", "temp_mem")
    return {name: getattr(snap, name) for name in names}


class Releases:
    """Ends the processes of this host's jobs that someone released on the master, one thread per job."""

    def __init__(self) -> None:
        """No release in progress."""
        self.busy: set[int] = set()
        self.lock = threading.Lock()

    def start(self, jobs: list[Any], home: Path, log: Callable[[str], None]) -> None:
        """Start ending each job's processes (SIGTERM, grace, SIGKILL) unless already under way."""
        for item in jobs:
            try:
                job_id, pid, started = int(item["id"]), item.get("pid"), item.get("pidCreateTime")
            except (KeyError, TypeError, ValueError):
                continue
            with self.lock:
                if job_id in self.busy:
                    continue
                self.busy.add(job_id)
            log(f"job {job_id} was released on the SDA Manager: ending its processes")
            threading.Thread(target=self._end, args=(job_id, pid, started, home), daemon=True).start()

    def _end(self, job_id: int, pid: int | None, started: float | None, home: Path) -> None:
        from moreh_tools.jobs import control, processes

        # The master only relays the pid the job's launcher reported: end its tree only if it is the job's command.
        if pid and processes.carries_job_tag(int(pid), job_id) is not True:
            pid = None
        try:
            processes.end_job_processes(job_id, pid, started, str(home), control.release_grace())
        finally:
            with self.lock:
                self.busy.discard(job_id)
