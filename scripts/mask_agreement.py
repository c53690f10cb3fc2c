"""Truth against prediction, one channel per panel: crops of a few studies' films with the reference
mask only in green, the predicted mask only in red and both in yellow (what a Dice number hides:
where the two disagree). Reads a dataset in the canonical layout and a ``spine-app infer`` output folder.

    spine-app infer DATASET/datalist.json --split test --out OUT
    python scripts/mask_agreement.py DATASET OUT --panels "['syn7_00000:Ap_Vertebra','syn7_00000:Lat_Vertebra']" \\
        --figure agreement.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire
import numpy as np

from spine_app.channels import CHANNEL_VIEW, MASK_NAMES
from spine_app.data.io import read_image, read_mask
from spine_app.metrics.segmentation import score_masks
from spine_app.viz.contact_sheet import agreement_rgb
from spine_app.viz.figures import save_figure, subplots


def fail(message: str) -> None:
    """A one-line error and exit status 2 (a bad command line)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(dataset: str, predictions: str, panels: str | tuple[str, ...], figure: str, margin: int = 40) -> None:
    """Draw ``panels`` ("STUDY_ID:CHANNEL" each) side by side into ``figure`` (PNG)."""
    dataset_dir, predictions_dir = Path(dataset), Path(predictions)
    panels = (panels,) if isinstance(panels, str) else tuple(panels)
    sources = []
    for panel in panels:
        study, _, channel = str(panel).partition(":")
        if channel not in MASK_NAMES:
            fail(f"panel {panel!r}: give STUDY_ID:CHANNEL, CHANNEL one of {', '.join(MASK_NAMES)}")
        folders = list(dataset_dir.glob(f"*/{study}"))
        if not study or not folders:
            fail(f"{dataset_dir}: no study {study!r}")
        view = CHANNEL_VIEW[MASK_NAMES.index(channel)]
        films = sorted(folders[0].glob(f"{view}.*"))
        truth_file, pred_file = folders[0] / f"{channel}.png", predictions_dir / study / f"{channel}.png"
        for needed in ([films[0]] if films else [folders[0] / f"{view}.png"]) + [truth_file, pred_file]:
            if not needed.is_file():
                fail(f"{needed}: not found")
        sources.append((study, channel, films[0], truth_file, pred_file))
    fig, axes = subplots(1, len(sources), figsize=(4 * len(sources), 7))
    for ax, (study, channel, film, truth_file, pred_file) in zip(np.atleast_1d(axes), sources):
        image = read_image(film)[0]
        truth = read_mask(truth_file, image.shape) > 0
        pred = read_mask(pred_file, image.shape) > 0
        rows = np.nonzero(truth | pred)[0]
        top, bottom = (max(rows.min() - margin, 0), rows.max() + margin) if rows.size else (0, image.shape[0])
        ax.imshow(agreement_rgb(image, truth, pred)[top:bottom])
        ax.set_title(f"{study} {channel}\nDice {score_masks(pred, truth).dice:.3f}")
        ax.axis("off")
    save_figure(fig, figure)
    print(f"wrote {figure}")


if __name__ == "__main__":
    fire.Fire(main)
