"""moreh-run through its real console script on a simulated host of 8 GPUs, without a daemon.

Figures:

* **submit-to-running latency** of a 1-GPU job on an idle host: from the moment the benchmark
  starts the ``moreh-run`` process to the moment the job's command begins. The command is
  ``date +%s.%N`` (exec'd directly, no shell), which prints the wall clock as it starts, so the
  figure covers everything a user waits for: interpreter start, imports, forking the guardian,
  the submit-and-schedule transaction and spawning the command. Median and p95 of 50 runs, next
  to ``python -c 'import duckdb'`` measured in the same interleaved runs (the floor any tool that
  opens the state pays).
* **throughput**: 200 jobs of ``true`` pushed by 8 concurrent submitters (8 tokens, 1-GPU SDAs),
  each submitter running its 25 jobs one after the other: total time and jobs per second. Each
  job is a full round: submit, schedule, run, CLEANING, history, next pass.
* **waiting launchers**: 100 launchers queued behind a job holding all 8 GPUs, watched for 45 s
  (longer than their 20-40 s safety-net timeout, so each re-checks at least once): how long a
  reader waits for the state lock (median and max of probes every 0.1 s), then how long the 100
  take to drain once the blocker ends.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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

HOST = "bench-jobs-host"
LATENCY_TARGET_MS = 250.0


@dataclass(frozen=True)
class Sizes:
    """How many runs, jobs and waiting launchers."""

    latency_runs: int
    submitters: int
    jobs_per_submitter: int
    waiting: int
    watch_s: float


FULL = Sizes(latency_runs=50, submitters=8, jobs_per_submitter=25, waiting=100, watch_s=45.0)
QUICK = Sizes(latency_runs=3, submitters=2, jobs_per_submitter=3, waiting=3, watch_s=1.0)


def make_users(home: Path, count: int, model_id: int) -> list[str]:
    """``count`` tokens, each with one SDA of ``model_id``, on a registered simulated host."""
    from moreh_tools.gpus.simulated import SimulatedGpuProvider

    store = StateStore(home)
    register_host(home, SimulatedGpuProvider(8, 81920, hostname=HOST), HOST)
    tokens = []
    with store.transaction("benchmark: users") as s:
        for i in range(count):
            token = s.tokens.create(f"bench{model_id}-{i:03d}")
            s.sdas.create(token, "bench", model_id)
            tokens.append(token)
    return tokens


def _env(home: Path, cache: Path, token: str | None = None) -> dict[str, str]:
    extra = {"MOREH_FAKE_GPUS": "8", "MOREH_HOSTNAME": HOST, "MOREH_RELEASE_GRACE": "1"}
    env = subprocess_env(home, cache, extra)
    for name in ("MOREH_VISIBLE_DEVICE", "CUDA_VISIBLE_DEVICES", "MOREH_JOB_ID"):
        env.pop(name, None)
    if token is not None:
        env["MOREH_SDA_TOKEN"] = token
    return env


def measure_latency(root: Path, runs: int) -> list[Figure]:
    """Launcher start to the command's first instruction, against the import-duckdb floor."""
    home, cache = root / "latency", root / "cache"
    [token] = make_users(home, 1, 1)
    env = _env(home, cache, token)
    moreh_run, date = console_script("moreh-run"), "/bin/date" if Path("/bin/date").exists() else "date"
    latencies, floors = [], []
    for i in range(runs + 1):  # the first run warms the bytecode cache and is not counted
        started = time.time()
        done = subprocess.run([moreh_run, date, "+%s.%N"], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"moreh-run exited {done.returncode}: {done.stderr.strip()[:300]}")
        floor_started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import duckdb"], env=env, check=True)
        if i:
            latencies.append((float(done.stdout) - started) * 1000)
            floors.append((time.perf_counter() - floor_started) * 1000)
    p50 = median(latencies)
    return [
        Figure(
            "moreh-run submit-to-running, 1 GPU, idle host (median)",
            p50,
            "ms",
            f"<= {LATENCY_TARGET_MS:g}",
            p50 <= LATENCY_TARGET_MS,
        ),
        Figure("moreh-run submit-to-running (p95)", percentile(latencies, 0.95), "ms"),
        Figure("python -c 'import duckdb' (same runs, median)", median(floors), "ms"),
    ]


def measure_throughput(root: Path, submitters: int, per_submitter: int) -> list[Figure]:
    """``submitters`` threads each running ``per_submitter`` jobs of ``true`` back to back."""
    home, cache = root / "throughput", root / "cache"
    tokens = make_users(home, submitters, 1)
    moreh_run = console_script("moreh-run")

    def submit(token: str) -> list[int]:
        env = _env(home, cache, token)
        return [subprocess.run([moreh_run, "true"], env=env, check=False).returncode for _ in range(per_submitter)]

    started = time.perf_counter()
    with ThreadPoolExecutor(submitters) as pool:
        codes = [c for batch in pool.map(submit, tokens) for c in batch]
    total = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"{sum(1 for c in codes if c)} of {len(codes)} jobs failed")
    with StateStore(home).reading() as s:
        ended = s.one("SELECT count(*) FROM job_history WHERE end_reason = 'finished'")
    if ended is None or ended[0] != len(codes):
        raise RuntimeError(f"history holds {ended} finished jobs, expected {len(codes)}")
    jobs = len(codes)
    return [
        Figure(f"{jobs} jobs of 'true', {submitters} submitters, 8 GPUs: total", total, "s"),
        Figure(f"{jobs} jobs of 'true', {submitters} submitters, 8 GPUs: rate", jobs / total, "jobs/s"),
    ]


def measure_waiting(root: Path, waiting: int, watch_s: float) -> list[Figure]:
    """Lock waits seen by a reader while ``waiting`` launchers sit in the queue, then the drain time."""
    home, cache = root / "waiting", root / "cache"
    [holder] = make_users(home, 1, 4)  # 8 GPUs
    tokens = make_users(home, waiting, 1)
    moreh_run = console_script("moreh-run")
    stop = root / "stop-blocker"
    blocker_script = f"import os, time\nwhile not os.path.exists({str(stop)!r}): time.sleep(0.05)"
    blocker = subprocess.Popen([moreh_run, sys.executable, "-c", blocker_script], env=_env(home, cache, holder))
    launchers: list[subprocess.Popen[bytes]] = []
    try:
        store = StateStore(home)
        _wait_for(lambda: _count(store, "RUNNING") == 1, 30, "the blocking job to run")
        for token in tokens:
            launchers.append(
                subprocess.Popen([moreh_run, "true"], env=_env(home, cache, token), stderr=subprocess.DEVNULL)
            )
        _wait_for(lambda: _count(store, "QUEUED") == waiting, 60 + waiting, f"{waiting} jobs to queue")
        progress(f"{waiting} launchers wait; probing the state lock for {watch_s:g} s")
        waits = []
        deadline = time.monotonic() + watch_s
        while time.monotonic() < deadline:
            with store.reading():
                waits.append(store.lock_wait_s * 1000)
            time.sleep(0.1)
        stop.touch()
        drain_started = time.perf_counter()
        codes = [proc.wait(timeout=120 + waiting) for proc in launchers]
        drain = time.perf_counter() - drain_started
        if any(codes) or blocker.wait(timeout=30):
            raise RuntimeError(f"{sum(1 for c in codes if c)} of {waiting} waiting jobs failed")
    finally:
        for proc in [blocker, *launchers]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    return [
        Figure(f"state lock wait while {waiting} launchers wait (median)", median(waits), "ms"),
        Figure(f"state lock wait while {waiting} launchers wait (max of {len(waits)})", max(waits), "ms"),
        Figure(f"drain {waiting} queued 1-GPU jobs through 8 GPUs", drain, "s"),
    ]


def _count(store: StateStore, status: str) -> int:
    with store.reading() as s:
        row = s.one("SELECT count(*) FROM jobs WHERE status = ?", [status])
    return int(row[0]) if row else 0


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def main(quick: bool = False) -> list[Figure]:
    """Run the three measurements on fresh states and return their figures."""
    sizes = QUICK if quick else FULL
    figures: list[Figure] = []
    with scratch_dir("jobs") as root:
        progress(f"submit-to-running latency, {sizes.latency_runs} runs")
        figures += measure_latency(root, sizes.latency_runs)
        jobs = sizes.submitters * sizes.jobs_per_submitter
        progress(f"{jobs} jobs through {sizes.submitters} submitters")
        figures += measure_throughput(root, sizes.submitters, sizes.jobs_per_submitter)
        progress(f"{sizes.waiting} waiting launchers")
        figures += measure_waiting(root, sizes.waiting, sizes.watch_s)
    return figures


if __name__ == "__main__":
    run_standalone(main, __doc__ or "")
