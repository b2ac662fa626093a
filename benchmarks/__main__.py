"""``python -m benchmarks [NAME ...] [--quick] [--strict]``: run the benchmarks and print one figure table."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from benchmarks import Figure, figure_table, progress

# Every benchmark module, in the order they run. Adding one: write benchmarks/bench_x.py with
# main(quick: bool = False) -> list[Figure], then add "bench_x" here.
MODULES = ["bench_smclient", "bench_scheduler", "bench_scheduler_sim", "bench_moreh_smi", "bench_jobs", "bench_dashboard", "bench_soak", "bench_api", "bench_daemon"]


def _module_name(name: str) -> str:
    short = name.removeprefix("benchmarks.").removesuffix(".py")
    full = short if short.startswith("bench_") else f"bench_{short}"
    if full not in MODULES:
        raise SystemExit(f"benchmarks: unknown benchmark '{name}'; choose from {', '.join(MODULES)}.")
    return full


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (all by default); return 1 with --strict when a figure misses its target."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(MODULES)})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that they run, not how fast")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its target")
    ns = parser.parse_args(argv)
    names = [_module_name(n) for n in ns.names] or MODULES
    figures: list[Figure] = []
    for name in names:
        progress(f"{name}{' (quick)' if ns.quick else ''}")
        started = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        figures.extend(module.main(quick=ns.quick))
        progress(f"{name} took {time.perf_counter() - started:.1f} s")
    print(figure_table(figures))
    missed = [f.name for f in figures if f.target and not f.ok]
    return 1 if ns.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
