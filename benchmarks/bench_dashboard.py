"""``moreh-smi --dashboard`` in a real pseudo-terminal over a big state.

The state: 60 backends x 8 GPUs with sampled figures (40 jobs running on 160 of them) and 1,000
queued jobs from 200 tokens. The dashboard runs as ``moreh-smi --dashboard`` in a 120x40
pseudo-terminal, as the master's admin (no token, direct access to the state: the admin view),
at the default 1 s interval.

Figures:

* **first paint**: from starting the process to the first frame that shows the queue's title
  with its 1,000 queued jobs (so interpreter start, imports, the first read of the state and the
  drawing of the grid, the tables and the event log are all in it). Median of 3 runs.
* **idle CPU**: CPU time (user + system, all threads) the process uses over a 10 s window while
  nothing changes, as a percentage of one core; for the admin view and for a user's view.
* **admin read**: in-process, how long one full read of the admin view takes (the worker thread's
  cost when something changed) and one poll when nothing changed (the fingerprint query only).
"""

from __future__ import annotations

import fcntl
import os
import random
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmarks import Figure, console_script, median, progress, run_standalone, scratch_dir, subprocess_env
from state.store import StateStore

FIRST_PAINT_TARGET_S = 1.0
IDLE_CPU_TARGET_PERCENT = 5.0
SIZE = (120, 40)


@dataclass(frozen=True)
class Sizes:
    """How big the state is and how long each figure is watched."""

    backends: int
    devices: int
    running: int
    queued: int
    tokens: int
    paint_runs: int
    idle_s: float
    settle_s: float
    warm_up: bool


FULL = Sizes(
    backends=60, devices=8, running=40, queued=1000, tokens=200, paint_runs=3, idle_s=10.0, settle_s=2.0, warm_up=True
)
QUICK = Sizes(
    backends=4, devices=8, running=2, queued=20, tokens=5, paint_runs=1, idle_s=0.5, settle_s=0.5, warm_up=False
)


def build_state(home: Path, sizes: Sizes) -> str:
    """Write the big state in one transaction; return a user token that runs a job (for the user view)."""
    rng = random.Random(5)
    store = StateStore(home)
    with store.transaction("benchmark: dashboard state") as s:
        tokens = [s.tokens.create(f"user{i:03d}@example.com", rng.randint(-5, 5)) for i in range(sizes.tokens)]
        s.tokens.update_access_level(tokens[0], "ADMIN")
        sdas = [s.sdas.create(token, "", 1) for token in tokens]
        for number in range(1, sizes.backends + 1):
            s.backends.create(f"node-{number:03d}", f"10.0.{number // 250}.{number % 250 + 1}", sizes.devices)
        s.execute(
            "UPDATE devices SET name = 'Simulated GPU (moreh-tools)', memory_total_mib = 81920, "
            "memory_used_mib = 0, util_gpu = 0, util_mem = 0, temp_gpu = 35, temp_mem = 40, sampled_at = now()"
        )
        # Running jobs: 4 GPUs each, packed from the first backend on.
        job_id = 0
        free = [(b, i) for b in range(1, sizes.backends + 1) for i in range(sizes.devices)]
        for number in range(sizes.running):
            job_id += 1
            held, free = free[:4], free[4:]
            token_index = number % sizes.tokens
            s.execute(
                "INSERT INTO jobs (id, token, sda_id, priority, status, host, pid, launcher_pid, process_name, "
                "device_count, request_time, submit_time, start_time) VALUES "
                "(?, ?, ?, 0, 'RUNNING', ?, 0, 0, ?, 4, now() - INTERVAL 1 HOUR, now() - INTERVAL 50 MINUTE, "
                "now() - INTERVAL 50 MINUTE)",
                [job_id, tokens[token_index], sdas[token_index], f"node-{held[0][0]:03d}", f"python train_{number}.py"],
            )
            for backend, index in held:
                s.execute("INSERT INTO job_devices VALUES (?, ?, ?)", [job_id, backend, index])
                s.execute(
                    "UPDATE devices SET status = 'PROCESSING', memory_used_mib = ?, util_gpu = ? "
                    "WHERE backend_id = ? AND idx = ?",
                    [rng.randint(20000, 80000), rng.randint(30, 100), backend, index],
                )
        rows = []
        for number in range(sizes.queued):
            job_id += 1
            token_index = rng.randrange(sizes.tokens)
            rows.append(
                [
                    job_id,
                    tokens[token_index],
                    sdas[token_index],
                    rng.randint(-5, 5),
                    f"node-{rng.randint(1, sizes.backends):03d}",
                    f"python sweep_{number}.py",
                    rng.choice((1, 1, 2, 4, 8)),
                    number,
                ]
            )
        s.executemany(
            "INSERT INTO jobs (id, token, sda_id, priority, status, host, launcher_pid, process_name, device_count, "
            "request_time) VALUES (?, ?, ?, ?, 'QUEUED', ?, 0, ?, ?, now() - INTERVAL 2 HOUR + to_seconds(?))",
            rows,
        )
        s.execute("SELECT setval('seq_job', ?)", [job_id + 1])
    return tokens[1]


class PtyRun:
    """``moreh-smi --dashboard`` on a pseudo-terminal; a thread keeps reading what it draws."""

    def __init__(self, env: Mapping[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
        self.master = master
        self.output = bytearray()
        self.lock = threading.Lock()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [console_script("moreh-smi"), "--dashboard"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color"},
            start_new_session=True,
        )
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.output += chunk

    def wait_for(self, marker: bytes, timeout: float = 30.0) -> float:
        """Seconds from start until ``marker`` was drawn."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                if marker in self.output:
                    return time.perf_counter() - self.started
            if self.process.poll() is not None:
                break
            time.sleep(0.005)
        tail = bytes(self.output[-2000:]).decode(errors="replace")
        raise RuntimeError(f"the dashboard never drew {marker!r}; it printed: {tail}")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process so far (all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def quit(self) -> None:
        """Press q and wait for the process to end."""
        os.write(self.master, b"q")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


def idle_cpu_percent(run: PtyRun, seconds: float, settle: float) -> float:
    """CPU use over ``seconds`` after ``settle`` seconds for the first polls, in percent of one core."""
    time.sleep(settle)
    before, started = run.cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return 100 * (run.cpu_seconds() - before) / (time.perf_counter() - started)


def in_process_reads(home: Path) -> tuple[float, float]:
    """(ms of a full admin read, ms of a poll when nothing changed), medians of 5."""
    from moreh_tools.dashboard.data import PortSource
    from moreh_tools.port import LocalPort
    from moreh_tools.services.records import Access

    full, unchanged = [], []
    for _ in range(5):
        source = PortSource(LocalPort(home, None, "bench"), Access(None, "bench", admin=True))
        started = time.perf_counter()
        source.fetch("admin")
        full.append(time.perf_counter() - started)
        started = time.perf_counter()
        source.fetch("admin")
        unchanged.append(time.perf_counter() - started)
    return 1000 * median(full), 1000 * median(unchanged)


def main(quick: bool = False) -> list[Figure]:
    """Build the state, then time first paint and idle CPU in a pseudo-terminal."""
    sizes = QUICK if quick else FULL
    label = f"{sizes.backends}x{sizes.devices} GPUs, {sizes.queued} queued"
    with scratch_dir("dashboard") as scratch:
        home = scratch / "home"
        progress(f"building a state of {label}")
        user_token = build_state(home, sizes)
        base = subprocess_env(home, scratch / "pycache", {"MOREH_TOKEN_FILE": str(scratch / "no-token")})
        base.pop("MOREH_SDA_TOKEN", None)
        base["MOREH_HOSTNAME"] = "bench-dashboard-host"  # not a backend: the user view never samples here
        marker = f"{sizes.queued} queued, in scheduling order".encode()
        paints = []
        admin_idle = 0.0
        first = 0 if sizes.warm_up else 1
        for number in range(first, sizes.paint_runs + 1):
            run = PtyRun(base)
            try:
                painted = run.wait_for(marker)
                if number:  # run 0 warms the bytecode cache, as an installed package has it
                    paints.append(painted)
                    progress(f"first paint {painted:.3f} s")
                if number == sizes.paint_runs:
                    progress(f"admin view idle for {sizes.idle_s:g} s")
                    admin_idle = idle_cpu_percent(run, sizes.idle_s, sizes.settle_s)
            finally:
                run.quit()
        progress(f"user view idle for {sizes.idle_s:g} s")
        run = PtyRun({**base, "MOREH_SDA_TOKEN": user_token})
        try:
            run.wait_for(b"Recent history")
            user_idle = idle_cpu_percent(run, sizes.idle_s, sizes.settle_s)
        finally:
            run.quit()
        full_ms, unchanged_ms = in_process_reads(home)
    paint = median(paints)
    return [
        Figure(
            f"dashboard first paint (admin, {label})",
            paint,
            "s",
            f"< {FIRST_PAINT_TARGET_S:g}",
            paint < FIRST_PAINT_TARGET_S,
        ),
        Figure(
            "dashboard idle CPU, admin view, 1 s interval",
            admin_idle,
            "% core",
            f"< {IDLE_CPU_TARGET_PERCENT:g}",
            admin_idle < IDLE_CPU_TARGET_PERCENT,
        ),
        Figure(
            "dashboard idle CPU, user view, 1 s interval",
            user_idle,
            "% core",
            f"< {IDLE_CPU_TARGET_PERCENT:g}",
            user_idle < IDLE_CPU_TARGET_PERCENT,
        ),
        Figure("dashboard admin read, full (worker thread)", full_ms, "ms"),
        Figure("dashboard admin poll, nothing changed", unchanged_ms, "ms"),
    ]


if __name__ == "__main__":
    run_standalone(main, __doc__ or "")
