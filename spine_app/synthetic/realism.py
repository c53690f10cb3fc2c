"""What real patients have (each behind its own probability setting): osteoporotic bone, degenerative
osteophytes with endplate sclerosis, vertebroplasty cement, pedicle screws and rods, ECG electrodes and
leads, anti-scatter grid lines.

Every draw comes from the study's realism stream (``SeedSequence([seed, index, 16])``), never from the
study stream, so a config with all of them off renders exactly what it rendered before. None of these
is a mask channel: the vertebra masks stay the projections of the bodies alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spine_app.synthetic.anatomy import SpineModel, Vertebra, modelled_levels
from spine_app.synthetic.config import SynthConfig
from spine_app.synthetic.geometry import capsule_sdf, ellipsoid_sdf, occupancy, rotation_matrix
from spine_app.synthetic.render import Film, Projections, _add_tube, _to_local, _world_box, add_ellipsoid, project_block

MU_CEMENT = 0.075  # PMMA with barium sulphate: denser than cortical bone
MU_METAL = 0.30  # titanium alloy (~70 keV)
MU_WIRE = 0.45  # copper lead wire


@dataclass
class Realism:
    """The realism features drawn for one study (recorded in truth.json)."""

    osteoporosis: float = 0.0  # bone density loss (0 none .. 0.6)
    degenerated: list[str] = field(default_factory=list)  # levels with osteophytes and sclerosis
    disk_narrowing: dict[str, float] = field(default_factory=dict)  # level -> height factor of the disk below
    cement: list[str] = field(default_factory=list)  # fractured levels filled with cement
    instrumented: list[str] = field(default_factory=list)  # levels with pedicle screws (joined by rods)
    ecg_electrodes: int = 0
    calcified_plaques: int = 0  # plaques in the wall of the aorta in front of the column
    grid: dict | None = None  # {"period_px", "amplitude", "phase"} of the grid-line pattern

    def to_json(self) -> dict:
        """Plain-JSON form."""
        return {
            "osteoporosis": round(self.osteoporosis, 3),
            "degenerated": self.degenerated,
            "disk_narrowing": {name: round(f, 3) for name, f in self.disk_narrowing.items()},
            "cement": self.cement,
            "instrumented": self.instrumented,
            "ecg_electrodes": self.ecg_electrodes,
            "calcified_plaques": self.calcified_plaques,
            "grid_lines": self.grid,
        }


def sample_degeneration(rng: np.random.Generator, cfg: SynthConfig) -> dict[str, float]:
    """Degenerated levels (2-5 contiguous, in the region of interest) and the height factor of the disk
    below each (0.55-0.85), drawn before the spine is built; empty when none."""
    if not cfg.degeneration_probability or rng.random() >= cfg.degeneration_probability:
        return {}
    roi = modelled_levels(cfg)[1]
    count = int(rng.integers(2, 6))
    start = int(rng.integers(0, max(1, len(roi) - count + 1)))
    return {name: float(rng.uniform(0.55, 0.85)) for name in roi[start : start + count]}


def sample_realism(
    rng: np.random.Generator, cfg: SynthConfig, model: SpineModel, degeneration: dict[str, float] | None = None
) -> Realism:
    """Draw the realism features of one study (every feature draws only when its probability > 0);
    ``degeneration`` is what :func:`sample_degeneration` drew for the spine (empty: none)."""
    out = Realism()
    names = [v.name for v in model.vertebrae]
    roi = [v.name for v in model.roi_levels()]
    if cfg.osteoporosis_probability and rng.random() < cfg.osteoporosis_probability:
        out.osteoporosis = float(rng.uniform(0.3, 0.6))
    if degeneration:
        out.degenerated = [name for name in names if name in degeneration]
        out.disk_narrowing = dict(degeneration)
    if cfg.cement_probability:
        out.cement = [name for name, _ in model.fractures if rng.random() < cfg.cement_probability]
    if cfg.instrumentation_probability and rng.random() < cfg.instrumentation_probability:
        span = int(rng.integers(2, 5))
        fractured = [name for name, _ in model.fractures if name not in out.cement]
        centre = names.index(fractured[0]) if fractured else names.index(str(rng.choice(roi)))
        first = int(np.clip(centre - span // 2, 0, len(names) - span))
        out.instrumented = [n for n in names[first : first + span] if n != (fractured[0] if fractured else None)]
        if len(out.instrumented) < 2:
            out.instrumented = names[first : first + span]
    if cfg.ecg_probability and rng.random() < cfg.ecg_probability:
        out.ecg_electrodes = int(rng.integers(3, 6))
    if cfg.grid_line_probability and rng.random() < cfg.grid_line_probability:
        out.grid = {
            "period_px": float(rng.uniform(2.2, 6.0)),
            "amplitude": float(rng.uniform(0.004, 0.015)),
            "phase": float(rng.uniform(0.0, 2.0 * np.pi)),
        }
    if cfg.aortic_calcification_probability and rng.random() < cfg.aortic_calcification_probability:
        out.calcified_plaques = int(rng.integers(4, 25))
    return out


def apply_osteoporosis(model: SpineModel, loss: float) -> None:
    """Thin every cortex in place (the cancellous density is lowered by ``bone_density``)."""
    for v in model.vertebrae:
        v.cortex = max(0.35, v.cortex * (1.0 - loss))


def bone_density(bone: float, realism: Realism | None) -> float:
    """Cancellous excess attenuation after osteoporotic loss."""
    return bone if realism is None else bone * (1.0 - realism.osteoporosis)


def _render_local(film: Film, proj: Projections, v: Vertebra, lo, hi, sdf_of, mu: float, key: str) -> None:
    """Add a solid of attenuation ``mu`` given by ``sdf_of(u, v, w)`` in ``v``'s local frame."""

    def evaluate(x, y, z):
        u, vv, w = _to_local(v.center, v.rotation, x, y, z)
        return {key: mu * occupancy(sdf_of(u, vv, w), film.step)}

    wlo, whi = _world_box(v, lo, hi)
    project_block(film, proj, wlo, whi, evaluate)


def add_osteophytes(film: Film, proj: Projections, v: Vertebra, rng: np.random.Generator, bone: float) -> None:
    """Bony spurs at the anterior and lateral endplate rims, pointing towards the disk, plus sclerosis."""
    a, ba = v.half_width, v.half_depth_anterior
    for end in (-1.0, 1.0):
        for u0, v0, du, dv in ((0.0, -ba, 0.0, -1.0), (-a, 0.0, -1.0, 0.0), (a, 0.0, 1.0, 0.0)):
            h = (v.height_anterior if dv < 0 else v.center_height) / 2.0  # rim height at the spur
            length = rng.uniform(3.0, 9.0)
            p0 = np.array([u0 * 0.9, v0 * 0.9, end * (h - 1.5)])
            p1 = p0 + np.array([du * 0.7 * length, dv * 0.7 * length, end * 0.7 * length])
            radius = rng.uniform(1.8, 3.0)
            box_lo = np.minimum(p0, p1) - radius - 1.0
            box_hi = np.maximum(p0, p1) + radius + 1.0

            def spur(u, vv, w, p0=p0, p1=p1, radius=radius):
                return capsule_sdf(u, vv, w, p0, p1, radius)

            _render_local(film, proj, v, box_lo, box_hi, spur, 0.025 + bone, "density")
    v.sclerosis = max(v.sclerosis, float(rng.uniform(0.004, 0.01)))


def add_cement(film: Film, proj: Projections, v: Vertebra, rng: np.random.Generator) -> None:
    """Vertebroplasty cement: two or three merging blobs inside the (fractured) body."""
    a, ba, bp = v.half_width, v.half_depth_anterior, v.half_depth_posterior
    h = v.height_middle / 2.0
    for _ in range(int(rng.integers(2, 4))):
        center = np.array([rng.uniform(-0.35, 0.35) * a, rng.uniform(-0.4, 0.2) * ba, rng.uniform(-0.2, 0.2) * h])
        radii = np.array([rng.uniform(0.3, 0.5) * a, rng.uniform(0.3, 0.5) * (ba + bp) / 2, rng.uniform(0.5, 0.75) * h])

        def blob(u, vv, w, center=center, radii=radii):
            return ellipsoid_sdf(u, vv, w, center, radii)

        _render_local(film, proj, v, center - radii - 1.0, center + radii + 1.0, blob, MU_CEMENT, "attenuation_only")


def screw_heads(v: Vertebra) -> list[np.ndarray]:
    """World position of the left and right screw heads (behind the pedicles)."""
    f = v.half_width / 22.0
    return [
        v.to_world(np.array([side * 0.7 * v.half_width, v.half_depth_posterior + 14.0 * f, 0.12 * v.height_posterior]))
        for side in (-1.0, 1.0)
    ]


def add_instrumentation(film: Film, proj: Projections, model: SpineModel, levels: list[str]) -> None:
    """Pedicle screws converging through both pedicles into each body, joined by a rod per side."""
    by_name = {v.name: v for v in model.vertebrae}
    heads: list[list[np.ndarray]] = [[], []]
    for name in levels:
        v = by_name[name]
        f = v.half_width / 22.0
        for index, side in enumerate((-1.0, 1.0)):
            entry = np.array([side * 0.7 * v.half_width, v.half_depth_posterior + 14.0 * f, 0.12 * v.height_posterior])
            tip = np.array([side * 0.15 * v.half_width, -0.7 * v.half_depth_anterior, 0.05 * v.height_posterior])
            radius = 3.2 * f

            def screw(u, vv, w, entry=entry, tip=tip, radius=radius, head=5.5 * f):
                shaft = capsule_sdf(u, vv, w, entry, tip, radius)
                return np.minimum(shaft, ellipsoid_sdf(u, vv, w, entry, (head, head, head)))

            box = (np.minimum(entry, tip) - 7.0 * f, np.maximum(entry, tip) + 7.0 * f)
            _render_local(film, proj, v, box[0], box[1], screw, MU_METAL, "attenuation_only")
            heads[index].append(v.to_world(entry))
    for side_heads in heads:
        if len(side_heads) < 2:
            continue
        path = np.array(side_heads)
        extend = (path[-1] - path[0]) / max(len(path) - 1, 1) * 0.25
        path = np.concatenate([[path[0] - extend], path, [path[-1] + extend]])
        _add_tube(film, proj, path, 2.8 * model.size_scale, cortex=2.8, mu=MU_METAL, core=MU_METAL, textured=False)


def add_ecg_leads(film: Film, proj: Projections, model: SpineModel, count: int, rng: np.random.Generator) -> None:
    """ECG electrodes (a metal snap on a pad) on the anterior chest and their wandering lead wires."""
    a, b, yc = model.torso_half_width, model.torso_half_depth, model.torso_center_y
    top = model.vertebrae[0].center[2]
    for _ in range(count):
        x = rng.uniform(-0.7, 0.7) * a
        skin = yc - b * (1.0 - min(abs(x / a), 0.99) ** 4) ** 0.25 - 4.0
        z = rng.uniform(top - 250.0, top + 40.0)
        snap = np.array([x, skin, z])
        add_ellipsoid(film, proj, snap, np.eye(3), (5.0, 2.5, 5.0), MU_METAL, textured=False)
        add_ellipsoid(film, proj, snap + [0, 1.0, 0], np.eye(3), (16.0, 1.5, 16.0), 0.01, textured=False)
        # the lead: a smooth random walk towards one side of the film
        heading = np.array([np.sign(x or 1.0) * rng.uniform(0.3, 1.0), 0.0, rng.uniform(-1.0, 1.0)])
        points = [snap]
        for _ in range(30):
            heading[[0, 2]] += rng.normal(0.0, 0.25, size=2)
            heading /= np.linalg.norm(heading) + 1e-6
            points.append(points[-1] + 18.0 * heading)
        _add_tube(film, proj, np.array(points), 0.9, cortex=0.9, mu=MU_WIRE, core=MU_WIRE, textured=False)


def add_aortic_calcification(
    film: Film, proj: Projections, model: SpineModel, plaques: int, rng: np.random.Generator
) -> None:
    """Thin calcified plaques in the wall of the aorta (radius ~11 mm, left of and in front of the bodies),
    most of them from T12 down to the bifurcation at L4: the flecks in front of the lumbar column on LAT films."""
    column = [v for v in model.vertebrae if v.name in ("T10", "T11", "T12", "L1", "L2", "L3", "L4")]
    if not column:
        return
    weights = np.linspace(0.5, 2.0, len(column))
    for _ in range(plaques):
        v = column[int(rng.choice(len(column), p=weights / weights.sum()))]
        axis = v.to_world(np.array([0.8 * v.half_width, -v.half_depth_anterior - 14.0, rng.uniform(-0.6, 0.6) * 20.0]))
        angle = rng.uniform(0.0, 2.0 * np.pi)
        normal = np.array([np.cos(angle), np.sin(angle), 0.0])
        center = axis + 11.0 * normal
        tangent = np.degrees(angle) + 90.0
        radii = (rng.uniform(2.5, 7.0), rng.uniform(0.8, 1.5), rng.uniform(3.0, 9.0))
        add_ellipsoid(film, proj, center, rotation_matrix(0.0, 0.0, tangent), radii, MU_CEMENT, textured=False)


def grid_lines(shape: tuple[int, int], grid: dict) -> np.ndarray:
    """Additive film pattern of anti-scatter grid lines (parallel to the long axis), float32."""
    cols = np.arange(shape[1], dtype=np.float32)
    wave = grid["amplitude"] * np.sin(2.0 * np.pi * cols / grid["period_px"] + grid["phase"])
    return np.broadcast_to(wave[None, :].astype(np.float32), shape)
