"""Sampling of one patient's 3-D spine model: vertebrae stacked on the sacrum with sagittal
curvature, scoliosis and axial rotation, plus fractures, listhesis and disk collapse.

Units are millimetres and degrees; the world frame is the one of :mod:`geometry` with the centre
of the S1 superior endplate at the origin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spine_app.synthetic.config import ALL_LEVELS, SynthConfig
from spine_app.synthetic.geometry import rotation_matrix

# Typical adult dimensions per level (mm): half width, anterior half depth, posterior half depth,
# height, and the height of the disk *below* the level. Interpolated from morphometric tables
# (cervicothoracic bodies are small; height, width and depth grow caudally).
_LEVEL_DIMS: dict[str, tuple[float, float, float, float, float]] = {
    "C7": (11.5, 8.5, 7.0, 14.0, 4.5),
    "T1": (12.5, 9.0, 7.5, 15.5, 3.5),
    "T2": (13.0, 9.5, 8.0, 16.5, 3.5),
    "T3": (13.3, 10.0, 8.5, 17.0, 3.5),
    "T4": (13.7, 10.5, 9.0, 17.5, 3.5),
    "T5": (14.3, 11.2, 9.5, 18.2, 4.0),
    "T6": (15.0, 12.0, 10.0, 19.0, 4.0),
    "T7": (15.5, 12.5, 10.5, 19.5, 4.0),
    "T8": (16.0, 13.0, 11.0, 20.0, 4.5),
    "T9": (17.0, 13.5, 11.5, 20.5, 4.5),
    "T10": (18.0, 14.0, 12.0, 21.0, 5.0),
    "T11": (19.0, 14.5, 12.5, 22.0, 5.5),
    "T12": (20.5, 15.0, 13.0, 23.0, 6.5),
    "L1": (21.5, 15.5, 13.5, 24.5, 8.0),
    "L2": (22.5, 16.0, 14.0, 25.5, 9.0),
    "L3": (23.5, 16.5, 14.5, 26.0, 10.0),
    "L4": (24.5, 17.0, 15.0, 26.0, 11.0),
    "L5": (25.5, 17.0, 15.0, 25.0, 10.5),
}
# share of the lumbar lordosis carried by each disk (below L1..L5)
_LORDOSIS_SHARE = {"L1": 0.08, "L2": 0.14, "L3": 0.2, "L4": 0.26, "L5": 0.32}
# where compression fractures happen (thoracolumbar junction most often)
_FRACTURE_SITE_WEIGHT = {
    "C7": 0.1,
    "T1": 0.15,
    "T2": 0.2,
    "T3": 0.25,
    "T4": 0.3,
    "T5": 0.35,
    "T6": 0.4,
    "T7": 0.5,
    "T8": 0.6,
    "T9": 0.7,
    "T10": 0.8,
    "T11": 1.3,
    "T12": 2.0,
    "L1": 2.0,
    "L2": 1.3,
    "L3": 0.9,
    "L4": 0.7,
    "L5": 0.5,
}
GENANT_LOSS = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.55)}


@dataclass
class Fracture:
    """A vertebral compression fracture: Genant grade (1-3), type and relative height loss."""

    grade: int
    kind: str  # wedge | biconcave | crush
    height_loss: float  # 1 - min(Ha, Hm, Hp) / expected height


@dataclass
class Vertebra:
    """One vertebra: pose, body shape and posterior-element sizes (mm)."""

    name: str
    center: np.ndarray  # (3,) world position of the body centre
    rotation: np.ndarray  # (3, 3) local-to-world
    half_width: float
    half_depth_anterior: float
    half_depth_posterior: float
    height_anterior: float
    height_middle: float
    height_posterior: float
    expected_height: float  # the level's height before any fracture
    cortex: float
    in_roi: bool
    fracture: Fracture | None = None
    sclerosis: float = 0.0  # extra density along a compressed endplate

    @property
    def wedge_angle(self) -> float:
        """Angle (deg) between the endplates; positive when the anterior wall is shorter."""
        depth = self.half_depth_anterior + self.half_depth_posterior
        return float(np.rad2deg(np.arctan2(self.height_posterior - self.height_anterior, depth)))

    @property
    def center_height(self) -> float:
        """Rim height on the body's mid line (between anterior and posterior walls)."""
        t = self.half_depth_anterior / (self.half_depth_anterior + self.half_depth_posterior)
        return self.height_anterior + (self.height_posterior - self.height_anterior) * t

    @property
    def concavity(self) -> float:
        """Endplate concavity depth (mm, each endplate) that yields the middle height."""
        return max(0.0, (self.center_height - self.height_middle) / 2.0)

    def to_world(self, local: np.ndarray) -> np.ndarray:
        """Local (u, v, w) points (..., 3) to world coordinates."""
        return np.asarray(local) @ self.rotation.T + self.center


@dataclass
class SpineModel:
    """A sampled patient: the vertebrae top to bottom, disks, sacrum pose and findings."""

    vertebrae: list[Vertebra]
    disk_heights: dict[str, float]  # "T12-L1" -> centre height (mm)
    sacral_slope: float
    sacrum_rotation: np.ndarray
    torso_half_width: float
    torso_half_depth: float
    torso_center_y: float
    label: int  # 0 Normal, 1 Damaged
    listhesis: list[dict] = field(default_factory=list)
    disk_collapse: list[dict] = field(default_factory=list)

    @property
    def fractures(self) -> list[tuple[str, Fracture]]:
        return [(v.name, v.fracture) for v in self.vertebrae if v.fracture is not None]

    def roi_levels(self) -> list[Vertebra]:
        return [v for v in self.vertebrae if v.in_roi]

    @property
    def size_scale(self) -> float:
        """Patient size factor: the L5 body's half width relative to the table's typical adult."""
        return self.vertebrae[-1].half_width / _LEVEL_DIMS["L5"][0]


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def modelled_levels(cfg: SynthConfig) -> tuple[list[str], list[str]]:
    """(all modelled levels top to bottom, region-of-interest levels)."""
    top, bottom = ALL_LEVELS.index(cfg.levels[0]), ALL_LEVELS.index(cfg.levels[1])
    roi = list(ALL_LEVELS[top : bottom + 1])
    first = max(0, top - cfg.context_levels)
    # model down to L5 so the film frames real anatomy below the region of interest
    return list(ALL_LEVELS[first:]), roi


def _sample_fractures(rng: np.random.Generator, cfg: SynthConfig, roi: list[str]) -> dict[str, Fracture]:
    count = int(rng.integers(cfg.fractures_per_study[0], cfg.fractures_per_study[1] + 1))
    count = min(count, len(roi))
    weights = np.array([_FRACTURE_SITE_WEIGHT[name] for name in roi])
    sites = rng.choice(roi, size=count, replace=False, p=weights / weights.sum())
    kinds = list(cfg.type_weights)
    kind_p = np.array([cfg.type_weights[k] for k in kinds], dtype=float)
    grade_p = np.asarray(cfg.grade_weights, dtype=float)
    fractures = {}
    for site in sites:
        grade = int(rng.choice([1, 2, 3], p=grade_p / grade_p.sum()))
        kind = str(rng.choice(kinds, p=kind_p / kind_p.sum()))
        fractures[str(site)] = Fracture(grade=grade, kind=kind, height_loss=_uniform(rng, GENANT_LOSS[grade]))
    return fractures


def _fractured_heights(rng: np.random.Generator, expected: float, fracture: Fracture) -> tuple[float, float, float]:
    """(anterior, middle, posterior) heights of a fractured body with the requested height loss."""
    lost = expected * (1.0 - fracture.height_loss)
    if fracture.kind == "wedge":
        posterior = expected * rng.uniform(0.97, 1.0)
        return lost, 0.5 * (lost + posterior) - 1.0, posterior
    if fracture.kind == "biconcave":
        return expected * rng.uniform(0.95, 1.0), lost, expected * rng.uniform(0.96, 1.0)
    # crush: the whole body is lower, the anterior wall a little more
    posterior = lost * rng.uniform(1.0, 1.04)
    anterior = lost
    return anterior, min(anterior, posterior) * 0.97, posterior


def _normal_heights(rng: np.random.Generator, expected: float, name: str, variation: float) -> tuple[float, ...]:
    """Natural heights: jitter plus physiological wedging at the thoracic levels (all within 15 %)."""
    posterior = expected * (1.0 + rng.uniform(-variation, variation) / 2)
    wedge = rng.uniform(0.0, 0.08) if name.startswith("T") else rng.uniform(-0.04, 0.03)
    anterior = posterior * (1.0 - wedge)
    middle = min(anterior, posterior) * rng.uniform(0.92, 0.97)
    return anterior, middle, posterior


def sample_spine(
    rng: np.random.Generator, cfg: SynthConfig, label: int, disk_narrowing: dict[str, float] | None = None
) -> SpineModel:
    """Sample one patient's spine (``label`` 1 = Damaged) as a :class:`SpineModel`.

    ``disk_narrowing`` (level -> factor) narrows the disk below those levels (degeneration); it draws
    no random numbers, so the rest of the spine is the one sampled without it.
    """
    levels, roi = modelled_levels(cfg)
    scale = _uniform(rng, cfg.patient_scale)
    fractures = _sample_fractures(rng, cfg, roi) if label == 1 else {}

    lordosis = _uniform(rng, cfg.lordosis_deg)
    kyphosis = _uniform(rng, cfg.kyphosis_deg)
    sacral_slope = 0.7 * lordosis + rng.uniform(-5.0, 5.0)
    scoliosis = _uniform(rng, cfg.scoliosis_deg) * rng.choice([-1.0, 1.0])
    scoliosis_phase = rng.uniform(0.0, np.pi)
    scoliosis_freq = rng.uniform(0.6, 1.3)
    rotation_amp = _uniform(rng, cfg.axial_rotation_deg)

    disk_heights: dict[str, float] = {}
    listhesis: list[dict] = []
    disk_collapse: list[dict] = []
    collapsed = None
    if label == 1 and rng.random() < cfg.disk_collapse_probability:
        collapsed = str(rng.choice([lv for lv in levels if lv.startswith("L")]))
    slipped = None
    if label == 1 and rng.random() < cfg.listhesis_probability:
        slipped = str(rng.choice(["L3", "L4", "L5"]))

    # build bottom-up on the sacrum
    n = len(levels)
    sacrum_rot = rotation_matrix(sacral_slope, 0.0, 0.0)
    below_top_point = np.zeros(3)  # S1 superior endplate centre
    below_axis_angle = sacral_slope
    below_half_wedge = 0.0
    below_name = "S1"
    vertebrae: list[Vertebra] = []
    for index in range(n - 1, -1, -1):
        name = levels[index]
        half_w, half_da, half_dp, height, disk_below = (d * scale for d in _LEVEL_DIMS[name])
        half_w *= rng.uniform(0.95, 1.05)
        expected = height * rng.uniform(0.97, 1.03)
        if name in fractures:
            ha, hm, hp = _fractured_heights(rng, expected, fractures[name])
        else:
            ha, hm, hp = _normal_heights(rng, expected, name, cfg.normal_height_variation)
        disk_name = f"{name}-{below_name}"
        disk = disk_below * rng.uniform(0.9, 1.1)
        if disk_narrowing and name in disk_narrowing:
            disk *= disk_narrowing[name]
        if name == collapsed:
            disk *= rng.uniform(0.25, 0.45)
            disk_collapse.append({"disk": disk_name, "height_mm": round(disk, 2)})
        disk_heights[disk_name] = disk

        # sagittal chain: lordotic lumbar disks, kyphotic thoracic disks, plus the bodies' wedges
        if name.startswith("L"):
            disk_turn = -lordosis * _LORDOSIS_SHARE[name]
        elif name in ("T12", "C7"):
            disk_turn = 0.0
        else:
            disk_turn = kyphosis / 9.0 * 0.6  # the rest of the kyphosis comes from wedged bodies
        depth = half_da + half_dp
        wedge = float(np.rad2deg(np.arctan2(hp - ha, depth)))
        axis_angle = below_axis_angle + below_half_wedge + disk_turn + wedge / 2.0
        level_pos = (n - 1 - index) / max(n - 1, 1)
        coronal = scoliosis * np.sin(np.pi * scoliosis_freq * level_pos + scoliosis_phase)
        axial = rotation_amp * np.sin(np.pi * scoliosis_freq * level_pos + scoliosis_phase) + rng.normal(0, 0.7)
        rotation = rotation_matrix(axis_angle, coronal, axial)

        disk_axis = rotation_matrix(below_axis_angle + below_half_wedge + disk_turn / 2.0, coronal, 0.0)[:, 2]
        bottom_point = below_top_point + disk * disk_axis
        if name == slipped:
            shift = expected * rng.uniform(0.12, 0.3)
            bottom_point = bottom_point + np.array([0.0, -shift, 0.0])
            listhesis.append({"level": name, "direction": "anterior", "displacement_mm": round(shift, 2)})
        center_line = ha + (hp - ha) * half_da / depth
        center = bottom_point + rotation[:, 2] * center_line / 2.0

        fracture = fractures.get(name)
        vertebra = Vertebra(
            name=name,
            center=center,
            rotation=rotation,
            half_width=half_w,
            half_depth_anterior=half_da,
            half_depth_posterior=half_dp,
            height_anterior=ha,
            height_middle=hm,
            height_posterior=hp,
            expected_height=expected,
            cortex=rng.uniform(0.9, 1.4),
            in_roi=name in roi,
            fracture=fracture,
            sclerosis=rng.uniform(0.006, 0.014) if fracture is not None else 0.0,
        )
        vertebrae.append(vertebra)
        below_top_point = center + rotation[:, 2] * center_line / 2.0
        below_axis_angle = axis_angle
        below_half_wedge = wedge / 2.0
        below_name = name

    vertebrae.reverse()
    torso_scale = _uniform(rng, cfg.torso_scale)
    mean_y = float(np.mean([v.center[1] for v in vertebrae]))
    half_depth = 105.0 * torso_scale
    return SpineModel(
        vertebrae=vertebrae,
        disk_heights=disk_heights,
        sacral_slope=sacral_slope,
        sacrum_rotation=sacrum_rot,
        torso_half_width=150.0 * torso_scale * rng.uniform(0.92, 1.08),
        torso_half_depth=half_depth,
        torso_center_y=mean_y + 95.0 * scale + 40.0 * (torso_scale - 1.0) - half_depth,
        label=label,
        listhesis=listhesis,
        disk_collapse=disk_collapse,
    )


def balance_sagittal(model: SpineModel, rng: np.random.Generator) -> float:
    """Lean the whole patient back about the S1 endplate so the top vertebra stands over the sacrum.

    A column built up from the sacrum with every lordotic and kyphotic angle ends far in front of it;
    standing patients keep C7 within a few centimetres of the plumb line over S1 (sagittal balance)
    by tilting the pelvis. Rotates every vertebra, the sacrum and the torso in place; returns the
    angle (deg, negative = backwards).
    """
    top = model.vertebrae[0].center
    target = rng.uniform(-10.0, 35.0)  # plumb line from the top vertebra: posterior of S1's centre (mm)
    angle = float(np.rad2deg(np.arctan2(-target, top[2]) - np.arctan2(-top[1], top[2])))
    turn = rotation_matrix(angle, 0.0, 0.0)
    old_mean = float(np.mean([v.center[1] for v in model.vertebrae]))
    for v in model.vertebrae:
        v.center = turn @ v.center
        v.rotation = turn @ v.rotation
    model.sacrum_rotation = turn @ model.sacrum_rotation
    model.torso_center_y += float(np.mean([v.center[1] for v in model.vertebrae])) - old_mean
    return angle
