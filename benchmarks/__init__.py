"""Benchmarks: runnable scripts that measure the tools and print their figures.

Each ``bench_*`` module exposes ``main(quick: bool = False) -> list[Figure]`` and runs alone with
``python -m benchmarks.bench_NAME [--quick]``; ``python -m benchmarks`` runs them all (see README.md).
This package holds what they share: the :class:`Figure` record, timing helpers, the printed table.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One measured number, what it should be, and whether it is."""

    name: str
    value: float
    unit: str
    target: str = ""  # human text such as "<= 1.8"; empty when the figure is informational
    ok: bool = True

    def value_text(self) -> str:
        """The value with a precision that suits its size."""
        v = self.value
        if v == int(v) and abs(v) < 1e9:
            return str(int(v))
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def verdict(figure: Figure) -> str:
    """``ok`` / ``MISS`` for a figure with a target, ``-`` for an informational one."""
    if not figure.target:
        return "-"
    return "ok" if figure.ok else "MISS"


def figure_table(figures: Sequence[Figure]) -> str:
    """Render figures as a plain aligned text table."""
    header = ("benchmark", "value", "unit", "target", "")
    rows = [(f.name, f.value_text(), f.unit, f.target, verdict(f)) for f in figures]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    aligns = ("<", ">", "<", "<", "<")
    lines = []
    for row in (header, *rows):
        lines.append("  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, aligns, widths, strict=True)).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def progress(message: str) -> None:
    """Say on stderr what is being measured (the figures go to stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def median(samples: Sequence[float]) -> float:
    """The median of the samples."""
    return statistics.median(samples)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The ``fraction`` (0..1) quantile by the nearest-rank method."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def time_call(fn: Callable[[], object]) -> float:
    """Wall seconds one call of ``fn`` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def console_script(name: str) -> str:
    """The path of an installed console script, next to this interpreter when it is there."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"benchmarks: the console script '{name}' is not installed; run 'pip install -e .' first.")
    return found


def install_kind(script: str) -> str:
    """``editable`` or ``regular``: how moreh-tools is installed where the console script ``script`` runs.

    An editable install (``pip install -e .``) puts setuptools' import finder in front of every
    import, ~10 ms a start that ``pip install .`` (what the README tells users) does not pay; start-up
    figures should say which one they timed. PEP 610's ``direct_url.json`` records it.
    """
    with open(script, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    python = shlex.split(first[2:]) if first.startswith("#!") else [sys.executable]
    probe = (
        "import json, importlib.metadata as m; "
        "url = json.loads(m.distribution('moreh-tools').read_text('direct_url.json') or '{}'); "
        "print('editable' if url.get('dir_info', {}).get('editable') else 'regular')"
    )
    try:
        # -I: the current directory's moreh_tools.egg-info must not answer for the environment.
        done = subprocess.run([*python, "-I", "-c", probe], capture_output=True, text=True, check=False, timeout=60)
    except OSError:
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def subprocess_env(home: Path, cache: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for timed child processes: their own state, and bytecode cached like an installed package.

    ``pip install`` compiles every module to bytecode; an editable checkout run with
    ``PYTHONDONTWRITEBYTECODE`` recompiles them on every start, which would be timed as if it were ours.
    ``PYTHONPYCACHEPREFIX`` keeps those caches out of the source tree, and applies to the baseline too.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    env["MOREH_HOME"] = str(home)
    env.pop("MOREH_DEBUG", None)
    env.update(extra or {})
    return env


def run_timed(argv: Sequence[str], env: Mapping[str, str], stdin: str | None = None) -> tuple[float, str]:
    """Run a command to completion; return its wall seconds and stdout. A failure stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(list(argv), env=dict(env), input=stdin, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:500]}")
    return elapsed, done.stdout


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory for states and caches, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"moreh-bench-{prefix}-") as name:
        yield Path(name)


def run_standalone(main: Callable[[bool], list[Figure]], description: str) -> None:
    """The ``__main__`` of one benchmark module: parse ``--quick``, run, print the figure table."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs, not how fast")
    ns = parser.parse_args()
    print(figure_table(main(ns.quick)))


def register_host(home: Path, provider: Any, host: str) -> int:
    """Register ``host`` (this machine) with ``provider``'s GPUs in the state at ``home``, as its first job would."""
    from dataclasses import replace

    from moreh_tools.port import LocalPort
    from moreh_tools.services.hosts import register_with

    return register_with(replace(LocalPort(home, None, "benchmark").context(), host=host), provider)
