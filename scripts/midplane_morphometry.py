"""Morphometry on reference masks drawn with the mid-plane convention (issue 15: what the exact Genant
grade can reach when the masks are each body's mid-plane section, docs/results.md "Why the exact grade
stays near 55 %").

Generates ``--n`` studies of ``--preset`` (seed ``--seed``) through the generator's divergent beam,
whose masks are the projection of each body's mid-plane slab, with the slab's half thickness
``--half_mm`` (the generator's ``MID_PLANE_HALF_MM``, 2 mm; not a generator setting), imports them all
as a test split and prints the morphometry of their reference masks against truth.json: the exact
grade of fractured levels with the truth x measured confusion, the height bias, the fractures found
and the study AUROC. ``--positions "[0.04, 0.96]"`` measures the anterior and posterior heights at
those fractions of the body's depth (``spine_app.morphometry.measure.HEIGHT_POSITIONS``).

    python scripts/midplane_morphometry.py --out /tmp/slab05 --half_mm 0.5 [--n 60] [--seed 4242]
"""

from __future__ import annotations

from pathlib import Path

import fire

import spine_app.morphometry.measure as measure
import spine_app.synthetic.render as render
from spine_app.data.importer import import_dataset
from spine_app.morphometry.evaluate import evaluate_morphometry
from spine_app.synthetic.generator import generate_dataset


def main(
    out: str,
    half_mm: float = render.MID_PLANE_HALF_MM,
    n: int = 60,
    seed: int = 4242,
    preset: str = "default",
    positions: tuple[float, float] | None = None,
) -> None:
    """Generate (unless ``out`` holds the datalist already), import and measure; see the module docstring."""
    root = Path(out)
    datalist = root / "datalist.json"
    if not datalist.is_file():
        render.MID_PLANE_HALF_MM = float(half_mm)
        generate_dataset(root / "studies", n, seed=seed, preset=preset, workers=1, projection="divergent")
        import_dataset(root / "studies", datalist, seed=0, fractions=(0.0, 0.0, 1.0), workers=1)
    if positions is not None:
        measure.HEIGHT_POSITIONS.update({"anterior": float(positions[0]), "posterior": float(positions[1])})
    report = evaluate_morphometry(datalist, "test")
    confusion = report["levels"]["confusion_truth_by_measured"]
    exact = sum(confusion[g][g] for g in (1, 2, 3))
    fractured = sum(sum(confusion[g]) for g in (1, 2, 3))
    print(f"slab half thickness {half_mm} mm, height positions {dict(measure.HEIGHT_POSITIONS)}")
    print(f"exact grade of fractured levels {exact}/{fractured} = {exact / max(1, fractured):.0%}")
    print("confusion (rows truth grade 0-3, columns measured):", confusion)
    print("normal levels graded:", sum(confusion[0][1:]), "of", sum(confusion[0]))
    print("height bias (mm):", {k: round(v["bias_mm"], 2) for k, v in report["heights"].items()})
    found = report["fractures"]
    print(f"fractures graded >= 1: {found['detected']}/{found['total']}, by type {found['by_type']}")
    study = report["study"]
    print(f"study AUROC (largest reduction) {study['auroc_max_reduction']:.3f} {study['auroc_ci']}")


if __name__ == "__main__":
    fire.Fire(main)
