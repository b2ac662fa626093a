"""One participant of the crash test (tests/test_crash.py): random state operations until it is killed.

Run as ``python tests/crash_worker.py HOME ACK_DIR WORKER INCARNATION SEED``. Every operation is one
transaction; right after it commits, the worker appends one line saying what it did to its own
acknowledgement log and fsyncs it, then prints ``A`` on stdout. A line ``try ...`` goes to the log
*before* an update whose outcome the checker must bound. Two operations tell the test where they
are, so it can kill them at the worst moment: ``L`` (holding the state lock, about to sleep in its
transaction) and ``W`` (about to write a big batch).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

HOST = "crash-node"
BATCH_ROWS = 20_000


class Worker:
    """The random operations and their acknowledgements."""

    def __init__(self, home: Path, acks: Path, worker: int, incarnation: int, seed: int) -> None:
        from moreh_tools.jobs import processes
        from state.store import StateStore

        self.store = StateStore(home)
        self.rng = random.Random(seed)
        self.name = f"w{worker}.{incarnation}"
        self.log = os.open(acks / f"{worker:02d}-{incarnation:04d}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.pid = os.getpid()
        self.started = processes.create_time(self.pid) or 0.0
        self.tokens: list[tuple[str, int]] = []  # (token, its SDA) created by this incarnation
        self.jobs: list[int] = []
        self.sequence = 0

    # -- acknowledgements --------------------------------------------------------------------------

    def _write(self, line: str) -> None:
        os.write(self.log, (line + "\n").encode())
        os.fsync(self.log)

    def ack(self, line: str) -> None:
        """Record a committed change (the test checks that every one survives)."""
        self._write(line)
        self.say("A")

    def intent(self, line: str) -> None:
        """Record an update about to be tried (it may commit and then lose its ack to a kill)."""
        self._write("try " + line)

    @staticmethod
    def say(code: str) -> None:
        sys.stdout.write(code + "\n")
        sys.stdout.flush()

    # -- operations --------------------------------------------------------------------------------

    def create_token(self) -> None:
        """Admin: a token, its env value, priority and an SDA, all in one transaction."""
        self.sequence += 1
        description = f"crash-{self.name}-{self.sequence}"
        priority = self.rng.randint(-99, 99)
        model = self.rng.choice((1, 1, 2, 3))
        with self.store.transaction(f"create token {description}") as s:
            token = s.tokens.create(description, priority)
            s.tokens.update_duplicable(token, 0)
            s.tokens.add_env(token, "CRASH_MARK", description)
            sda = s.sdas.create(token, "", model)
        self.tokens.append((token, sda))
        self.ack(f"token {token} {description} {priority} {sda}")

    def console_line(self) -> None:
        """Admin through the console: a priority change typed as a command line."""
        if not self.tokens:
            return self.create_token()
        from moreh_tools.smclient.main import run_line

        token, _ = self.rng.choice(self.tokens)
        priority = self.rng.randint(-99, 99)
        self.intent(f"priority {token} {priority}")
        with open(os.devnull, "w") as sink:
            code = run_line(f"update token priority {token} {priority}", out=sink)
        if code == 0:
            self.ack(f"priority {token} {priority}")
        return None

    def device_status(self) -> None:
        """Admin through the console: take device 6 or 7 out of service or back (refused while held)."""
        from moreh_tools.smclient.main import run_line

        index, status = self.rng.choice((6, 7)), self.rng.choice(("SHUTDOWN", "IDLE"))
        self.intent(f"device {index} {status}")
        with open(os.devnull, "w") as sink:
            code = run_line(f"update device 1 {index} {status}", out=sink)
        if code == 0:
            self.ack(f"device {index} {status}")

    def submit(self) -> None:
        """A launcher: queue a job for one of this worker's SDAs and run a scheduling pass."""
        if not self.tokens:
            return self.create_token()
        token, sda = self.rng.choice(self.tokens)
        with self.store.transaction("crash: submit") as s:
            job = s.jobs.submit(token, sda, backend_id=s.backends.local_id(HOST), launcher_pid=self.pid, launcher_create_time=self.started,
                                process_name=f"crash {self.name}")
            s.jobs.run_scheduling_pass()
        self.jobs.append(job.id)
        self.ack(f"submit {job.id}")
        return None

    def advance(self) -> None:
        """A launcher's next step for one of its jobs: start it, or end it."""
        if not self.jobs:
            return self.submit()
        job_id = self.rng.choice(self.jobs)
        with self.store.transaction("crash: advance") as s:
            job = s.jobs.find(job_id)
            if job is None:
                done = f"gone {job_id}"
            elif job.status == "QUEUED":
                s.jobs.run_scheduling_pass()
                done = f"pass {job_id}"
            elif job.status == "SUBMITTED":
                s.jobs.mark_running(job_id, self.pid, self.started)
                done = f"running {job_id}"
            else:
                s.jobs.mark_cleaning(job_id)
                entry = s.jobs.finish(job_id, self.rng.choice((0, 0, 1)), "finished")
                s.jobs.run_scheduling_pass()
                done = f"finish {job_id} {entry.end_reason if entry else 'gone'}"
        if not done.startswith(("pass", "running")):
            self.jobs.remove(job_id)
        self.ack(done)
        return None

    def release(self) -> None:
        """An admin's release of any live job (another worker's too)."""
        with self.store.transaction("crash: release") as s:
            live = [j.id for j in s.jobs.all()]
            if not live:
                return
            job_id = self.rng.choice(live)
            s.jobs.request_release(job_id)
            s.jobs.finish(job_id, None, "released")
            s.jobs.run_scheduling_pass()
        self.ack(f"release {job_id}")

    def daemon_tick(self) -> None:
        """The daemon's tick: jobs of killed launchers end as lost, then a scheduling pass."""
        _, lost = daemon_tick(self.store.home)
        self.ack("tick " + ",".join(map(str, lost)))

    def big_batch(self) -> None:
        """A big write, so that a kill lands while DuckDB writes."""
        self.sequence += 1
        marker = f"{self.name}-{self.sequence}"
        with self.store.transaction("crash: batch") as s:
            self.say(f"W {marker}")
            s.execute(
                "INSERT INTO events SELECT nextval('seq_event'), now(), 'CRASH_BATCH', '', 'crash: batch', "
                "? || ' ' || i, '' FROM range(?) t(i)",
                [marker, BATCH_ROWS],
            )
        self.ack(f"batch {marker} {BATCH_ROWS}")

    def hold_lock(self) -> None:
        """A slow transaction: the test may kill it while it holds the state lock."""
        self.sequence += 1
        marker = f"{self.name}-{self.sequence}"
        with self.store.transaction("crash: hold") as s:
            s.events.record("CRASH_HOLD", marker)
            self.say(f"L {marker}")
            time.sleep(0.3)
        self.ack(f"hold {marker}")

    def run(self) -> None:
        """Random operations until killed."""
        operations = [
            (self.create_token, 10),
            (self.console_line, 6),
            (self.device_status, 4),
            (self.submit, 18),
            (self.advance, 30),
            (self.release, 6),
            (self.daemon_tick, 8),
            (self.big_batch, 5),
            (self.hold_lock, 5),
        ]
        functions, weights = zip(*operations, strict=True)
        self.say("R")
        while True:
            self.rng.choices(functions, weights)[0]()


def daemon_tick(home: Path) -> tuple[Any, list[int]]:
    """A daemon tick on this host's state: the jobs of dead launchers end as lost, then a scheduling pass."""
    from dataclasses import replace

    from moreh_tools.port import LocalPort
    from moreh_tools.services import jobs

    return jobs.schedule(replace(LocalPort(home, None, "crash").context(), host=HOST), "crash: daemon tick")


def main(argv: list[str]) -> None:
    """``HOME ACK_DIR WORKER INCARNATION SEED``."""
    home, acks, worker, incarnation, seed = argv
    os.environ["MOREH_HOME"] = home
    Worker(Path(home), Path(acks), int(worker), int(incarnation), int(seed)).run()


if __name__ == "__main__":
    main(sys.argv[1:])

