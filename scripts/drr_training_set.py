"""A training-only set of DRR studies rendered from the generator's own CT volumes (every framing).

    python scripts/drr_training_set.py OUT [--thoracic 40] [--thoracolumbar 24] [--whole_spine 16]
        [--lumbar 16] [--seed 21] [--voxel_mm 2.0] [--pixel_mm 1.0]

Each preset's scenes (seed ``--seed`` + the preset's position in the list above) are voxelised at
``--voxel_mm`` and rendered by ``spine-app drr``'s ray caster with the divergent beam and a pose per
study, framed on the labelled bodies at ``--pixel_mm`` (as ``scripts/drr_zero_shot.py`` renders its
test sets, with other seeds). About 5 s a study at 2 mm voxels on the 2-core CPU. The studies of all
presets are gathered in ``OUT/studies`` and imported as one training-only datalist
(``OUT/studies/datalist.json``), ready for ``--extra_dataset_dir OUT/studies`` (docs/results.md,
"DRR films of CT volumes").
"""

from __future__ import annotations

from pathlib import Path

import fire

from spine_app.data.importer import load_datalist
from spine_app.drr.scenes import TRAINING_PLAN, SceneRender, render_training_set


def main(
    out: str,
    thoracic: int = TRAINING_PLAN["thoracic"],
    thoracolumbar: int = TRAINING_PLAN["thoracolumbar"],
    whole_spine: int = TRAINING_PLAN["whole_spine"],
    lumbar: int = TRAINING_PLAN["lumbar"],
    seed: int = 21,
    voxel_mm: float = 2.0,
    pixel_mm: float = 1.0,
) -> None:
    """Render the DRR training set into ``out`` (see the module docstring)."""
    plan = {"thoracic": thoracic, "thoracolumbar": thoracolumbar, "whole_spine": whole_spine, "lumbar": lumbar}
    datalist = render_training_set(Path(out), plan, seed, SceneRender(voxel_mm, pixel_mm, "divergent", False))
    print(f"{len(load_datalist(datalist)['training'])} DRR training studies -> {datalist}")


if __name__ == "__main__":
    fire.Fire(main)
