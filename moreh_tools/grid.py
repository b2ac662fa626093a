"""The seeds' grid tables: ``+---+`` borders, ``+===+`` under the header, two spaces of padding.

Every table the tools print goes through :func:`render_grid`, so field scripts that parse these
lines see one format everywhere.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One column: its header, how values align, and a minimum content width."""

    header: str
    align: str = "left"  # or "right" or "center"
    min_width: int = 0


def display_width(text: str) -> int:
    """Return how many terminal cells ``text`` takes (wide East Asian characters take two)."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, align: str) -> str:
    gap = width - display_width(text)
    if gap <= 0:
        return text
    if align == "center":  # moreh-smi -p centres its figures, the odd space on the left ("|     0 %    |")
        left = (gap + 1) // 2
        return " " * left + text + " " * (gap - left)
    return " " * gap + text if align == "right" else text + " " * gap


def _center(text: str, total: int) -> str:
    # The seeds center a header at total//2 - len//2 (e.g. "|  FeID   |", "|            Token           |").
    left = max(total // 2 - display_width(text) // 2, 0)
    return " " * left + text + " " * max(total - left - display_width(text), 0)


def render_grid(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    """Render ``rows`` (each a sequence of cell strings, one per column) as a seed-style grid."""
    widths = [max(display_width(c.header), c.min_width) for c in columns]
    if any(len(row) != len(columns) for row in rows):
        raise ValueError("every row needs one cell per column")
    # Big tables (10,000 tokens) are almost always ASCII: measure them column by column with len()
    # and pad with one %-format per row, which is several times faster than padding cell by cell.
    cells_by_column = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    ascii_only = all("".join(cells).isascii() for cells in cells_by_column)
    for i, cells in enumerate(cells_by_column):
        if cells:
            widths[i] = max(widths[i], max(map(len if ascii_only else display_width, cells)))
    header = "|" + "|".join(_center(c.header, w + 4) for c, w in zip(columns, widths, strict=True)) + "|"
    inner = len(header) - 2
    lines = ["+" + "-" * inner + "+", header, "+" + "=" * inner + "+"]
    aligns = [c.align for c in columns]
    fast = ascii_only and "center" not in aligns  # %-formats cannot centre
    if fast:
        formats = (f"  %{'' if a == 'right' else '-'}{w}s  " for w, a in zip(widths, aligns, strict=True))
        row_format = "|" + "|".join(formats) + "|"
        lines.extend(row_format % tuple(row) for row in rows)
    for row in rows if not fast else ():
        lines.append(
            "|" + "|".join("  " + _pad(cell, w, a) + "  " for cell, w, a in zip(row, widths, aligns, strict=True)) + "|"
        )
    lines.append("+" + "-" * inner + "+")
    return "\n".join(lines)


def name_value_grid(pairs: Sequence[tuple[str, str]]) -> str:
    """Render the seeds' two-column ``Name | Value`` table (``get job feid``, server version)."""
    return render_grid([Column("Name"), Column("Value")], [list(p) for p in pairs])
