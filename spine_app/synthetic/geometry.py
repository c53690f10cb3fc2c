"""Geometry for the synthetic radiograph generator: rotations, signed-distance primitives and
analytic line integrals through ellipsoids.

World frame (millimetres): x = patient's left, y = posterior, z = superior. The AP view projects
along y (image columns follow x), the LAT view projects along x (image columns follow y).
All functions are vectorised over numpy arrays and work in float32.
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray


def rotation_matrix(sagittal_deg: float, coronal_deg: float, axial_deg: float) -> Array:
    """Local-to-world rotation (3, 3) for a vertebra.

    ``sagittal_deg`` tilts the superior axis anteriorly (about x), ``coronal_deg`` tilts it to the
    patient's left (about y), ``axial_deg`` turns the body about its own superior axis.
    """
    s, c, a = np.deg2rad([sagittal_deg, coronal_deg, axial_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(s), -np.sin(s)], [0, np.sin(s), np.cos(s)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return ry @ rx @ rz


def occupancy(sdf: Array, voxel_mm: float) -> Array:
    """Anti-aliased inside fraction (0..1) from a signed distance (mm, negative inside)."""
    out = 0.5 - sdf * (1.0 / voxel_mm)
    return np.clip(out, 0.0, 1.0, out=out)


def capsule_sdf(u: Array, v: Array, w: Array, p0: Array, p1: Array, radius: float, w_scale: float = 1.0) -> Array:
    """Approximate signed distance to a capsule (segment ``p0``-``p1`` of ``radius``) in local coords.

    ``w_scale`` > 1 stretches the cross-section along w (plate-like processes); the distance is then
    measured in the stretched space, which is accurate enough for 1-voxel anti-aliasing.
    """
    p0 = np.asarray(p0, dtype=np.float32)
    p1 = np.asarray(p1, dtype=np.float32)
    d = p1 - p0
    d[2] /= w_scale
    du, dv, dw = u - p0[0], v - p0[1], (w - p0[2]) / w_scale
    length2 = float(d @ d) or 1e-6
    t = np.clip((du * d[0] + dv * d[1] + dw * d[2]) / length2, 0.0, 1.0)
    eu, ev, ew = du - t * d[0], dv - t * d[1], dw - t * d[2]
    return np.sqrt(eu * eu + ev * ev + ew * ew) - radius


def ellipsoid_sdf(u: Array, v: Array, w: Array, center: Array, radii: Array) -> Array:
    """Approximate signed distance to an axis-aligned ellipsoid in local coords (scaled radial form)."""
    cu, cv, cw = center
    ru, rv, rw = radii
    r = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 + ((w - cw) / rw) ** 2)
    return (r - 1.0) * min(ru, rv, rw)


def ellipsoid_chord(
    grid_a: Array, grid_b: Array, axes: tuple[int, int], ray_axis: int, center: Array, rotation: Array, radii: Array
) -> Array:
    """Exact chord length (mm) of parallel rays through a rotated ellipsoid.

    Args:
        grid_a, grid_b: broadcastable world coordinates of the detector pixels along ``axes``.
        axes: the two world axes (0=x, 1=y, 2=z) spanned by the detector.
        ray_axis: the world axis the rays travel along.
        center: (3,) ellipsoid centre; rotation: (3, 3) local-to-world; radii: (3,) semi-axes.

    Returns:
        chord length for every pixel, 0 where the ray misses.
    """
    quad = rotation @ np.diag(1.0 / np.asarray(radii, dtype=np.float64) ** 2) @ rotation.T  # world quadric
    qa, qb = grid_a - center[axes[0]], grid_b - center[axes[1]]
    k = ray_axis
    a_kk = quad[k, k]
    # (q + t e_k)^T Q (q + t e_k) = 1 -> a_kk t^2 + 2 beta t + gamma - 1 = 0, with q_k = 0
    beta = quad[k, axes[0]] * qa + quad[k, axes[1]] * qb
    gamma = quad[axes[0], axes[0]] * qa * qa + 2 * quad[axes[0], axes[1]] * qa * qb + quad[axes[1], axes[1]] * qb * qb
    disc = beta * beta - a_kk * (gamma - 1.0)
    return (2.0 * np.sqrt(np.maximum(disc, 0.0)) / a_kk).astype(np.float32)


def ellipsoid_extent(center: Array, rotation: Array, radii: Array) -> tuple[Array, Array]:
    """Axis-aligned world bounding box (lo, hi) of a rotated ellipsoid."""
    half = np.sqrt(((rotation * np.asarray(radii)[None, :]) ** 2).sum(axis=1))
    return np.asarray(center) - half, np.asarray(center) + half


def box_corners(lo: Array, hi: Array) -> Array:
    """The 8 corners (8, 3) of an axis-aligned box."""
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
