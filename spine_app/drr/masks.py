"""From a vertebra label map to the project's mask structures.

Each labelled vertebra is split into parts relative to its spinal canal, in a local frame (u to the
patient's left, v posterior, w along the spine's axis through the neighbouring vertebrae):

* the canal is the largest hole of the vertebra's axial footprint (the voxels projected on the
  u-v plane, closed by one voxel); without a hole (sacrum, broken arch) the gap behind the body on
  the mid line is used, and without either the whole vertebra is body;
* ``body``: anterior to the canal's front edge;
* ``pedicle``: the bony bridges beside the canal, in the anterior half of the canal's depth and
  within the body's width (the laminae, facets and transverse processes are left out);
* ``spinous``: the mid-line part posterior to the canal's back edge (beyond the laminae' junction);
* everything else is ``other`` posterior elements (projected into no mask).

Per level the body's anterior/middle/posterior superior and inferior points (the generator's
``_corner_points``) are measured on the mid-sagittal slab; the disk-height polygons and the vertebral
lines are drawn from them after projection, as the generator draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from spine_app.drr.labels import SACRUM, LabelConvention

BODY, PEDICLE, SPINOUS, OTHER = 1, 2, 3, 4
PART_NAMES = {BODY: "body", PEDICLE: "pedicle", SPINOUS: "spinous", OTHER: "other"}


@dataclass
class Level:
    """One labelled vertebra: its local frame, canal and body landmarks (patient frame, mm)."""

    name: str
    value: int
    centroid: np.ndarray
    axes: np.ndarray  # (3, 3) columns u, v, w (patient frame)
    canal: tuple[float, float, float, float] | None  # (u0, u1, v0, v1) in the local frame
    corners: dict[str, np.ndarray] = field(default_factory=dict)
    heights_mm: dict[str, float] = field(default_factory=dict)
    body_center: np.ndarray | None = None


def _local_frames(centroids: list[np.ndarray]) -> list[np.ndarray]:
    """Per level (3, 3) axes: w along the neighbours' centroids (superior), v posterior, u = v x w."""
    frames = []
    n = len(centroids)
    for i in range(n):
        up = centroids[max(i - 1, 0)]
        down = centroids[min(i + 1, n - 1)]
        w = up - down if n > 1 else np.array([0.0, 0.0, 1.0])
        w = w / (np.linalg.norm(w) or 1.0)
        if w[2] < 0:
            w = -w
        v = np.array([0.0, 1.0, 0.0]) - w[1] * w
        v /= np.linalg.norm(v)
        u = np.cross(v, w)
        frames.append(np.stack([u, v, w], axis=1))
    return frames


def _canal(local: np.ndarray, res: float) -> tuple[float, float, float, float] | None:
    """(u0, u1, v0, v1) of the canal in the local frame, or None."""
    lo = local[:, :2].min(axis=0) - 2 * res
    ij = np.floor((local[:, :2] - lo) / res).astype(int)
    shape = ij.max(axis=0) + 3
    occ = np.zeros(shape, bool)
    occ[ij[:, 0], ij[:, 1]] = True
    occ = ndimage.binary_closing(occ, iterations=1, border_value=0)
    holes = ndimage.binary_fill_holes(occ) & ~occ
    lab, n = ndimage.label(holes)
    if n:
        sizes = ndimage.sum(holes, lab, range(1, n + 1))
        k = int(np.argmax(sizes)) + 1
        if sizes[k - 1] * res * res >= 20.0:  # mm^2: a canal, not a gap between voxels
            ii, jj = np.nonzero(lab == k)
            u0, u1 = lo[0] + ii.min() * res, lo[0] + (ii.max() + 1) * res
            v0, v1 = lo[1] + jj.min() * res, lo[1] + (jj.max() + 1) * res
            return float(u0), float(u1), float(v0), float(v1)
    # no enclosed hole: the first gap behind the body on the mid line
    mid = np.abs(local[:, 0] - np.median(local[:, 0])) < max(2.0, res)
    if not mid.any():
        return None
    vs = np.unique(np.floor(local[mid, 1] / res).astype(int))
    gaps = np.nonzero(np.diff(vs) > 2)[0]
    if gaps.size == 0:
        return None
    g = gaps[0]
    v0, v1 = (vs[g] + 1) * res, vs[g + 1] * res
    half = max(6.0, 0.5 * (v1 - v0))
    uc = float(np.median(local[:, 0]))
    return uc - half, uc + half, float(v0), float(v1)


def classify(local: np.ndarray, canal: tuple[float, float, float, float] | None) -> np.ndarray:
    """Part code (BODY/PEDICLE/SPINOUS/OTHER) of each local point (N, 3)."""
    parts = np.full(len(local), OTHER, np.uint8)
    if canal is None:
        parts[:] = BODY
        return parts
    u0, u1, v0, v1 = canal
    uc, half = 0.5 * (u0 + u1), 0.5 * (u1 - u0)
    u, v = local[:, 0] - uc, local[:, 1]
    body = v < v0
    parts[body] = BODY
    body_half = np.percentile(np.abs(u[body]), 99) if body.any() else 2 * half
    pedicle = (v >= v0) & (v <= v0 + 0.5 * (v1 - v0)) & (np.abs(u) >= half) & (np.abs(u) <= body_half)
    parts[pedicle] = PEDICLE
    spinous = (v > v1) & (np.abs(u) <= max(0.5 * half, 4.0))
    parts[spinous] = SPINOUS
    return parts


def _body_landmarks(level: Level, local: np.ndarray, res: float) -> None:
    """The body's six wall/end-plate points and its three heights, from its local voxel centres."""
    if len(local) == 0:
        return
    uc = float(np.median(local[:, 0]))
    width = np.percentile(np.abs(local[:, 0] - uc), 98)
    slab = local[np.abs(local[:, 0] - uc) <= max(0.2 * width, 1.5 * res)]
    if len(slab) < 4:
        slab = local
    va, vp = slab[:, 1].min(), slab[:, 1].max()
    band = 1.5 * res
    points = {}
    heights = {}
    for side, sel, v_wall in (
        ("anterior", slab[:, 1] <= va + band, va - 0.5 * res),
        ("middle", np.abs(slab[:, 1] - 0.5 * (va + vp)) <= band, 0.5 * (va + vp)),
        ("posterior", slab[:, 1] >= vp - band, vp + 0.5 * res),
    ):
        w = slab[sel, 2] if sel.any() else slab[:, 2]
        top, bottom = w.max() + 0.5 * res, w.min() - 0.5 * res
        points[f"{side}_superior"] = np.array([uc, v_wall, top])
        points[f"{side}_inferior"] = np.array([uc, v_wall, bottom])
        heights[side] = float(top - bottom)
    level.corners = {k: level.centroid + level.axes @ p for k, p in points.items()}
    level.heights_mm = heights
    level.body_center = level.centroid + level.axes @ np.array([uc, 0.5 * (va + vp), 0.5 * (slab[:, 2].max() + slab[:, 2].min())])


def analyse(labels: np.ndarray, i2w: np.ndarray, conv: LabelConvention) -> tuple[np.ndarray, list[Level]]:
    """(part codes per voxel (uint8, shape of ``labels``), levels top to bottom) of a label map.

    ``i2w`` maps voxel indices to the patient frame (LPS mm).
    """
    parts = np.zeros(labels.shape, np.uint8)
    present = [int(v) for v in np.unique(labels) if v != 0]
    found = conv.sorted_levels(present)
    res = float(np.min(np.linalg.norm(i2w[:3, :3], axis=0)))
    objects = ndimage.find_objects(labels.astype(np.int32))
    voxels, centroids, kept = [], [], []
    seen = set()
    for value, name in found:
        if name in seen:  # the sacrum labelled twice: keep the first (S1)
            continue
        sl = objects[value - 1] if value - 1 < len(objects) else None
        if sl is None:
            continue
        idx = np.argwhere(labels[sl] == value) + [s.start for s in sl]
        pts = idx @ i2w[:3, :3].T + i2w[:3, 3]
        seen.add(name)
        voxels.append(idx)
        centroids.append(pts.mean(axis=0))
        kept.append((value, name, pts))
    frames = _local_frames(centroids)
    levels = []
    for (value, name, pts), idx, centroid, axes in zip(kept, voxels, centroids, frames):
        local = (pts - centroid) @ axes
        level = Level(name=name, value=value, centroid=centroid, axes=axes, canal=None)
        if name == SACRUM:  # not annotated (as in the generator); its top still bounds the last disk
            parts[idx[:, 0], idx[:, 1], idx[:, 2]] = OTHER
            _body_landmarks(level, local, res)
        else:
            level.canal = _canal(local, res)
            codes = classify(local, level.canal)
            parts[idx[:, 0], idx[:, 1], idx[:, 2]] = codes
            _body_landmarks(level, local[codes == BODY], res)
        levels.append(level)
    return parts, levels
