"""Soak: many concurrent ``moreh-run`` jobs over 8 simulated GPUs while ``moreh-smi`` and ``show backend`` poll.

All launchers start at once (no daemon: they drive the scheduler themselves); each job is a short
shell command (sleep 0 to 0.3 s) that writes a marker named by its launch and ``MOREH_JOB_ID``
with its ``CUDA_VISIBLE_DEVICES`` and start and end times. Meanwhile one poller runs ``moreh-smi``
and ``moreh_smclient -c 'show backend'`` back to back. Every state access appends its lock wait
and hold time, and every scheduling pass its duration, to a file (``MOREH_LOCK_STATS``, see
``state/stats.py``).

Checked (a violation stops the benchmark): every launch ran exactly once and exited 0, the history
holds exactly one finished entry per job, no device was used by two jobs at once (by the jobs'
own clocks and by the state's device usage), and every device is IDLE at the end
(``tests/test_soak.py`` also checks the state's invariants). Figures: total time and jobs per second, lock wait p50/p99 (all turns, the
submit burst's, and the pollers' while jobs wait), lock hold p50/p99, scheduling pass p50/p99/max,
poll latency p50/p99 while jobs wait, queue wait (request to start) p50/max.

``tests/test_soak.py`` runs the same soak with 20 jobs.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
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

HOST = "soak-host"
GPUS = 8
SLEEPS = ("0", "0.1", "0.2", "0.3")
MODELS = (1, 1, 1, 2, 3)  # 1, 1, 1, 2 and 4 GPUs
# Writes "<job id> <devices> <start> <end>" to DIR/<launch>.<job id>; set -C refuses to overwrite one.
JOB_SCRIPT = (
    'set -C; s=$(date +%s.%N); sleep "$1"; e=$(date +%s.%N); '
    'echo "$MOREH_JOB_ID $CUDA_VISIBLE_DEVICES $s $e" > "$3/$2.$MOREH_JOB_ID"'
)
POLL_TARGET_P99_MS = 2000.0
POLLER_WAIT_TARGET_MS = 1000.0


@dataclass(frozen=True)
class Sizes:
    """How many jobs and how long to wait for them."""

    jobs: int
    timeout_s: float


FULL = Sizes(jobs=100, timeout_s=600)
QUICK = Sizes(jobs=6, timeout_s=120)


@dataclass
class Soak:
    """What one soak run measured and saw."""

    jobs: int
    total_s: float = 0.0
    exit_codes: list[int] = field(default_factory=list)
    markers: dict[int, list[tuple[int, str, float, float]]] = field(default_factory=dict)  # launch -> runs
    # (kind, seconds, program, unix time): kind "wait"/"hold" (the state lock) or "pass" (a scheduling pass)
    stats: list[tuple[str, float, str, float]] = field(default_factory=list)
    polls: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))  # (start, s)
    burst_end: float = 0.0  # unix time the last launch's job was queued: from then on the rest only wait
    poll_failures: list[str] = field(default_factory=list)
    history: list[tuple[int, str, int | None, float]] = field(default_factory=list)  # id, reason, exit, queue s
    usage: list[tuple[int, int, float, float]] = field(default_factory=list)  # backend, device, start, end
    leftovers: list[str] = field(default_factory=list)


def make_users(home: Path, count: int, rng: random.Random) -> list[str]:
    """``count`` tokens, each with one SDA of a model from MODELS."""
    tokens = []
    with StateStore(home).transaction("soak: users") as s:
        for i in range(count):
            token = s.tokens.create(f"soak-{i:03d}")
            s.sdas.create(token, "soak", rng.choice(MODELS))
            tokens.append(token)
    return tokens


def register_soak_host(home: Path) -> None:
    """Register the simulated host as its first job or ``sdamanager`` would, before the soak.

    Launchers that all start on a host nobody registered yet each check, register (finding it done
    by the first) and submit: three lock turns each instead of one, once in the host's life.
    """
    from moreh_tools.gpus.simulated import SimulatedGpuProvider

    register_host(home, SimulatedGpuProvider(GPUS, 81920, hostname=HOST), HOST)


def _poll(env: dict[str, str], token: str, stop: threading.Event, soak: Soak) -> None:
    """Run moreh-smi and show backend back to back until told to stop."""
    commands = {
        "moreh-smi": [console_script("moreh-smi")],
        "show backend": [console_script("moreh_smclient"), "-c", "show backend"],
    }
    smi_env = {**env, "MOREH_SDA_TOKEN": token}
    while not stop.is_set():
        for name, argv in commands.items():
            at, started = time.time(), time.perf_counter()
            done = subprocess.run(argv, env=smi_env, capture_output=True, text=True, check=False, timeout=120)
            soak.polls[name].append((at, time.perf_counter() - started))
            if done.returncode != 0:
                soak.poll_failures.append(f"{name} exited {done.returncode}: {done.stderr.strip()[:300]}")
        stop.wait(0.05)


def run_soak(root: Path, jobs: int, timeout_s: float, seed: int = 7) -> Soak:
    """Launch ``jobs`` moreh-run processes at once, poll while they run, and collect everything."""
    rng = random.Random(seed)
    home, markers, stats_file = root / "state", root / "markers", root / "lock-stats"
    markers.mkdir(parents=True)
    tokens = make_users(home, max(2, jobs // 2), rng)
    register_soak_host(home)
    env = subprocess_env(home, root / "pycache", {
        "MOREH_FAKE_GPUS": str(GPUS), "MOREH_HOSTNAME": HOST, "MOREH_RELEASE_GRACE": "1",
        "MOREH_LOCK_STATS": str(stats_file), "MOREH_TOKEN_FILE": str(root / "no-token-file"),
    })
    for name in ("MOREH_SDA_TOKEN", "MOREH_VISIBLE_DEVICE", "CUDA_VISIBLE_DEVICES", "MOREH_JOB_ID"):
        env.pop(name, None)
    moreh_run = console_script("moreh-run")
    soak = Soak(jobs)
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(env, tokens[0], stop, soak), daemon=True)
    launchers: list[subprocess.Popen[bytes]] = []
    errors = root / "stderr"
    errors.mkdir()
    started = time.perf_counter()
    poller.start()
    try:
        for launch in range(jobs):
            with open(errors / f"{launch}.err", "wb") as err:
                launchers.append(subprocess.Popen(
                    [moreh_run, "--token", tokens[launch % len(tokens)], "--", "sh", "-c", JOB_SCRIPT, "sh",
                     rng.choice(SLEEPS), str(launch), str(markers)],
                    env=env, stdout=subprocess.DEVNULL, stderr=err,
                ))
        deadline = time.monotonic() + timeout_s
        for proc in launchers:
            soak.exit_codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        soak.total_s = time.perf_counter() - started
    finally:
        stop.set()
        for proc in launchers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        poller.join(timeout=120)
    for launch, code in enumerate(soak.exit_codes):
        if code != 0:
            tail = (errors / f"{launch}.err").read_text(errors="replace").strip()[-300:]
            soak.poll_failures.append(f"launch {launch} exited {code}: {tail}")
    _collect(soak, home, markers, stats_file)
    return soak


def _collect(soak: Soak, home: Path, markers: Path, stats_file: Path) -> None:
    for path in markers.iterdir():
        launch = int(path.name.split(".")[0])
        job_id, devices, start, end = path.read_text().split()
        soak.markers.setdefault(launch, []).append((int(job_id), devices, float(start), float(end)))
    for line in stats_file.read_text().splitlines():
        kind, seconds, program, at = line.split(" ")
        soak.stats.append((kind, float(seconds), program, float(at)))
    store = StateStore(home)
    with store.reading() as s:
        row = s.one("SELECT max(epoch(request_time)) FROM job_history")
        soak.burst_end = float(row[0]) if row and row[0] is not None else 0.0
        soak.history = [
            (int(i), r, e, float(q))
            for i, r, e, q in s.all(
                "SELECT id, end_reason, exit_code, epoch(start_time) - epoch(request_time) FROM job_history"
            )
        ]
        soak.usage = [
            (int(b), int(d), float(a), float(z))
            for b, d, a, z in s.all("SELECT backend_id, device_index, epoch(start_time), epoch(end_time) FROM device_usage")
        ]
        soak.leftovers = [f"job {i} still {st}" for i, st in s.all("SELECT id, status FROM jobs")]
        soak.leftovers += [f"device {b}:{d} still {st}" for b, d, st in
                           s.all("SELECT backend_id, idx, status FROM devices WHERE status <> 'IDLE'")]


def overlaps(intervals: dict[str, list[tuple[float, float, int]]]) -> list[str]:
    """Pairs of jobs whose use of one device overlaps in time: ``device -> [(start, end, job)]``."""
    found = []
    for device, spans in intervals.items():
        ordered = sorted(spans)
        for (_, end_a, job_a), (start_b, _, job_b) in itertools.pairwise(ordered):
            if start_b < end_a:
                found.append(f"device {device}: job {job_b} started {end_a - start_b:.3f} s before job {job_a} ended")
    return found


def problems(soak: Soak) -> list[str]:
    """Everything that went wrong: exactly-once, history, device overlap, leftovers, failed polls."""
    found = list(soak.poll_failures) + list(soak.leftovers)
    missing = sorted(set(range(soak.jobs)) - set(soak.markers))
    if missing:
        found.append(f"launches that never ran: {missing[:20]}")
    found += [f"launch {launch} ran {len(runs)} times" for launch, runs in soak.markers.items() if len(runs) != 1]
    job_ids = [run[0] for runs in soak.markers.values() for run in runs]
    if len(job_ids) != len(set(job_ids)):
        found.append("two launches ran under the same job id")
    finished = {i for i, reason, code, _ in soak.history if reason == "finished" and code == 0}
    if len(soak.history) != soak.jobs or finished != set(job_ids):
        found.append(f"history holds {len(soak.history)} entries, {len(finished)} finished, for {soak.jobs} jobs")
    by_device: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for runs in soak.markers.values():
        for job_id, devices, start, end in runs:
            for index in devices.split(","):
                by_device[index].append((start, end, job_id))
    found += overlaps(by_device)
    recorded: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for backend, device, start, end in soak.usage:
        recorded[f"{backend}:{device}"].append((start, end, 0))
    found += [f"state's device usage: {p}" for p in overlaps(recorded)]
    return found


POLLERS = ("moreh-smi", "moreh_smclient")


def _pct(samples: list[float], fraction: float) -> float:
    return percentile(samples, fraction) * 1000 if samples else 0.0


def figures(soak: Soak) -> list[Figure]:
    """The soak's figures, in milliseconds unless said otherwise.

    "Burst": while the launchers, all started at once, queue their jobs (each waits its turn for the
    lock behind the ones that asked first). "Waiting": afterwards, while the rest of the jobs wait
    for GPUs and the ones that got them start, run and end.
    """
    n = soak.jobs
    waits = [sec for kind, sec, _, _ in soak.stats if kind == "wait"]
    burst = [sec for kind, sec, _, at in soak.stats if kind == "wait" and at <= soak.burst_end]
    after = [sec for kind, sec, prog, at in soak.stats if kind == "wait" and at > soak.burst_end and prog in POLLERS]
    holds = [sec for kind, sec, _, _ in soak.stats if kind == "hold"]
    passes = [sec for kind, sec, _, _ in soak.stats if kind == "pass"]
    polls = [sec for times in soak.polls.values() for at, sec in times if at > soak.burst_end]
    queue = [q for _, _, _, q in soak.history]
    poll_p99 = _pct(polls, 0.99)
    poller_wait_p99 = _pct(after, 0.99)
    return [
        Figure(f"soak {n} jobs over {GPUS} GPUs: total", soak.total_s, "s"),
        Figure(f"soak {n} jobs: rate", n / soak.total_s if soak.total_s else 0.0, "jobs/s"),
        Figure(f"soak {n} jobs: lock wait p50 ({len(waits)} turns)", _pct(waits, 0.5), "ms"),
        Figure(f"soak {n} jobs: lock wait p99", _pct(waits, 0.99), "ms"),
        Figure(f"soak {n} jobs: lock wait p99 in the submit burst", _pct(burst, 0.99), "ms"),
        Figure(f"soak {n} jobs: pollers' lock wait p99 while jobs wait", poller_wait_p99, "ms",
               f"<= {POLLER_WAIT_TARGET_MS:g}", poller_wait_p99 <= POLLER_WAIT_TARGET_MS),
        Figure(f"soak {n} jobs: lock hold p50", _pct(holds, 0.5), "ms"),
        Figure(f"soak {n} jobs: lock hold p99", _pct(holds, 0.99), "ms"),
        Figure(f"soak {n} jobs: scheduling pass p50 ({len(passes)} passes)", _pct(passes, 0.5), "ms"),
        Figure(f"soak {n} jobs: scheduling pass p99", _pct(passes, 0.99), "ms"),
        Figure(f"soak {n} jobs: scheduling pass max", max(passes) * 1000 if passes else 0.0, "ms"),
        Figure(f"soak {n} jobs: moreh-smi / show backend p50 while jobs wait ({len(polls)} polls)",
               _pct(polls, 0.5), "ms"),
        Figure(f"soak {n} jobs: moreh-smi / show backend p99 while jobs wait", poll_p99, "ms",
               f"<= {POLL_TARGET_P99_MS:g}", poll_p99 <= POLL_TARGET_P99_MS),
        Figure(f"soak {n} jobs: queue wait p50", median(queue) if queue else 0.0, "s"),
        Figure(f"soak {n} jobs: queue wait max", max(queue) if queue else 0.0, "s"),
    ]


def main(quick: bool = False) -> list[Figure]:
    """Run the soak, stop on any correctness problem, and return its figures."""
    sizes = QUICK if quick else FULL
    with scratch_dir("soak") as root:
        progress(f"soak: {sizes.jobs} concurrent moreh-run jobs over {GPUS} simulated GPUs, polling")
        soak = run_soak(root, sizes.jobs, sizes.timeout_s)
    found = problems(soak)
    if found:
        raise RuntimeError("soak found problems:\n  " + "\n  ".join(found[:30]))
    progress(json.dumps({"jobs": soak.jobs, "total_s": round(soak.total_s, 2)}))
    return figures(soak)


if __name__ == "__main__":
    run_standalone(main, __doc__ or "")
