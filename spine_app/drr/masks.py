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

A vertebra whose body is cut by the volume's edge keeps its parts but gets no landmarks (it is left out of the
lines, disks and truth levels). Per level the body's anterior/middle/posterior superior and inferior points (the generator's
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
    truncated: bool = False  # the body reaches the volume's edge: no landmarks are measured


def _local_frames(centroids: list[np.ndarray], sacrum_last: bool = False) -> list[np.ndarray]:
    """Per level (3, 3) axes: w along the neighbours' centroids (superior), v posterior, u = v x w."""
    frames = []
    n = len(centroids)
    for i in range(n):
        up = centroids[max(i - 1, 0)]
        down = centroids[min(i + 1, n - 1)] if i + 1 < n - 1 or not sacrum_last else centroids[i]
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
    spinous = (v > v1) & (np.abs(u) <= max(0.3 * half, 3.0))
    parts[spinous] = SPINOUS
    return parts


def _body_landmarks(level: Level, body_idx: np.ndarray, i2w: np.ndarray, res: float) -> None:
    """The body's six wall/end-plate points and its three heights (the generator's corner points).

    The body's voxels, smoothed by half a voxel, are resampled (trilinear, level 0.5) at a quarter
    voxel on five sagittal planes around the mid plane u = u_c; per column along v the end plates'
    heights are averaged over the planes (voxel steps average out). The walls are the first and last
    columns; wall heights come from lines fitted to the end plates over three voxels starting 1.5
    voxels inside each wall (clear of the rounded corners), the middle height from the columns around the middle.
    """
    if len(body_idx) == 0:
        return
    lo = body_idx.min(axis=0) - 3
    box = np.zeros(body_idx.max(axis=0) - lo + 4, np.float32)
    box[tuple((body_idx - lo).T)] = 1.0
    box = ndimage.gaussian_filter(box, 0.5)
    pts = body_idx @ i2w[:3, :3].T + i2w[:3, 3]
    local = (pts - level.centroid) @ level.axes
    uc = float(np.median(local[:, 0]))
    half_width = float(np.percentile(np.abs(local[:, 0] - uc), 95))
    fine = 0.25 * res
    vs = np.arange(local[:, 1].min() - res, local[:, 1].max() + res, fine)
    ws = np.arange(local[:, 2].min() - res, local[:, 2].max() + res, fine)
    vv, ww = np.meshgrid(vs, ws, indexing="ij")
    w2i = np.linalg.inv(i2w)
    tops, bottoms = [], []
    for du in np.linspace(-0.15, 0.15, 5) * half_width:
        plane = level.centroid + np.stack([np.full_like(vv, uc + du), vv, ww], axis=-1) @ level.axes.T
        idx = plane @ w2i[:3, :3].T + w2i[:3, 3] - lo
        inside = ndimage.map_coordinates(box, idx.reshape(-1, 3).T, order=1, cval=0.0).reshape(vv.shape) > 0.5
        any_in = inside.any(axis=1)
        rows_top = np.where(any_in, inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1), -1)
        rows_bottom = np.where(any_in, np.argmax(inside, axis=1), -1)
        tops.append(np.where(any_in, ws[rows_top] + 0.5 * fine, np.nan))
        bottoms.append(np.where(any_in, ws[rows_bottom] - 0.5 * fine, np.nan))
    tops, bottoms = np.array(tops), np.array(bottoms)
    columns = np.nonzero(np.isfinite(tops).sum(axis=0) >= 3)[0]  # seen by most planes
    if columns.size < 3:
        return
    top = np.nanmean(tops[:, columns], axis=0)
    bottom = np.nanmean(bottoms[:, columns], axis=0)
    v_col = vs[columns]
    va, vp = v_col[0] - 0.5 * fine, v_col[-1] + 0.5 * fine
    vm = 0.5 * (va + vp)

    def at(v_wall: float, lo: float, hi: float) -> tuple[float, float]:
        """End-plate heights at ``v_wall`` from lines fitted over the columns in [lo, hi] (voxel steps average out)."""
        sel = (v_col >= min(lo, hi)) & (v_col <= max(lo, hi))
        if sel.sum() < 3:
            sel = np.argsort(np.abs(v_col - v_wall))[:3]
        if np.ptp(v_col[sel]) < 1e-6:
            return float(np.median(top[sel])), float(np.median(bottom[sel]))
        t = np.polyval(np.polyfit(v_col[sel], top[sel], 1), v_wall)
        b = np.polyval(np.polyfit(v_col[sel], bottom[sel], 1), v_wall)
        return float(t), float(b)

    band = 3.0 * res
    ends = {
        "anterior": (va, at(va, va + 1.5 * res, va + 1.5 * res + band)),
        "middle": (
            vm,
            (float(np.median(top[np.abs(v_col - vm) <= res])), float(np.median(bottom[np.abs(v_col - vm) <= res]))),
        ),
        "posterior": (vp, at(vp, vp - 1.5 * res, vp - 1.5 * res - band)),
    }
    points, heights = {}, {}
    for side, (v_wall, (t, b)) in ends.items():
        points[f"{side}_superior"] = np.array([uc, v_wall, t])
        points[f"{side}_inferior"] = np.array([uc, v_wall, b])
        heights[side] = float(t - b)
    level.corners = {k: level.centroid + level.axes @ p for k, p in points.items()}
    level.heights_mm = heights
    t, b = ends["middle"][1]
    level.body_center = level.centroid + level.axes @ np.array([uc, vm, 0.5 * (t + b)])


def _frame(w: np.ndarray) -> np.ndarray:
    """Axes (u, v, w) with v the posterior direction made orthogonal to ``w``."""
    w = w / np.linalg.norm(w)
    v = np.array([0.0, 1.0, 0.0]) - w[1] * w
    v /= np.linalg.norm(v)
    return np.stack([np.cross(v, w), v, w], axis=1)


def _refined_axes(
    axes: np.ndarray, body: np.ndarray, res: float, rounds: int = 3, top_only: bool = False, max_turn: float = 20.0
) -> np.ndarray:
    """Axes whose w is the mean normal of the body's two end plates (planes fitted to its top and
    bottom voxels over the central part of its footprint; only the top one with ``top_only``, for the
    sacrum); ``axes`` when that fails or turns more than ``max_turn`` degrees.
    """
    if len(body) < 50:
        return axes
    current = axes
    for _ in range(rounds):
        local = (body - body.mean(axis=0)) @ current
        keys = np.floor(local[:, :2] / res).astype(int)
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        n = inverse.max() + 1
        top = np.full(n, -np.inf)
        bottom = np.full(n, np.inf)
        np.maximum.at(top, inverse, local[:, 2])
        np.minimum.at(bottom, inverse, local[:, 2])
        uv = np.zeros((n, 2))
        np.add.at(uv, inverse, local[:, :2])
        uv /= np.bincount(inverse, minlength=n)[:, None]
        height = top - bottom
        half = np.percentile(np.abs(uv), 95, axis=0)
        central = (np.abs(uv[:, 0]) <= 0.7 * half[0]) & (np.abs(uv[:, 1]) <= 0.7 * half[1])
        keep = central & (height > 0.6 * np.median(height[central] if central.any() else height))
        if keep.sum() < 10:
            return current
        design = np.column_stack([np.ones(keep.sum()), uv[keep]])
        slope_top = np.linalg.lstsq(design, top[keep], rcond=None)[0][1:]
        slope_bottom = np.linalg.lstsq(design, bottom[keep], rcond=None)[0][1:]
        gu, gv = slope_top if top_only else 0.5 * (slope_top + slope_bottom)
        normal = current @ np.array([-gu, -gv, 1.0])
        current = _frame(normal if normal[2] >= 0 else -normal)
    if current[:, 2] @ axes[:, 2] < np.cos(np.deg2rad(max_turn)):
        return axes
    return current


def _touches_edge(idx: np.ndarray, shape: tuple[int, ...]) -> bool:
    return len(idx) > 0 and bool((idx.min(axis=0) == 0).any() or (idx.max(axis=0) == np.array(shape) - 1).any())


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
    frames = _local_frames(centroids, bool(kept) and kept[-1][1] == SACRUM)
    levels = []
    for (value, name, pts), idx, centroid, axes in zip(kept, voxels, centroids, frames):
        local = (pts - centroid) @ axes
        level = Level(name=name, value=value, centroid=centroid, axes=axes, canal=None)
        if name == SACRUM:  # not annotated (as in the generator); its top still bounds the last disk
            parts[idx[:, 0], idx[:, 1], idx[:, 2]] = OTHER
            level.axes = _refined_axes(axes, pts, res, top_only=True, max_turn=50.0)  # the S1 end plate
            _body_landmarks(level, idx, i2w, res)  # only its top is used: a sacrum cut below still counts
        else:
            level.canal = _canal(local, res)
            codes = classify(local, level.canal)
            if (codes == BODY).any():  # refine the frame on the body, then split again
                level.axes = _refined_axes(axes, pts[codes == BODY], res)
                local = (pts - centroid) @ level.axes
                level.canal = _canal(local, res)
                codes = classify(local, level.canal)
            parts[idx[:, 0], idx[:, 1], idx[:, 2]] = codes
            level.truncated = _touches_edge(idx[codes == BODY], labels.shape)
            if not level.truncated:
                _body_landmarks(level, idx[codes == BODY], i2w, res)
        levels.append(level)
    return parts, levels
