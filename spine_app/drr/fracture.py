"""A compression fracture simulated in 3-D: one vertebral body squashed along the spine's axis.

The body's voxels (part BODY of :mod:`spine_app.drr.masks`) are resampled towards the body's mid
height with a per-column scale ``s(u, v)`` = 1 - loss x profile:

* ``wedge``: profile 1 at the anterior wall falling linearly to 0 at the posterior wall;
* ``biconcave``: profile 1 - r^2 over the body's footprint (r the elliptic radius), i.e. the middle
  sinks and the rim keeps its height;
* ``crush``: profile 1 everywhere.

Voxel values come from the original volume at w' = w_c + (w - w_c) / s (trilinear); where w' leaves
the original body the voxel becomes soft tissue (``FILL_HU``) and background label. The Genant grade
follows from the height loss: 20-25 % grade 1, 25-40 % grade 2, > 40 % grade 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spine_app.drr.masks import BODY, Level
from spine_app.synthetic.anatomy import GENANT_LOSS

KINDS = ("wedge", "biconcave", "crush")
FILL_HU = 40


@dataclass
class SimulatedFracture:
    level: str
    grade: int
    kind: str
    height_loss: float  # applied: the scale's largest loss
    measured_height_loss: float | None = None  # 1 - min(Ha, Hm, Hp) after / max(Ha, Hp) before, on the labels
    measured_grade: int | None = None  # grade_for_loss(measured_height_loss)


def grade_for_loss(loss: float) -> int:
    """Genant grade (0-3) of a relative height loss."""
    if loss < 0.20:
        return 0
    if loss < 0.25:
        return 1
    if loss < 0.40:
        return 2
    return 3


def sample_fracture(rng: np.random.Generator, levels: list[str], level=None, grade=None, kind=None):
    """A fracture at ``level`` (random of ``levels``), grade (1-3) and kind; loss uniform in the grade."""
    level = str(level) if level is not None else str(rng.choice(levels))
    grade = int(grade) if grade is not None else int(rng.choice([1, 2, 3]))
    if grade not in GENANT_LOSS:
        raise ValueError(f"fracture grade must be 1, 2 or 3, got {grade!r}")
    kind = str(kind) if kind is not None else str(rng.choice(KINDS))
    if kind not in KINDS:
        raise ValueError(f"fracture type must be one of {', '.join(KINDS)}, got {kind!r}")
    lo, hi = GENANT_LOSS[grade]
    # keep clear of the grade's edges so the measured loss stays inside it
    loss = float(rng.uniform(lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo)))
    return SimulatedFracture(level=level, grade=grade, kind=kind, height_loss=loss)


def compress(
    hu: np.ndarray,
    labels: np.ndarray,
    parts: np.ndarray,
    level: Level,
    i2w: np.ndarray,
    fracture: SimulatedFracture,
) -> tuple[np.ndarray, np.ndarray]:
    """(HU, labels) with ``level``'s body squashed as ``fracture`` says (new arrays)."""
    body = (labels == level.value) & (parts == BODY)
    if not body.any() or not level.corners:
        raise ValueError(f"{level.name}: no vertebral body found to fracture")
    sl = ndimage.find_objects(body.astype(np.uint8))[0]
    idx = np.argwhere(body[sl]) + [s.start for s in sl]
    pts = idx @ i2w[:3, :3].T + i2w[:3, 3]
    local = (pts - level.centroid) @ level.axes
    corner = {k: (p - level.centroid) @ level.axes for k, p in level.corners.items()}
    va, vp = corner["anterior_superior"][1], corner["posterior_superior"][1]
    wc = 0.5 * (corner["middle_superior"][2] + corner["middle_inferior"][2])
    uc = corner["middle_superior"][0]
    u, v, w = local[:, 0], local[:, 1], local[:, 2]
    loss = fracture.height_loss
    if fracture.kind == "wedge":
        profile = np.clip((vp - v) / max(vp - va, 1e-3), 0.0, 1.0)
    elif fracture.kind == "biconcave":
        half_u = max(np.percentile(np.abs(u - uc), 99), 1.0)
        r2 = ((u - uc) / half_u) ** 2 + ((v - 0.5 * (va + vp)) / max(0.5 * (vp - va), 1.0)) ** 2
        profile = 1.0 - np.clip(r2, 0.0, 1.0)
    else:
        profile = np.ones_like(v)
    scale = 1.0 - loss * profile
    src_local = np.stack([u, v, wc + (w - wc) / scale], axis=1)
    src = level.centroid + src_local @ level.axes.T
    w2i = np.linalg.inv(i2w)
    src_idx = src @ w2i[:3, :3].T + w2i[:3, 3]
    values = ndimage.map_coordinates(hu.astype(np.float32), src_idx.T, order=1, mode="nearest")
    near = np.clip(np.round(src_idx).astype(int), 0, np.array(hu.shape) - 1)
    inside = body[near[:, 0], near[:, 1], near[:, 2]]
    out_hu, out_labels = hu.copy(), labels.copy()
    i, j, k = idx.T
    out_hu[i, j, k] = np.where(inside, np.round(values), FILL_HU).astype(hu.dtype)
    out_labels[i, j, k] = np.where(inside, level.value, 0).astype(labels.dtype)
    return out_hu, out_labels
