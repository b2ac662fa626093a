"""Crash injection: kill -9 the participants at random moments, again and again; nothing acknowledged is lost.

Several worker processes (tests/crash_worker.py) run mixed operations on one state: admin
changes through the state API and the console (token priorities, devices taken out of service and
back), job submissions, scheduling passes, starts and
ends, releases, daemon ticks (jobs of dead launchers end as ``lost``), big batch writes and slow
transactions that hold the state lock. Each logs every change it committed, with fsync, before it
goes on. The test SIGKILLs random workers at random moments, and on purpose while one holds the
lock and while one is in the middle of a big DuckDB write, restarts them, and finally checks:
the state opens cleanly, it breaks no invariant (tests/invariants.py), every acknowledged change
is there, nothing is half-applied, and a last daemon tick returns every device.

The normal suite runs a few hundred acknowledged operations; for a long run::

    MOREH_CRASH_OPS=3000 MOREH_CRASH_SECONDS=900 /tmp/venv/bin/python -m pytest tests/test_crash.py
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from conftest import BIN
from crash_worker import daemon_tick
from invariants import violations

OPS = int(os.environ.get("MOREH_CRASH_OPS", "300"))
SECONDS = float(os.environ.get("MOREH_CRASH_SECONDS", "45"))  # the killing phase stops here even if short of OPS
WORKERS = 4
HOST = "crash-node"
WORKER_SCRIPT = Path(__file__).with_name("crash_worker.py")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Participant:
    """One running incarnation of a worker."""

    worker: int
    incarnation: int
    proc: subprocess.Popen[bytes]
    pending: bytes = b""
    killed: bool = False


@dataclass
class Harness:
    """Starts, watches and kills the workers."""

    home: Path
    acks: Path
    rng: random.Random
    participants: dict[int, Participant] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    killed_in_lock: list[str] = field(default_factory=list)  # markers of transactions killed holding the lock
    killed_in_write: list[str] = field(default_factory=list)  # markers of batches killed while writing
    incarnations: Counter[int] = field(default_factory=Counter)

    def start(self, worker: int) -> None:
        incarnation = self.incarnations[worker]
        self.incarnations[worker] += 1
        env = {**os.environ, "MOREH_HOME": str(self.home), "PYTHONPATH": str(REPO), "MOREH_LOCK_TIMEOUT": "30"}
        env.pop("MOREH_DEBUG", None)
        stderr = open(self.acks / f"{worker:02d}-{incarnation:04d}.err", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), str(self.home), str(self.acks), str(worker), str(incarnation),
             str(self.rng.randrange(2**32))],
            stdout=subprocess.PIPE, stderr=stderr, env=env,
        )
        stderr.close()
        os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
        self.participants[worker] = Participant(worker, incarnation, proc)

    def kill(self, participant: Participant, why: str) -> None:
        if participant.killed:
            return
        participant.proc.send_signal(signal.SIGKILL)
        participant.proc.wait()
        participant.killed = True
        self.kills[why] += 1

    def lines(self, participant: Participant) -> list[str] | None:
        """Complete lines the worker printed since last time; None once it has exited."""
        assert participant.proc.stdout is not None
        try:
            chunk = os.read(participant.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return []
        if not chunk:
            return None
        participant.pending += chunk
        *complete, participant.pending = participant.pending.split(b"\n")
        return [line.decode() for line in complete]

    def react(self, participant: Participant, line: str) -> None:
        """Count acks; kill at the worst moments the worker announces."""
        if line == "A":
            self.acked += 1
        elif line.startswith("L ") and self.rng.random() < 0.5:
            self.kill(participant, "holding the state lock")
            self.killed_in_lock.append(line[2:])
        elif line.startswith("W ") and self.rng.random() < 0.5:
            time.sleep(self.rng.uniform(0.0, 0.03))  # somewhere inside the insert or its commit
            self.kill(participant, "during a big write")
            self.killed_in_write.append(line[2:])

    def died_on_its_own(self, participant: Participant) -> str:
        code = participant.proc.wait()
        err = (self.acks / f"{participant.worker:02d}-{participant.incarnation:04d}.err").read_text(errors="replace")
        return f"worker {participant.worker}.{participant.incarnation} exited {code} without being killed:\n{err[-4000:]}"

    def run(self) -> None:
        for worker in range(WORKERS):
            self.start(worker)
        deadline = time.monotonic() + SECONDS
        next_kill = time.monotonic() + self.rng.uniform(0.3, 1.0)
        while self.acked < OPS and time.monotonic() < deadline:
            by_fd = {p.proc.stdout.fileno(): p for p in self.participants.values()}  # type: ignore[union-attr]
            readable, _, _ = select.select(list(by_fd), [], [], 0.05)
            for fd in readable:
                participant = by_fd[fd]
                lines = self.lines(participant)
                if lines is None and not participant.killed:
                    raise AssertionError(self.died_on_its_own(participant))
                for line in lines or []:
                    if not participant.killed:
                        self.react(participant, line)
            if time.monotonic() >= next_kill:
                self.kill(self.participants[self.rng.randrange(WORKERS)], "at a random moment")
                next_kill = time.monotonic() + self.rng.uniform(0.3, 1.0)
            for participant in list(self.participants.values()):
                if participant.killed:
                    assert participant.proc.stdout is not None
                    participant.proc.stdout.close()
                    self.start(participant.worker)
        for participant in self.participants.values():
            self.kill(participant, "at the end")
            assert participant.proc.stdout is not None
            participant.proc.stdout.close()


# -- checking what survived ---------------------------------------------------------------------------


def read_acks(acks: Path) -> list[list[str]]:
    """Every complete log line, worker by worker and incarnation by incarnation, split in words."""
    out: list[list[str]] = []
    for path in sorted(acks.glob("*.log")):
        text = path.read_text()
        complete = text if text.endswith("\n") else text.rsplit("\n", 1)[0]
        out.extend(line.split(" ") for line in complete.splitlines() if line)
    return out


def acknowledged_changes_missing(session: object, entries: list[list[str]]) -> list[str]:
    """Every acknowledged change that the state does not show, one sentence each."""
    from state.session import Session

    assert isinstance(session, Session)
    s = session
    missing: list[str] = []
    live = {int(r[0]): r[1] for r in s.all("SELECT id, status FROM jobs")}
    ended = {int(r[0]): r[1] for r in s.all("SELECT id, end_reason FROM job_history")}
    tokens = {r[0]: r for r in s.all("SELECT value, description, priority, duplicable FROM tokens")}
    sdas = {int(r[0]): r[1] for r in s.all("SELECT id, token FROM sdas")}
    # Priorities: the last acknowledged value, or one tried after it (committed, then killed before its ack).
    allowed: dict[str, set[int]] = {}
    for words in entries:
        if words[0] == "token":
            allowed[words[1]] = {int(words[3])}
        elif words[0] == "priority" and words[1] in allowed:
            allowed[words[1]] = {int(words[2])}
        elif words[:2] == ["try", "priority"] and words[2] in allowed:
            allowed[words[2]].add(int(words[3]))
    for words in entries:
        kind, rest = words[0], words[1:]
        if kind == "token":
            token, description, _, sda = rest
            if token not in tokens or tokens[token][1] != description:
                missing.append(f"token {token} ({description}) is gone")
            elif sdas.get(int(sda)) != token:
                missing.append(f"SDA {sda} of token {token} is gone")
        elif kind == "submit" and int(rest[0]) not in live and int(rest[0]) not in ended:
            missing.append(f"job {rest[0]} vanished: neither queued nor in the history")
        elif kind == "running" and live.get(int(rest[0])) != "RUNNING" and int(rest[0]) not in ended:
            missing.append(f"job {rest[0]} was started but is {live.get(int(rest[0]))}")
        elif kind == "finish" and int(rest[0]) not in ended:
            missing.append(f"job {rest[0]} ended but is not in the history")
        elif kind == "finish" and rest[1] != "gone" and ended[int(rest[0])] != rest[1]:
            missing.append(f"job {rest[0]} ended {rest[1]} but the history says {ended[int(rest[0])]}")
        elif kind == "release" and ended.get(int(rest[0])) != "released":
            missing.append(f"job {rest[0]} was released but the history says {ended.get(int(rest[0]))}")
        elif kind == "tick":
            for job in filter(None, rest[0].split(",")):
                if ended.get(int(job)) != "lost":
                    missing.append(f"job {job} was ended as lost but the history says {ended.get(int(job))}")
        elif kind == "batch":
            count = s.one("SELECT count(*) FROM events WHERE action = 'CRASH_BATCH' AND detail LIKE ?", [rest[0] + " %"])
            if count is None or count[0] != int(rest[1]):
                missing.append(f"batch {rest[0]} has {count[0] if count else 0} of its {rest[1]} rows")
        elif kind == "hold":
            count = s.one("SELECT count(*) FROM events WHERE action = 'CRASH_HOLD' AND detail = ?", [rest[0]])
            if count is None or count[0] != 1:
                missing.append(f"the slow transaction {rest[0]} is gone")
    for token, values in allowed.items():
        if token in tokens and tokens[token][2] not in values:
            missing.append(f"token {token} has priority {tokens[token][2]}, acknowledged {sorted(values)}")
    return missing


def device_statuses_missing(session: object, entries: list[list[str]]) -> list[str]:
    """Devices whose admin status is not the one their last committed update set, or lost updates.

    Workers log their acks each to their own file, so the logs cannot say which of two workers'
    updates committed last; the event each update writes in its own transaction can. So: every
    acknowledged update has its event, and each device shows the status of its last event (IDLE
    when it has none). Only meaningful once no job holds a device (after the final daemon tick).
    """
    from state.session import Session

    assert isinstance(session, Session)
    last: dict[int, str] = {6: "IDLE", 7: "IDLE"}
    committed: Counter[tuple[int, str]] = Counter()
    for (detail,) in session.all(
        "SELECT detail FROM events WHERE action = 'UPDATE_DEVICE' AND detail LIKE 'backend=1 device=% status=%' "
        "ORDER BY id"
    ):
        fields = dict(part.split("=", 1) for part in detail.split())
        if fields["device"] in ("6", "7"):
            last[int(fields["device"])] = fields["status"]
            committed[(int(fields["device"]), fields["status"])] += 1
    acknowledged = Counter((int(words[1]), words[2]) for words in entries if words[0] == "device")
    missing = [
        f"device {index} was set {status} {count} time(s) but the state records {committed[(index, status)]}"
        for (index, status), count in sorted(acknowledged.items())
        if committed[(index, status)] < count
    ]
    for index, status in session.all("SELECT idx, status FROM devices WHERE backend_id = 1 AND idx IN (6, 7)"):
        if status != last[int(index)]:
            missing.append(f"device {index} is {status}, its last committed update set {last[int(index)]}")
    return missing


def half_applied(session: object) -> list[str]:
    """Parts of a transaction present without the rest."""
    from state.session import Session

    assert isinstance(session, Session)
    s = session
    found: list[str] = []
    for marker, count in s.all(
        "SELECT split_part(detail, ' ', 1), count(*) FROM events WHERE action = 'CRASH_BATCH' GROUP BY 1"
    ):
        from crash_worker import BATCH_ROWS

        if count != BATCH_ROWS:
            found.append(f"batch {marker} has {count} of {BATCH_ROWS} rows")
    for token, description, duplicable, env, sda_count in s.all(
        "SELECT t.value, t.description, t.duplicable, "
        "(SELECT string_agg(value, ',') FROM token_env e WHERE e.token = t.value AND e.name = 'CRASH_MARK'), "
        "(SELECT count(*) FROM sdas x WHERE x.token = t.value) FROM tokens t WHERE t.description LIKE 'crash-%'"
    ):
        if duplicable != 0 or env != description or sda_count != 1:
            found.append(f"token {token} ({description}) is half made: duplicable={duplicable} env={env} SDAs={sda_count}")
    return found


def test_kill_minus_nine_anywhere_loses_nothing_acknowledged(moreh_home: Path, tmp_path: Path) -> None:
    from state.store import StateStore

    store = StateStore(moreh_home)
    with store.transaction("crash test: the node") as s:
        s.backends.create(HOST, "10.77.0.1", 8)
    acks = tmp_path / "acks"
    acks.mkdir()
    harness = Harness(moreh_home, acks, random.Random(20261125))
    harness.run()

    entries = read_acks(acks)
    kinds = Counter(words[0] for words in entries)
    report = f"{harness.acked} acked, kills {dict(harness.kills)}, acknowledged {dict(kinds)}"
    print(report)  # shown with -s / -rP: what this run went through
    assert harness.acked >= min(OPS, 150), report
    assert harness.kills["holding the state lock"] >= 1, report
    assert harness.kills["during a big write"] >= 1, report
    assert harness.kills["at a random moment"] >= 5, report
    for kind in ("tick", "submit", "running", "finish", "release", "token", "priority", "device"):
        assert kinds[kind], (kind, report)

    # The state opens (through the real console too) and every acknowledged change is there.
    with store.reading() as s:
        broken = violations(s)
        broken += acknowledged_changes_missing(s, entries)
        broken += half_applied(s)
        # A transaction killed while it held the lock never committed.
        for marker in harness.killed_in_lock:
            row = s.one("SELECT count(*) FROM events WHERE action = 'CRASH_HOLD' AND detail = ?", [marker])
            if row and row[0]:
                broken.append(f"the transaction {marker}, killed before its commit, is in the state")
    assert not broken, report + "\n  " + "\n  ".join(broken)
    shown = subprocess.run([str(BIN / "moreh_smclient"), "-c", "show job"], capture_output=True, text=True,
                           env={**os.environ, "MOREH_HOME": str(moreh_home)}, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr

    # Every launcher is dead: one daemon tick ends their jobs as lost and every device comes back.
    daemon_tick(moreh_home)
    with store.reading() as s:
        broken = violations(s) + device_statuses_missing(s, entries)
        left = s.all("SELECT id, status FROM jobs")
        busy = s.all("SELECT backend_id, idx, status FROM devices WHERE status NOT IN ('IDLE', 'SHUTDOWN')")
    assert not broken, broken
    assert not left, f"jobs of dead launchers survived the daemon tick: {left}"
    assert not busy, f"devices not returned: {busy}"


def test_acknowledgement_checker_sees_a_lost_change(moreh_home: Path) -> None:
    """The checker itself fails when a change it was told about is not in the state."""
    from state.store import StateStore

    store = StateStore(moreh_home)
    with store.transaction("checker test") as s:
        s.backends.create(HOST, "10.77.0.1", 8)
        token = s.tokens.create("crash-x-1", 5)
        s.tokens.update_duplicable(token, 0)
        s.tokens.add_env(token, "CRASH_MARK", "crash-x-1")
        sda = s.sdas.create(token, "", 1)
    entries = [["token", token, "crash-x-1", "5", str(sda)], ["submit", "999"], ["priority", token, "7"],
               ["try", "priority", token, "9"], ["batch", "x-2", "20000"], ["tick", "998"]]
    with store.reading() as s:
        missing = acknowledged_changes_missing(s, entries)
        assert not half_applied(s)
    assert len(missing) == 4, missing
    with store.transaction("checker test") as s:
        s.execute("DELETE FROM token_env")
    with store.reading() as s:
        assert half_applied(s), "a token without its env value must count as half made"
