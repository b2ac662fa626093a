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
    align: str = "left"  # or "right"
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
    return " " * gap + text if align == "right" else text + " " * gap


def _center(text: str, total: int) -> str:
    # The seeds center a header at total//2 - len//2 (e.g. "|  FeID   |", "|            Token           |").
    left = max(total // 2 - display_width(text) // 2, 0)
    return " " * left + text + " " * max(total - left - display_width(text), 0)


def render_grid(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    """Render ``rows`` (each a sequence of cell strings, one per column) as a seed-style grid."""
    widths = [max(display_width(c.header), c.min_width) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            w = display_width(cell)
            if w > widths[i]:
                widths[i] = w
    header = "|" + "|".join(_center(c.header, w + 4) for c, w in zip(columns, widths, strict=True)) + "|"
    inner = len(header) - 2
    lines = ["+" + "-" * inner + "+", header, "+" + "=" * inner + "+"]
    aligns = [c.align for c in columns]
    for row in rows:
        lines.append(
            "|" + "|".join("  " + _pad(cell, w, a) + "  " for cell, w, a in zip(row, widths, aligns, strict=True)) + "|"
        )
    lines.append("+" + "-" * inner + "+")
    return "\n".join(lines)


def name_value_grid(pairs: Sequence[tuple[str, str]]) -> str:
    """Render the seeds' two-column ``Name | Value`` table (``get job feid``, server version)."""
    return render_grid([Column("Name"), Column("Value")], [list(p) for p in pairs])
