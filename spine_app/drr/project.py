"""Ray casting through a voxel volume: parallel or divergent (point-source) beams, trilinear sampling.

Frames. The *patient frame* is the generator's world frame, LPS millimetres (x patient left, y
posterior, z superior); NIfTI affines map voxels to RAS+, so ``world_to_index`` = inverse(affine)
applied after flipping x and y. Films are defined on an *isocentre plane*: the AP film is the plane
y = iso_y seen from the front (columns follow x), the LAT film the plane x = iso_x seen from the
patient's right (columns follow y, the patient faces the film's left). A film pixel (row, col) is the
point of that plane at z = z_top - (row + 0.5) step and x (or y) = x0 + (col + 0.5) step
(:class:`spine_app.synthetic.render.Film`).

Beams. ``parallel``: every ray is perpendicular to the plane (the generator's projection).
``divergent``: rays leave a point source at ``sod_mm`` in front of the film centre on the isocentre
plane (AP: anterior, LAT: patient's right) and reach a detector ``sid_mm`` from the source; a film
pixel is read where its ray crosses the isocentre plane, so pixel spacing stays the isocentre-plane
spacing (what measurements on the spine use) and the detector-plane spacing is ``step * sid / sod``.
An object at distance d from the detector is magnified SID / (SID - d) on the detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spine_app.synthetic.render import Film

#: ray direction (patient frame) of each view: AP travels anterior -> posterior, LAT right -> left
VIEW_DIRECTION = {"AP": np.array([0.0, 1.0, 0.0]), "LAT": np.array([1.0, 0.0, 0.0])}
_COL_AXIS = {"AP": 0, "LAT": 1}
_DEPTH_AXIS = {"AP": 1, "LAT": 0}


@dataclass
class Beam:
    """Projection geometry shared by both views."""

    mode: str = "parallel"  # "parallel" | "divergent"
    sid_mm: float = 1000.0  # source to detector (divergent)
    sod_mm: float = 850.0  # source to isocentre plane (divergent)

    def __post_init__(self) -> None:
        if self.mode not in ("parallel", "divergent"):
            raise ValueError(f"beam must be parallel or divergent, got {self.mode!r}")
        if not 0 < self.sod_mm < self.sid_mm:
            raise ValueError(f"need 0 < sod_mm < sid_mm, got sod_mm={self.sod_mm}, sid_mm={self.sid_mm}")

    @property
    def magnification(self) -> float:
        """Isocentre-plane magnification on the detector (1 for a parallel beam)."""
        return self.sid_mm / self.sod_mm if self.mode == "divergent" else 1.0


@dataclass
class Geometry:
    """A film frame, its isocentre and the beam: everything that maps the patient frame to pixels."""

    film: Film
    isocenter: np.ndarray  # (3,) patient-frame point; its y (AP) / x (LAT) places the film planes
    beam: Beam

    def plane_points(self, view: str, rows: np.ndarray, cols: np.ndarray, step: float) -> np.ndarray:
        """Patient-frame points (..., 3) of isocentre-plane pixels (row, col) on a grid of ``step`` mm."""
        f = self.film
        rows, cols = np.broadcast_arrays(np.asarray(rows, float), np.asarray(cols, float))
        out = np.empty(rows.shape + (3,))
        out[..., 2] = f.z_top - (rows + 0.5) * step
        out[..., _COL_AXIS[view]] = f.col_origin(view) + (cols + 0.5) * step
        out[..., _DEPTH_AXIS[view]] = self.isocenter[_DEPTH_AXIS[view]]
        return out

    def source(self, view: str) -> np.ndarray:
        f = self.film
        center = self.plane_points(view, np.array((f.rows - 1) / 2.0), np.array((f.cols(view) - 1) / 2.0), f.step)
        return center - self.beam.sod_mm * VIEW_DIRECTION[view]

    def to_detector(self, view: str, points: np.ndarray) -> np.ndarray:
        """Patient-frame points (..., 3) to film (row, col) in detector pixels (centres at .5)."""
        points = np.asarray(points, float)
        if self.beam.mode == "divergent":
            s = self.source(view)
            d = VIEW_DIRECTION[view]
            depth = (points - s) @ d
            points = s + (points - s) * (self.beam.sod_mm / depth)[..., None]
        return self.film.to_detector(view, points)


def world_to_index(affine: np.ndarray) -> np.ndarray:
    """4x4 map from patient-frame (LPS mm) points to voxel indices of a volume with RAS ``affine``."""
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    return np.linalg.inv(affine) @ lps_to_ras


def index_to_world(affine: np.ndarray) -> np.ndarray:
    return np.linalg.inv(world_to_index(affine))


def _ray_range(corners: np.ndarray, origins: np.ndarray, dirs: np.ndarray) -> tuple[float, float]:
    """A parameter range [t0, t1] covering every ray's passage through the box of ``corners``."""
    centre_dir = dirs.reshape(-1, 3).mean(axis=0)
    centre_dir /= np.linalg.norm(centre_dir)
    depth = (corners[None, :, :] - origins.reshape(-1, 1, 3)) @ centre_dir  # (rays, 8)
    cos = np.clip(dirs.reshape(-1, 3) @ centre_dir, 1e-3, 1.0)
    t0 = float(np.min(depth.min(axis=1) / 1.0))
    t1 = float(np.max(depth.max(axis=1) / cos))
    return t0, t1


def cast(
    volume: np.ndarray,
    w2i: np.ndarray,
    geometry: Geometry,
    view: str,
    step_mm: float,
    pose: np.ndarray | None = None,
    transform=None,
    chunk_points: int = 4_000_000,
) -> np.ndarray:
    """Line integrals (mm x value) of ``volume`` along the rays of ``view``'s render-grid pixels.

    Args:
        volume: (C, I, J, K) or (I, J, K) float32 voxel values.
        w2i: 4x4 patient frame -> voxel index of ``volume``.
        geometry: film frame, isocentre and beam.
        view: "AP" or "LAT".
        step_mm: sampling step along each ray.
        pose: optional 4x4 rigid map from the film's patient frame to the volume's (the patient moved).
        transform: optional function applied to the sampled values (C, rays, samples) before summing.

    Returns:
        (C, rows, cols) float32 on the film's render grid (``film.step`` pixels).
    """
    vol = np.asarray(volume, np.float32)
    if vol.ndim == 3:
        vol = vol[None]
    size = np.array(vol.shape[1:], float)
    film = geometry.film
    rows, cols = film.rows, film.cols(view)
    m = w2i @ (pose if pose is not None else np.eye(4))
    # the volume's box in the film's frame, to bound the rays
    box = np.array(
        [[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5) for k in (-0.5, size[2] - 0.5)]
    )
    i2w = np.linalg.inv(m)
    corners = box @ i2w[:3, :3].T + i2w[:3, 3]

    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    targets = geometry.plane_points(view, rr, cc, film.step).reshape(-1, 3)
    if geometry.beam.mode == "divergent":
        origins = np.broadcast_to(geometry.source(view), targets.shape)
        dirs = targets - origins
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    else:
        dirs = np.broadcast_to(VIEW_DIRECTION[view], targets.shape)
        origins = targets
    t0, t1 = _ray_range(corners, origins, dirs)
    n_samples = max(int(np.ceil((t1 - t0) / step_mm)), 1)
    ts = t0 + (np.arange(n_samples) + 0.5) * step_mm

    tvol = torch.from_numpy(np.ascontiguousarray(vol))[None]  # (1, C, I, J, K)
    # rays in normalised grid coordinates (align_corners=True: index 0 -> -1, size-1 -> +1), (k, j, i) order
    scale = 2.0 / np.maximum(size - 1.0, 1.0)
    o_norm = ((origins @ m[:3, :3].T + m[:3, 3]) * scale - 1.0)[:, ::-1]
    d_norm = ((dirs @ m[:3, :3].T) * scale)[:, ::-1]
    o_t = torch.from_numpy(np.ascontiguousarray(o_norm, dtype=np.float32))
    d_t = torch.from_numpy(np.ascontiguousarray(d_norm, dtype=np.float32))
    ts_t = torch.from_numpy(ts.astype(np.float32))[None, :, None]
    out: np.ndarray | None = None
    per_chunk = max(1, chunk_points // n_samples)
    with torch.no_grad():
        for start in range(0, rows * cols, per_chunk):
            o = o_t[start : start + per_chunk]
            grid = (o[:, None, :] + d_t[start : start + per_chunk, None, :] * ts_t)[None, :, :, None, :]
            sampled = torch.nn.functional.grid_sample(
                tvol, grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )[0, :, :, :, 0].numpy()  # (C, n, S)
            if transform is not None:
                sampled = transform(sampled)
            if out is None:
                out = np.zeros((sampled.shape[0], rows * cols), np.float32)
            out[:, start : start + len(o)] = sampled.sum(axis=2) * step_mm
    assert out is not None
    return out.reshape(-1, rows, cols)


def rigid(rotation_deg: tuple[float, float, float], translation_mm: tuple[float, float, float], center) -> np.ndarray:
    """4x4 patient-frame map x -> R (x - c) + c + t (rotations about x, y, z in degrees, applied z, y, x)."""
    ax, ay, az = np.deg2rad(rotation_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    r = rx @ ry @ rz
    c = np.asarray(center, float)
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = c + np.asarray(translation_mm, float) - r @ c
    return out


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, float)
    return points @ matrix[:3, :3].T + matrix[:3, 3]
