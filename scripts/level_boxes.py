"""The bodies the level head scored against the generator's truth levels: how many truth levels in
view on the LAT film got no scored body near them (missed: not found on the mask, cut by the field's
edge, or beyond the head's cap), how many got two or more (split: one body cut in pieces), and how
many scored bodies lie on no truth level (spurious: e.g. blobs in the pelvis below L5), with how many
of those were flagged. A scored body belongs to the nearest truth level within half the film's
typical level spacing (as in ``scripts/level_grades.py``). ``--studies`` lists the studies with any
of the three. (docs/results.md, "Bodies measured against their neighbours")

    spine-app infer data/synthetic/datalist.json --split test --out test_out
    python scripts/level_boxes.py data/synthetic test_out [--studies]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from spine_app.metrics.matching import nearest_matches


def audit(dataset: Path, predictions: Path) -> tuple[dict[str, int], list[str]]:
    """(totals, one line per study with a missed, split or spurious level) of a ``spine-app infer`` output."""
    totals = dict.fromkeys(("studies", "truth_levels", "scored", "missed", "split", "spurious", "spurious_flagged"), 0)
    lines = []
    for result_file in sorted(predictions.glob("*/result.json")):
        result = json.loads(result_file.read_text())
        truth_files = list(dataset.glob(f"*/{result['study_id']}/truth.json"))
        if not truth_files or not result.get("levels"):
            continue
        truth = [lv for lv in json.loads(truth_files[0].read_text())["levels"] if lv.get("in_view_lat")]
        centres = np.array([lv["center_lat_px"] for lv in truth], dtype=float).reshape(-1, 2)
        spacing = float(np.median(np.diff(centres[:, 0]))) if len(centres) > 1 else 50.0
        levels = result["levels"]["levels"]
        reach = 0.5 * spacing
        matches = nearest_matches(
            [level["centre_px"] for level in levels], centres, lambda _i, _j, reach=reach: reach, exclusive=False
        )
        hits = np.bincount([j for j in matches if j is not None], minlength=len(centres))
        unmatched = [level for level, j in zip(levels, matches) if j is None]
        spurious, flagged = len(unmatched), sum(bool(level.get("flagged")) for level in unmatched)
        missed, split = np.flatnonzero(hits == 0), np.flatnonzero(hits >= 2)
        totals["studies"] += 1
        totals["truth_levels"] += len(centres)
        totals["scored"] += len(levels)
        totals["missed"] += missed.size
        totals["split"] += split.size
        totals["spurious"] += spurious
        totals["spurious_flagged"] += flagged
        if missed.size or split.size or spurious:
            names = [str(level.get("name", k)) for k, level in enumerate(truth)]
            lines.append(
                f"  {result['study_id']} ({result.get('label')}): missed {[names[k] for k in missed]}, "
                f"split {[names[k] for k in split]}, spurious {spurious} (flagged {flagged})"
            )
    return totals, lines


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    unknown = [a for a in argv if a.startswith("--") and a != "--studies"]
    if len(args) != 2 or unknown:
        print("usage: python scripts/level_boxes.py DATASET PREDICTIONS [--studies]", file=sys.stderr)
        return 2
    dataset, predictions = Path(args[0]), Path(args[1])
    for path in (dataset, predictions):
        if not path.is_dir():
            print(f"{path}: not a folder", file=sys.stderr)
            return 2
    totals, lines = audit(dataset, predictions)
    print(", ".join(f"{key} {value}" for key, value in totals.items()))
    if "--studies" in argv:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
