"""CT export of a generated study: the same 3-D patient ``generate_study`` renders, voxelised.

``build_scene(cfg, seed, index)`` replays the generator's random stream (``sample_spine`` then
``frame_film`` then ``render_model``, the generator's own functions) and records what the render
places in the patient: the torso, lungs, bowel gas, pelvis, ribs and every vertebra with its bone
density. ``voxelise`` samples that scene on a regular grid with render.py's own per-part density
evaluators, so the CT holds the attenuation the generator projects.

Volume conventions (``ct.nii.gz``, ``ct_labels.nii.gz``):

* voxel axes i, j, k run along the generator's world x (patient left), y (posterior), z (superior):
  the array is LPS-ordered; the affine maps voxels to RAS+ millimetres (nibabel orientation
  ``('L', 'P', 'S')``), i.e. RAS = (-x, -y, z) of the generator's world frame.
* values are Hounsfield units (int16): HU = 1000 (mu - MU_WATER) / MU_WATER with the generator's
  linear attenuation mu (1/mm, ~70 keV); :func:`hu_to_mu` is the inverse the DRR projector uses.
* labels follow the VerSe convention (1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 0 background).
* a NIfTI comment extension holds JSON (``spine_app`` key) with the generator's film frame, seed and
  index, so ``spine-app drr`` can project onto the generator's own pixel grid.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spine_app.synthetic import generator as gen
from spine_app.synthetic import render
from spine_app.synthetic.anatomy import SpineModel, Vertebra
from spine_app.synthetic.config import SynthConfig
from spine_app.synthetic.geometry import occupancy
from spine_app.synthetic.render import MU_SOFT, Film

#: linear attenuation of water (1/mm) that maps the generator's mu to Hounsfield units
MU_WATER = 0.019
HU_AIR = -1000
#: VerSe label values of the levels the generator models
VERSE_VALUE: dict[str, int] = {
    **{f"C{i}": i for i in range(1, 8)},
    **{f"T{i}": 7 + i for i in range(1, 13)},
    **{f"L{i}": 19 + i for i in range(1, 7)},
    "S1": 26,
}
EXTENSION_KEY = "spine_app"


def mu_to_hu(mu: np.ndarray) -> np.ndarray:
    return 1000.0 * (mu - MU_WATER) / MU_WATER


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    return np.maximum(MU_WATER * (1.0 + hu / 1000.0), 0.0)


@dataclass
class Scene:
    """Everything ``render_model`` put in the patient, as 3-D primitives."""

    model: SpineModel
    film: Film
    label: int
    bone: float
    torso_fat: float
    torso_xc: float
    vertebrae: list[tuple[Vertebra, bool, bool]] = field(default_factory=list)  # (vertebra, annotate, posterior)
    ellipsoids: list[tuple[Any, ...]] = field(default_factory=list)  # (center, rotation, radii, mu, shell)
    tubes: list[tuple[np.ndarray, float, float, float, float]] = field(
        default_factory=list
    )  # (path, radius, cortex, mu, core)
    blocks: list[tuple[np.ndarray, np.ndarray, Any]] = field(
        default_factory=list
    )  # (lo, hi, evaluator): implants, osteophytes
    soft: list[tuple[np.ndarray, np.ndarray, Any]] = field(
        default_factory=list
    )  # (lo, hi, mu field): heart, lungs, vessels
    torso_y: Any = None  # the thorax's torso centre y(z), or None (the model's torso_center_y)
    neck_z: float | None = None  # the thorax's shoulder line (the torso narrows to the neck above it)


class _Recorder:
    """A numpy Generator stand-in that records the values it hands out."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._rng, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            value = method(*args, **kwargs)
            self.calls.append((name, value))
            return value

        return call


@contextlib.contextmanager
def _patched(module: Any, name: str, replacement: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def build_scene(cfg: SynthConfig, seed: int, index: int) -> Scene:
    """The 3-D scene of study ``index`` of the dataset seeded ``seed`` (the generator's random stream).

    The study is sampled as the generator samples it (``generator.sample_study``: field of view,
    thorax, patient features) and its render replayed on a one-pixel film far away from the patient
    (nothing is rasterised), with the placement functions intercepted to record what they place: torso,
    lungs, bowel gas, pelvis, ribs or the rib cage, the thorax's organs, scapulae and clavicles,
    osteophytes, cement, screws and rods, ECG leads, aortic plaques and every vertebra with its bone
    density. The humeri and upper arms of the AP film are left out (a CT is taken with the arms
    raised). Not thread-safe (module patching).
    """
    from spine_app.synthetic import realism, thorax

    rng, cfg, model, film, extras = gen.sample_study(cfg, seed, index)
    far = 1.0e7
    dummy = Film(step=film.step, upsample=1, z_top=far, rows=1, ap_x0=far, ap_cols=1, lat_y0=far, lat_cols=1)
    scene = Scene(model=model, film=film, label=model.label, bone=0.012, torso_fat=0.15, torso_xc=0.0)
    original_torso = gen.add_torso
    main: dict[str, Any] = {}  # the render's own projections (a scratch one holds the AP-only arms)

    def torso(film_, proj, model_, rng_, neck_z=None, center_y=None):
        main["proj"] = proj
        recorder = _Recorder(rng_)
        original_torso(film_, proj, model_, recorder, neck_z=neck_z, center_y=center_y)
        values = [float(v) for name, v in recorder.calls if name == "uniform"]
        if len(values) >= 2:
            scene.torso_fat, scene.torso_xc = values[0], values[1]
        scene.neck_z, scene.torso_y = neck_z, center_y

    def vertebra(film_, proj, v, bone, annotate=True, posterior=True, **_):
        scene.bone = float(bone)
        scene.vertebrae.append((v, annotate, posterior))

    def ellipsoid(film_, proj, center, rotation, radii, mu, shell=None, **_):
        if proj is main.get("proj"):
            scene.ellipsoids.append(
                (np.asarray(center, float), np.asarray(rotation, float), np.asarray(radii), mu, shell)
            )

    def tube(film_, proj, path, radius, cortex, mu=render.MU_CORTEX, core=0.006, **_):
        if proj is main.get("proj"):
            scene.tubes.append((np.asarray(path, float), float(radius), float(cortex), float(mu), float(core)))

    def block(film_, proj, lo, hi, evaluate):
        scene.blocks.append((np.asarray(lo, float), np.asarray(hi, float), evaluate))

    def soft(film_, proj, lo, hi, evaluate, coarse_mm):
        scene.soft.append((np.asarray(lo, float), np.asarray(hi, float), evaluate))

    patches = [
        (gen, "add_torso", torso),
        (gen, "render_vertebra", vertebra),
        (render, "add_ellipsoid", ellipsoid),
        (render, "_add_tube", tube),
        (thorax, "add_ellipsoid", ellipsoid),
        (thorax, "_add_tube", tube),
        (thorax, "project_soft", soft),
        (realism, "add_ellipsoid", ellipsoid),
        (realism, "_add_tube", tube),
        (realism, "project_block", block),
    ]
    with contextlib.ExitStack() as stack:
        for module, name, replacement in patches:
            stack.enter_context(_patched(module, name, replacement))
        gen.render_model(model, dummy, cfg, rng, extras)
    return scene


@dataclass
class Grid:
    """A regular voxel grid in the generator's world frame (voxel centres at origin + index * step)."""

    origin: np.ndarray  # world (x, y, z) of voxel (0, 0, 0)
    shape: tuple[int, int, int]
    step: float

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(
            (self.origin[a] + np.arange(self.shape[a], dtype=np.float32) * self.step).astype(np.float32)
            for a in range(3)
        )

    def affine(self) -> np.ndarray:
        """Voxel -> RAS+ mm (the array is LPS-ordered: RAS = (-x, -y, z))."""
        s = self.step
        out = np.diag([-s, -s, s, 1.0])
        out[:3, 3] = [-self.origin[0], -self.origin[1], self.origin[2]]
        return out

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        idx = []
        for a in range(3):
            i0 = max(int(np.floor((lo[a] - self.origin[a]) / self.step)), 0)
            i1 = min(int(np.ceil((hi[a] - self.origin[a]) / self.step)) + 1, self.shape[a])
            if i0 >= i1:
                return None
            idx.append(slice(i0, i1))
        return tuple(idx)

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, z = self.axes()
        return x[box[0]][:, None, None], y[box[1]][None, :, None], z[box[2]][None, None, :]


def scene_grid(scene: Scene, voxel_mm: float) -> Grid:
    """A grid over the torso's cross-section and both films (x, y) and the film's rows (z)."""
    m, film = scene.model, scene.film
    half_w = m.torso_half_width * 1.14 + 5.0
    bottom = film.z_top - film.rows * film.step
    lo = np.array(
        [
            min(scene.torso_xc - half_w, film.ap_x0),
            min(m.torso_center_y - m.torso_half_depth - 5.0, film.lat_y0),
            bottom - 2.0,
        ]
    )
    hi = np.array(
        [
            max(scene.torso_xc + half_w, film.ap_x0 + film.ap_cols * film.step),
            max(m.torso_center_y + m.torso_half_depth + 5.0, film.lat_y0 + film.lat_cols * film.step),
            film.z_top + 2.0,
        ]
    )
    shape = tuple(int(np.ceil((hi[a] - lo[a]) / voxel_mm)) + 1 for a in range(3))
    return Grid(origin=lo, shape=shape, step=voxel_mm)


def _torso_mu(scene: Scene, grid: Grid) -> np.ndarray:
    """Superellipse torso (power 4) as add_torso projects it: fat shell round a denser core."""
    m = scene.model
    x, y, z = grid.axes()
    z_hip = -40.0
    flare = 1.0 + 0.12 * np.clip((z_hip + 60.0 - z) / 80.0, 0.0, 1.0) - 0.04 * np.exp(-(((z - 60.0) / 60.0) ** 2))
    half_w = (m.torso_half_width * flare)[None, None, :]
    half_d = np.full_like(half_w, m.torso_half_depth)
    if scene.neck_z is not None:  # as add_torso narrows it above the shoulders
        neck = 1.0 / (1.0 + np.exp(-(z[None, None, :] - scene.neck_z) / 12.0))
        half_w, half_d = half_w * (1.0 - 0.6 * neck), half_d * (1.0 - 0.4 * neck)
    centre_y = scene.torso_y(z) if scene.torso_y is not None else np.full_like(z, m.torso_center_y)
    dx = np.abs(x - scene.torso_xc)[:, None, None]
    dy = np.abs(y[None, :, None] - np.asarray(centre_y, np.float32)[None, None, :])
    mu = np.zeros(grid.shape, np.float32)
    for frac, value in ((1.0, render.MU_FAT), (1.0 - scene.torso_fat, MU_SOFT - render.MU_FAT + 0.002)):
        a, b = half_w * frac, half_d * frac
        inside = (dx / a) ** 4 + (dy / b) ** 4 <= 1.0
        mu += np.float32(value) * inside
    return mu


def _add_ellipsoid(mu: np.ndarray, grid: Grid, center, rotation, radii, value: float, shell) -> None:
    radii = np.asarray(radii, float)
    half = np.sqrt(((rotation * radii[None, :]) ** 2).sum(axis=1))
    box = grid.box(center - half - grid.step, center + half + grid.step)
    if box is None:
        return
    x, y, z = grid.coords(box)
    d = (x - center[0], y - center[1], z - center[2])
    local = [sum(rotation[r, a] * d[r] for r in range(3)) for a in range(3)]

    def inside(r: np.ndarray) -> np.ndarray:
        q = np.sqrt(sum((local[a] / r[a]) ** 2 for a in range(3)))
        return occupancy(((q - 1.0) * float(r.min())).astype(np.float32), grid.step)

    block = value * inside(radii)
    if shell is not None:
        thickness, core = shell
        block = block + (core - value) * inside(np.maximum(radii - thickness, 0.1))
    mu[box] += block.astype(np.float32)


def _add_tube(
    mu: np.ndarray, grid: Grid, path: np.ndarray, radius: float, cortex: float, value: float, core: float
) -> None:
    for p0, p1 in zip(path[:-1], path[1:]):
        box = grid.box(np.minimum(p0, p1) - radius - grid.step, np.maximum(p0, p1) + radius + grid.step)
        if box is None:
            continue
        x, y, z = grid.coords(box)
        d = p1 - p0
        length2 = float(d @ d) or 1e-6
        t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / length2, 0.0, 1.0)
        dist = np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)
        outer = occupancy((dist - radius).astype(np.float32), grid.step)
        inner = occupancy((dist - radius + cortex).astype(np.float32), grid.step)
        block = value * outer + (core - value) * inner
        # joints of consecutive segments overlap: keep the larger value rather than adding twice
        mu[box] = np.maximum(mu[box], block)


def _vertebra_blocks(v: Vertebra, step: float, bone: float, posterior: bool):
    """(world box, evaluator) of the body and each posterior part, as render_vertebra samples them."""
    a, ba, bp = v.half_width, v.half_depth_anterior, v.half_depth_posterior
    hmax = max(v.height_anterior, v.height_posterior) / 2.0
    yield render._world_box(v, (-a, -ba, -hmax), (a, bp, hmax)), render._body_evaluator(v, step, bone, "vertebra")
    for kind, _structure, geometry in render._posterior_parts(v) if posterior else ():
        plo, phi = render._part_box(kind, geometry)
        yield render._world_box(v, plo, phi), render._part_evaluator(v, kind, "part", geometry, step, bone)


def voxelise(scene: Scene, voxel_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray, Grid]:
    """(HU int16, VerSe labels uint8, grid) of the scene on a ``voxel_mm`` grid."""
    grid = scene_grid(scene, voxel_mm)
    body = _torso_mu(scene, grid)
    extra = np.zeros(grid.shape, np.float32)
    for center, rotation, radii, value, shell in scene.ellipsoids:
        _add_ellipsoid(extra, grid, center, rotation, radii, value, shell)
    ribs = np.zeros(grid.shape, np.float32)
    for path, radius, cortex, value, core in scene.tubes:
        _add_tube(ribs, grid, path, radius, cortex, value, core)
    for lo, hi, evaluate in scene.soft:  # the thorax's organs: attenuation relative to soft tissue
        box = grid.box(lo, hi)
        if box is not None:
            extra[box] += np.broadcast_to(evaluate(*grid.coords(box)), extra[box].shape).astype(np.float32)
    for lo, hi, evaluate in scene.blocks:  # osteophytes, cement, screws: not part of any label
        box = grid.box(lo, hi)
        if box is not None:
            out = evaluate(*grid.coords(box))
            for key in ("density", "attenuation_only"):
                if key in out:
                    extra[box] += np.broadcast_to(out[key], extra[box].shape).astype(np.float32)
    labels = np.zeros(grid.shape, np.uint8)
    best = np.zeros(grid.shape, np.float32)  # occupancy of the label written so far
    spine = np.zeros(grid.shape, np.float32)
    for v, _annotate, posterior in scene.vertebrae:
        value = VERSE_VALUE.get(v.name, 0)
        for (lo, hi), evaluate in _vertebra_blocks(v, voxel_mm, scene.bone, posterior):
            box = grid.box(lo, hi)
            if box is None:
                continue
            out = evaluate(*grid.coords(box))
            occ = np.broadcast_to(out.get("vertebra", out.get("part")), labels[box].shape)
            spine[box] += np.broadcast_to(out["density"], occ.shape)
            win = (occ > 0.5) & (occ > best[box])
            labels[box] = np.where(win, value, labels[box])
            best[box] = np.where(win, occ, best[box])
    mu = body + extra + ribs + spine
    outside = body <= 0
    hu = np.where(outside, HU_AIR, mu_to_hu(np.maximum(mu, 0.0)))
    hu = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return hu, labels, grid


def film_metadata(scene: Scene, seed: int, index: int) -> dict[str, Any]:
    """What the NIfTI extension carries: the generator's film frame and the study it belongs to."""
    return {
        "generator": "spine_app.synthetic.ct",
        "seed": seed,
        "index": index,
        "study_id": gen.study_id_for(seed, index),
        "label": scene.label,
        "label_convention": "verse",
        "world_frame": "LPS (x patient left, y posterior, z superior); affine maps to RAS+",
        "mu_water_per_mm": MU_WATER,
        "film": asdict(scene.film),
        "isocenter": [float(c) for c in np.mean([v.center for v in scene.model.roi_levels()], axis=0)],
        "fractures": [{"level": name, **asdict(f)} for name, f in scene.model.fractures],
    }


def nifti(array: np.ndarray, affine: np.ndarray, meta: dict[str, Any] | None = None):
    """A Nifti1Image of ``array`` with (optionally) ``meta`` as a JSON comment extension."""
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    if meta is not None:
        payload = json.dumps({EXTENSION_KEY: meta}).encode()
        image.header.extensions.append(nib.nifti1.Nifti1Extension(6, payload))
    return image


def read_metadata(image: Any) -> dict[str, Any] | None:
    """The ``spine_app`` JSON of a NIfTI comment extension, or None."""
    for ext in getattr(image.header, "extensions", []):
        if ext.get_code() != 6:
            continue
        try:
            value = json.loads(bytes(ext.get_content()).decode())
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(value, dict) and EXTENSION_KEY in value:
            return value[EXTENSION_KEY]
    return None


def write_ct(cfg: SynthConfig, seed: int, index: int, folder: str | Path, voxel_mm: float = 1.0) -> tuple[Path, Path]:
    """Write ``folder/ct.nii.gz`` and ``folder/ct_labels.nii.gz`` of study ``index`` (atomic renames)."""
    scene = build_scene(cfg, seed, index)
    hu, labels, grid = voxelise(scene, voxel_mm)
    meta = film_metadata(scene, seed, index)
    folder = Path(folder)
    paths = folder / "ct.nii.gz", folder / "ct_labels.nii.gz"
    for path, array in zip(paths, (hu, labels)):
        write_nifti(path, nifti(array, grid.affine(), meta))
    return paths


def write_nifti(path: str | Path, image: Any) -> Path:
    """``image`` as a gzipped NIfTI at ``path`` (temporary name, then rename)."""
    import gzip

    from spine_app.data.io import write_atomic

    payload = gzip.compress(image.to_bytes(), compresslevel=1)
    return write_atomic(path, lambda tmp: tmp.write_bytes(payload))


def _write_one(args: tuple[SynthConfig, int, int, str, float]) -> None:
    cfg, seed, index, out, voxel_mm = args
    from spine_app.data.layout import CLASS_NAMES

    folder = Path(out) / CLASS_NAMES[gen.label_for_index(index, cfg.damaged_fraction)] / gen.study_id_for(seed, index)
    write_ct(cfg, seed, index, folder, voxel_mm)


def write_study_cts(
    out: str | Path, n: int, seed: int, preset: str, voxel_mm: float, workers: int | None = None, **overrides: Any
) -> float:
    """Write the CT of each of the ``n`` studies ``generate_dataset`` wrote into ``out``; returns seconds."""
    import os
    import time
    from concurrent.futures import ProcessPoolExecutor

    from spine_app.synthetic.config import load_preset

    cfg = load_preset(preset, **overrides)
    jobs = [(cfg, seed, i, str(out), voxel_mm) for i in range(n)]
    start = time.perf_counter()
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    if workers == 1:
        for job in jobs:
            _write_one(job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_one, jobs))
    return time.perf_counter() - start
