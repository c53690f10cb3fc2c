"""Markdown tables of the reports (evaluation, robustness, benchmarks, morphometry): one builder, so
every table has the same pipes and one ``---`` separator per column."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_row(cells: Sequence[object]) -> str:
    """``| a | b |``: the cells as ``str`` between pipes."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table (no trailing newline): the header row, ``|---|`` per column, one row per item."""
    lines = [markdown_row(header), "|" + "---|" * len(header)]
    return "\n".join(lines + [markdown_row(row) for row in rows])
