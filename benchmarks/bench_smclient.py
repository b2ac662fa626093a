"""moreh_smclient through its real console script, over big states.

Figures: ``show token`` over 10,000 tokens against ``python -c 'import duckdb'`` (the ratio is what
the issue bounds: startup should be dominated by what cannot be avoided), ``--help`` (which must not
load DuckDB), ``show backend`` over 1,000 backends x 8 devices, and 8 concurrent consoles creating
tokens through piped stdin.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks import (
    Figure,
    console_script,
    median,
    progress,
    run_standalone,
    run_timed,
    scratch_dir,
    subprocess_env,
)
from state.store import StateStore
from state.tokens import new_token_value

# Modules that a help screen has no business loading.
HEAVY_MODULES = ("duckdb", "filelock", "textual", "pynvml", "psutil", "rich")
CREATED = re.compile(r"^Create SDA Success \(Token : \S+\)$", re.MULTILINE)


@dataclass(frozen=True)
class Sizes:
    """How big the states are and how many times each command is timed."""

    tokens: int
    backends: int
    devices_per_backend: int
    processes: int
    tokens_per_process: int
    runs: int
    backend_runs: int


FULL = Sizes(
    tokens=10_000, backends=1_000, devices_per_backend=8, processes=8, tokens_per_process=50, runs=15, backend_runs=7
)
QUICK = Sizes(tokens=50, backends=10, devices_per_backend=8, processes=2, tokens_per_process=3, runs=2, backend_runs=2)


# -- building states ------------------------------------------------------------------------------


def build_token_state(home: Path, count: int) -> None:
    """``count`` tokens (half with an SDA, one in ten with env values), written in one transaction."""
    rng = random.Random(2024)
    values = [new_token_value() for _ in range(count)]
    descriptions = [f"user{i:05d}" for i in range(count)]
    priorities = [rng.randint(-99, 99) for _ in range(count)]
    levels = [rng.choice(("USER", "USER", "USER", "ADMIN", "DEVELOPER")) for _ in range(count)]
    with_sda = list(range(0, count, 2))
    with StateStore(home).transaction("benchmark: bulk tokens") as s:
        s.execute(
            "INSERT INTO tokens (value, description, priority, access_level, created_at) "
            "SELECT v, d, p, a, TIMESTAMP '2024-01-01' + to_seconds(i) FROM "
            "(SELECT unnest(?) AS v, unnest(?) AS d, unnest(?) AS p, unnest(?) AS a, unnest(range(?)) AS i)",
            [values, descriptions, priorities, levels, count],
        )
        s.execute(
            "INSERT INTO sdas (id, token, model_id, description, created_at) "
            "SELECT nextval('seq_sda'), unnest(?), unnest(?), '', now()",
            [[values[i] for i in with_sda], [rng.choice((1, 2, 3, 4)) for _ in with_sda]],
        )
        s.execute("UPDATE tokens SET current_sda = s.id FROM sdas s WHERE s.token = tokens.value")
        env_tokens = values[::10]
        s.execute(
            "INSERT INTO token_env SELECT unnest(?), 'HF_HOME', '/data/hf/' || unnest(?), 1",
            [env_tokens, [f"u{i}" for i in range(len(env_tokens))]],
        )


def build_backend_state(home: Path, backends: int, devices_per_backend: int) -> None:
    """``backends`` backends in five groups with sampled devices in every status, in one transaction."""
    with StateStore(home).transaction("benchmark: bulk backends") as s:
        s.execute("INSERT INTO backend_groups SELECT nextval('seq_backendgroup'), 'rack' || range FROM range(4)")
        s.execute(
            "INSERT INTO backends (id, host, ip, group_id, status, created_at) "
            "SELECT nextval('seq_backend'), printf('gpu-node-%04d', range), "
            "printf('10.%d.%d.%d', 1 + range // 62500, (range // 250) % 250, range % 250 + 1), range % 5, "
            "CASE WHEN range % 97 = 0 THEN 'SHUTDOWN' ELSE 'ACTIVE' END, now() FROM range(?)",
            [backends],
        )
        s.execute(
            "INSERT INTO devices SELECT b.id, r.range, "
            "CASE WHEN b.status = 'SHUTDOWN' THEN 'SHUTDOWN' "
            "     ELSE ['IDLE', 'IDLE', 'PROCESSING', 'PROCESSING', 'PREPARING', 'CLEANING', 'IDLE', 'PROCESSING']"
            "          [1 + (b.id * 7 + r.range * 3) % 8] END, "
            "printf('GPU-%08x-%04d', b.id, r.range), 'NVIDIA H100 80GB HBM3', 81559, (b.id * 131 + r.range) % 81559, "
            "(b.id + r.range) % 101, (b.id * 3 + r.range) % 101, 30 + (b.id + r.range) % 50, "
            "35 + (b.id + r.range) % 45, now() FROM backends b, range(?) r",
            [devices_per_backend],
        )


def prepare_empty_state(home: Path) -> None:
    """Create the schema, so timed commands do not pay for migrating a new file."""
    StateStore(home).schema_version()


# -- measurements ---------------------------------------------------------------------------------


def measure_show_token(root: Path, sizes: Sizes) -> list[Figure]:
    """Median wall time of ``show token`` and of ``python -c 'import duckdb'``, runs interleaved."""
    home = root / "tokens"
    progress(f"show token: building a state with {sizes.tokens} tokens")
    build_token_state(home, sizes.tokens)
    env = subprocess_env(home, root / "pycache")
    show = [console_script("moreh_smclient"), "-c", "show token"]
    baseline = [sys.executable, "-c", "import duckdb"]
    for _ in range(2):  # warm the bytecode cache and the page cache for both
        run_timed(show, env)
        run_timed(baseline, env)
    progress(f"show token: {sizes.runs} runs of each, interleaved")
    show_times: list[float] = []
    base_times: list[float] = []
    for _ in range(sizes.runs):
        elapsed, out = run_timed(show, env)
        show_times.append(elapsed)
        base_times.append(run_timed(baseline, env)[0])
    rows = out.count("\n") - 3  # the grid's border, header and header rule lines
    if rows < sizes.tokens:
        raise RuntimeError(f"show token printed {rows} rows for {sizes.tokens} tokens")
    show_s, base_s = median(show_times), median(base_times)
    ratio = show_s / base_s
    return [
        Figure(f"show token, {sizes.tokens} tokens (median of {sizes.runs})", show_s * 1000, "ms"),
        Figure("python -c 'import duckdb' (same runs)", base_s * 1000, "ms"),
        Figure("show token / import duckdb", ratio, "x", "<= 1.8", ratio <= 1.8),
    ]


def measure_help(root: Path, sizes: Sizes) -> list[Figure]:
    """Median wall time of ``--help``, and how many heavy modules it imports (``-X importtime``)."""
    home = root / "help"
    env = subprocess_env(home, root / "pycache")
    script = console_script("moreh_smclient")
    run_timed([script, "--help"], env)
    times = [run_timed([script, "--help"], env)[0] for _ in range(sizes.runs)]
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", script, "--help"], env=env, capture_output=True, text=True, check=True
    )
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines() if line.startswith("import time:")
    }
    heavy = sorted(m for m in HEAVY_MODULES if m in imported)
    if heavy:
        progress(f"--help imports {', '.join(heavy)}")
    return [
        Figure(f"moreh_smclient --help (median of {sizes.runs})", median(times) * 1000, "ms"),
        Figure("heavy modules --help imports (duckdb, filelock, ...)", len(heavy), "modules", "= 0", not heavy),
    ]


def measure_show_backend(root: Path, sizes: Sizes) -> list[Figure]:
    """Median wall time of ``show backend`` over a state with many backends."""
    home = root / "backends"
    shape = f"{sizes.backends} x {sizes.devices_per_backend}"
    progress(f"show backend: building a state with {shape} devices")
    build_backend_state(home, sizes.backends, sizes.devices_per_backend)
    env = subprocess_env(home, root / "pycache")
    show = [console_script("moreh_smclient"), "-c", "show backend"]
    run_timed(show, env)
    times: list[float] = []
    for _ in range(sizes.backend_runs):
        elapsed, out = run_timed(show, env)
        times.append(elapsed)
    if out.count("gpu-node-") < sizes.backends:
        raise RuntimeError("show backend did not list every backend")
    show_s = median(times)
    return [
        Figure(
            f"show backend, {shape} devices (median of {sizes.backend_runs})",
            show_s * 1000,
            "ms",
            "< 1000",
            show_s < 1.0,
        ),
    ]


def measure_concurrent_creates(root: Path, sizes: Sizes) -> list[Figure]:
    """``processes`` consoles at once, each creating tokens from lines piped on its stdin."""
    home = root / "concurrent"
    prepare_empty_state(home)
    # The lock's default 30 s patience is for people; on a loaded 2-core machine one console can
    # lose the race for the lock that long, and this measures throughput, not that timeout.
    env = subprocess_env(home, root / "pycache", {"MOREH_LOCK_TIMEOUT": "300"})
    script = console_script("moreh_smclient")
    run_timed([script, "-c", "show sdamodel"], env)  # cache the bytecode before the processes race
    scripts = [
        "".join(f"create token bench_p{p}_t{t} {t % 10}\n" for t in range(sizes.tokens_per_process))
        for p in range(sizes.processes)
    ]
    wanted = sizes.processes * sizes.tokens_per_process
    progress(f"concurrent creates: {sizes.processes} processes x {sizes.tokens_per_process} tokens")

    def one(stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script], env=env, input=stdin, capture_output=True, text=True, check=False)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=sizes.processes) as pool:
        results = list(pool.map(one, scripts))
    elapsed = time.perf_counter() - started
    for done in results:
        if done.returncode != 0 or len(CREATED.findall(done.stdout)) != sizes.tokens_per_process:
            raise RuntimeError(f"a console failed (exit {done.returncode}): {done.stderr.strip()[:500]}")
    with StateStore(home).reading() as s:
        row = s.one(
            "SELECT count(*), count(DISTINCT value), count(DISTINCT description) FROM tokens "
            "WHERE description LIKE 'bench_p%'"
        )
    found = min(row) if row else 0
    return [
        Figure(f"{sizes.processes} consoles x {sizes.tokens_per_process} create token: total", elapsed, "s"),
        Figure("concurrent create token throughput", wanted / elapsed, "tokens/s"),
        Figure("tokens found after concurrent creates", found, "tokens", f"= {wanted}", found == wanted),
    ]


def main(quick: bool = False) -> list[Figure]:
    """Run every moreh_smclient measurement and return the figures."""
    sizes = QUICK if quick else FULL
    figures: list[Figure] = []
    with scratch_dir("smclient") as root:
        figures += measure_show_token(root, sizes)
        figures += measure_help(root, sizes)
        figures += measure_show_backend(root, sizes)
        figures += measure_concurrent_creates(root, sizes)
    return figures


if __name__ == "__main__":
    run_standalone(main, __doc__ or "")
