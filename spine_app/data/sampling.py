"""Training-sample weights: curved spines drawn more often.

On a column bent in the coronal plane each vertebral endplate is tilted across the lateral beam, so
on the LAT film its rim projects as a faint double contour and the reference LAT vertebra mask
bulges into the disk space; those disk spaces are the disk channel's hardest (docs/results.md, "The
fresh disk channel and curved spines"). :func:`curvature_sampler` draws each training study with a
weight that grows with its column's lateral deviation, measured on its own AP vertebra reference
mask (so any dataset with masks has it, no truth file needed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter1d
from torch.utils.data import WeightedRandomSampler

from spine_app.channels import MASK_NAMES

logger = logging.getLogger(__name__)

AP_VERTEBRA = MASK_NAMES.index("Ap_Vertebra")
# Deviations on the mask's centre line run about 1.5x those of the level centres (the line also
# bends between levels); 4.5 and 9 mm here are about 3 and 6 mm between level centres.
STRAIGHT_MM = 4.5  # a column deviating this little is drawn at weight 1
FULL_MM = 9.0  # ... and from this deviation on at weight 1 + strength


def column_deviation_mm(ap_vertebra: np.ndarray, spacing_mm: float = 1.0, smooth_mm: float = 10.0) -> float:
    """Largest distance (mm) of the column's centre line from its straight least-squares line on an
    AP vertebra mask: the centre line is each row's mean column of mask pixels, smoothed over
    ``smooth_mm`` along the rows. NaN for a mask with fewer than 3 rows of column."""
    mask = np.asarray(ap_vertebra) > 0
    counts = mask.sum(axis=1)
    rows = np.flatnonzero(counts)
    if len(rows) < 3:
        return float("nan")
    cols = (mask[rows] * np.arange(mask.shape[1])).sum(axis=1) / counts[rows]
    cols = uniform_filter1d(cols, size=max(1, round(smooth_mm / spacing_mm)), mode="nearest")
    design = np.stack([rows, np.ones_like(rows)], axis=1).astype(float)
    residual = cols - design @ np.linalg.lstsq(design, cols, rcond=None)[0]
    return float(np.abs(residual).max() * spacing_mm)


def curvature_weight(deviation_mm: float, strength: float) -> float:
    """1 for a straight column (<= 4.5 mm), rising linearly to ``1 + strength`` at 9 mm and beyond;
    1 where the deviation is unknown (NaN)."""
    if not np.isfinite(deviation_mm):
        return 1.0
    ramp = np.clip((deviation_mm - STRAIGHT_MM) / (FULL_MM - STRAIGHT_MM), 0.0, 1.0)
    return float(1.0 + strength * ramp)


def entry_deviation_mm(entry: dict[str, Any]) -> float:
    """:func:`column_deviation_mm` of a datalist entry's AP vertebra reference mask (absolute paths,
    as :func:`spine_app.data.importer.load_datalist` gives them); NaN without that mask."""
    from spine_app.data.io import read_mask

    masks, present = entry.get("masks") or [], entry.get("mask_present") or []
    if len(masks) <= AP_VERTEBRA or not masks[AP_VERTEBRA] or not (present and present[AP_VERTEBRA]):
        return float("nan")
    spacing = (entry.get("meta_ap") or {}).get("spacing") or [1.0, 1.0]
    return column_deviation_mm(read_mask(masks[AP_VERTEBRA]), float(spacing[0]))


def curvature_weights(entries: Sequence[dict[str, Any]], strength: float) -> list[float]:
    """One sampling weight per entry (see :func:`curvature_weight`)."""
    return [curvature_weight(entry_deviation_mm(entry), strength) for entry in entries]


def curvature_sampler(entries: Sequence[dict[str, Any]], strength: float) -> WeightedRandomSampler | None:
    """A sampler that draws ``len(entries)`` studies per epoch with replacement, weighted by
    :func:`curvature_weights` from torch's global generator (seeded by ``set_determinism``, as the
    shuffling loader is); ``None`` when ``strength`` is 0 (then the loader shuffles)."""
    if not strength:
        return None
    if strength < 0:
        raise ValueError(f"curvature_oversampling must be >= 0, got {strength}")
    weights = curvature_weights(entries, float(strength))
    boosted = sum(w > 1.0 for w in weights)
    logger.warning(
        "curvature oversampling %.1f: %d of %d training studies weighted up (mean weight %.2f)",
        strength,
        boosted,
        len(weights),
        float(np.mean(weights)),
    )
    return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True)
