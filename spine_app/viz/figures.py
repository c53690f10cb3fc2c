"""Saving matplotlib figures (engines' evaluation report, the explain package's embedding map)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from spine_app.data.io import write_atomic

if TYPE_CHECKING:
    import matplotlib.pyplot as plt


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` as PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
