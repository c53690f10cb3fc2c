"""One study's explanation outputs: ``saliency_<VIEW>.png`` and the ``explanation`` block of
result.json (method, the strongest response per view and the vertebra under it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from spine_app.explain.saliency import nearest_level, peak_position

METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "occlusion": "occlusion sensitivity"}


@dataclass
class ViewExplanation:
    """What one view contributes: the film, its map at the film's size, the vertebra centres."""

    image: np.ndarray  # (rows, cols) the film
    saliency: np.ndarray  # (rows, cols) in [0, 1]
    centres: dict[str, tuple[float, float]] = field(default_factory=dict)  # level name -> (row, col)


def ap_vertebra_centres(mask: np.ndarray, lat_levels: list[str]) -> dict[str, tuple[float, float]]:
    """Centres (row, col) of the AP vertebra mask's bodies, top to bottom.

    Components smaller than a fifth of the median are dropped. They take the LAT film's level names
    when both films show the same number of bodies, else "#k" counted from the top of the field.
    """
    labels, count = ndimage.label(mask)
    if count == 0:
        return {}
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    keep = [i + 1 for i, s in enumerate(sizes) if s >= 0.2 * float(np.median(sizes))]
    centres = sorted(ndimage.center_of_mass(mask, labels, keep))
    names = lat_levels if len(lat_levels) == len(centres) else [f"#{k + 1}" for k in range(len(centres))]
    return {name: (float(r), float(c)) for name, (r, c) in zip(names, centres)}


def write_explanation(
    folder: Path, views: dict[str, ViewExplanation], method: str, study_id: str, probability: float
) -> dict[str, Any]:
    """Write ``saliency_<VIEW>.png`` for each view into ``folder``; returns result.json's ``explanation``.

    ``level`` names the vertebra under the strongest response of the LAT film (else the AP film's),
    or None when the response is not on a vertebra.
    """
    from spine_app.viz.saliency import write_saliency

    block: dict[str, Any] = {
        "method": method,
        "target": "fused Damaged logit (the network's study decision)",
        "views": {},
        "level": None,
    }
    for view, item in views.items():
        peak = peak_position(torch.from_numpy(np.ascontiguousarray(item.saliency)))
        level = nearest_level(peak, item.centres)
        title = f"{study_id} {view}: {METHOD_TITLES[method]} of the Damaged decision (p={probability:.2f})"
        write_saliency(folder / f"saliency_{view}.png", item.image, item.saliency, title, peak, level)
        block["views"][view] = {
            "file": f"saliency_{view}.png",
            "peak_px": list(peak) if peak is not None else None,
            "level": level,
        }
    for view in ("LAT", "AP"):
        if block["views"].get(view, {}).get("level"):
            block["level"] = block["views"][view]["level"]
            break
    return block
