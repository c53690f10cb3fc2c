"""The shipped model on each field of view the generator renders (issue 16, "measure generalisation").

    python scripts/fov_zero_shot.py --out fov_zero_shot [--n 16] [--seed 7] [--long_side_px 1300]
        [--working_spacing_mm None] [--presets "['whole_spine']"] [--projection divergent]

Generates ``--n`` studies of each field-of-view preset (``lumbar``, ``thoracolumbar``, ``thoracic``,
``whole_spine``; their thorax and patient features as in the preset, films rendered at
``--long_side_px`` for speed), runs the bundle's model through the bundle's inferer (with inference.yaml's ``disk_exclusion`` for the
bundle's own weights) on all of them
(:class:`spine_app.evaluation.runner.SplitRunner`) and prints per-mask Dice, the side check and the
decision AUROC per field of view, next to the ``default`` preset's own studies made the same way.
Tall films get the taller canvas ``spine-app infer`` gives them (inference.yaml's ``working_spacing_mm``;
``--working_spacing_mm None``: every film fitted into the training canvas, as evaluation does).
``--projection divergent`` draws every set (``default`` too) through the generator's divergent beam
(magnification, oblique endplates; each body's mask from its mid-plane section, docs/data.md) instead
of the presets' parallel one.
Writes ``fov_zero_shot.json`` and ``fov_zero_shot.md`` into ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import fire

from spine_app.bundle import BUNDLE_DIR, bundle_disk_exclusion, config_value, load_bundle_network
from spine_app.data.importer import import_dataset, load_datalist
from spine_app.evaluation.zero_shot import score_set, write_report
from spine_app.synthetic.generator import generate_dataset

PRESETS = ("default", "lumbar", "thoracolumbar", "thoracic", "whole_spine")


def main(
    out: str = "fov_zero_shot",
    n: int = 16,
    seed: int = 7,
    long_side_px: int = 1300,
    model: str | None = None,
    working_spacing_mm: float | None | str = "inference",
    presets: tuple[str, ...] = PRESETS,
    projection: str | None = None,
) -> None:
    """Score the model on ``n`` fresh studies of every field-of-view preset (see the module docstring)."""
    root = Path(out)
    if working_spacing_mm == "inference":  # tall films as spine-app infer runs them (inference.yaml)
        working_spacing_mm = config_value("inference.yaml", "working_spacing_mm")
    network, canvas = load_bundle_network(BUNDLE_DIR, model)
    results = {}
    for preset in presets:
        folder = root / preset
        overrides = {} if preset == "default" else {"long_side_px": (long_side_px, long_side_px)}
        if projection is not None:
            overrides["projection"] = projection
        if not (folder / "datalist.json").is_file():
            generate_dataset(folder / "studies", n, seed=seed, preset=preset, workers=2, **overrides)
            import_dataset(folder / "studies", folder / "datalist.json", seed=0, fractions=(0.0, 0.0, 1.0), workers=2)
        entries = load_datalist(folder / "datalist.json")["test"]
        results[preset] = score_set(
            network, canvas, entries, bundle_disk_exclusion(BUNDLE_DIR, model), working_spacing_mm
        )
        scores = results[preset]
        print(preset, {k: round(v, 3) for k, v in scores["dice"].items()}, round(scores["auroc"]["decision"], 3))
    table = write_report(root, "fov_zero_shot", results, "field of view")
    print(table)


if __name__ == "__main__":
    fire.Fire(main)
