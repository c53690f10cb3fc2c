"""Per-vertebra grades end to end: the grades `spine-app infer` reports (result.json ``levels``)
against the generator's truth.json, for the reported grade (``grade``: a flagged body's morphometry
grade on the film's own pixels where it grades it, else the level head's) and the level head's own
grade (``grade_head``). Each predicted level is matched to the nearest truth level on the LAT film
(within half the typical level spacing); truth levels with no predicted level are not counted.
(docs/results.md, "Grades from the film's own pixels"). It then lists every fractured truth level
the reported levels miss (not flagged, or no predicted level near it) with the nearest predicted
level's fracture probability, and whether that level's centre lies between two truth bodies (a box
over a pair of bodies the canvas merged) or on its own body. Per fracture kind it prints the exact
reported grade and the morphometry's height-ratio error (ratios measured on the predicted LAT mask
minus the generator's 3-D truth), which shows what the masks can and cannot measure. First it prints
the study decisions: Damaged studies found, Normal studies kept, and Normal studies with a graded
vertebra (the study's class is its folder under DATASET).

    spine-app infer data/synthetic/datalist.json --split test --out test_out
    python scripts/level_grades.py data/synthetic test_out
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score

from spine_app.metrics.matching import nearest_matches


def _truth_levels(dataset: Path, study_id: str) -> tuple[list[dict], np.ndarray, float] | None:
    """(truth levels in view on the LAT film, their centres (N, 2), typical spacing) of a study, or None."""
    truth_files = list(dataset.glob(f"*/{study_id}/truth.json"))
    if not truth_files:
        return None
    truth = [lv for lv in json.loads(truth_files[0].read_text())["levels"] if lv.get("in_view_lat")]
    centres = np.array([lv["center_lat_px"] for lv in truth], dtype=float).reshape(-1, 2)
    spacing = float(np.median(np.diff(centres[:, 0]))) if len(centres) > 1 else 50.0
    return truth, centres, spacing


def _scored_studies(
    dataset: Path, predictions: Path
) -> Iterator[tuple[dict, list[dict], np.ndarray, float, list[dict]]]:
    """(result.json, truth levels, their centres, typical spacing, predicted levels) of every prediction
    with levels whose study has a truth.json under ``dataset``."""
    for result_file in sorted(predictions.glob("*/result.json")):
        result = json.loads(result_file.read_text())
        found = _truth_levels(dataset, result["study_id"])
        if found is not None and result.get("levels"):
            yield (result, *found, result["levels"]["levels"])


def matched_levels(dataset: Path, predictions: Path) -> list[dict]:
    """(truth grade, reported grade, head grade, source) of every predicted level matched to a truth level."""
    rows = []
    for _result, truth, centres, spacing, levels in _scored_studies(dataset, predictions):
        points = [level["centre_px"] for level in levels]
        reach = 0.5 * spacing
        matches = nearest_matches(points, centres, lambda _i, _j, reach=reach: reach, exclusive=False)
        for level, j in zip(levels, matches):
            if j is not None:
                fracture = truth[j]["fracture"]
                measured = (level.get("morphometry") or {}).get("ratios") or {}
                rows.append(
                    {
                        "truth": fracture["grade"] if fracture else 0,
                        "kind": fracture["kind"] if fracture else "none",
                        "reported": level["grade"],
                        "head": level.get("grade_head", level["grade"]),
                        "source": level.get("grade_source", "level head"),
                        "ratio_errors": {
                            key: measured[key] - value
                            for key, value in truth[j].get("ratios", {}).items()
                            if measured.get(key) is not None
                        },
                    }
                )
    return rows


def missed_fractures(dataset: Path, predictions: Path) -> list[dict]:
    """Every fractured truth level with no flagged predicted level within half a spacing: the nearest
    predicted level's probability and distance (in spacings), and ``between_bodies``: that level's centre
    is over 0.3 spacings from the nearest truth body and within 0.75 of the second (a merged pair)."""
    missed = []
    for result, truth, centres, spacing, levels in _scored_studies(dataset, predictions):
        points = np.array([level["centre_px"] for level in levels], dtype=float).reshape(-1, 2)
        for j, level in enumerate(truth):
            if not level["fracture"]:
                continue
            gaps = np.hypot(*(points - centres[j]).T) / spacing if len(points) else np.zeros(0)
            k = int(np.argmin(gaps)) if gaps.size else None
            if k is not None and gaps[k] <= 0.5 and levels[k]["flagged"]:
                continue
            near = np.sort(np.hypot(*(centres - points[k]).T) / spacing) if k is not None else np.zeros(0)
            missed.append(
                {
                    "study_id": result["study_id"],
                    "level": level["name"],
                    "grade": level["fracture"]["grade"],
                    "kind": level["fracture"]["kind"],
                    "probability": levels[k]["fracture_probability"] if k is not None else None,
                    "distance": float(gaps[k]) if k is not None else None,
                    "between_bodies": bool(len(near) > 1 and near[0] > 0.3 and near[1] < 0.75),
                }
            )
    return missed


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


def by_kind(rows: list[dict]) -> list[str]:
    """Per fracture kind (and normal bodies): exact reported grade, and the morphometry's height-ratio
    error (measured on the predicted LAT mask minus the generator's 3-D truth; mean and SD)."""
    lines = []
    for kind in sorted({r["kind"] for r in rows}, key=lambda k: (k != "none", k)):
        group = [r for r in rows if r["kind"] == kind]
        exact = sum(r["reported"] == r["truth"] for r in group)
        errors = []
        for key in ("anterior_posterior", "middle_posterior", "posterior_expected"):
            values = np.array([r["ratio_errors"][key] for r in group if key in r["ratio_errors"]])
            if values.size:
                errors.append(f"{key} {values.mean():+.3f} (SD {values.std():.3f}, n {values.size})")
        lines.append(f"  {kind}: exact grade {exact}/{len(group)}; ratio error " + ", ".join(errors))
    return lines


def study_decisions(dataset: Path, predictions: Path) -> dict[str, int]:
    """The study decisions of ``predictions`` (result.json ``label``) against each study's class folder
    under ``dataset`` (``<class>/<study_id>/``): Damaged studies found, Normal studies kept, and Normal
    studies with a flagged, graded vertebra (a report that names a fracture in a Normal spine)."""
    counts = dict.fromkeys(("damaged", "damaged_found", "normal", "normal_kept", "normal_graded"), 0)
    for result_file in sorted(predictions.glob("*/result.json")):
        result = json.loads(result_file.read_text())
        folders = [path for path in dataset.glob(f"*/{result['study_id']}") if path.is_dir()]
        if not folders or folders[0].parent.name not in ("Normal", "Damaged"):
            continue
        levels = (result.get("levels") or {}).get("levels", [])
        if folders[0].parent.name == "Damaged":
            counts["damaged"] += 1
            counts["damaged_found"] += result.get("label") == "Damaged"
        else:
            counts["normal"] += 1
            counts["normal_kept"] += result.get("label") == "Normal"
            counts["normal_graded"] += any(level.get("flagged") and level.get("grade", 0) > 0 for level in levels)
    return counts


def main(argv: list[str]) -> int:
    if len(argv) != 2 or any(arg.startswith("--") for arg in argv):
        print("usage: python scripts/level_grades.py DATASET PREDICTIONS", file=sys.stderr)
        return 2
    for path in map(Path, argv):
        if not path.is_dir():
            print(f"{path}: not a folder", file=sys.stderr)
            return 2
    rows = matched_levels(Path(argv[0]), Path(argv[1]))
    if not rows:
        print(f"{argv[1]}: no result.json with levels matched to truth.json under {argv[0]}", file=sys.stderr)
        return 1
    studies = study_decisions(Path(argv[0]), Path(argv[1]))
    print(
        f"studies: Damaged found {studies['damaged_found']}/{studies['damaged']}, "
        f"Normal kept {studies['normal_kept']}/{studies['normal']}, "
        f"Normal with a graded vertebra {studies['normal_graded']}/{studies['normal']}"
    )
    from_morphometry = sum(r["source"] == "morphometry" for r in rows)
    print(f"{len(rows)} matched levels; {from_morphometry} reported grades from the morphometry")
    print(f"reported grade:      {scores(rows, 'reported')}")
    print(f"level head's grade:  {scores(rows, 'head')}")
    print("by kind (morphometry ratio error: measured on the predicted LAT mask minus truth):")
    print("\n".join(by_kind(rows)))
    missed = missed_fractures(Path(argv[0]), Path(argv[1]))
    print(
        f"fractured levels missed: {len(missed)}, of them under a box between two bodies: "
        f"{sum(m['between_bodies'] for m in missed)}"
    )
    for m in missed:
        where = (
            "no predicted level"
            if m["probability"] is None
            else (
                f"P(fracture) {m['probability']:.3f} at {m['distance']:.2f} spacings"
                + (", box between two bodies" if m["between_bodies"] else "")
            )
        )
        print(f"  {m['study_id']} {m['level']}: grade {m['grade']} {m['kind']}, {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
