"""The thorax of the synthetic radiographs (setting ``thorax``): lungs over diaphragm domes, heart,
aorta, trachea, rib cage, sternum, clavicles, scapulae, humeri, shoulders and breasts.

None of these is a mask channel; they are what a model trained on lumbar films mistakes for bone on
chest-level films (the heart's soft-tissue shadow in front of the thoracic bodies on the LAT film, the
posterior ribs crossing the column, the scapulae over the upper thoracic spine). Lungs, heart, aorta
and trachea are one soft-tissue field sampled on a coarse voxel lattice (they are smooth); the bones
are analytic shelled ellipsoids and tubes. Shapes are drawn from the caller's realism stream; the
per-rib draws reuse the study stream's draws of the plain rib model, so nothing else in the study moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spine_app.synthetic.anatomy import SpineModel
from spine_app.synthetic.config import ALL_LEVELS
from spine_app.synthetic.geometry import capsule_sdf, ellipsoid_sdf, occupancy, rotation_matrix
from spine_app.synthetic.imaging import upsample
from spine_app.synthetic.render import MU_AIR, MU_CORTEX, MU_LUNG, MU_SOFT, Film, Projections, _add_tube, add_ellipsoid

#: half width of each rib's ring relative to the widest rib (the cage is a barrel, narrow at the top)
_RIB_WIDTH = {1: 0.5, 2: 0.66, 3: 0.77, 4: 0.85, 5: 0.91, 6: 0.95, 7: 0.98, 8: 1.0, 9: 1.0, 10: 0.98, 11: 0.95, 12: 0.9}
#: angle (rad) round the cage where each rib's bony part ends (11 and 12 are floating ribs)
_RIB_SWEEP = {1: 2.3, 8: 2.5, 9: 2.4, 10: 2.3, 11: 1.9, 12: 1.3}
COARSE_MM = 2.0  # voxel size of the soft-tissue field


@dataclass
class Thorax:
    """One patient's chest: landmarks (mm, world frame) and organ shapes."""

    level_z: dict[str, float]  # centre height of every thoracic level (extrapolated when not modelled)
    spine_z: np.ndarray  # vertebra centre heights, ascending, with their x and y
    spine_x: np.ndarray
    spine_y: np.ndarray
    cage_half_width: float
    sternum_y: float
    apex_z: float
    dome_z: tuple[float, float]  # right, left hemidiaphragm dome tops
    heart_center: np.ndarray
    heart_radii: np.ndarray
    heart_rotation: np.ndarray
    aorta: np.ndarray  # (N, 3) centre line, root to diaphragm
    aorta_radius: float
    airway: list[tuple[np.ndarray, np.ndarray, float]]  # trachea and main bronchi: (start, end, radius)
    breasts: list[tuple[np.ndarray, np.ndarray]]  # (centre, radii) of each breast; empty for none
    neck_z: float  # shoulder line: the torso narrows to the neck above it
    torso_center_y: float  # the torso's centre below T12; above, it follows the column's drift
    drift_from_z: float  # height (T12) from which the torso follows the column

    def torso_y(self, z: np.ndarray) -> np.ndarray:
        """Centre (y) of the torso's cross-section at heights ``z``: it follows the kyphotic column."""
        soft = 30.0 * np.logaddexp(0.0, (np.asarray(z) - self.drift_from_z) / 30.0)  # smooth max(z - z12, 0)
        _, y = self.spine_at(self.drift_from_z + soft)
        _, y0 = self.spine_at(self.drift_from_z)
        return self.torso_center_y + 0.8 * (y - y0)

    def front_y(self, z: float | np.ndarray) -> np.ndarray:
        """Inner anterior chest wall (y) at heights ``z``: the sternum at T7, moving with the torso."""
        return self.sternum_y + self.torso_y(np.asarray(z)) - self.torso_y(np.asarray(self.level_z["T7"]))

    def spine_at(self, z: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the column's body centres at height ``z`` (interpolated)."""
        return np.interp(z, self.spine_z, self.spine_x), np.interp(z, self.spine_z, self.spine_y)

    def to_json(self) -> dict:
        """The landmarks recorded in truth.json."""
        return {
            "heart_center_mm": self.heart_center,
            "dome_z_mm": {"right": self.dome_z[0], "left": self.dome_z[1]},
            "lung_apex_z_mm": self.apex_z,
            "breasts": bool(self.breasts),
        }


def _level_heights(model: SpineModel) -> dict[str, float]:
    """Centre height of every level from C7 to L5; levels above the model are extrapolated."""
    known = {v.name: float(v.center[2]) for v in model.vertebrae}
    top = model.vertebrae[0]
    step = 24.0 * model.size_scale
    out = {}
    for index, name in enumerate(ALL_LEVELS):
        out[name] = known.get(name, float(top.center[2]) + (ALL_LEVELS.index(top.name) - index) * step)
    return out


def sample_thorax(model: SpineModel, rng: np.random.Generator, breast_probability: float) -> Thorax:
    """Draw one patient's chest around ``model``'s column."""
    sc = model.size_scale
    z = _level_heights(model)
    order = np.argsort([v.center[2] for v in model.vertebrae])
    spine = np.array([model.vertebrae[i].center for i in order])
    sz, sx, sy = spine[:, 2], spine[:, 0], spine[:, 1]
    b, yc = model.torso_half_depth, model.torso_center_y
    cage = min(125.0 * sc * rng.uniform(0.93, 1.07), 0.88 * model.torso_half_width)
    drift = float(np.interp(z["T7"], sz, sy) - np.interp(z["T12"], sz, sy))
    sternum_y = yc + 0.8 * drift - 0.82 * b
    dome_right = z["T10"] + rng.uniform(-15.0, 20.0)
    dome_left = dome_right - rng.uniform(8.0, 25.0)

    # heart: on the left dome, from the sternum back to (just over) the front of the column
    rl, ry, rs = (rng.uniform(lo, hi) * sc for lo, hi in ((56.0, 68.0), (44.0, 54.0), (50.0, 60.0)))
    hz = dome_left + 0.7 * rs
    spine_front = float(np.interp(hz, sz, sy)) - 15.0 * sc
    ry = min(ry, 0.5 * (spine_front - sternum_y))
    hy = spine_front - ry + rng.uniform(-6.0, 8.0)
    heart_center = np.array([rng.uniform(10.0, 28.0) * sc, hy, hz])
    heart_rotation = rotation_matrix(rng.uniform(-12.0, 0.0), rng.uniform(30.0, 48.0), rng.uniform(-10.0, 10.0))

    aorta = _aorta_path(model, z, heart_center, rs, sz, sy, sc)
    carina = z["T5"] + rng.uniform(-5.0, 10.0)
    trachea_top = np.array([0.0, float(np.interp(z["C7"], sz, sy)) - 28.0 * sc, z["C7"] + 80.0])
    carina_pt = np.array([2.0, float(np.interp(carina, sz, sy)) - 32.0 * sc, carina])
    airway = [(trachea_top, carina_pt, 8.5 * sc)]
    for side in (-1.0, 1.0):
        airway.append((carina_pt, carina_pt + np.array([side * 42.0 * sc, 4.0, -side * 4.0 - 32.0]), 6.0 * sc))

    breasts = []
    if rng.random() < breast_probability:
        size = rng.uniform(0.45, 0.95)
        droop = rng.uniform(-50.0, -10.0)
        for side in (-1.0, 1.0):
            radii = np.array([60.0, 40.0, 52.0]) * size
            front = yc + 0.8 * (np.interp(z["T8"], sz, sy) - np.interp(z["T12"], sz, sy)) - b
            center = np.array([side * 0.45 * model.torso_half_width, front + 10.0 - 0.3 * radii[1], z["T8"] + droop])
            breasts.append((center, radii))
    return Thorax(
        level_z=z,
        spine_z=sz,
        spine_x=sx,
        spine_y=sy,
        cage_half_width=cage,
        sternum_y=sternum_y,
        apex_z=z["T1"] + rng.uniform(15.0, 30.0),
        dome_z=(dome_right, dome_left),
        heart_center=heart_center,
        heart_radii=np.array([rl, ry, rs]),
        heart_rotation=heart_rotation,
        aorta=aorta,
        aorta_radius=13.0 * sc,
        airway=airway,
        breasts=breasts,
        neck_z=z["T1"] + 25.0 * sc,
        torso_center_y=yc,
        drift_from_z=z["T12"],
    )


def _aorta_path(model: SpineModel, z: dict, heart: np.ndarray, rs: float, sz, sy, sc: float) -> np.ndarray:
    """Ascending aorta from the heart's base, arch at T4, descending left-anterolateral to the column."""
    y4 = float(np.interp(z["T4"], sz, sy))
    points = [
        heart + np.array([-20.0 * sc, -8.0, 0.55 * rs]),
        np.array([-10.0 * sc, 0.5 * (heart[1] + y4) - 12.0, z["T4"] + 10.0]),
        np.array([6.0 * sc, y4 - 22.0 * sc, z["T4"] + 22.0]),
        np.array([22.0 * sc, y4 - 14.0 * sc, z["T4"] + 2.0]),
    ]
    by_name = {v.name: v for v in model.vertebrae}
    for number in range(5, 13):
        name = f"T{number}"
        zz = z[name]
        v = by_name.get(name)
        x = v.center[0] + 0.95 * v.half_width if v else 20.0 * sc
        y = (v.center[1] - 0.55 * v.half_depth_anterior) if v else float(np.interp(zz, sz, sy)) - 10.0
        points.append(np.array([x, y, zz]))
    points.append(points[-1] + np.array([-4.0, -6.0, -30.0]))
    return np.array(points)


def _capsules_sdf(x, y, z, segments: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """Signed distance to a union of world-frame capsules (segments clear of ``z``'s slab are skipped:
    the distance there is only a bound, which is all the 1-voxel occupancy needs)."""
    z_lo, z_hi = float(np.min(z)), float(np.max(z))
    out = None
    for p0, p1, radius in segments:
        if min(p0[2], p1[2]) - radius > z_hi + COARSE_MM or max(p0[2], p1[2]) + radius < z_lo - COARSE_MM:
            continue
        d = capsule_sdf(x, y, z, p0, p1, radius)
        out = d if out is None else np.minimum(out, d)
    return np.full((1, 1, 1), 1e3, np.float32) if out is None else out


def _soft_evaluator(t: Thorax) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Excess attenuation (1/mm) of lungs, heart, aorta and airway over soft tissue at world points."""
    aorta = [(p0, p1, t.aorta_radius) for p0, p1 in zip(t.aorta[:-1], t.aorta[1:])]
    z6 = t.level_z["T6"]
    rot = t.heart_rotation.astype(np.float32)
    hc = t.heart_center.astype(np.float32)

    def evaluate(x, y, z):
        step = COARSE_MM
        sx, sy = t.spine_at(z)
        sx, sy = sx.astype(np.float32), sy.astype(np.float32)
        # cage cross-section: narrows to the apices above T6
        taper = np.sqrt(np.clip(1.0 - np.clip((z - z6) / (t.apex_z - z6), 0.0, None) ** 2, 0.0, 1.0))
        post = sy + 38.0
        front = t.front_y(z).astype(np.float32)
        yc = 0.5 * (post + front)
        half_b = 0.5 * (post - front)
        width = t.cage_half_width * taper + 1e-3
        inside = np.sqrt((x / width) ** 2 + ((y - yc) / (half_b * (0.6 + 0.4 * taper))) ** 2)
        cavity = (inside - 1.0) * 40.0
        # mediastinum and column between the lungs
        medial = 16.0 + 6.0 * np.clip((y - sy) / 40.0 + 1.0, 0.0, 2.0) - np.abs(x - sx)
        # diaphragm: a dome per side (right higher), deepest laterally and in the posterior sulcus
        right = x < 0
        dome = np.where(right, t.dome_z[0], t.dome_z[1])
        lateral = (np.abs(x) - 0.45 * t.cage_half_width) / (0.55 * t.cage_half_width)
        depth = (y - yc) / half_b
        floor = dome - 45.0 * lateral**2 - 18.0 * depth**2 - 22.0 * np.clip(depth, 0.0, None)
        lung_sdf = np.maximum(np.maximum(cavity, medial), floor - z)
        lung = occupancy(lung_sdf, step)
        u, v, w = (rot[0, a] * (x - hc[0]) + rot[1, a] * (y - hc[1]) + rot[2, a] * (z - hc[2]) for a in range(3))
        # the heart with its pericardial fat and the mediastinum around it: no lung there
        heart = occupancy(ellipsoid_sdf(u, v, w, (0.0, 0.0, 0.0), t.heart_radii) - 5.0, step)
        vessel = occupancy(_capsules_sdf(x, y, z, aorta), step)
        air = occupancy(_capsules_sdf(x, y, z, t.airway), step)
        solid = np.maximum(heart, vessel)
        return MU_LUNG * lung * (1.0 - solid) + MU_AIR * 0.95 * air * (1.0 - lung)

    return evaluate


def project_soft(film: Film, proj: Projections, lo: np.ndarray, hi: np.ndarray, evaluate, coarse_mm: float) -> None:
    """Project a smooth attenuation field over the world box [lo, hi] on a coarse lattice (no bone texture).

    The lattice is aligned with the render grid (``c`` render pixels per voxel); its projections are
    upsampled to the render grid and added to the attenuation maps.
    """
    c = max(1, int(round(coarse_mm / film.step)))
    s = film.step * c
    rows_c = -(-film.rows // c)
    i0, i1 = int(np.floor((lo[0] - film.ap_x0) / s)), int(np.ceil((hi[0] - film.ap_x0) / s))
    j0, j1 = int(np.floor((lo[1] - film.lat_y0) / s)), int(np.ceil((hi[1] - film.lat_y0) / s))
    k0 = max(int(np.floor((film.z_top - hi[2]) / s)), 0)
    k1 = min(int(np.ceil((film.z_top - lo[2]) / s)), rows_c)
    if k0 >= k1:
        return
    maps = {v: np.zeros((rows_c, -(-film.cols(v) // c)), np.float32) for v in ("AP", "LAT")}
    x = (film.ap_x0 + (np.arange(i0, i1, dtype=np.float32) + 0.5) * s)[None, None, :]
    y = (film.lat_y0 + (np.arange(j0, j1, dtype=np.float32) + 0.5) * s)[None, :, None]
    for a in range(k0, k1, 24):
        b = min(a + 24, k1)
        z = (film.z_top - (np.arange(a, b, dtype=np.float32) + 0.5) * s)[:, None, None]
        block = np.broadcast_to(evaluate(x, y, z), (b - a, j1 - j0, i1 - i0))
        for view, p, c0 in (("AP", block.sum(axis=1) * s, i0), ("LAT", block.sum(axis=2) * s, j0)):
            target = maps[view][a:b]
            ca, cb = max(c0, 0), min(c0 + p.shape[1], target.shape[1])
            if ca < cb:
                target[:, ca:cb] += p[:, ca - c0 : cb - c0]
    for view, coarse in maps.items():
        proj.attenuation[view] += upsample(coarse, c)[: film.rows, : film.cols(view)]


def add_soft_organs(film: Film, proj: Projections, t: Thorax) -> None:
    """Lungs (over the diaphragm domes), heart, aorta and airway; then breasts and shoulder muscles."""
    margin = 20.0
    lo = np.array([-t.cage_half_width - margin, t.sternum_y - margin, min(t.dome_z) - 120.0])
    hi = np.array([t.cage_half_width + margin, float(t.spine_y.max()) + 80.0, t.level_z["C7"] + 90.0])
    project_soft(film, proj, lo, hi, _soft_evaluator(t), COARSE_MM)
    eye = np.eye(3)
    for center, radii in t.breasts:
        add_ellipsoid(film, proj, center, eye, radii, MU_SOFT * 0.95, textured=False)


def add_chest_bones(film: Film, proj: Projections, model: SpineModel, t: Thorax, rng: np.random.Generator) -> None:
    """Sternum, clavicles, scapulae, humeral heads and shafts (with the shoulder muscles)."""
    sc = model.size_scale
    z = t.level_z
    cage = t.cage_half_width
    _, y1 = t.spine_at(z["T1"])
    _, y5 = t.spine_at(z["T5"])
    sternum_len = 0.5 * (z["T2"] - z["T9"])
    add_ellipsoid(
        film,
        proj,
        (0.0, t.sternum_y + 8.0, 0.5 * (z["T2"] + z["T9"])),
        rotation_matrix(-rng.uniform(10.0, 22.0), 0.0, 0.0),
        (15.0 * sc, 6.0 * sc, sternum_len),
        MU_CORTEX,
        shell=(1.2, 0.006),
    )
    for side in (-1.0, 1.0):
        clavicle = np.array(
            [
                [side * 18.0 * sc, float(t.front_y(z["T2"])) + 6.0, z["T2"] + 8.0],
                [side * 0.5 * cage, float(t.front_y(z["T1"])) - 4.0, z["T1"] + 18.0],
                [side * (cage + 8.0), float(y1) + 5.0, z["T1"] + 30.0],
            ]
        )
        _add_tube(film, proj, clavicle, 6.5 * sc, cortex=1.6)
        scapula = (side * 0.55 * cage, float(y5) + 55.0 * sc, z["T5"] + rng.uniform(-10.0, 15.0))
        rot = rotation_matrix(0.0, side * rng.uniform(5.0, 15.0), side * rng.uniform(20.0, 35.0))
        add_ellipsoid(film, proj, scapula, rot, (45.0 * sc, 5.0, 72.0 * sc), MU_CORTEX, shell=(1.5, 0.005))
        head = np.array([side * (cage + 30.0 * sc), float(y1) + 20.0 * sc, z["T2"] + 5.0])
        add_ellipsoid(film, proj, head, np.eye(3), (23.0 * sc,) * 3, MU_CORTEX, shell=(2.0, 0.006))
        for size in (1.0, 0.75, 0.5):  # the shoulder muscles, densest round the joint (no hard outline)
            radii = np.array([40.0, 50.0, 50.0]) * sc * size
            add_ellipsoid(film, proj, head, np.eye(3), radii, MU_SOFT / 3.0, textured=False)
        _add_arm(film, proj, head, side, sc)


def _add_arm(film: Film, proj: Projections, head: np.ndarray, side: float, sc: float) -> None:
    """Humeral shaft and upper-arm soft tissue on the AP film only (the arms are raised for the LAT film)."""
    scratch = Projections.empty(film)
    shaft = np.array([head + [side * 6.0, -4.0, -30.0], head + [side * 18.0, -25.0, -280.0]])
    _add_tube(film, scratch, shaft, 11.0 * sc, cortex=3.0)
    arm = np.array([head + [side * 4.0, 0.0, 10.0], head + [side * 14.0, -20.0, -200.0], shaft[-1]])
    _add_tube(film, scratch, arm, 42.0 * sc, cortex=42.0 * sc, mu=MU_SOFT, core=MU_SOFT, textured=False)
    proj.attenuation["AP"] += scratch.attenuation["AP"]
    proj.bone["AP"] += scratch.bone["AP"]


def add_rib_cage(film: Film, proj: Projections, model: SpineModel, t: Thorax, rng: np.random.Generator) -> None:
    """Twelve pairs of ribs from the costovertebral joints round a barrel-shaped cage.

    Draws from ``rng`` exactly what the plain rib model (render.add_ribs) draws, in the same order.
    """
    sc = model.size_scale
    for v in model.vertebrae:
        if not v.name.startswith("T"):
            continue
        number = int(v.name[1:])
        sweep = _RIB_SWEEP.get(number, 2.55) * rng.uniform(0.9, 1.05)
        drop = rng.uniform(50.0, 80.0) * {1: 0.6, 2: 1.0}.get(number, 1.35)
        half_w = t.cage_half_width * _RIB_WIDTH[number]
        posterior = v.center[1] + v.half_depth_posterior + 28.0 * sc
        anterior = float(t.front_y(v.center[2])) + 10.0
        yc, half_d = 0.5 * (posterior + anterior), 0.5 * (posterior - anterior)
        for side in (-1.0, 1.0):
            joint = v.to_world(
                np.array([side * (v.half_width + 3.0), v.half_depth_posterior * 0.5, 0.15 * v.height_posterior])
            )
            angle = np.linspace(0.35, sweep, 20)
            ring = np.stack(
                [
                    v.center[0] + side * half_w * np.sin(angle),
                    yc + half_d * np.cos(angle),
                    joint[2] + 4.0 - drop * ((angle - 0.35) / (np.pi - 0.35)) ** 1.7,
                ],
                axis=1,
            )
            lateral = int(np.searchsorted(angle, 1.9))  # posterior and lateral arc | thinner anterior arc
            _add_tube(film, proj, np.concatenate([joint[None, :], ring[: lateral + 1]]), 3.6 * sc, 0.8, core=0.004)
            if lateral < len(ring) - 1:
                _add_tube(film, proj, ring[lateral:], 2.8 * sc, 0.6, core=0.003)
