"""Parallel against divergent beam on the same synthetic study (docs/data.md "The beam").

    python scripts/beam_figure.py --out docs/figures/divergent_beam.png [--seed 0] [--index 3] [--sod 1000]

Renders study ``index`` of ``seed`` (preset ``default``) once with the parallel beam and once with a
point source ``sod`` mm from the isocentre, and draws the top of each lateral film (its bodies farthest
from the central ray) with the mask outlines: the divergent film shows the oblique endplates' double
contours and the masks (the bodies' mid-plane sections) keep the disk spaces open.
"""

from __future__ import annotations

from pathlib import Path

import fire
import numpy as np
from matplotlib.figure import Figure

from spine_app.synthetic.config import load_preset
from spine_app.synthetic.generator import generate_study

OUTLINES = (
    ("Lat_Vertebra", "tab:red"),
    ("Lat_Disk_Height", "gold"),
    ("Lat_Anterior_Vertebral_Line", "cyan"),
    ("Lat_Posterior_Vertebral_Line", "magenta"),
)


def main(out: str = "docs/figures/divergent_beam.png", seed: int = 0, index: int = 3, sod: float = 1000.0) -> None:
    """Write the figure (see the module docstring)."""
    studies = {
        "parallel beam": generate_study(load_preset("default"), seed, index),
        f"divergent beam, source {sod:.0f} mm from the isocentre": generate_study(
            load_preset("default", projection="divergent", source_isocentre_mm=(sod, sod)), seed, index
        ),
    }
    fig = Figure(figsize=(10, 5.4))
    axes = fig.subplots(1, 4)
    for n, (title, study) in enumerate(studies.items()):
        image = study.images["LAT"]
        rows, cols = np.nonzero(study.masks["Lat_Vertebra"][: image.shape[0] // 3])
        r0, r1 = 0, image.shape[0] // 3
        c0, c1 = max(cols.min() - 40, 0), min(cols.max() + 40, image.shape[1])
        for k, outline in enumerate((False, True)):
            ax = axes[2 * n + k]
            ax.imshow(image[r0:r1, c0:c1], cmap="gray")
            if outline:
                for name, colour in OUTLINES:
                    ax.contour(study.masks[name][r0:r1, c0:c1], levels=[0.5], colors=colour, linewidths=0.7)
            ax.set_title(title if not outline else "with the masks", fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(target)
    print(target)


if __name__ == "__main__":
    fire.Fire(main)
