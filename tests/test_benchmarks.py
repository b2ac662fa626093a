"""The benchmarks keep running: every module, in quick mode, through ``python -m benchmarks``.

These tests check that the benchmarks run and print their figures, never how fast anything is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import MODULES

REPO = Path(__file__).resolve().parent.parent
VERDICTS = ("ok", "MISS", "-")


def run_benchmarks(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m benchmarks ARGS`` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def table_rows(stdout: str) -> list[str]:
    """The figure lines of a printed table (below the header and its rule)."""
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["benchmark", "value", "unit", "target"], stdout
    assert set(lines[1]) == {"-"}, stdout
    return lines[2:]


@pytest.fixture(scope="module")
def quick_run() -> subprocess.CompletedProcess[str]:
    """One quick run of every benchmark module."""
    return run_benchmarks("benchmarks", "--quick")


def test_every_benchmark_module_is_listed() -> None:
    on_disk = sorted(p.stem for p in (REPO / "benchmarks").glob("bench_*.py"))
    assert on_disk == sorted(MODULES), "add new benchmark modules to MODULES in benchmarks/__main__.py"


def test_quick_run_of_all_benchmarks_prints_a_figure_table(quick_run: subprocess.CompletedProcess[str]) -> None:
    assert quick_run.returncode == 0, quick_run.stderr
    rows = table_rows(quick_run.stdout)
    assert len(rows) >= 3 * len(MODULES)
    for row in rows:
        assert row.split()[-1] in VERDICTS, row
    for name in MODULES:
        assert f"[bench] {name} (quick)" in quick_run.stderr


@pytest.mark.parametrize(
    "needle",
    [
        "show token / import duckdb",
        "heavy modules --help imports",
        "show backend, 10 x 8 devices",
        "tokens found after concurrent creates",
        "schedule() 4x8, 20 queued",
        "state: run_scheduling_pass() 8x8, 60 queued",
    ],
)
def test_quick_run_reports_each_issue_figure(quick_run: subprocess.CompletedProcess[str], needle: str) -> None:
    assert any(row.startswith(needle) for row in table_rows(quick_run.stdout)), quick_run.stdout


def test_correctness_checks_inside_the_benchmarks_pass(quick_run: subprocess.CompletedProcess[str]) -> None:
    # Counts, unlike timings, do not depend on the machine: these must say ok even in quick mode.
    for needle in ("heavy modules --help imports", "tokens found after concurrent creates"):
        row = next(r for r in table_rows(quick_run.stdout) if r.startswith(needle))
        assert row.split()[-1] == "ok", row


def test_one_module_runs_alone() -> None:
    done = run_benchmarks("benchmarks.bench_scheduler", "--quick")
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert any(r.startswith("schedule() 8x8, 60 queued") for r in rows), done.stdout
    assert not any(r.startswith("show token") for r in rows)


def test_naming_one_benchmark_runs_only_that_one() -> None:
    done = run_benchmarks("benchmarks", "scheduler", "--quick")
    assert done.returncode == 0, done.stderr
    assert "[bench] bench_scheduler (quick)" in done.stderr
    assert "bench_smclient" not in done.stderr


def test_an_unknown_benchmark_name_says_which_exist() -> None:
    done = run_benchmarks("benchmarks", "no_such_bench", "--quick", timeout=30)
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "unknown benchmark 'no_such_bench'" in done.stderr
    assert "bench_scheduler" in done.stderr
    assert done.stdout == ""
