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

from spine_app.metrics.level_suppression import NeighbourSuppression
from spine_app.metrics.levels import fit_records_suppression, level_scores, level_threshold, suppress_records


def _records(folder: str) -> dict[str, list[dict[str, Any]]]:
    path = Path(folder) / "records.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no records.json (an evaluate-config output folder?)")
    return json.loads(path.read_text())


def with_grades_of(detector: list[dict], grader: list[dict]) -> list[dict]:
    """Copies of the detector's records whose predicted levels take the grader's probabilities of
    grade >= 2 and >= 3 for the same level (same study, same box centre); P(grade >= 1) stays the
    detector's, so are its flags."""
    out = []
    for det, gra in zip(detector, grader, strict=True):
        mine = (det.get("levels") or {}).get("predicted", [])
        theirs = (gra.get("levels") or {}).get("predicted", [])
        same = det["study_id"] == gra["study_id"] and len(mine) == len(theirs)
        if not same or (mine and not np.allclose([p["centre"] for p in mine], [q["centre"] for q in theirs], atol=0.5)):
            raise SystemExit(f"{det['study_id']}: the two outputs do not score the same levels (not the same trunk?)")
        predicted = [{**p, "cumulative": [p["cumulative"][0], *q["cumulative"][1:]]} for p, q in zip(mine, theirs)]
        out.append({**det, "levels": {**det["levels"], "predicted": predicted}} if mine else det)
    return out


def _line(name: str, scores: dict[str, Any]) -> str:
    found, flagged, exact = scores["fractured_found"], scores["normal_flagged"], scores["exact_grade_fractured"]
    return (
        f"{name:28s} found {found['hits']}/{found['n']}, flagged {flagged['hits']}/{flagged['n']}, "
        f"kappa {scores['kappa_linear']:.3f}, exact {exact['hits']}/{exact['n']}"
    )


def combine(detector: list[dict], grader: list[dict], threshold: float, suppression: NeighbourSuppression) -> list[str]:
    """Lines for the detector alone and the detector's flags with the grader's grades
    (:func:`spine_app.metrics.levels.level_scores`, as the evaluate report computes them)."""
    hybrid = with_grades_of(detector, grader)
    return [
        _line("detector alone", level_scores(suppress_records(detector, suppression), threshold)),
        _line("detector flags, grader grades", level_scores(suppress_records(hybrid, suppression), threshold)),
    ]


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
