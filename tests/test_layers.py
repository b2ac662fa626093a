"""The layers hold: SQL and DuckDB only in state/, no import cycles, no private names imported across modules.

Read from the source (ast), so a violation anywhere fails here, wherever it would run.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("moreh_tools", "state", "scheduler_core")
# The project writes SQL keywords in capitals (and English prose starts "Select a job", not "SELECT").
SQL = re.compile(r"^\s*(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|SEQUENCE)|WITH\s+\w+\s+AS)\b")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def strings(tree: ast.AST) -> Iterator[ast.Constant]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node


def imported(tree: ast.AST, *, with_lazy: bool) -> Iterator[tuple[str, ast.ImportFrom | ast.Import]]:
    """(module name, node) of every import outside ``if TYPE_CHECKING`` (and outside functions unless with_lazy)."""

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> Iterator[tuple[str, ast.ImportFrom | ast.Import]]:
        for child in ast.iter_child_nodes(node):
            function = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            checking = type_checking or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.Import | ast.ImportFrom) and not checking and (with_lazy or not function):
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        yield alias.name, child
                elif child.module:
                    yield child.module, child
                    for alias in child.names:
                        yield f"{child.module}.{alias.name}", child
            yield from visit(child, function, checking)

    yield from visit(tree, False, False)


#: Modules whose ``.conn`` is uvicorn's HTTP/1.1 connection (the daemon's protocol class).
H11_MODULES = {"moreh_tools.api.protocol"}


@pytest.mark.parametrize("package", ["moreh_tools", "scheduler_core"])
def test_no_sql_and_no_connection_outside_state(package: str) -> None:
    offenders = []
    for name, path in MODULES.items():
        if not name.startswith(package + "."):
            continue
        tree = ast.parse(path.read_text())
        for node in strings(tree):
            if SQL.match(node.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: SQL {node.value[:40]!r}")
        for node in ast.walk(tree):
            if name in H11_MODULES and isinstance(node, ast.Attribute) and node.attr == "conn":
                continue  # uvicorn's h11 connection, not a database's
            if isinstance(node, ast.Attribute) and node.attr in ("conn", "_conn", "execute", "executemany"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
        for module, node in imported(tree, with_lazy=True):
            if module.split(".")[0] in ("duckdb", "_duckdb"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {module}")
    assert not offenders, "\n".join(offenders)


def test_the_check_finds_what_it_looks_for() -> None:
    """The SQL pattern catches the statements state/ writes (so the test above can fail)."""
    state_sql = [node.value for node in strings(ast.parse((ROOT / "state" / "jobs.py").read_text())) if SQL.match(node.value)]
    assert len(state_sql) > 10


def test_no_import_cycles_even_through_imports_inside_functions() -> None:
    graph = {
        name: {m for m, _ in imported(ast.parse(path.read_text()), with_lazy=True) if m in MODULES}
        for name, path in MODULES.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    assert not cycles, cycles


def test_no_private_name_is_imported_from_another_module() -> None:
    offenders = []
    for path in MODULES.values():
        for module, node in imported(ast.parse(path.read_text()), with_lazy=True):
            if isinstance(node, ast.ImportFrom) and module != node.module:
                imported_name = module.rsplit(".", 1)[1]
                if imported_name.startswith("_") and not imported_name.startswith("__"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module}")
    assert not offenders, "\n".join(offenders)


def test_scheduler_core_depends_on_nothing_but_the_records() -> None:
    for name, path in MODULES.items():
        if name.startswith("scheduler_core"):
            for module, node in imported(ast.parse(path.read_text()), with_lazy=True):
                top = module.split(".")[0]
                where = f"{path.relative_to(ROOT)}:{node.lineno} imports {module}"
                assert top not in ("moreh_tools", "duckdb", "psutil", "pynvml"), where
                assert top != "state" or module.startswith("state.records"), where
