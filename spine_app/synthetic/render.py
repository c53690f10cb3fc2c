"""Projection of a :class:`SpineModel` into AP and LAT line-integral maps and structure chords.

Disks are radiolucent (about soft-tissue density), so they add nothing to the line integrals; their
mask is drawn in 2-D by the generator. Bony parts are signed-distance solids sampled on a voxel lattice shared by both views (each part only
over its own bounding box), so one 3-D model yields both projections: the AP view sums along y, the
LAT view along x. Large smooth surroundings (torso, lungs, gas, pelvis, ribs) use exact analytic
chords. Output maps live on a *render grid* (``Film.step`` mm) that the imaging chain upsamples to the
detector pixel grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from spine_app.synthetic.anatomy import SpineModel, Vertebra
from spine_app.synthetic.geometry import (
    box_corners,
    capsule_sdf,
    ellipsoid_chord,
    ellipsoid_extent,
    ellipsoid_sdf,
    occupancy,
    rotation_matrix,
)

# linear attenuation (1/mm, ~70 keV effective); bone values are the excess over soft tissue
MU_SOFT = 0.020
MU_FAT = 0.018
MU_CORTEX = 0.040
MU_AIR = -MU_SOFT
MU_LUNG = -0.015

#: structures whose projected chords become masks, per view
MASK_STRUCTURES = {"AP": ("vertebra", "pedicle", "spinous"), "LAT": ("vertebra", "spinous")}


@dataclass
class Film:
    """Render-grid geometry of the two films (both share rows, i.e. the z axis).

    ``sod_mm`` 0: parallel beam (every ray along the view's axis). Otherwise a divergent beam from a
    point source ``sod_mm`` in front of the isocentre, the central ray through the middle of each film:
    the AP view's source is anterior (-y), the LAT view's on the -x side, and a point is drawn at
    ``centre + (p - centre) * M`` with ``M = sod / (sod - s)``, ``s`` its distance from the isocentre
    plane towards the source. The pixel spacing is calibrated at the isocentre plane (M = 1 there), as
    for a film whose PixelSpacing was calibrated to the patient: structures nearer the source come out
    larger, those nearer the detector smaller, and an endplate above or below the central ray is seen
    obliquely (its near and far rims apart: the double contour of real films).
    """

    step: float  # render pixel size (mm) = voxel size
    upsample: int  # detector pixels per render pixel
    z_top: float
    rows: int
    ap_x0: float
    ap_cols: int
    lat_y0: float
    lat_cols: int
    sod_mm: float = 0.0  # source to isocentre plane (mm); 0: parallel beam

    @property
    def pixel_spacing(self) -> float:
        return self.step / self.upsample

    @property
    def divergent(self) -> bool:
        return self.sod_mm > 0

    def col_origin(self, view: str) -> float:
        return self.ap_x0 if view == "AP" else self.lat_y0

    def cols(self, view: str) -> int:
        return self.ap_cols if view == "AP" else self.lat_cols

    def central_ray(self, view: str) -> tuple[float, float]:
        """World (z, film axis) of the central ray: the middle of that view's film."""
        return self.z_top - self.rows * self.step / 2.0, self.col_origin(view) + self.cols(view) * self.step / 2.0

    def magnification(self, view: str, depth: np.ndarray | float) -> np.ndarray | float:
        """M of points at ``depth`` along the view's beam axis (y for AP, x for LAT); 1 for a parallel beam."""
        if not self.divergent:
            return np.ones_like(depth, dtype=np.float32) if isinstance(depth, np.ndarray) else 1.0
        isocentre = self.central_ray("LAT" if view == "AP" else "AP")[1]  # the other film's middle
        towards_source = isocentre - np.asarray(depth, dtype=np.float64)  # both sources sit on the - side
        return self.sod_mm / (self.sod_mm - towards_source)

    def to_detector(self, view: str, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) to detector (row, col) coordinates (float, pixel centres at .5)."""
        axis = 0 if view == "AP" else 1
        z, u = points[..., 2], points[..., axis]
        if self.divergent:
            m = self.magnification(view, points[..., 1 - axis])
            zc, uc = self.central_ray(view)
            z, u = zc + (z - zc) * m, uc + (u - uc) * m
        row = (self.z_top - z) / self.pixel_spacing
        col = (u - self.col_origin(view)) / self.pixel_spacing
        return np.stack([row, col], axis=-1)


@dataclass
class Projections:
    """Per-view attenuation line integrals and per-structure chord lengths on the render grid."""

    attenuation: dict[str, np.ndarray]
    chords: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    bone: dict[str, np.ndarray] = field(default_factory=dict)  # bony line integral (for texture)

    @classmethod
    def empty(cls, film: Film) -> Projections:
        shape = {v: (film.rows, film.cols(v)) for v in ("AP", "LAT")}
        return cls(
            attenuation={v: np.zeros(s, np.float32) for v, s in shape.items()},
            chords={v: {k: np.zeros(shape[v], np.float32) for k in MASK_STRUCTURES[v]} for v in shape},
            bone={v: np.zeros(s, np.float32) for v, s in shape.items()},
        )


Evaluator = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]


def _index_range(lo: float, hi: float, origin: float, step: float) -> tuple[int, int]:
    return int(np.floor((lo - origin) / step)), int(np.ceil((hi - origin) / step))


def project_block(film: Film, proj: Projections, lo: np.ndarray, hi: np.ndarray, evaluate: Evaluator) -> None:
    """Sample ``evaluate`` over the voxels of the world box [lo, hi] and add its projections.

    ``evaluate(x, y, z)`` gets broadcastable world coordinates (z, y, x axis order) and returns a dict
    with ``"density"`` (1/mm, bone: also textured), optionally ``"attenuation_only"`` (1/mm, untextured:
    metal, cement, soft tissue) and structure occupancies (0..1) named in MASK_STRUCTURES, optionally
    for one view only ("LAT:vertebra"). With a divergent beam (``film.sod_mm``) each view's
    projection goes through :func:`_diverge`.
    """
    s = film.step
    i0, i1 = _index_range(lo[0], hi[0], film.ap_x0, s)
    j0, j1 = _index_range(lo[1], hi[1], film.lat_y0, s)
    k0, k1 = _index_range(film.z_top - hi[2], film.z_top - lo[2], 0.0, s)
    if not film.divergent:  # a divergent beam may bring rows from beyond the film's edge onto it
        k0, k1 = max(k0, 0), min(k1, film.rows)
    if k0 >= k1 or i0 >= i1 or j0 >= j1:
        return
    x = (film.ap_x0 + (np.arange(i0, i1, dtype=np.float32) + 0.5) * s)[None, None, :]
    y = (film.lat_y0 + (np.arange(j0, j1, dtype=np.float32) + 0.5) * s)[None, :, None]
    z = (film.z_top - (np.arange(k0, k1, dtype=np.float32) + 0.5) * s)[:, None, None]
    for key, block in evaluate(x, y, z).items():
        block = np.broadcast_to(block, (k1 - k0, j1 - j0, i1 - i0))
        placed = {}
        for view, depth_axis, c0, depth in (("AP", 1, i0, y.ravel()), ("LAT", 2, j0, x.ravel())):
            if film.divergent:
                placed[view] = _diverge(film, view, block, depth_axis, depth, k0, c0)
            else:
                placed[view] = (block.sum(axis=depth_axis) * s, k0, c0)
        if key in ("density", "attenuation_only"):
            for view, (p, r0, c0) in placed.items():
                _add_window(proj.attenuation[view], p, r0, c0)
                if key == "density":
                    _add_window(proj.bone[view], p, r0, c0)
            continue
        view_only, _, name = key.rpartition(":")  # "LAT:vertebra" feeds only that view's chord
        for view in ("AP", "LAT"):
            if view_only in ("", view) and name in proj.chords[view]:
                _add_window(proj.chords[view][name], *placed[view])


def _add_window(target: np.ndarray, values: np.ndarray, r0: int, c0: int) -> None:
    """target[r0:, c0:] += values, clipped to the target's extent on both axes."""
    rows, cols = target.shape
    ra, rb = max(r0, 0), min(r0 + values.shape[0], rows)
    ca, cb = max(c0, 0), min(c0 + values.shape[1], cols)
    if ra < rb and ca < cb:
        target[ra:rb, ca:cb] += values[ra - r0 : rb - r0, ca - c0 : cb - c0]


def _diverge(
    film: Film, view: str, block: np.ndarray, depth_axis: int, depth: np.ndarray, k0: int, c0: int
) -> tuple[np.ndarray, int, int]:
    """One view's projection of a small block through a divergent beam: (values, first row, first col)
    on the render grid.

    Each depth slice is shifted by where its own magnification moves the block's centre relative to the
    block's mean magnification (the oblique rays: an endplate away from the central ray is drawn as a
    band, near and far rims apart), the slices are summed, and the sum is magnified by the block's mean
    magnification about the central ray (bilinear). Within a block of a few centimetres the spread of
    magnification is at most a few per cent, which this neglects for the block's own size only.
    """
    from scipy.ndimage import map_coordinates

    s = film.step
    slices = np.moveaxis(block, depth_axis, 1)  # (K, D, C)
    rows, _, cols = slices.shape
    m = np.asarray(film.magnification(view, depth.astype(np.float64)))
    m_block = float(np.mean(m))
    ray_r, ray_c = film.rows / 2.0, film.cols(view) / 2.0  # the central ray in grid (edge) units
    centre_r, centre_c = k0 + rows / 2.0, c0 + cols / 2.0
    shift_r, shift_c = (centre_r - ray_r) * (m - m_block), (centre_c - ray_c) * (m - m_block)
    pad = int(np.ceil(max(np.abs(shift_r).max(), np.abs(shift_c).max()))) + 1
    acc = np.zeros((rows + 2 * pad, cols + 2 * pad), np.float64)
    for d in range(slices.shape[1]):  # bilinear splat of each shifted slice
        fr, fc = np.floor(shift_r[d]), np.floor(shift_c[d])
        wr, wc = shift_r[d] - fr, shift_c[d] - fc
        r, c = pad + int(fr), pad + int(fc)
        plane = slices[:, d, :]
        acc[r : r + rows, c : c + cols] += (1 - wr) * (1 - wc) * plane
        acc[r + 1 : r + 1 + rows, c : c + cols] += wr * (1 - wc) * plane
        acc[r : r + rows, c + 1 : c + 1 + cols] += (1 - wr) * wc * plane
        acc[r + 1 : r + 1 + rows, c + 1 : c + 1 + cols] += wr * wc * plane
    acc *= s
    # magnify about the central ray: the block's centre goes to ray + (centre - ray) * m_block
    out_r, out_c = ray_r + (centre_r - ray_r) * m_block, ray_c + (centre_c - ray_c) * m_block
    half_r, half_c = (rows / 2.0 + pad) * m_block + 1, (cols / 2.0 + pad) * m_block + 1
    r0, r1 = int(np.floor(out_r - half_r)), int(np.ceil(out_r + half_r))
    q0, q1 = int(np.floor(out_c - half_c)), int(np.ceil(out_c + half_c))
    grid_r = np.arange(r0, r1, dtype=np.float64) + 0.5
    grid_c = np.arange(q0, q1, dtype=np.float64) + 0.5
    # output pixel centre -> edge coordinate in the block's frame -> index into acc (centres at .5)
    src_r = centre_r + (grid_r - out_r) / m_block - (k0 - pad) - 0.5
    src_c = centre_c + (grid_c - out_c) / m_block - (c0 - pad) - 0.5
    rr, cc = np.meshgrid(src_r, src_c, indexing="ij")
    values = map_coordinates(acc, [rr, cc], order=1, mode="constant", cval=0.0).astype(np.float32)
    return values, r0, q0


def _to_local(vertebra_center: np.ndarray, rotation: np.ndarray, x, y, z) -> tuple[np.ndarray, ...]:
    cx, cy, cz = (float(c) for c in vertebra_center)  # Python floats keep the arrays float32
    dx, dy, dz = x - cx, y - cy, z - cz
    r = rotation.astype(np.float32)
    return tuple(r[0, a] * dx + r[1, a] * dy + r[2, a] * dz for a in range(3))


def _world_box(vertebra: Vertebra, lo_local, hi_local, margin: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    corners = vertebra.to_world(box_corners(np.asarray(lo_local), np.asarray(hi_local)))
    return corners.min(axis=0) - margin, corners.max(axis=0) + margin


def body_surfaces(v: Vertebra, u: np.ndarray, vv: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(radial signed distance, half height) of the body at local points.

    The cross-section is a superellipse deeper in front than behind with a slight waist; the height
    falls linearly from the posterior to the anterior wall and the endplates are concave.
    """
    a, ba, bp = v.half_width, v.half_depth_anterior, v.half_depth_posterior
    b = np.where(vv < 0, ba, bp).astype(np.float32)
    rim = v.height_anterior + (v.height_posterior - v.height_anterior) * np.clip((vv + ba) / (ba + bp), 0.0, 1.0)
    waist = 1.0 - 0.06 * (1.0 - np.clip(2.0 * w / rim, -1.0, 1.0) ** 2)
    r = np.sqrt((u / (a * waist)) ** 2 + (vv / (b * waist)) ** 2)
    half = rim / 2.0 - v.concavity * (1.0 - np.minimum(r, 1.0) ** 2)
    return (r - 1.0) * min(a, bp), half


#: half thickness (mm) of the mid-plane slab whose projection is a body's mask under a divergent beam
MID_PLANE_HALF_MM = 2.0


def _body_evaluator(
    v: Vertebra, step: float, bone: float, structure: str | None, concave_lat: bool = False, mid_plane: bool = False
) -> Evaluator:
    """Density and mask occupancy of the body; with ``concave_lat`` the LAT mask follows the endplates'
    mid-sagittal (concave) contour instead of the full-height projection of the lateral rims. With
    ``mid_plane`` (a divergent beam) each view's mask is the projection of the body's mid-plane slab
    (mid-sagittal on LAT, mid-coronal on AP, with their own endplates): where vertebral morphometry
    puts its points, so the double contour of the oblique endplates straddles the mask's edge instead
    of closing the disk space."""

    def evaluate(x, y, z):
        u, vv, w = _to_local(v.center, v.rotation, x, y, z)
        radial, half = body_surfaces(v, u, vv, w)
        sdf = np.maximum(radial, np.abs(w) - half)
        outer = occupancy(sdf, step)
        density = MU_CORTEX * outer + (bone - MU_CORTEX) * occupancy(sdf + v.cortex, step)
        if v.sclerosis > 0:  # condensed trabeculae under the compressed superior endplate
            band = np.maximum(radial, np.abs(w - (half - 3.0)) - 2.0)
            density = density + v.sclerosis * occupancy(band, step)
        out = {"density": density}
        if structure and mid_plane:  # the slab's own (concave) endplates: the mid-plane section's outline
            out[f"AP:{structure}"] = occupancy(np.maximum(sdf, np.abs(vv) - MID_PLANE_HALF_MM), step)
            out[f"LAT:{structure}"] = occupancy(np.maximum(sdf, np.abs(u) - MID_PLANE_HALF_MM), step)
        elif structure and concave_lat:
            _, mid_half = body_surfaces(v, np.zeros_like(u), vv, w)  # endplates on the mid-sagittal plane
            out[f"AP:{structure}"] = outer
            out[f"LAT:{structure}"] = occupancy(np.maximum(radial, np.abs(w) - mid_half), step)
        elif structure:
            out[structure] = outer
        return out

    return evaluate


def _shell_density(sdf: np.ndarray, step: float, cortex: float, core: float) -> np.ndarray:
    return MU_CORTEX * occupancy(sdf, step) + (core - MU_CORTEX) * occupancy(sdf + cortex, step)


def _posterior_parts(v: Vertebra) -> list[tuple[str, str | None, tuple]]:
    """(kind, mask structure, geometry) of the posterior elements in the vertebra's local frame."""
    f = v.half_width / 22.0
    a, bp = v.half_width, v.half_depth_posterior
    h = v.height_posterior
    vp = bp + 11.0 * f  # posterior end of the pedicles
    lumbar = v.name.startswith("L")
    parts: list[tuple[str, str | None, tuple]] = []
    for side in (-1.0, 1.0):
        parts.append(("ellipsoid", "pedicle", ((side * 0.62 * a, bp + 4.0 * f, 0.12 * h), (4.6 * f, 7.5 * f, 7.5 * f))))
        parts.append(("capsule", None, ((side * 0.55 * a, vp, 0.0), (0.0, vp + 9.0 * f, -0.1 * h), 3.0 * f, 2.6)))
        tp_len = {"L1": 14, "L2": 18, "L3": 23, "L4": 19, "L5": 17}.get(v.name, 15) * f
        tp_back = 2.0 * f if lumbar else 10.0 * f
        parts.append(
            (
                "capsule",
                None,
                (
                    (side * 0.6 * a, vp - 3 * f, 0.1 * h),
                    (side * (0.6 * a + tp_len), vp - 3 * f + tp_back, 0.1 * h),
                    3.0 * f,
                    1.3,
                ),
            )
        )
        # articular pillar from the superior to the inferior facet
        parts.append(
            (
                "capsule",
                None,
                ((side * 0.5 * a, vp + 2 * f, 0.55 * h), (side * 0.42 * a, vp + 5 * f, -0.55 * h), 3.8 * f, 1.0),
            )
        )
    angle = np.deg2rad(18.0 if lumbar else 38.0)
    length = (27.0 if lumbar else 31.0) * f
    start = (0.0, vp + 8.0 * f, -0.05 * h)
    end = (0.0, start[1] + length * np.cos(angle), start[2] - length * np.sin(angle))
    parts.append(("capsule", "spinous", (start, end, 2.8 * f, 2.6 if lumbar else 1.8)))
    return parts


def _part_box(kind: str, geometry: tuple) -> tuple[np.ndarray, np.ndarray]:
    if kind == "ellipsoid":
        center, radii = np.asarray(geometry[0]), np.asarray(geometry[1])
        return center - radii, center + radii
    p0, p1, radius, w_scale = geometry
    ext = np.array([radius, radius, radius * w_scale])
    return np.minimum(p0, p1) - ext, np.maximum(p0, p1) + ext


def _part_evaluator(v: Vertebra, kind: str, structure: str | None, geometry: tuple, step: float, bone: float):
    def evaluate(x, y, z):
        u, vv, w = _to_local(v.center, v.rotation, x, y, z)
        if kind == "ellipsoid":
            sdf = ellipsoid_sdf(u, vv, w, geometry[0], geometry[1])
        else:
            sdf = capsule_sdf(u, vv, w, *geometry)
        out = {"density": _shell_density(sdf, step, 1.0, bone)}
        if structure:
            out[structure] = occupancy(sdf, step)
        return out

    return evaluate


def render_vertebra(
    film: Film,
    proj: Projections,
    v: Vertebra,
    bone: float,
    annotate: bool = True,
    posterior: bool = True,
    concave_lat: bool = False,
) -> None:
    """Body and (optionally) posterior elements of one vertebra; masks only when ``annotate``
    (``concave_lat``: the LAT body mask follows the concave endplates, see ``_body_evaluator``)."""
    a, ba, bp = v.half_width, v.half_depth_anterior, v.half_depth_posterior
    hmax = max(v.height_anterior, v.height_posterior) / 2.0
    lo, hi = _world_box(v, (-a, -ba, -hmax), (a, bp, hmax))
    structure = "vertebra" if annotate else None
    evaluator = _body_evaluator(v, film.step, bone, structure, concave_lat, mid_plane=film.divergent)
    project_block(film, proj, lo, hi, evaluator)
    for kind, structure, geometry in _posterior_parts(v) if posterior else ():
        plo, phi = _part_box(kind, geometry)
        lo, hi = _world_box(v, plo, phi)
        evaluator = _part_evaluator(v, kind, structure if annotate else None, geometry, film.step, bone)
        project_block(film, proj, lo, hi, evaluator)


def sacrum_as_vertebra(model: SpineModel) -> Vertebra:
    """The S1 segment, modelled as a large unannotated body below L5."""
    rot, scale = model.sacrum_rotation, model.size_scale
    height = 30.0 * scale
    return Vertebra(
        name="S1",
        center=-rot[:, 2] * height / 2.0,
        rotation=rot,
        half_width=26.0 * scale,
        half_depth_anterior=17.0 * scale,
        half_depth_posterior=14.0 * scale,
        height_anterior=height,
        height_middle=height - 2.0,
        height_posterior=height,
        expected_height=height,
        cortex=1.2,
        in_roi=False,
    )


def add_ellipsoid(
    film: Film,
    proj: Projections,
    center,
    rotation,
    radii,
    mu: float,
    shell: tuple | None = None,
    textured: bool | None = None,
) -> None:
    """Exact projection of a (optionally shelled: (thickness, core mu)) ellipsoid into both views.

    ``textured`` (default: ``mu`` above half soft tissue) adds it to the bone map that gets trabecular grain.
    """
    center = np.asarray(center, dtype=np.float64)
    lo, hi = ellipsoid_extent(center, rotation, radii)
    s = film.step
    k0, k1 = _index_range(film.z_top - hi[2], film.z_top - lo[2], 0.0, s)
    k0, k1 = max(k0, 0), min(k1, film.rows)
    if k0 >= k1:
        return
    z = (film.z_top - (np.arange(k0, k1) + 0.5) * s)[:, None]
    for view, axis, ray in (("AP", 0, 1), ("LAT", 1, 0)):
        c0, c1 = _index_range(lo[axis], hi[axis], film.col_origin(view), s)
        c0, c1 = max(c0, 0), min(c1, film.cols(view))
        if c0 >= c1:
            continue
        col = (film.col_origin(view) + (np.arange(c0, c1) + 0.5) * s)[None, :]
        chord = mu * ellipsoid_chord(col, z, (axis, 2), ray, center, rotation, radii)
        if shell is not None:
            thickness, core = shell
            inner = np.maximum(np.asarray(radii) - thickness, 0.1)
            chord = chord + (core - mu) * ellipsoid_chord(col, z, (axis, 2), ray, center, rotation, inner)
        proj.attenuation[view][k0:k1, c0:c1] += chord
        if (mu > MU_SOFT * 0.5) if textured is None else textured:
            proj.bone[view][k0:k1, c0:c1] += chord


def add_torso(
    film: Film,
    proj: Projections,
    model: SpineModel,
    rng: np.random.Generator,
    neck_z: float | None = None,
    center_y: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Soft-tissue torso: an elliptic cylinder (fat) around a muscle/organ core, wider at the hips.

    With ``neck_z`` (the shoulder line) the torso narrows to the neck above it; ``center_y(z)`` moves
    the cross-section's centre with height (the chest following a kyphotic column).
    """
    s = film.step
    z = film.z_top - (np.arange(film.rows) + 0.5) * s
    z_hip = -40.0
    flare = 1.0 + 0.12 * np.clip((z_hip + 60.0 - z) / 80.0, 0.0, 1.0) - 0.04 * np.exp(-(((z - 60.0) / 60.0) ** 2))
    half_w = (model.torso_half_width * flare)[:, None]
    half_d = np.full_like(half_w, model.torso_half_depth)
    if neck_z is not None:
        neck = 1.0 / (1.0 + np.exp(-(z[:, None] - neck_z) / 12.0))  # 0 below the shoulders, 1 in the neck
        half_w = half_w * (1.0 - 0.6 * neck)
        half_d = half_d * (1.0 - 0.4 * neck)
    fat = rng.uniform(0.1, 0.25)
    xc = rng.uniform(-6.0, 6.0)
    for view in ("AP", "LAT"):
        col = film.col_origin(view) + (np.arange(film.cols(view)) + 0.5) * s
        for frac, mu in ((1.0, MU_FAT), (1.0 - fat, MU_SOFT - MU_FAT + 0.002)):
            a, b = half_w * frac, half_d * frac
            # superellipse cross-section (power 4): a torso is a rounded rectangle, not an ellipse
            if view == "AP":
                t = np.clip(1.0 - np.abs((col[None, :] - xc) / a) ** 4, 0.0, None)
                chord = 2.0 * b * t**0.25
            else:
                yc = model.torso_center_y if center_y is None else center_y(z)[:, None]
                t = np.clip(1.0 - np.abs((col[None, :] - yc) / b) ** 4, 0.0, None)
                chord = 2.0 * a * t**0.25
            proj.attenuation[view] += (mu * chord).astype(np.float32)


def add_lungs_and_gas(
    film: Film, proj: Projections, model: SpineModel, rng: np.random.Generator, pockets: int, lungs: bool = True
) -> None:
    """Lung bases above the diaphragm and bowel-gas pockets in the abdomen (both displace tissue).

    ``lungs=False`` leaves the lungs to the thorax model (the same random numbers are drawn).
    """
    by_name = {v.name: v for v in model.vertebrae}
    dome = by_name.get("T12", model.vertebrae[0]).center[2] + rng.uniform(-10.0, 30.0)
    a, b, yc = model.torso_half_width, model.torso_half_depth, model.torso_center_y
    eye = np.eye(3)
    for side in (-1.0, 1.0):
        center = (side * 0.5 * a, yc + 0.15 * b, dome + 150.0 + rng.uniform(-10, 10))
        if lungs:
            add_ellipsoid(film, proj, center, eye, (0.38 * a, 0.7 * b, 150.0), MU_LUNG)
    l1 = by_name.get("L1", model.vertebrae[-1]).center[2]
    for _ in range(pockets):
        center = (rng.uniform(-0.6, 0.6) * a, yc + rng.uniform(-0.6, 0.1) * b, rng.uniform(-40.0, l1 + 20.0))
        radii = rng.uniform(6.0, 30.0, size=3) * np.array([1.0, 0.7, 1.0])
        rot = rotation_matrix(*rng.uniform(-40, 40, size=3))
        add_ellipsoid(film, proj, center, rot, radii, MU_AIR * rng.uniform(0.6, 1.0))


def add_pelvis(film: Film, proj: Projections, model: SpineModel, rng: np.random.Generator) -> None:
    """Iliac wings (shelled plates whose crests reach the L4-L5 level) and the sacral ala."""
    scale = model.size_scale
    by_name = {v.name: v for v in model.vertebrae}
    crest = by_name["L5"].center[2] + by_name["L5"].height_posterior * rng.uniform(0.2, 1.2)
    spread = rng.uniform(0.95, 1.1) * scale
    for side in (-1.0, 1.0):
        center = (side * 95.0 * spread, 10.0, crest - 60.0 * scale)
        rot = rotation_matrix(0.0, side * 25.0, side * rng.uniform(30.0, 45.0))
        add_ellipsoid(film, proj, center, rot, (70.0 * spread, 9.0, 60.0 * scale), MU_CORTEX, shell=(1.5, 0.008))
    rot = model.sacrum_rotation
    ala_center = rot @ np.array([0.0, 10.0 * scale, -40.0 * scale])
    add_ellipsoid(
        film, proj, ala_center, rot, (48.0 * scale, 18.0 * scale, 40.0 * scale), MU_CORTEX, shell=(1.2, 0.006)
    )


def add_ribs(film: Film, proj: Projections, model: SpineModel, rng: np.random.Generator) -> None:
    """Ribs of the modelled thoracic levels: shelled tubes curving round the torso, shorter at T11-T12."""
    a, b, yc = model.torso_half_width, model.torso_half_depth, model.torso_center_y
    for v in model.vertebrae:
        if not v.name.startswith("T"):
            continue
        number = int(v.name[1:])
        sweep = {11: 1.9, 12: 1.3}.get(number, 2.7) * rng.uniform(0.9, 1.05)
        drop = rng.uniform(50.0, 80.0)
        radius = 4.5 * v.half_width / 22.0
        for side in (-1.0, 1.0):
            joint = v.to_world(
                np.array([side * (v.half_width + 4.0), v.half_depth_posterior * 0.5, 0.15 * v.height_posterior])
            )
            t = np.linspace(0.25, sweep, 18)
            ring = np.stack(
                [side * 0.9 * a * np.sin(t), yc + 0.88 * b * np.cos(t), joint[2] - drop * (t - 0.25) / np.pi], axis=1
            )
            path = np.concatenate([joint[None, :], ring], axis=0)
            _add_tube(film, proj, path, radius, cortex=1.2)


def _add_tube(
    film: Film,
    proj: Projections,
    path: np.ndarray,
    radius: float,
    cortex: float,
    mu: float = MU_CORTEX,
    core: float = 0.006,
    textured: bool = True,
) -> None:
    """A shelled tube of ``radius`` along the 3-D polyline ``path`` (projected per view in 2-D).

    ``mu`` is the shell's and ``core`` the inside's attenuation; ``textured`` adds it to the bone map.
    """
    s = film.step
    for view, axis, ray in (("AP", 0, 1), ("LAT", 1, 0)):
        pts = np.stack([(film.z_top - path[:, 2]) / s, (path[:, axis] - film.col_origin(view)) / s], axis=1)
        seg = np.diff(path, axis=0)
        seg_len = np.linalg.norm(seg, axis=1) + 1e-6
        # a segment running along the ray is seen end-on: its chords lengthen by 1/sin(angle)
        stretch = 1.0 / np.clip(np.sqrt(1.0 - (seg[:, ray] / seg_len) ** 2), 0.35, 1.0)
        r_px = radius / s
        lo = np.floor(pts.min(axis=0) - r_px - 1).astype(int)
        hi = np.ceil(pts.max(axis=0) + r_px + 1).astype(int)
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, (film.rows, film.cols(view)))
        if np.any(lo >= hi):
            continue
        best = np.full((hi[0] - lo[0], hi[1] - lo[1]), np.inf, np.float32)
        factor = np.ones_like(best)
        for p0, p1, k in zip(pts[:-1], pts[1:], stretch):
            s0 = np.maximum(np.floor(np.minimum(p0, p1) - r_px - 1).astype(int), lo)
            s1 = np.minimum(np.ceil(np.maximum(p0, p1) + r_px + 1).astype(int), hi)
            if np.any(s0 >= s1):
                continue
            rr = np.arange(s0[0], s1[0], dtype=np.float32)[:, None] + 0.5
            cc = np.arange(s0[1], s1[1], dtype=np.float32)[None, :] + 0.5
            d = p1 - p0
            length2 = float(d @ d) or 1e-6
            t = np.clip(((rr - p0[0]) * d[0] + (cc - p0[1]) * d[1]) / length2, 0.0, 1.0)
            dist = np.hypot(rr - p0[0] - t * d[0], cc - p0[1] - t * d[1])
            window = (slice(s0[0] - lo[0], s1[0] - lo[0]), slice(s0[1] - lo[1], s1[1] - lo[1]))
            closer = dist < best[window]
            best[window] = np.where(closer, dist, best[window])
            factor[window] = np.where(closer, k, factor[window])
        dist_mm = best * s
        outer = 2.0 * np.sqrt(np.clip(radius**2 - dist_mm**2, 0.0, None))
        inner = 2.0 * np.sqrt(np.clip((radius - cortex) ** 2 - dist_mm**2, 0.0, None))
        chord = factor * (mu * outer + (core - mu) * inner)
        proj.attenuation[view][lo[0] : hi[0], lo[1] : hi[1]] += chord
        if textured:
            proj.bone[view][lo[0] : hi[0], lo[1] : hi[1]] += chord
