"""Per-study Dice against the column's lateral curvature (scoliosis) on the AP film.

The LAT vertebra mask of the generator is the projection of the whole 3-D body. Where the column
bends in the coronal plane the endplates are tilted across the beam, so on the lateral film each
endplate's rim projects as an ellipse: the mask bulges into the disk space, where the film shows
only a faint double contour, and the disk mask between two bodies narrows to a bow tie. This script
measures how much that costs each channel: the largest deviation (mm) of the level centres from the
straight line through them on the AP film (truth.json ``center_ap_px``), against the per-study Dice of
an evaluation (``per_study.csv`` of the bundle's evaluate config). With an inference output folder
(``spine-app infer ... --out OUT``) it also draws the worst studies' disk masks, truth against
prediction (docs/results.md, "The fresh disk channel and curved spines").

    python scripts/dice_by_curvature.py DATASET PER_STUDY_CSV [--infer OUT] [--figure PNG]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from spine_app.channels import MASK_NAMES

BINS_MM = (0.0, 2.0, 4.0, 6.0, np.inf)


def lateral_deviation_mm(truth: dict) -> float:
    """Largest distance (mm) of the AP level centres from their least-squares straight line."""
    centres = np.array([lv["center_ap_px"] for lv in truth["levels"] if lv.get("in_view_ap")], dtype=float)
    if len(centres) < 3:
        return float("nan")
    rows, cols = centres[:, 0], centres[:, 1]
    design = np.stack([rows, np.ones_like(rows)], axis=1)
    residual = cols - design @ np.linalg.lstsq(design, cols, rcond=None)[0]
    return float(np.abs(residual).max() * truth["pixel_spacing_mm"][0])


def study_rows(dataset: Path, per_study: Path) -> list[dict]:
    """Each evaluated study's deviation and per-channel Dice."""
    rows = []
    for record in csv.DictReader(per_study.open()):
        truth_files = list(dataset.glob(f"*/{record['study_id']}/truth.json"))
        if not truth_files:
            continue
        row = {
            "study_id": record["study_id"],
            "deviation_mm": lateral_deviation_mm(json.loads(truth_files[0].read_text())),
        }
        row.update({name: float(record[f"dice_{name}"]) for name in MASK_NAMES if record.get(f"dice_{name}")})
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: mean Dice per channel in each deviation bin, and Spearman's rho over all studies."""
    deviation = np.array([r["deviation_mm"] for r in rows])
    names = [n for n in MASK_NAMES if all(n in r for r in rows)]
    lines = ["| lateral deviation | studies | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for lo, hi in zip(BINS_MM[:-1], BINS_MM[1:]):
        inside = [r for r, d in zip(rows, deviation) if lo <= d < hi]
        label = f"{lo:.0f}–{hi:.0f} mm" if np.isfinite(hi) else f"≥ {lo:.0f} mm"
        cells = [f"{np.mean([r[n] for r in inside]):.3f}" if inside else "–" for n in names]
        lines.append(f"| {label} | {len(inside)} | " + " | ".join(cells) + " |")
    rho = [spearmanr(deviation, [r[n] for r in rows]).statistic for n in names]
    lines.append("| Spearman rho | | " + " | ".join(f"{v:+.2f}" for v in rho) + " |")
    return "\n".join(lines)


def disk_figure(dataset: Path, infer: Path, rows: list[dict], out: Path, worst: int = 3) -> None:
    """Crops of the worst studies' LAT disk masks: truth only green, prediction only red, both yellow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spine_app.data.io import read_image, read_mask
    from spine_app.viz.contact_sheet import agreement_rgb

    chosen = sorted(rows, key=lambda r: r["Lat_Disk_Height"])[:worst]
    fig, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 7))
    for ax, row in zip(np.atleast_1d(axes), chosen):
        folder = next(dataset.glob(f"*/{row['study_id']}"))
        image = read_image(folder / "LAT.png")[0].astype(float)
        truth = read_mask(folder / "Lat_Disk_Height.png", image.shape) > 0
        pred = read_mask(infer / row["study_id"] / "Lat_Disk_Height.png", image.shape) > 0
        r, c = np.nonzero(truth | pred)
        r0, r1, c0, c1 = max(r.min() - 20, 0), r.max() + 20, max(c.min() - 20, 0), c.max() + 20
        ax.imshow(agreement_rgb(image, truth, pred)[r0:r1, c0:c1])
        ax.set_title(
            f"{row['study_id']}\ndisk Dice {row['Lat_Disk_Height']:.3f}, deviation {row['deviation_mm']:.1f} mm"
        )
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="the dataset folder (its studies' truth.json)")
    parser.add_argument("per_study", type=Path, help="per_study.csv of an evaluation of that dataset")
    parser.add_argument("--infer", type=Path, help="a spine-app infer output folder of the same studies")
    parser.add_argument("--figure", type=Path, help="PNG of the worst studies' disk masks (needs --infer)")
    args = parser.parse_args()
    for path in (args.dataset, args.per_study):
        if not path.exists():
            parser.error(f"{path}: not found")
    rows = study_rows(args.dataset, args.per_study)
    if not rows:
        parser.error(f"{args.per_study}: no study of it has a truth.json under {args.dataset}")
    print(table(rows))
    if args.figure and args.infer:
        disk_figure(args.dataset, args.infer, rows, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
