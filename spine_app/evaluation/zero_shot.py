"""A model scored on one set of studies it never trained on: per-mask Dice, the line side check and the
decision AUROC (``scripts/fov_zero_shot.py``: the generator's fields of view; ``scripts/drr_zero_shot.py``:
DRR films of CT volumes)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from spine_app.channels import MASK_NAMES
from spine_app.data.importer import DatalistEntry
from spine_app.data.io import write_atomic
from spine_app.engines.inferer import StudyInferer
from spine_app.engines.metrics import line_side_summary
from spine_app.evaluation.runner import SplitRunner, split_scores
from spine_app.viz.tables import markdown_table


def score_set(
    network: torch.nn.Module,
    canvas: Sequence[int],
    entries: list[DatalistEntry],
    disk_exclusion: float | None,
    working_spacing_mm: float | None,
) -> dict[str, Any]:
    """:func:`split_scores` of ``entries`` under the bundle's inferer (``disk_exclusion`` as inference
    applies it, tall films on the canvas ``working_spacing_mm`` gives them), with ``side_check``
    ("passed/films") and ``studies``."""
    inferer = StudyInferer(roi_size=tuple(canvas), disk_exclusion=disk_exclusion)
    records = SplitRunner(network, entries, list(canvas), inferer=inferer, working_spacing_mm=working_spacing_mm).run()
    sides = line_side_summary(records)
    return {**split_scores(records), "side_check": f"{sides['pass']}/{sides['n']}", "studies": len(records)}


def dice_table(results: Mapping[str, Mapping[str, Any]], first_column: str) -> str:
    """A Markdown table with a row per set of :func:`score_set` results: studies, Dice of every mask,
    side check and decision AUROC."""
    header = [first_column, "studies", *[name.replace("_", " ") for name in MASK_NAMES], "side check", "decision AUROC"]
    rows = [
        [
            name,
            r["studies"],
            *[f"{r['dice'].get(mask, float('nan')):.3f}" for mask in MASK_NAMES],
            r["side_check"],
            f"{r['auroc']['decision']:.3f}",
        ]
        for name, r in results.items()
    ]
    return markdown_table(header, rows)


def write_report(root: str | Path, stem: str, results: Mapping[str, Mapping[str, Any]], first_column: str) -> str:
    """``root/<stem>.json`` (``results``) and ``root/<stem>.md`` (their :func:`dice_table`), each written
    to a temporary name and renamed; returns the table."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    table = dice_table(results, first_column)
    report = json.dumps(results, indent=2, default=float)
    write_atomic(root / f"{stem}.json", lambda tmp: tmp.write_text(report))
    write_atomic(root / f"{stem}.md", lambda tmp: tmp.write_text(table))
    return table


__all__ = ["dice_table", "score_set", "write_report"]
