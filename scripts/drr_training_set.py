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

import shutil
import sys
from pathlib import Path

import fire

from spine_app.data.importer import import_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drr_zero_shot import render_set  # noqa: E402  (a sibling script)


def main(
    out: str,
    thoracic: int = 40,
    thoracolumbar: int = 24,
    whole_spine: int = 16,
    lumbar: int = 16,
    seed: int = 21,
    voxel_mm: float = 2.0,
    pixel_mm: float = 1.0,
) -> None:
    """Render the DRR training set into ``out`` (see the module docstring)."""
    root = Path(out)
    plan = {"thoracic": thoracic, "thoracolumbar": thoracolumbar, "whole_spine": whole_spine, "lumbar": lumbar}
    gathered = root / "studies"
    for k, (preset, n) in enumerate(plan.items()):
        if n <= 0:
            continue
        render_set(root / preset, preset, n, seed + k, voxel_mm, pixel_mm, "divergent", False)
        for study in sorted((root / preset / "studies").glob("*/*")):
            target = gathered / study.parent.name / study.name
            if study.is_dir() and not target.exists():
                shutil.copytree(study, target)
    summary = import_dataset(gathered, gathered / "datalist.json", seed=0, fractions=(1.0, 0.0, 0.0), workers=1)
    print(f"{summary['summary']['imported']} DRR training studies -> {gathered / 'datalist.json'}")


if __name__ == "__main__":
    fire.Fire(main)
