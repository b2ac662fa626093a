"""moreh-smi through its real console script: the start-up a ``watch moreh-smi`` loop pays each time.

Figures: plain ``moreh-smi`` for a token with three devices, one running a job with sampled GPU
figures and one job waiting, in a state that also holds 100 other queued jobs and 60 backends x 8
devices, against ``python -c 'import duckdb'`` in the same interleaved runs (the issue's bound is
the ratio: start-up should be dominated by what cannot be avoided), and ``--help`` (which must
load neither DuckDB nor anything else heavy).

It times the ``moreh-smi`` of the environment it runs in (the script beside ``sys.executable``,
else the one on PATH), and the figure names say whether that install is editable or regular. An
editable install (``pip install -e .``) adds setuptools' import finder to every start (~10 ms);
users get a regular one (``pip install .``, as the README says). To time a regular install, run
the benchmark with that environment's interpreter from the repository root, e.g.
``python3 -m venv /tmp/venv-bench && /tmp/venv-bench/bin/pip install -q . &&
/tmp/venv-bench/bin/python -m benchmarks.bench_moreh_smi``.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks import (
    Figure,
    console_script,
    install_kind,
    median,
    progress,
    run_standalone,
    run_timed,
    scratch_dir,
    subprocess_env,
)
from state.store import StateStore

HEAVY_MODULES = ("duckdb", "_duckdb", "filelock", "textual", "pynvml", "psutil", "rich")
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Sizes:
    """How big the state is and how many times each command is timed."""

    backends: int
    other_jobs: int
    runs: int


FULL = Sizes(backends=60, other_jobs=100, runs=21)
QUICK = Sizes(backends=2, other_jobs=3, runs=2)


def build_state(home: Path, sizes: Sizes) -> str:
    """A busy state; return the token whose view is timed."""
    host = "bench-node-0000"
    with StateStore(home).transaction("benchmark: moreh-smi state") as s:
        for b in range(sizes.backends):
            s.backends.create(f"bench-node-{b:04d}", f"10.0.{b // 250}.{b % 250 + 1}", 8)
        mine = s.tokens.create("bench_user")
        s.tokens.update_max_sda(mine, 3)
        running_sda = s.sdas.create(mine, "", 3)  # Large: 4 GPUs
        waiting_sda = s.sdas.create(mine, "", 4)  # xLarge: 8 GPUs, while 4 of its node are taken
        s.sdas.create(mine, "", 1)
        other = s.tokens.create("bench_other")
        s.tokens.update_max_sda(other, 1)
        s.tokens.update_duplicable(other, 0)
        other_sda = s.sdas.create(other, "", 4)
        # The other token's jobs fill every other node, so most of them queue.
        for n in range(sizes.other_jobs):
            node = 1 + n % (sizes.backends - 1)
            s.jobs.submit(
                other,
                other_sda,
                backend_id=s.backends.local_id(f"bench-node-{node:04d}"),
                launcher_pid=10_000 + n,
                launcher_create_time=0.0,
                process_name=f"python other_{n}.py",
            )
        job = s.jobs.submit(
            mine, running_sda, backend_id=s.backends.local_id(host), launcher_pid=99, launcher_create_time=0.0, process_name="python train.py"
        )
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(job.id, 100, 0.0)
        s.jobs.submit(
            mine, waiting_sda, backend_id=s.backends.local_id(host), launcher_pid=98, launcher_create_time=0.0, process_name="python big.py"
        )
        running = s.jobs.get(job.id)
        s.jobs.record_processes(job.id, [(100, "python", 886, d.backend_id, d.index) for d in running.devices])
        s.execute(
            "UPDATE devices SET memory_total_mib = 81559, memory_used_mib = 886, util_gpu = 62, util_mem = 1, "
            "temp_gpu = 40, temp_mem = 45, name = 'NVIDIA H100 80GB HBM3', sampled_at = now()"
        )
    return mine


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cpu_timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU (user + system) seconds of one run; CPU time suffers less from a busy machine."""
    cpu = _cpu_seconds()
    elapsed, out = run_timed(argv, env)
    return elapsed, _cpu_seconds() - cpu, out


def measure(root: Path, sizes: Sizes) -> list[Figure]:
    """Median wall time of ``moreh-smi`` and of ``python -c 'import duckdb'``, runs interleaved."""
    home = root / "state"
    progress(f"moreh-smi: building a state with {sizes.backends} x 8 devices and {sizes.other_jobs} other jobs")
    token = build_state(home, sizes)
    # The timed host is not the job's, so moreh-smi reads the recorded samples and never samples itself.
    env = subprocess_env(home, root / "pycache", {"MOREH_SDA_TOKEN": token, "MOREH_HOSTNAME": "bench-timing-host"})
    smi = [console_script("moreh-smi")]
    install = install_kind(smi[0])
    progress(f"moreh-smi: timing {smi[0]} ({install} install)")
    baseline = [sys.executable, "-c", "import duckdb"]
    for _ in range(2):  # warm the bytecode and page caches for both
        run_timed(smi, env)
        run_timed(baseline, env)
    progress(f"moreh-smi: {sizes.runs} runs of each, interleaved")
    smi_times: list[float] = []
    base_times: list[float] = []
    smi_cpu: list[float] = []
    base_cpu: list[float] = []
    out = ""
    for _ in range(sizes.runs):
        elapsed, cpu, out = run_cpu_timed(smi, env)
        smi_times.append(elapsed)
        smi_cpu.append(cpu)
        elapsed, cpu, _ = run_cpu_timed(baseline, env)
        base_times.append(elapsed)
        base_cpu.append(cpu)
    if "Processes:" not in out or "Waiting jobs:" not in out:
        raise RuntimeError(f"moreh-smi did not show the running and the waiting job:\n{out}")
    smi_s, base_s = median(smi_times), median(base_times)
    ratio = smi_s / base_s
    help_times = [run_timed([*smi, "--help"], env)[0] for _ in range(sizes.runs)]
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", smi[0], "--help"], env=env, capture_output=True, text=True, check=True
    )
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines() if line.startswith("import time:")
    }
    heavy = sorted(m for m in HEAVY_MODULES if m in imported)
    return [
        Figure(f"moreh-smi, busy state, {install} install (median of {sizes.runs})", smi_s * 1000, "ms"),
        Figure("python -c 'import duckdb' (same runs)", base_s * 1000, "ms"),
        Figure("moreh-smi / import duckdb", ratio, "x", f"<= {TARGET_RATIO}", ratio <= TARGET_RATIO),
        Figure("same, CPU time (user + system)", median(smi_cpu) / median(base_cpu), "x"),
        Figure(f"moreh-smi --help (median of {sizes.runs})", median(help_times) * 1000, "ms"),
        Figure("heavy modules moreh-smi --help imports", len(heavy), "modules", "= 0", not heavy),
    ]


def main(quick: bool = False) -> list[Figure]:
    """Run the moreh-smi measurements and return the figures."""
    with scratch_dir("moreh-smi") as root:
        return measure(root, QUICK if quick else FULL)


if __name__ == "__main__":
    run_standalone(main, __doc__ or "")
