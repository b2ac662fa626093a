"""``check state``: read every row of every table, so damage anywhere in the file is found now, not by a tool later.

DuckDB keeps a checksum per block and checks it when the block is read; a query that only counts rows reads
no column data, so each table is read whole (a hash of every row). Each table is read in its own snapshot:
a damaged block aborts the transaction that met it, and the tables after it are still checked.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from state.errors import StateError

if TYPE_CHECKING:
    from state.session import Session


class Readable(Protocol):
    """A state that can be read (a StateStore, the daemon's OwnedStore)."""

    def reading(self) -> AbstractContextManager[Session]:
        """One read-only snapshot."""
        ...


@dataclass(frozen=True)
class TableCheck:
    """One table: how many rows were read, or what went wrong reading it."""

    table: str
    rows: int | None
    problem: str = ""


def check_state(db: Readable) -> list[TableCheck]:
    """Read every table of ``db`` whole; one entry per table (and one for the catalogue if it is unreadable)."""
    try:
        with db.reading() as s:
            names = [
                str(r[0])
                for r in s.all(
                    "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY table_name"
                )
            ]
            s.all("SELECT sequence_name FROM duckdb_sequences()")
    except StateError as exc:
        return [TableCheck("(catalogue)", None, str(exc))]
    results = []
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            with db.reading() as s:
                row = s.one(f"SELECT count(*), sum(hash(_row)) FROM {quoted} AS _row")
            results.append(TableCheck(name, int(row[0]) if row else 0))
        except StateError as exc:
            results.append(TableCheck(name, None, str(exc)))
    return results


def summary(results: list[TableCheck]) -> str:
    """One line: ``14 tables, 1234 rows read, no damage found`` or what is damaged."""
    damaged = [r for r in results if r.problem]
    if damaged:
        return "damage found: " + "; ".join(f"{r.table}: {r.problem}" for r in damaged)
    rows = sum(r.rows or 0 for r in results)
    return f"{len(results)} tables, {rows} rows read, no damage found"
