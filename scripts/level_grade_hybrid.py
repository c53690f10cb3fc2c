"""Flags from one level head, grades from another (docs/results.md, "The level head refitted on the
reference boxes"): two evaluate-config outputs of models with the same encoder and decoder (so both
heads scored the same predicted boxes, level by level) are combined. The detector's validation
threshold and neighbour suppression decide which levels are flagged, exactly as in its own report;
a flagged level's grade comes from the grader's cumulative probabilities of grade >= 2 and >= 3.

    python -m monai.bundle run evaluate --config_file "['bundle/configs/train.yaml','bundle/configs/evaluate.yaml']" \
        --ckpt_dir RUN_A --output_dir eval_a [--dataset_dir DIR]      # the same for RUN_B -> eval_b
    python scripts/level_grade_hybrid.py eval_a eval_b [--test_from eval_a_fresh,eval_b_fresh]

``--test_from``: score the test split of two other outputs of the same pair (e.g. a fresh set) at
the thresholds of the first pair's validation split, as a user running the bundle would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fire
import numpy as np
from sklearn.metrics import cohen_kappa_score

from spine_app.metrics.levels import (
    fit_records_suppression,
    graded,
    level_threshold,
    reference_levels,
    suppress_records,
)


def _records(folder: str) -> dict[str, list[dict[str, Any]]]:
    path = Path(folder) / "records.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no records.json (an evaluate-config output folder?)")
    return json.loads(path.read_text())


def _row(name: str, truth: np.ndarray, pred: np.ndarray) -> str:
    fractured, flagged = truth > 0, pred > 0
    kappa = cohen_kappa_score(truth, pred, weights="linear", labels=[0, 1, 2, 3])
    return (
        f"{name:28s} found {int((flagged & fractured).sum())}/{int(fractured.sum())}, "
        f"flagged {int((flagged & ~fractured).sum())}/{int((~fractured).sum())}, kappa {kappa:.3f}, "
        f"exact {int(((pred == truth) & fractured).sum())}/{int(fractured.sum())}"
    )


def combine(detector: list[dict], grader: list[dict], threshold: float, suppression: Any) -> list[str]:
    """Rows for the detector alone and the detector's flags with the grader's grades."""
    rows_a = reference_levels(suppress_records(detector, suppression))
    rows_b = reference_levels(grader)
    if len(rows_a) != len(rows_b) or any(a["grade"] != b["grade"] for a, b in zip(rows_a, rows_b, strict=True)):
        raise SystemExit("the two outputs do not score the same levels (not the same trunk, or other studies)")
    truth = np.array([a["grade"] for a in rows_a])
    alone = np.array([graded(a["cumulative"], threshold, a["probability"]) for a in rows_a])
    hybrid = np.array(
        [
            graded([a["cumulative"][0], b["cumulative"][1], b["cumulative"][2]], threshold, a["probability"])
            for a, b in zip(rows_a, rows_b, strict=True)
        ]
    )
    return [_row("detector alone", truth, alone), _row("detector flags, grader grades", truth, hybrid)]


def main(detector: str, grader: str, test_from: str | tuple | None = None) -> None:
    """Print found / flagged / kappa / exact grade of the detector alone and of the combination."""
    a, b = _records(detector), _records(grader)
    suppression = fit_records_suppression(a["validation"])
    threshold = level_threshold(a["validation"])
    print(f"detector threshold {threshold:.4f}, neighbour suppression {suppression.weight} (its validation)")
    sets = {"validation": (a["validation"], b["validation"]), "test": (a["test"], b["test"])}
    if test_from:
        other = test_from.split(",") if isinstance(test_from, str) else list(test_from)
        if len(other) != 2:
            raise SystemExit("--test_from takes two output folders: the detector's and the grader's")
        sets[f"test of {other[0]}"] = (_records(other[0])["test"], _records(other[1])["test"])
    for name, (det, gra) in sets.items():
        print(f"== {name}")
        for line in combine(det, gra, threshold, suppression):
            print("  " + line)


if __name__ == "__main__":
    fire.Fire(main)
