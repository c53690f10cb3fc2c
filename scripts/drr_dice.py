"""Dice of `spine-app drr` masks against the generator's own masks, per channel (docs/drr.md table).

For each study: the generator's CT (``spine_app.synthetic.ct``), a parallel-beam DRR in the CT's own
pose on the generator's film, and Dice of every mask against ``generate_study``'s; the two vertebral
lines also get their symmetric mean distance (mm). Prints a markdown table.

    python scripts/drr_dice.py --n 4 --voxel_mm 1.0 [--small]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from spine_app.channels import LINE_CHANNELS, MASK_NAMES
from spine_app.drr.run import generate
from spine_app.drr.study import DrrSettings
from spine_app.synthetic.config import load_preset
from spine_app.synthetic.ct import write_ct
from spine_app.synthetic.generator import generate_study

SMALL = dict(
    levels=("L1", "L4"),
    pixel_spacing_mm=(0.8, 0.8),
    render_voxel_mm=0.8,
    film_height_mm=(220.0, 220.0),
    ap_width_mm=(160.0, 160.0),
    lat_width_mm=(170.0, 170.0),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--voxel_mm", type=float, default=1.0)
    parser.add_argument("--small", action="store_true", help="the tests' small lumbar film (0.8 mm pixels)")
    args = parser.parse_args()
    cfg = load_preset("default", **(SMALL if args.small else {}))
    dice: dict[str, list[float]] = {name: [] for name in MASK_NAMES}
    distance: dict[str, list[float]] = {name: [] for name in LINE_CHANNELS}
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.n):
            folder = Path(tmp) / str(index)
            write_ct(cfg, args.seed, index, folder, args.voxel_mm)
            start = time.perf_counter()
            settings = DrrSettings(beam="parallel", max_rotation_deg=0.0, max_shift_mm=0.0)
            out = generate(folder / "ct.nii.gz", folder / "ct_labels.nii.gz", folder / "out", settings)
            seconds.append(time.perf_counter() - start)
            study = generate_study(cfg, args.seed, index)
            drr = Path(out["studies"][0])
            for name in MASK_NAMES:
                a, b = study.masks[name], np.asarray(Image.open(drr / f"{name}.png")) > 0
                dice[name].append(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))
                if name in distance:
                    da, db = ndimage.distance_transform_edt(~a), ndimage.distance_transform_edt(~b)
                    distance[name].append(0.5 * (db[a].mean() + da[b].mean()) * study.pixel_spacing)
    film = "small lumbar film, 0.8 mm pixels" if args.small else "default film"
    print(
        f"{args.n} studies (seed {args.seed}), {args.voxel_mm} mm CT voxels, {film}; {np.mean(seconds):.1f} s per DRR study\n"
    )
    print("| channel | Dice mean | Dice min | line distance (mm) |")
    print("|---|---|---|---|")
    for name in MASK_NAMES:
        extra = f"{np.mean(distance[name]):.2f}" if name in distance else ""
        print(f"| `{name}` | {np.mean(dice[name]):.3f} | {np.min(dice[name]):.3f} | {extra} |")


if __name__ == "__main__":
    main()
