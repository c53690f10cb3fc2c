"""An extra training datalist with more default-framing studies beside the main job's mixed_fov ones.

    python scripts/more_default_extras.py --out data/more_extras [--studies 210] [--seed 2]
        [--fov_datalist data/synthetic_fov/datalist.json]
    python -m monai.bundle run training --config_file bundle/configs/train.yaml --num_workers 1 \\
        --extra_datalist data/more_extras/datalist.json --extra_level_labels null --epochs 15

Generates ``--studies`` studies of preset ``default`` (seed ``--seed``, training only, LAT films facing
the canonical way, as the main job's extra studies) into ``--out``/studies and writes
``--out``/datalist.json: the ``--fov_datalist`` training studies (each marked to teach the level head
through its study label only, as ``extra_level_labels: study`` does in the main job) followed by the
new studies (their per-level grades from truth.json). With ``--extra_level_labels null`` every entry
keeps its own label source. The trial of docs/results.md ("More studies with per-level labels at
the same number of steps") trains on it for 15 epochs: 510 studies an epoch, about the main job's
1,950 steps. Paths in the datalist are absolute. Refuses an ``--out`` that already holds a datalist.
"""

from __future__ import annotations

import json
from pathlib import Path

import fire

from spine_app.data.importer import load_datalist
from spine_app.data.io import write_atomic
from spine_app.engines.dataset import EXTRA_OVERRIDES, TRAINING_ONLY, ensure_datalist


def main(
    out: str,
    studies: int = 210,
    seed: int = 2,
    fov_datalist: str = "data/synthetic_fov/datalist.json",
) -> None:
    """Write ``out``/datalist.json (see the module docstring)."""
    target = Path(out) / "datalist.json"
    if target.exists():
        raise SystemExit(f"error: {target}: already exists; choose another --out")
    if not Path(fov_datalist).is_file():
        raise SystemExit(
            f"error: {fov_datalist}: no such datalist (run the README's main job once, or pass --fov_datalist)"
        )
    generated = ensure_datalist(str(Path(out) / "studies"), studies, seed, "default", 0, TRAINING_ONLY, EXTRA_OVERRIDES)
    fov, more = load_datalist(fov_datalist), load_datalist(generated)  # paths made absolute
    merged = {
        **fov,
        "training": [{**entry, "level_labels": "study"} for entry in fov["training"]] + more["training"],
        "sources": {"mixed_fov": str(Path(fov_datalist).resolve()), "default": str(Path(generated).resolve())},
    }
    write_atomic(target, lambda tmp: tmp.write_text(json.dumps(merged, indent=1)))
    print(
        f"{target}: {len(fov['training'])} mixed_fov studies (study labels) + {len(more['training'])} default studies"
    )


if __name__ == "__main__":
    fire.Fire(main)
