"""Morphometry against the generator's ``truth.json``: height error, Genant grade agreement,
fractured-level detection and the study-level Damaged AUROC of the largest height reduction.

Masks come either from the dataset itself (the reference masks: the error of the measurement
method alone) or from an inference output folder (``OUT/<study>/Lat_Vertebra.png``: the whole
pipeline). Only levels of the region of interest (``in_roi``) that are graded count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spine_app.channels import MASK_NAMES, channels_of_view
from spine_app.data.importer import load_datalist
from spine_app.data.io import read_image, read_mask
from spine_app.data.levels import exposed_rows
from spine_app.data.study_transforms import normalize_intensity
from spine_app.metrics.classification import auroc, auroc_ci
from spine_app.morphometry.measure import DISK_GAP_MM, match_truth, measure_lat_film, study_fracture_score
from spine_app.viz.tables import markdown_table

HEIGHTS = ("anterior", "middle", "posterior")


def _lat_masks(entry: dict[str, Any], predictions: Path | None) -> dict[str, np.ndarray] | None:
    """The LAT channel masks of one study (name -> bool): predicted if ``predictions`` else reference."""
    names = [MASK_NAMES[c] for c in channels_of_view("LAT")]
    if predictions is not None:
        folder = predictions / entry["study_id"]
        paths = {n: folder / f"{n}.png" for n in names}
        paths = {n: p for n, p in paths.items() if p.is_file()}
    else:
        paths = {n: Path(p) for n, p in zip(MASK_NAMES, entry["masks"]) if n in names and p}
    if "Lat_Vertebra" not in paths:
        return None
    return {n: read_mask(p) for n, p in paths.items()}


def height_errors(errors: dict[str, list[float]]) -> dict[str, dict[str, float | int] | None]:
    """Per height: bias, mean absolute and 95th-percentile absolute error (mm) over the bodies it was
    measured on (``n``), and how many matched bodies it could not be measured on (``not_measured``:
    a non-finite height, e.g. fewer than three pixels at that wall); None where none was measured."""
    out: dict[str, dict[str, float | int] | None] = {}
    for h, values in errors.items():
        v = np.asarray(values, float)
        finite = v[np.isfinite(v)]
        out[h] = (
            {
                "bias_mm": float(np.mean(finite)),
                "mae_mm": float(np.mean(np.abs(finite))),
                "p95_mm": float(np.percentile(np.abs(finite), 95)),
                "n": int(finite.size),
                "not_measured": int(v.size - finite.size),
            }
            if finite.size
            else None
        )
    return out


def evaluate_morphometry(
    datalist: str | Path, split: str = "test", predictions: str | Path | None = None
) -> dict[str, Any]:
    """Compare measured morphometry with truth.json over one split of a synthetic datalist.

    Returns a dict with ``heights`` (bias, MAE, p95 in mm per position), ``levels`` (graded levels,
    exact grade agreement, within-one agreement, confusion matrix truth x measured), ``fractures``
    (detected / total, by deformity type), ``normal_levels_flagged``, ``damaged_studies`` (per
    Damaged study with a fracture in view: one of its fractured levels graded >= 1; its most reduced
    graded level is a fractured one) and ``study`` (AUROC of the
    largest reduction with its 95 % CI, sensitivity and specificity of "any level graded >= 1").
    """
    entries = load_datalist(datalist)[split]
    pred_dir = Path(predictions) if predictions else None
    errors: dict[str, list[float]] = {h: [] for h in HEIGHTS}
    confusion = np.zeros((4, 4), int)
    detected: dict[str, list[bool]] = {}
    normal_flags: list[bool] = []
    labels, scores, any_grade = [], [], []
    damaged_found: list[bool] = []  # per Damaged study: one of its fractured levels graded >= 1
    damaged_top: list[bool] = []  # per Damaged study: its most reduced graded level is a fractured one
    skipped = 0
    for entry in entries:
        truth_path, masks = entry.get("truth"), _lat_masks(entry, pred_dir)
        if not truth_path or masks is None or not entry.get("image_lat"):
            skipped += 1
            continue
        truth = json.loads(Path(truth_path).read_text())
        film, meta = read_image(entry["image_lat"])
        spacing = meta.spacing or tuple(truth["pixel_spacing_mm"])
        # predicted masks are measured as inference measures them: cut and bounded by the exposed field;
        # the reference masks (each body's whole projection) are not
        field = exposed_rows(normalize_intensity(np.asarray(film, np.float32))) if pred_dir else None
        bodies = measure_lat_film(masks, spacing, gap_mm=DISK_GAP_MM if pred_dir else 0.0, field_rows=field)
        pairs = [(b, lv) for b, lv in match_truth(bodies, truth) if lv["in_roi"]]
        for body, level in pairs:
            for h in HEIGHTS:
                errors[h].append(body.heights_mm[h] - level["heights_mm"][h])
            if body.grade < 0:
                continue
            true_grade = level["fracture"]["grade"] if level["fracture"] else 0
            confusion[true_grade, body.grade] += 1
            if level["fracture"]:
                detected.setdefault(level["fracture"]["kind"], []).append(body.grade > 0)
            else:
                normal_flags.append(body.grade > 0)
        roi = [b for b, _ in pairs]
        if any(lv["fracture"] and lv["in_view_lat"] for lv in truth["levels"] if lv["in_roi"]):
            graded_pairs = [(b, lv) for b, lv in pairs if b.grade >= 0]
            damaged_found.append(any(b.grade > 0 and lv["fracture"] for b, lv in graded_pairs))
            top = max(graded_pairs, key=lambda p: p[0].reduction, default=None)
            damaged_top.append(bool(top and top[1]["fracture"]))
        labels.append(int(truth["label"]))
        scores.append(study_fracture_score(roi))
        any_grade.append(any(b.grade > 0 for b in roi))
    graded = int(confusion.sum())
    within_one = sum(confusion[i, j] for i in range(4) for j in range(4) if abs(i - j) <= 1)
    labels_arr, flagged = np.array(labels, bool), np.array(any_grade, bool)
    all_detected = [d for v in detected.values() for d in v]
    return {
        "split": split,
        "masks": "predicted" if pred_dir else "reference",
        "studies": len(labels),
        "skipped_studies": skipped,
        "heights": height_errors(errors),
        "levels": {
            "graded": graded,
            "grade_agreement": float(np.trace(confusion) / graded) if graded else float("nan"),
            "within_one_grade": float(within_one / graded) if graded else float("nan"),
            "confusion_truth_by_measured": confusion.tolist(),
        },
        "fractures": {
            "detected": int(sum(all_detected)),
            "total": len(all_detected),
            "rate": float(np.mean(all_detected)) if all_detected else float("nan"),
            "by_type": {k: {"detected": int(sum(v)), "total": len(v)} for k, v in sorted(detected.items())},
        },
        "normal_levels_flagged": float(np.mean(normal_flags)) if normal_flags else float("nan"),
        "damaged_studies": {
            "total": len(damaged_found),
            "fracture_found": int(sum(damaged_found)),
            "most_reduced_is_fractured": int(sum(damaged_top)),
        },
        "study": {
            "auroc_max_reduction": auroc(labels, scores),
            "auroc_ci": list(auroc_ci(labels, scores)) if len(set(labels)) == 2 else None,
            "sensitivity_any_grade": float(flagged[labels_arr].mean()) if labels_arr.any() else float("nan"),
            "specificity_any_grade": float((~flagged[~labels_arr]).mean()) if (~labels_arr).any() else float("nan"),
        },
    }


def format_morphometry(report: dict[str, Any]) -> str:
    """Markdown summary of :func:`evaluate_morphometry`."""
    lines = [
        f"Morphometry vs truth.json ({report['masks']} masks, {report['split']} split, {report['studies']} studies)",
        "",
        markdown_table(
            ["height", "bias (mm)", "MAE (mm)", "p95 abs error (mm)"],
            [
                [h, f"{row['bias_mm']:+.2f}", f"{row['mae_mm']:.2f}", f"{row['p95_mm']:.2f}"]
                for h, row in report["heights"].items()
                if row
            ],
        ),
    ]
    lv, fx, st, ds = report["levels"], report["fractures"], report["study"], report["damaged_studies"]
    by_type = ", ".join(f"{k} {v['detected']}/{v['total']}" for k, v in fx["by_type"].items())
    ci = st["auroc_ci"]
    lines += [
        "",
        f"- graded levels: {lv['graded']}; exact Genant grade agreement {lv['grade_agreement']:.3f}, "
        f"within one grade {lv['within_one_grade']:.3f}",
        f"- fractured levels found (grade >= 1 at the fractured level): {fx['detected']}/{fx['total']} "
        f"({fx['rate']:.2f}; {by_type})",
        f"- normal levels flagged: {report['normal_levels_flagged']:.3f}",
        f"- Damaged studies with a fractured level found: {ds['fracture_found']}/{ds['total']}; "
        f"whose most reduced level is a fractured one: {ds['most_reduced_is_fractured']}/{ds['total']}",
        f"- study AUROC of the largest height reduction: {st['auroc_max_reduction']:.3f}"
        + (f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
        + f"; any level graded: sensitivity {st['sensitivity_any_grade']:.3f}, "
        f"specificity {st['specificity_any_grade']:.3f}",
    ]
    return "\n".join(lines)
