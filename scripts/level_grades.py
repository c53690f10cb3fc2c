"""Per-vertebra grades end to end: the grades `spine-app infer` reports (result.json ``levels``)
against the generator's truth.json, for the reported grade (``grade``: a flagged body's morphometry
grade on the film's own pixels where it grades it, else the level head's) and the level head's own
grade (``grade_head``). Each predicted level is matched to the nearest truth level on the LAT film
(within half the typical level spacing); truth levels with no predicted level are not counted.
(docs/results.md, "Grades from the film's own pixels").

    spine-app infer data/synthetic/datalist.json --split test --out test_out
    python scripts/level_grades.py data/synthetic test_out
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score

from spine_app.metrics.matching import nearest_matches


def matched_levels(dataset: Path, predictions: Path) -> list[dict]:
    """(truth grade, reported grade, head grade, source) of every predicted level matched to a truth level."""
    rows = []
    for result_file in sorted(predictions.glob("*/result.json")):
        result = json.loads(result_file.read_text())
        truth_files = list(dataset.glob(f"*/{result['study_id']}/truth.json"))
        if not truth_files or not result.get("levels"):
            continue
        truth = [lv for lv in json.loads(truth_files[0].read_text())["levels"] if lv.get("in_view_lat")]
        centres = np.array([lv["center_lat_px"] for lv in truth])
        spacing = float(np.median(np.diff(centres[:, 0]))) if len(centres) > 1 else 50.0
        levels = result["levels"]["levels"]
        points = [level["centre_px"] for level in levels]
        reach = 0.5 * spacing
        matches = nearest_matches(points, centres, lambda _i, _j, reach=reach: reach, exclusive=False)
        for level, j in zip(levels, matches):
            if j is not None:
                fracture = truth[j]["fracture"]
                rows.append(
                    {
                        "truth": fracture["grade"] if fracture else 0,
                        "reported": level["grade"],
                        "head": level.get("grade_head", level["grade"]),
                        "source": level.get("grade_source", "level head"),
                    }
                )
    return rows


def scores(rows: list[dict], key: str) -> str:
    truth, grade = np.array([r["truth"] for r in rows]), np.array([r[key] for r in rows])
    fractured = truth > 0
    kappa = cohen_kappa_score(truth, grade, weights="linear")
    exact = int((grade[fractured] == truth[fractured]).sum())
    return (
        f"kappa {kappa:.3f}, exact grade {exact}/{int(fractured.sum())} = {exact / max(1, fractured.sum()):.0%}, "
        f"found {int((grade[fractured] > 0).sum())}/{int(fractured.sum())}, "
        f"normal flagged {int((grade[~fractured] > 0).sum())}/{int((~fractured).sum())}"
    )


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit(__doc__)
    rows = matched_levels(Path(argv[0]), Path(argv[1]))
    if not rows:
        sys.exit(f"error: {argv[1]}: no result.json with levels matched to truth.json under {argv[0]}")
    from_morphometry = sum(r["source"] == "morphometry" for r in rows)
    print(f"{len(rows)} matched levels; {from_morphometry} reported grades from the morphometry")
    print(f"reported grade:      {scores(rows, 'reported')}")
    print(f"level head's grade:  {scores(rows, 'head')}")


if __name__ == "__main__":
    main(sys.argv[1:])
