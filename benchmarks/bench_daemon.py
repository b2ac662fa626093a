"""The tools through a running ``sdamanager`` (issue 11): start-up, job throughput, and a burst of launchers.

A real ``sdamanager`` (8 simulated GPUs) owns a scratch state; the tools reach it through its Unix socket.

* **start-up**: ``moreh-smi`` (a token with a running job) and ``moreh-run -- true`` as whole processes,
  interleaved with ``python -c 'import duckdb'`` in the same rounds; medians and their ratios.
* **throughput**: 200 jobs of ``true`` from 8 concurrent submitters (8 tokens, 1-GPU SDAs), each submitter
  running its jobs one after the other: jobs per second, next to the same run without a daemon.
* **burst**: 100 launchers started at once behind a job holding all 8 GPUs: from each launcher's start to
  its job being queued (its "waits in the queue" line), p99; and, side by side with the same burst without a
  daemon, the p99 wait for a turn at the state (``MOREH_LOCK_STATS``: the file lock each launcher takes, or
  the daemon's one writer). On 2 cores, 100 Python processes starting at once cost ~15 s of CPU before any
  of them asks anything: start to queued measures the machine; the wait for a turn measures the state.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks import (
    Figure,
    console_script,
    median,
    percentile,
    progress,
    register_host,
    run_standalone,
    scratch_dir,
    subprocess_env,
)
from state.store import StateStore

HOST = "bench-daemon-host"


@dataclass(frozen=True)
class Sizes:
    """How many rounds, jobs and launchers."""

    startup_runs: int
    submitters: int
    jobs_per_submitter: int
    burst: int


FULL = Sizes(startup_runs=21, submitters=8, jobs_per_submitter=25, burst=100)
QUICK = Sizes(startup_runs=2, submitters=2, jobs_per_submitter=3, burst=4)


def make_users(home: Path, count: int, model_id: int) -> list[str]:
    """``count`` tokens with one SDA of ``model_id`` each, on a registered simulated host (8 GPUs)."""
    from moreh_tools.gpus.simulated import SimulatedGpuProvider

    register_host(home, SimulatedGpuProvider(8, 81920, hostname=HOST), HOST)
    with StateStore(home).transaction("benchmark: users") as s:
        tokens = []
        for i in range(count):
            token = s.tokens.create(f"bench-{model_id}-{i}", 0)
            s.sdas.create(token, "", model_id)
            tokens.append(token)
    return tokens


def _env(home: Path, cache: Path, token: str | None = None) -> dict[str, str]:
    env = subprocess_env(home, cache, {"MOREH_FAKE_GPUS": "8", "MOREH_HOSTNAME": HOST, "MOREH_RELEASE_GRACE": "1"})
    for name in ("MOREH_VISIBLE_DEVICE", "CUDA_VISIBLE_DEVICES", "MOREH_JOB_ID", "MOREH_SDA_TOKEN"):
        env.pop(name, None)
    if token is not None:
        env["MOREH_SDA_TOKEN"] = token
    return env


@contextmanager
def daemon(home: Path, cache: Path, stats: Path | None = None) -> Iterator[None]:
    """A running ``sdamanager`` on ``home`` until the block ends (recording its write turns into ``stats``)."""
    env = _env(home, cache)
    if stats is not None:
        env["MOREH_LOCK_STATS"] = str(stats)
    process = subprocess.Popen([console_script("sdamanager"), "--interval", "2"], env=env, stderr=subprocess.PIPE)
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    while not (home / "sdamanager.sock").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"sdamanager did not start: {process.stderr.read().decode(errors='replace')[-400:]}")
        time.sleep(0.05)
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def measure_startup(root: Path, runs: int) -> list[Figure]:
    """moreh-smi and moreh-run through the daemon, against the import-duckdb floor, interleaved."""
    home, cache = root / "startup", root / "cache"
    [token] = make_users(home, 1, 1)
    env = _env(home, cache, token)
    smi, moreh_run = console_script("moreh-smi"), console_script("moreh-run")
    smis, runs_ms, floors = [], [], []
    with daemon(home, cache):
        holder = subprocess.Popen([moreh_run, "sleep", "600"], env=env, stdout=subprocess.DEVNULL)
        [other] = make_users_live(home, cache)
        other_env = _env(home, cache, other)
        try:
            for i in range(runs + 1):  # the first round warms the bytecode cache and is not counted
                started = time.perf_counter()
                subprocess.run([smi], env=env, capture_output=True, check=True)
                smi_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                subprocess.run([moreh_run, "true"], env=other_env, capture_output=True, check=True)
                run_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                subprocess.run([sys.executable, "-c", "import duckdb"], env=env, check=True)
                floor_ms = (time.perf_counter() - started) * 1000
                if i:
                    smis.append(smi_ms)
                    runs_ms.append(run_ms)
                    floors.append(floor_ms)
        finally:
            holder.send_signal(signal.SIGTERM)
            holder.wait(timeout=30)
    floor = median(floors)
    smi_ratio, run_ratio = median(smis) / floor, median(runs_ms) / floor
    return [
        Figure("daemon: moreh-smi (median)", median(smis), "ms"),
        Figure("daemon: moreh-run -- true (median)", median(runs_ms), "ms"),
        Figure("python -c 'import duckdb' (same rounds, median)", floor, "ms"),
        Figure("daemon: moreh-smi / import duckdb", smi_ratio, "x", "<= 0.6", smi_ratio <= 0.6),
        Figure("daemon: moreh-run -- true / import duckdb", run_ratio, "x", "<= 1.5", run_ratio <= 1.5),
    ]


def make_users_live(home: Path, cache: Path) -> list[str]:
    """A token with a 1-GPU SDA, made through the running daemon (the state file is its own now)."""
    import json

    env = _env(home, cache)
    smc = console_script("moreh_smclient")
    made = subprocess.run([smc, "--json", "-c", "create token bench-live 0"], env=env, capture_output=True, text=True)
    token = json.loads(made.stdout)["token"]
    subprocess.run([smc, "-c", f"create sda {token} live 1"], env=env, capture_output=True, check=True)
    return [token]


def _throughput(home: Path, cache: Path, tokens: list[str], per_submitter: int) -> float:
    moreh_run = console_script("moreh-run")

    def submit(token: str) -> list[int]:
        env = _env(home, cache, token)
        return [subprocess.run([moreh_run, "true"], env=env, check=False).returncode for _ in range(per_submitter)]

    started = time.perf_counter()
    with ThreadPoolExecutor(len(tokens)) as pool:
        codes = [c for batch in pool.map(submit, tokens) for c in batch]
    total = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"{sum(1 for c in codes if c)} of {len(codes)} jobs failed")
    return len(codes) / total


def measure_throughput(root: Path, submitters: int, per_submitter: int) -> list[Figure]:
    """The same jobs with and without a daemon, side by side."""
    home, cache = root / "throughput", root / "cache"
    tokens = make_users(home, submitters, 1)
    jobs = submitters * per_submitter
    alone = _throughput(home, cache, tokens, per_submitter)
    with daemon(home, cache):
        served = _throughput(home, cache, tokens, per_submitter)
    with StateStore(home).reading() as s:
        row = s.one("SELECT count(*) FROM job_history WHERE end_reason = 'finished'")
    if row is None or row[0] != 2 * jobs:
        raise RuntimeError(f"history holds {row} finished jobs, expected {2 * jobs}")
    label = f"{jobs} jobs of 'true', {submitters} submitters, 8 GPUs"
    return [
        Figure(f"{label}, no daemon", alone, "jobs/s"),
        Figure(f"{label}, through sdamanager", served, "jobs/s", ">= 40", served >= 40),
        Figure("same, daemon / no daemon", served / alone, "x"),
    ]


def _burst(root: Path, name: str, count: int, served: bool) -> tuple[list[float], list[float]]:
    """``count`` launchers started at once behind a job holding every GPU, with or without a daemon.

    Returns each launcher's start-to-queued time and every wait for a turn at the state while they queued:
    for the write lock of the file (each launcher's own) or for the daemon's writer (recorded by the daemon).
    """
    home, cache = root / name, root / "cache"
    stats = root / f"{name}.stats"
    [holder] = make_users(home, 1, 4)
    tokens = make_users(home, count, 1)
    moreh_run = console_script("moreh-run")
    stop = root / f"stop-{name}"
    blocker_script = f"import os, time\nwhile not os.path.exists({str(stop)!r}): time.sleep(0.05)"
    queued: list[float] = []
    with daemon(home, cache, stats) if served else contextlib.nullcontext():
        blocker = subprocess.Popen([moreh_run, sys.executable, "-c", blocker_script], env=_env(home, cache, holder))
        time.sleep(1.0)
        begun = time.time()
        launchers = []
        try:
            for token in tokens:
                env = _env(home, cache, token)
                if not served:
                    env["MOREH_LOCK_STATS"] = str(stats)
                launchers.append(
                    (time.perf_counter(), subprocess.Popen([moreh_run, "true"], env=env, stderr=subprocess.PIPE))
                )
            for started, proc in launchers:
                assert proc.stderr is not None
                for line in proc.stderr:
                    if b"waits in the queue" in line:
                        queued.append(time.perf_counter() - started)
                        break
            ended = time.time()
            stop.touch()
            codes = [proc.wait(timeout=300) for _, proc in launchers]
            if any(codes) or blocker.wait(timeout=60):
                raise RuntimeError(f"{sum(1 for c in codes if c)} of {count} burst jobs failed")
        finally:
            for _, proc in [(0.0, blocker), *launchers]:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    waits = []
    for line in stats.read_text().splitlines() if stats.exists() else []:
        kind, seconds, _program, at = line.split()
        if kind == "wait" and begun <= float(at) <= ended:
            waits.append(float(seconds))
    return queued, waits


def measure_burst(root: Path, count: int) -> list[Figure]:
    """The burst without and with a daemon: start to queued, and the waits for a turn at the state."""
    _, alone_waits = _burst(root, "burst-file", count, served=False)
    queued, waits = _burst(root, "burst", count, served=True)
    # Reading stderr in start order can only overstate a launcher's time (it was read later): an upper bound.
    p99 = percentile(queued, 0.99) if queued else float("inf")
    alone_p99 = percentile(alone_waits, 0.99) if alone_waits else float("nan")
    served_p99 = percentile(waits, 0.99) if waits else float("nan")
    return [
        Figure(f"{count} launchers at once, through sdamanager: start to queued (median)", median(queued), "s"),
        Figure(f"{count} launchers at once: start to queued (p99, upper bound)", p99, "s", "<= 1", p99 <= 1.0),
        Figure(f"{count} launchers at once, no daemon: wait for the state lock (p99)", alone_p99, "s"),
        Figure(f"{count} launchers at once, through sdamanager: wait for the writer (p99)", served_p99, "s"),
    ]


def main(quick: bool = False) -> list[Figure]:
    """The three measurements, each on a fresh state."""
    sizes = QUICK if quick else FULL
    figures: list[Figure] = []
    with scratch_dir("daemon") as root:
        progress(f"start-up through the daemon, {sizes.startup_runs} rounds")
        figures += measure_startup(root, sizes.startup_runs)
        progress(f"{sizes.submitters * sizes.jobs_per_submitter} jobs, without and with the daemon")
        figures += measure_throughput(root, sizes.submitters, sizes.jobs_per_submitter)
        progress(f"{sizes.burst} launchers at once")
        figures += measure_burst(root, sizes.burst)
    return figures


if __name__ == "__main__":
    run_standalone(main, __doc__ or "")
