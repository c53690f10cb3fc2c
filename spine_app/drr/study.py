"""Assemble DRR studies: AP and LAT films through the generator's imaging chain, the eight masks and a
truth.json, in the generator's study layout (``spine_app.synthetic.generator.write_study``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spine_app import __version__
from spine_app.channels import MASK_NAMES
from spine_app.data.layout import CLASS_NAMES
from spine_app.drr import masks as parts_mod
from spine_app.drr.fracture import SimulatedFracture, compress, grade_for_loss, sample_fracture
from spine_app.drr.labels import SACRUM, convention
from spine_app.drr.project import Beam, Geometry, apply, cast, index_to_world, rigid, world_to_index
from spine_app.synthetic.config import SynthConfig, closest_field_of_view, json_ready, load_preset
from spine_app.synthetic.ct import hu_to_mu
from spine_app.synthetic.generator import SyntheticStudy
from spine_app.synthetic.imaging import ExposureParams, chord_mask, expose, lat_column_masks, quantize
from spine_app.synthetic.render import MU_SOFT, Film

logger = logging.getLogger(__name__)
GENERATOR = "spine_app.drr"
_MASK_PARTS = {"vertebra": parts_mod.BODY, "pedicle": parts_mod.PEDICLE, "spinous": parts_mod.SPINOUS}
_STRUCTURE_OF_MASK = {
    "Ap_Vertebra": ("AP", "vertebra"),
    "Ap_Pedicle": ("AP", "pedicle"),
    "Ap_Spinous_Process": ("AP", "spinous"),
    "Lat_Vertebra": ("LAT", "vertebra"),
    "Lat_Spinous_Process": ("LAT", "spinous"),
}
_BONE_HU = 250.0  # above this, sampled tissue counts as bone for the film's trabecular texture


@dataclass
class DrrSettings:
    """Settings of ``spine-app drr`` (see docs/drr.md)."""

    labels: str = "verse"
    poses: int = 1
    seed: int = 0
    beam: str = "divergent"
    sid_mm: float = 1000.0
    sod_mm: float = 850.0
    pixel_mm: float = 0.33  # film pixel spacing (isocentre plane) when the CT carries no film frame
    film_height_mm: float = 430.0
    film_width_mm: float = 280.0
    ray_step_mm: float | None = None  # default: the CT's smallest voxel size
    max_rotation_deg: float = 3.0
    max_shift_mm: float = 5.0
    fracture: bool = False
    fracture_level: str | None = None
    fracture_grade: int | None = None
    fracture_type: str | None = None
    use_ct_film: bool = True  # a CT written by ``spine-app synth --ct`` carries the generator's film frame
    preset: str = "default"  # imaging-chain settings (exposure, noise, bit depth) of this generator preset
    mask_threshold_mm: float | None = None  # chord length above which a pixel is in a mask (default: half a voxel)


@dataclass
class Volume:
    """A CT and its vertebra labels on one grid."""

    hu: np.ndarray  # (I, J, K) Hounsfield units
    labels: np.ndarray  # (I, J, K) integer labels
    affine: np.ndarray  # voxel -> RAS+ mm
    meta: dict[str, Any] | None = None  # the spine_app NIfTI extension, when present


def film_from_levels(
    levels: list[parts_mod.Level], s: DrrSettings, extent: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[Film, np.ndarray]:
    """A film frame centred on the labelled bodies (as the generator frames its films) and its isocentre.

    With ``extent`` (the CT's world bounding box, :func:`volume_extent`) the frame is kept inside the
    volume: a film row or column whose rays would leave the CT (past its first or last slice, or its
    side) would show a blank band no radiograph has, beside bodies cut by the scan's end. The frame is
    trimmed so that every ray stays in the box at any depth (the divergent beam fans out towards the
    detector) whatever shift is drawn (``max_shift_mm``); the film's edge then cuts the column near the
    scan's end, as a collimator would.
    """
    bodies = [lv for lv in levels if lv.name != SACRUM and lv.body_center is not None] or levels
    centers = np.array([lv.body_center if lv.body_center is not None else lv.centroid for lv in bodies])
    tops = [max(p[2] for p in lv.corners.values()) for lv in bodies if lv.corners] or [centers[:, 2].max()]
    bottoms = [min(p[2] for p in lv.corners.values()) for lv in bodies if lv.corners] or [centers[:, 2].min()]
    factor = max(1, int(round(0.6 / s.pixel_mm)))
    step = s.pixel_mm * factor
    height = min(max(max(tops) - min(bottoms) + 60.0, 150.0), s.film_height_mm)
    iso = centers.mean(axis=0)
    center_z = 0.5 * (max(tops) + min(bottoms))
    z = (center_z - height / 2.0, center_z + height / 2.0)
    x = (iso[0] - s.film_width_mm / 2.0, iso[0] + s.film_width_mm / 2.0)
    y = (iso[1] + 25.0 - s.film_width_mm / 2.0, iso[1] + 25.0 + s.film_width_mm / 2.0)
    if extent is not None:
        lo, hi = (np.asarray(v, float) for v in extent)
        # a drawn pose shifts the volume by up to max_shift_mm (its few degrees of rotation sweep only
        # the box's far corners, which the film's edge rays cross for a few millimetres at most)
        pose = s.max_shift_mm
        # the divergent beam spreads by (sod + depth) / sod at the volume's detector side: posterior for
        # the AP view (source anterior), the +x side for the LAT view (source on the -x side)
        depth_ap, depth_lat = max(hi[1] - iso[1], 0.0), max(hi[0] - iso[0], 0.0)
        fan_ap, fan_lat = ((s.sod_mm / (s.sod_mm + d) if s.beam == "divergent" else 1.0) for d in (depth_ap, depth_lat))
        z = _inside(z, lo[2] + pose, hi[2] - pose, min(fan_ap, fan_lat))
        x = _inside(x, lo[0] + pose, hi[0] - pose, fan_ap)
        y = _inside(y, lo[1] + pose, hi[1] - pose, fan_lat)
    rows, ap_cols, lat_cols = (max(1, int(round((b - a) / step))) for a, b in (z, x, y))
    film = Film(
        step=step,
        upsample=factor,
        z_top=0.5 * (z[0] + z[1]) + rows * step / 2.0,
        rows=rows,
        ap_x0=0.5 * (x[0] + x[1]) - ap_cols * step / 2.0,
        ap_cols=ap_cols,
        lat_y0=0.5 * (y[0] + y[1]) - lat_cols * step / 2.0,
        lat_cols=lat_cols,
    )
    return film, iso


class FrameError(ValueError):
    """The CT leaves no room for a film inside it (a scan thinner than the pose's and the fan's margins)."""


def _inside(span: tuple[float, float], low: float, high: float, fan: float) -> tuple[float, float]:
    """``span`` (film coordinates at the isocentre plane) trimmed so that, spread by ``1 / fan`` about
    its own middle (the central ray), it stays within ``[low, high]``; unchanged when it already does."""
    a, b = span
    for _ in range(3):  # the middle moves as the span is trimmed: settle it
        mid = 0.5 * (a + b)
        a = max(a, mid - max(mid - low, 0.0) * fan)
        b = min(b, mid + max(high - mid, 0.0) * fan)
    if b - a < 1.0:
        raise FrameError(
            f"the scan leaves no film inside it ({high - low:.0f} mm across, less the pose's and the beam's margins)"
        )
    return a, b


def volume_extent(shape: tuple[int, ...], i2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The world bounding box (low, high corners, mm) of a volume of ``shape`` with index->world ``i2w``."""
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    )
    world = (i2w @ corners.T).T[:, :3]
    return world.min(axis=0), world.max(axis=0)


def _parts_volume(parts: np.ndarray, w2i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, ...) float channels body/pedicle/spinous cropped to the labelled box, and its world->index map."""
    nz = np.argwhere(parts > 0)
    lo = np.maximum(nz.min(axis=0) - 2, 0)
    hi = np.minimum(nz.max(axis=0) + 3, parts.shape)
    crop = parts[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    channels = np.stack([(crop == code).astype(np.float32) for code in _MASK_PARTS.values()])
    shift = np.eye(4)
    shift[:3, 3] = -lo
    return channels, shift @ w2i


def _corner_pixels(geometry: Geometry, moved: np.ndarray, level: parts_mod.Level, view: str) -> dict[str, np.ndarray]:
    return {k: geometry.to_detector(view, apply(moved, p)) for k, p in level.corners.items()}


def _in_view(rc: np.ndarray, shape: tuple[int, int]) -> bool:
    return bool(0 <= rc[0] < shape[0] and 0 <= rc[1] < shape[1])


def render_study(
    vol: Volume,
    parts: np.ndarray,
    levels: list[parts_mod.Level],
    s: DrrSettings,
    pose_index: int,
    study_id: str,
    source: dict[str, Any],
    fracture: SimulatedFracture | None,
) -> SyntheticStudy:
    """One study of ``vol`` in pose ``pose_index``."""
    rng = np.random.default_rng(np.random.SeedSequence([s.seed, pose_index]))
    cfg: SynthConfig = load_preset(s.preset)
    i2w = index_to_world(vol.affine)
    w2i = world_to_index(vol.affine)
    meta = vol.meta or {}
    if s.use_ct_film and "film" in meta:
        film = Film(**meta["film"])
        iso = np.asarray(meta.get("isocenter"), float)
    else:
        film, iso = film_from_levels(levels, s, volume_extent(vol.hu.shape, i2w))
    geometry = Geometry(film=film, isocenter=iso, beam=Beam(s.beam, s.sid_mm, s.sod_mm))
    rotation = tuple(float(a) for a in rng.uniform(-s.max_rotation_deg, s.max_rotation_deg, size=3))
    shift = tuple(float(t) for t in rng.uniform(-s.max_shift_mm, s.max_shift_mm, size=3))
    moved = rigid(rotation, shift, iso)  # volume frame -> film frame (the patient moved)
    pose = np.linalg.inv(moved)
    voxel = float(np.min(np.linalg.norm(i2w[:3, :3], axis=0)))
    step = s.ray_step_mm or voxel

    def mu_and_bone(hu_samples: np.ndarray) -> np.ndarray:
        # outside the CT grid the sampler returns 0; that is air there, not water: pad with -1000
        mu = hu_to_mu(hu_samples[0])
        bone = np.where(hu_samples[0] > _BONE_HU, np.maximum(mu - MU_SOFT, 0.0), 0.0)
        return np.stack([mu, bone])

    hu_padded = vol.hu.astype(np.float32) + 1000.0  # zero padding of the sampler = air

    def shifted(samples: np.ndarray) -> np.ndarray:
        return mu_and_bone(samples - 1000.0)

    part_channels, part_w2i = _parts_volume(parts, w2i)
    threshold = s.mask_threshold_mm if s.mask_threshold_mm is not None else max(0.3, 0.5 * voxel)
    ps = film.pixel_spacing
    images, exposure, chords = {}, {}, {}
    for view in ("AP", "LAT"):
        att, bone = cast(hu_padded, w2i, geometry, view, step, pose, transform=shifted)
        chords[view] = dict(zip(_MASK_PARTS, cast(part_channels, part_w2i, geometry, view, step, pose)))
        params = ExposureParams.sample(rng, cfg, view)
        film_img = expose(att, bone, film.upsample, params, ps, rng)
        images[view] = quantize(film_img, cfg.bit_depth)
        exposure[view] = json_ready(asdict(params))
    masks: dict[str, np.ndarray] = {}
    for name, (view, structure) in _STRUCTURE_OF_MASK.items():
        masks[name] = chord_mask(chords[view][structure], film.upsample, threshold)
    lat_shape = images["LAT"].shape
    column = [lv for lv in levels if lv.corners]
    lat = {lv.name: _corner_pixels(geometry, moved, lv, "LAT") for lv in column}
    vertebrae = [lv for lv in column if lv.name != SACRUM]
    names = [lv.name for lv in vertebrae]
    width = cfg.line_width_mm / ps
    masks.update(lat_column_masks(lat_shape, lat, [lv.name for lv in column], names, masks["Lat_Vertebra"], width))
    masks = {name: masks[name] for name in MASK_NAMES}

    source_fractures = {f["level"]: f for f in meta.get("fractures", [])}
    label = int(fracture is not None or bool(source_fractures))
    truth_levels = []
    for lv in vertebrae:
        frac = None
        if fracture is not None and fracture.level == lv.name:
            frac = {"grade": fracture.grade, "kind": fracture.kind, "height_loss": fracture.height_loss}
        elif lv.name in source_fractures:
            frac = {k: v for k, v in source_fractures[lv.name].items() if k != "level"}
        h = lv.heights_mm
        entry: dict[str, Any] = {"name": lv.name, "label_value": lv.value, "heights_mm": h}
        entry["ratios"] = {
            "anterior_posterior": h["anterior"] / h["posterior"],
            "middle_posterior": h["middle"] / h["posterior"],
        }
        entry["fracture"] = frac
        for view in ("AP", "LAT"):
            center = geometry.to_detector(view, apply(moved, lv.body_center))
            entry[f"center_{view.lower()}_px"] = center
            entry[f"in_view_{view.lower()}"] = _in_view(center, images[view].shape)
        entry["in_roi"] = entry["in_view_ap"] and entry["in_view_lat"]
        entry["lat_points_px"] = lat[lv.name]
        truth_levels.append(entry)
    in_view = [e["name"] for e in truth_levels if e["in_view_lat"] or e["in_view_ap"]]
    truth = json_ready(
        {
            "generator": GENERATOR,
            "spine_app_version": __version__,
            "seed": s.seed,
            "index": pose_index,
            "label": label,
            "class_name": CLASS_NAMES[label],
            "pixel_spacing_mm": [ps, ps],
            "lat_facing": "left",
            "projection": s.beam,
            "image_shapes": {view: list(img.shape) for view, img in images.items()},
            "source": source,
            "geometry": {
                "beam": s.beam,
                "sid_mm": s.sid_mm if s.beam == "divergent" else None,
                "sod_mm": s.sod_mm if s.beam == "divergent" else None,
                "magnification": geometry.beam.magnification,
                "pixel_spacing_plane": "isocentre",
                "film": asdict(film),
                "isocenter_mm": iso,
                "pose": {"rotation_deg": rotation, "translation_mm": shift, "matrix": moved},
                "ray_step_mm": step,
                "mask_threshold_mm": threshold,
            },
            "levels": truth_levels,
            "levels_in_view": in_view,
            "field_of_view": _field_of_view(in_view),
            "fractures": [{"level": e["name"], **e["fracture"]} for e in truth_levels if e["fracture"]],
            "simulated_fracture": asdict(fracture) if fracture is not None else None,
            "exposure": exposure,
        }
    )
    return SyntheticStudy(study_id, label, images, masks, truth, ps)


def _field_of_view(in_view: list[str]) -> dict[str, Any]:
    """truth.json's ``field_of_view`` of a DRR film: the generator's framing closest to the labelled
    levels in view (``name`` "levels" when none is), so that ``--extra_fields_of_view`` and the level
    refit's framed grades (``level_refit_extra_fields_of_view``) treat DRR studies as the generator's."""
    fov = closest_field_of_view(in_view)
    return {"name": fov.name if fov else "levels", "levels": list(in_view), "from": "levels in view"}


def prepare(vol: Volume, s: DrrSettings) -> tuple[Volume, np.ndarray, list[parts_mod.Level], SimulatedFracture | None]:
    """Parts and levels of ``vol``; with ``s.fracture`` the volume with one body squashed (re-analysed)."""
    conv = convention(s.labels)
    i2w = index_to_world(vol.affine)
    parts, levels = parts_mod.analyse(vol.labels, i2w, conv)
    if not [lv for lv in levels if lv.name != SACRUM]:
        raise ValueError(f"no vertebra label of the {conv.name} convention in the label map")
    if not s.fracture:
        return vol, parts, levels, None
    rng = np.random.default_rng(np.random.SeedSequence([s.seed, 1_000_003]))
    candidates = [lv.name for lv in levels if lv.name[0] in "TL" and lv.corners]
    if s.fracture_level is not None and s.fracture_level not in candidates:
        raise ValueError(f"fracture_level {s.fracture_level!r} is not a labelled T/L level ({', '.join(candidates)})")
    if not candidates:
        raise ValueError("no thoracic or lumbar vertebra to fracture")
    if s.fracture_level is None:  # prefer the levels the film will show (the middle of the labelled column)
        third = max(1, len(candidates) // 3)
        candidates = candidates[third : len(candidates) - third] or candidates
    fracture = sample_fracture(rng, candidates, s.fracture_level, s.fracture_grade, s.fracture_type)
    level = next(lv for lv in levels if lv.name == fracture.level)
    hu, labels = compress(vol.hu, vol.labels, parts, level, i2w, fracture)
    vol = Volume(hu=hu, labels=labels, affine=vol.affine, meta=vol.meta)
    parts, levels = parts_mod.analyse(labels, i2w, conv)
    after = next((lv for lv in levels if lv.name == fracture.level), None)
    if after is not None and after.heights_mm and level.heights_mm:
        expected = max(level.heights_mm["anterior"], level.heights_mm["posterior"])
        fracture.measured_height_loss = float(1.0 - min(after.heights_mm.values()) / expected)
        fracture.measured_grade = grade_for_loss(fracture.measured_height_loss)
    return vol, parts, levels, fracture


def study_stem(ct_path: Path, meta: dict[str, Any] | None) -> str:
    if meta and meta.get("study_id"):
        return str(meta["study_id"])
    name = ct_path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return ct_path.parent.name if name in ("ct", "image", "img") and ct_path.parent.name else name
