"""Matplotlib figures without pyplot: a new figure and its axes, and an atomic PNG save. Library code
never switches the user's matplotlib backend (no ``matplotlib.use`` at import): a ``Figure`` made
here renders with Agg whatever backend an interactive session has chosen."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from spine_app.data.io import write_atomic


def subplots(
    nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kwargs: Any
) -> tuple[Figure, Any]:
    """(figure, axes) as ``matplotlib.pyplot.subplots`` returns them, on a figure pyplot does not track."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` to ``path`` as PNG (atomically)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
