"""The shipped model on DRR films of CT volumes (issue 16: the closest the project comes to its real-anatomy check).

    python scripts/drr_zero_shot.py --out drr_zero_shot [--presets "['thoracic']"] [--n 8] [--seed 11]
        [--voxel_mm 1.0] [--pixel_mm 1.0] [--beam divergent] [--ct_film False] [--model PATH]

The real-anatomy check of issue 16 renders radiographs from a real chest CT (thoracic field of view,
1 mm pixels) and runs the shipped model on them zero-shot. Real CTs cannot be downloaded here, so
this script takes the same path through the project's own CTs: for each preset, ``--n`` generator
scenes are voxelised (``spine-app synth --ct``: HU volume and vertebra label map, ``--voxel_mm``) and
rendered by ``spine-app drr``'s ray caster (Beer-Lambert line integrals, ``--beam`` divergent by
default, a pose drawn per study, the imaging chain of the preset). With ``--ct_film False`` (default)
the film is framed on the labelled bodies at ``--pixel_mm`` as for a CT that carries no generator
film, the way a real CT is rendered; ``--ct_film True`` uses the generator's own film frame.

The films differ from the generator's in how they are made (ray casting through voxels instead of
the generator's analytic projection, ribs as 3-D tubes, 1 mm partial volume, the framing), not in
the anatomy, so this measures the rendering and framing gap, not the anatomy gap.

Every study is scored like ``scripts/fov_zero_shot.py`` scores its sets (the bundle's inferer with
inference.yaml's ``disk_exclusion`` and ``working_spacing_mm``): per-mask Dice, the line side check
and the decision AUROC. Writes ``OUT/<preset>/datalist.json`` (its ``test`` split: run ``spine-app
infer`` and ``scripts/level_grades.py`` on it for the grades), ``drr_zero_shot.json`` and
``drr_zero_shot.md`` into ``--out``. A preset whose datalist exists is not rendered again: a second run
(another ``--model``) scores the same studies, and the report gives the settings they were rendered
with (``OUT/<preset>/rendered.json``), whatever the command line says.
"""

from __future__ import annotations

import json
from pathlib import Path

import fire

from spine_app.bundle import BUNDLE_DIR, bundle_disk_exclusion, config_value, load_bundle_network
from spine_app.data.importer import import_dataset, load_datalist
from spine_app.data.io import write_atomic
from spine_app.drr.scenes import SceneRender, render_scenes
from spine_app.evaluation.zero_shot import score_set, write_report

PRESETS = ("thoracic",)
#: how a preset's studies were rendered (the settings, seconds per study), beside its datalist
RENDERED = "rendered.json"


def main(
    out: str = "drr_zero_shot",
    presets: tuple[str, ...] = PRESETS,
    n: int = 8,
    seed: int = 11,
    voxel_mm: float = 1.0,
    pixel_mm: float = 1.0,
    beam: str = "divergent",
    ct_film: bool = False,
    model: str | None = None,
) -> None:
    """Render and score DRR studies of every preset in ``presets`` (see the module docstring)."""
    root = Path(out)
    working_spacing_mm = config_value("inference.yaml", "working_spacing_mm")
    network, canvas = load_bundle_network(BUNDLE_DIR, model)
    results = {}
    for preset in (presets,) if isinstance(presets, str) else presets:
        folder = root / preset
        if not (folder / "datalist.json").is_file():
            settings = {
                "n": n,
                "seed": seed,
                "voxel_mm": voxel_mm,
                "pixel_mm": pixel_mm,
                "beam": beam,
                "ct_film": ct_film,
            }
            settings["seconds_per_study"] = render_scenes(
                folder, preset, n, seed, SceneRender(voxel_mm, pixel_mm, beam, ct_film)
            )
            import_dataset(folder / "studies", folder / "datalist.json", seed=0, fractions=(0.0, 0.0, 1.0), workers=1)
            record = json.dumps(settings, indent=2)
            write_atomic(folder / RENDERED, lambda tmp, text=record: tmp.write_text(text))
        rendered = json.loads((folder / RENDERED).read_text()) if (folder / RENDERED).is_file() else {}
        entries = load_datalist(folder / "datalist.json")["test"]
        scores = score_set(network, canvas, entries, bundle_disk_exclusion(BUNDLE_DIR, model), working_spacing_mm)
        results[preset] = {**scores, "rendered": rendered}
        print(preset, {k: round(v, 3) for k, v in scores["dice"].items()}, round(scores["auroc"]["decision"], 3))
    table = write_report(root, "drr_zero_shot", results, "preset")
    print(table)


if __name__ == "__main__":
    fire.Fire(main)
