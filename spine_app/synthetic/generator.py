"""Synthetic study generation: sample a spine, frame the films, render, expose, write the layout.

``generate_study(cfg, seed, index)`` is a pure function of its arguments (its own random stream
``SeedSequence([seed, index])``), so a dataset is identical whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spine_app import __version__
from spine_app.channels import MASK_NAMES
from spine_app.data.io import FolderNotEmptyError, check_output_folder, write_atomic, write_dicom, write_png
from spine_app.data.layout import CLASS_NAMES
from spine_app.synthetic.anatomy import SpineModel, Vertebra, balance_sagittal, sample_spine
from spine_app.synthetic.config import ALL_LEVELS, FieldOfView, SynthConfig, json_ready, load_preset
from spine_app.synthetic.imaging import ExposureParams, chord_mask, expose, lat_column_masks, quantize
from spine_app.synthetic.realism import (
    Realism,
    add_aortic_calcification,
    add_cement,
    add_ecg_leads,
    add_instrumentation,
    add_osteophytes,
    apply_osteoporosis,
    bone_density,
    grid_lines,
    sample_degeneration,
    sample_realism,
)
from spine_app.synthetic.render import (
    Film,
    Projections,
    add_lungs_and_gas,
    add_pelvis,
    add_ribs,
    add_torso,
    render_vertebra,
    sacrum_as_vertebra,
)
from spine_app.synthetic.thorax import Thorax, add_chest_bones, add_rib_cage, add_soft_organs, sample_thorax

logger = logging.getLogger(__name__)

#: mask file name -> (view, rendered structure); disk height and the two lines are drawn in 2-D
STRUCTURE_OF_MASK = {
    "Ap_Vertebra": ("AP", "vertebra"),
    "Ap_Pedicle": ("AP", "pedicle"),
    "Ap_Spinous_Process": ("AP", "spinous"),
    "Lat_Vertebra": ("LAT", "vertebra"),
    "Lat_Spinous_Process": ("LAT", "spinous"),
}


@dataclass
class SyntheticStudy:
    """One generated study held in memory."""

    study_id: str
    label: int
    images: dict[str, np.ndarray]  # view -> uint16/uint8 (rows, cols)
    masks: dict[str, np.ndarray]  # mask name -> bool (rows, cols) of its view
    truth: dict[str, Any]
    pixel_spacing: float

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


def label_for_index(index: int, damaged_fraction: float) -> int:
    """Deterministic, evenly interleaved labels: every prefix of the sequence holds the requested mix."""
    return int(np.floor((index + 1) * damaged_fraction) - np.floor(index * damaged_fraction))


def study_id_for(seed: int, index: int) -> str:
    return f"syn{seed}_{index:05d}"


@dataclass
class StudyExtras:
    """What one study draws from its realism stream: framing, thorax and realism features (all optional)."""

    rng: np.random.Generator  # the realism stream, SeedSequence([seed, index, 16])
    fov: FieldOfView | None = None
    thorax: Thorax | None = None
    realism: Realism | None = None


def uses_extras(cfg: SynthConfig) -> bool:
    """Whether ``cfg`` turns on any field-of-view or realism setting (else the study is drawn as before)."""
    probabilities = (
        cfg.osteoporosis_probability,
        cfg.degeneration_probability,
        cfg.cement_probability,
        cfg.instrumentation_probability,
        cfg.grid_line_probability,
        cfg.ecg_probability,
        cfg.aortic_calcification_probability,
    )
    return bool(cfg.field_of_view) or cfg.long_side_px is not None or cfg.thorax or any(probabilities)


def choose_field_of_view(cfg: SynthConfig, rng: np.random.Generator) -> tuple[SynthConfig, FieldOfView | None]:
    """The study's framing drawn from ``field_of_view`` and the config framed on it (``cfg`` when none).

    Every level from C7 down is modelled, so whatever the film shows above the framed levels is anatomy.
    """
    fovs = cfg.fields_of_view()
    if not fovs:
        return cfg, None
    weights = np.array([cfg.field_of_view[f.name] for f in fovs], dtype=float)
    fov = fovs[int(rng.choice(len(fovs), p=weights / weights.sum()))]
    top, bottom = fov.levels
    levels = (top, "L5" if bottom == "S1" else bottom)
    framed = dataclasses.replace(
        cfg,
        levels=levels,
        context_levels=len(ALL_LEVELS),
        film_height_mm=fov.film_height_mm,
        ap_width_mm=fov.ap_width_mm,
        lat_width_mm=fov.lat_width_mm,
    )
    return framed, fov


def frame_film(
    model: SpineModel,
    cfg: SynthConfig,
    rng: np.random.Generator,
    fov: FieldOfView | None = None,
    extra_rng: np.random.Generator | None = None,
    beam_rng: np.random.Generator | None = None,
) -> Film:
    """Choose pixel spacing and film extents so that the region-of-interest levels fill the film.

    With ``fov`` framing on the sacrum the film's bottom is the sacrum's; with ``cfg.long_side_px`` the
    pixel spacing is the film height over a long side drawn from ``extra_rng`` (the random numbers drawn
    from ``rng`` are the same in every case); with ``cfg.projection`` divergent the source distance
    comes from ``beam_rng``.
    """
    spacing = float(rng.uniform(*cfg.pixel_spacing_mm))
    roi = model.roi_levels()
    top = roi[0].center[2] + roi[0].height_posterior
    bottom_body = sacrum_as_vertebra(model) if fov is not None and fov.levels[1] == "S1" else roi[-1]
    bottom = bottom_body.center[2] - bottom_body.height_posterior
    height = float(rng.uniform(*cfg.film_height_mm))
    if cfg.long_side_px is not None:
        generator = extra_rng if extra_rng is not None else np.random.default_rng(0)
        spacing = height / float(generator.integers(cfg.long_side_px[0], cfg.long_side_px[1] + 1))
    factor = max(1, int(round(cfg.render_voxel_mm / spacing)))
    step = spacing * factor
    center_z = 0.5 * (top + bottom) + rng.uniform(-0.05, 0.05) * height
    rows = int(round(height / step))
    ap_cols = int(round(rng.uniform(*cfg.ap_width_mm) / step))
    lat_cols = int(round(rng.uniform(*cfg.lat_width_mm) / step))
    scale = model.size_scale
    center_x = float(np.mean([v.center[0] for v in roi])) + rng.uniform(-15.0, 15.0)
    center_y = float(np.mean([v.center[1] for v in roi])) + 25.0 * scale + rng.uniform(-15.0, 15.0)
    return Film(
        step=step,
        upsample=factor,
        z_top=center_z + rows * step / 2.0,
        rows=rows,
        ap_x0=center_x - ap_cols * step / 2.0,
        ap_cols=ap_cols,
        lat_y0=center_y - lat_cols * step / 2.0,
        lat_cols=lat_cols,
        sod_mm=float(beam_rng.uniform(*cfg.source_isocentre_mm)) if cfg.projection == "divergent" else 0.0,
    )


def render_model(
    model: SpineModel, film: Film, cfg: SynthConfig, rng: np.random.Generator, extras: StudyExtras | None = None
) -> Projections:
    """All anatomy of ``model`` projected on ``film``'s render grid (plus the thorax and realism extras)."""
    proj = Projections.empty(film)
    thorax = extras.thorax if extras is not None else None
    realism = extras.realism if extras is not None else None
    if thorax is not None:
        add_torso(film, proj, model, rng, neck_z=thorax.neck_z, center_y=thorax.torso_y)
    else:
        add_torso(film, proj, model, rng)
    pockets = int(rng.integers(cfg.bowel_gas_pockets[0], cfg.bowel_gas_pockets[1] + 1))
    add_lungs_and_gas(film, proj, model, rng, pockets, lungs=thorax is None)
    add_pelvis(film, proj, model, rng)
    if thorax is not None:
        add_rib_cage(film, proj, model, thorax, rng)
        add_soft_organs(film, proj, thorax)
        add_chest_bones(film, proj, model, thorax, extras.rng)
    else:
        add_ribs(film, proj, model, rng)
    bone = float(rng.uniform(0.008, 0.016))  # cancellous excess attenuation: bone mineral density
    if realism is not None:
        bone = bone_density(bone, realism)
        _render_realism(film, proj, model, realism, extras.rng, bone)
    sacrum = sacrum_as_vertebra(model)
    render_vertebra(film, proj, sacrum, bone, annotate=False, posterior=False)
    for vertebra in model.vertebrae:
        render_vertebra(film, proj, vertebra, bone, concave_lat=cfg.lat_mask_concavity)
    return proj


def _render_realism(
    film: Film, proj: Projections, model: SpineModel, realism: Realism, rng: np.random.Generator, bone: float
) -> None:
    """Osteophytes, cement, screws and rods, ECG leads (none of them annotated)."""
    by_name = {v.name: v for v in model.vertebrae}
    for name in realism.degenerated:
        add_osteophytes(film, proj, by_name[name], rng, bone)
    for name in realism.cement:
        add_cement(film, proj, by_name[name], rng)
    if realism.instrumented:
        add_instrumentation(film, proj, model, realism.instrumented)
    if realism.ecg_electrodes:
        add_ecg_leads(film, proj, model, realism.ecg_electrodes, rng)
    if realism.calcified_plaques:
        add_aortic_calcification(film, proj, model, realism.calcified_plaques, rng)


def _corner_points(v: Vertebra) -> dict[str, np.ndarray]:
    """World positions of the body's anterior/middle/posterior superior and inferior points."""
    ba, bp = v.half_depth_anterior, v.half_depth_posterior
    ha, hp = v.height_anterior / 2.0, v.height_posterior / 2.0
    hm = v.height_middle / 2.0
    local = {
        "anterior_superior": (0.0, -ba, ha),
        "anterior_inferior": (0.0, -ba, -ha),
        "middle_superior": (0.0, 0.0, hm),
        "middle_inferior": (0.0, 0.0, -hm),
        "posterior_superior": (0.0, bp, hp),
        "posterior_inferior": (0.0, bp, -hp),
    }
    return {k: v.to_world(np.array(p)) for k, p in local.items()}


def _flip_cols(points: np.ndarray, width: int) -> np.ndarray:
    out = points.copy()
    out[..., 1] = width - out[..., 1]
    return out


def render_study(
    cfg: SynthConfig, seed: int, index: int
) -> tuple[np.random.Generator, SynthConfig, SpineModel, Film, Projections, StudyExtras | None]:
    """Sample and project study ``index`` of seed ``seed``: (study stream, framed config, model, film,
    projections, extras); ``generate_study`` exposes these. The study stream is left where exposure goes on.
    """
    rng, cfg, model, film, extras = sample_study(cfg, seed, index)
    proj = render_model(model, film, cfg, rng, extras)
    return rng, cfg, model, film, proj, extras


def sample_study(
    cfg: SynthConfig, seed: int, index: int
) -> tuple[np.random.Generator, SynthConfig, SpineModel, Film, StudyExtras | None]:
    """Study ``index`` of seed ``seed`` before it is projected: (study stream, framed config, model,
    film, extras); ``render_model`` with the same stream projects it (the CT export replays it too)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    label = label_for_index(index, cfg.damaged_fraction)
    extras = None
    if uses_extras(cfg):
        extras = StudyExtras(rng=np.random.default_rng(np.random.SeedSequence([seed, index, 16])))
        cfg, extras.fov = choose_field_of_view(cfg, extras.rng)
    degeneration = sample_degeneration(extras.rng, cfg) if extras is not None else {}
    model = sample_spine(rng, cfg, label, disk_narrowing=degeneration)
    if extras is not None and extras.fov is not None:
        balance_sagittal(model, extras.rng)  # the whole column is modelled: stand it over the sacrum
    if extras is not None:
        extras.realism = sample_realism(extras.rng, cfg, model, degeneration)
        if extras.realism.osteoporosis:
            apply_osteoporosis(model, extras.realism.osteoporosis)
        if cfg.thorax:
            extras.thorax = sample_thorax(model, extras.rng, cfg.breast_probability)
    beam_rng = np.random.default_rng(np.random.SeedSequence([seed, index, 17]))  # drawn only when divergent
    film = frame_film(model, cfg, rng, extras.fov if extras else None, extras.rng if extras else None, beam_rng)
    return rng, cfg, model, film, extras


def generate_study(cfg: SynthConfig, seed: int, index: int) -> SyntheticStudy:
    """Generate study ``index`` of the dataset seeded with ``seed`` (deterministic)."""
    rng, cfg, model, film, proj, extras = render_study(cfg, seed, index)
    ps = film.pixel_spacing
    facing = cfg.lat_facing if cfg.lat_facing != "random" else str(rng.choice(["left", "right"]))
    flip = {"AP": False, "LAT": facing == "right"}

    images, exposure = {}, {}
    for view in ("AP", "LAT"):
        params = ExposureParams.sample(rng, cfg, view)
        film_img = expose(proj.attenuation[view], proj.bone[view], film.upsample, params, ps, rng)
        if extras is not None and extras.realism is not None and extras.realism.grid is not None:
            film_img = np.clip(film_img + grid_lines(film_img.shape, extras.realism.grid), 0.0, 1.0)
        images[view] = quantize(film_img[:, ::-1] if flip[view] else film_img, cfg.bit_depth)
        exposure[view] = json_ready(asdict(params))

    masks: dict[str, np.ndarray] = {}
    for name, (view, structure) in STRUCTURE_OF_MASK.items():
        mask = chord_mask(proj.chords[view][structure], film.upsample)
        masks[name] = mask[:, ::-1] if flip[view] else mask
    lat_shape = images["LAT"].shape
    column = model.vertebrae + [sacrum_as_vertebra(model)]
    corners = {v.name: _corner_points(v) for v in column}
    to_px = _pixel_mapper(film, flip, {view: img.shape[1] for view, img in images.items()})

    # disk height: the space between the upper body's inferior and the lower body's superior endplate
    corners_px = {name: {k: to_px("LAT", p) for k, p in points.items()} for name, points in corners.items()}
    masks.update(
        lat_column_masks(
            lat_shape,
            corners_px,
            [v.name for v in column],
            [v.name for v in model.vertebrae],
            masks["Lat_Vertebra"],
            cfg.line_width_mm / ps,
        )
    )
    masks = {name: masks[name] for name in MASK_NAMES}

    truth = _truth(model, film, seed, index, facing, to_px, exposure, corners, images)
    if extras is not None:
        truth.update(_extras_truth(extras, cfg, truth, model, to_px, images))
    return SyntheticStudy(study_id_for(seed, index), model.label, images, masks, truth, ps)


def _pixel_mapper(film: Film, flip: dict[str, bool], widths: dict[str, int]) -> Callable[[str, Any], np.ndarray]:
    """``to_px(view, world_points)`` -> detector (row, col), mirrored when that view's film is flipped."""

    def to_px(view: str, points: Any) -> np.ndarray:
        rc = film.to_detector(view, np.asarray(points))
        return _flip_cols(rc, widths[view]) if flip[view] else rc

    return to_px


def _truth(model, film, seed, index, facing, to_px, exposure, corners, images) -> dict[str, Any]:
    levels = []
    for v in model.vertebrae:
        entry: dict[str, Any] = {
            "name": v.name,
            "in_roi": v.in_roi,
            "heights_mm": {"anterior": v.height_anterior, "middle": v.height_middle, "posterior": v.height_posterior},
            "expected_height_mm": v.expected_height,
            "ratios": {
                "anterior_posterior": v.height_anterior / v.height_posterior,
                "middle_posterior": v.height_middle / v.height_posterior,
                "posterior_expected": v.height_posterior / v.expected_height,
            },
            "wedge_angle_deg": v.wedge_angle,
            "fracture": asdict(v.fracture) if v.fracture else None,
        }
        for view in ("AP", "LAT"):
            center = to_px(view, v.center)
            rows, cols = images[view].shape
            entry[f"center_{view.lower()}_px"] = center
            entry[f"in_view_{view.lower()}"] = bool(0 <= center[0] < rows and 0 <= center[1] < cols)
        entry["lat_points_px"] = {k: to_px("LAT", p) for k, p in corners[v.name].items()}
        levels.append(entry)
    return json_ready(
        {
            "generator": "spine_app.synthetic",
            "spine_app_version": __version__,
            "seed": seed,
            "index": index,
            "label": model.label,
            "class_name": CLASS_NAMES[model.label],
            "pixel_spacing_mm": [film.pixel_spacing, film.pixel_spacing],
            "lat_facing": facing,
            "projection": "divergent" if film.divergent else "parallel",
            **({"source_isocentre_mm": round(film.sod_mm, 1)} if film.divergent else {}),
            "image_shapes": {view: list(img.shape) for view, img in images.items()},
            "levels": levels,
            "fractures": [{"level": name, **asdict(f)} for name, f in model.fractures],
            "listhesis": model.listhesis,
            "disk_collapse": model.disk_collapse,
            "disk_heights_mm": model.disk_heights,
            "sacral_slope_deg": model.sacral_slope,
            "exposure": exposure,
        }
    )


def _extras_truth(extras: StudyExtras, cfg: SynthConfig, truth: dict, model, to_px, images) -> dict[str, Any]:
    """truth.json keys of a study drawn with field-of-view or realism settings (absent otherwise)."""
    in_view = [lv["name"] for lv in truth["levels"] if lv["in_view_ap"] and lv["in_view_lat"]]
    sacrum = sacrum_as_vertebra(model).center
    if all(_inside(to_px(view, sacrum), images[view].shape) for view in ("AP", "LAT")):
        in_view.append("S1")
    fov = extras.fov
    framed = fov.level_names() if fov else [v.name for v in model.roi_levels()]
    out = {
        "field_of_view": {"name": fov.name if fov else "levels", "levels": framed},
        "levels_in_view": in_view,
        "realism": extras.realism.to_json() if extras.realism else None,
        "thorax": extras.thorax.to_json() if extras.thorax else None,
    }
    return json_ready(out)


def _inside(point: np.ndarray, shape: tuple[int, ...]) -> bool:
    return bool(0 <= point[0] < shape[0] and 0 <= point[1] < shape[1])


def image_suffix(cfg: SynthConfig, index: int) -> str:
    """File suffix of the study's radiographs ("mixed" alternates PNG and DICOM)."""
    if cfg.image_format == "mixed":
        return ".dcm" if index % 2 else ".png"
    return ".png" if cfg.image_format == "png" else ".dcm"


def _write_files(study: SyntheticStudy, folder: Path, suffix: str) -> None:
    """The study's films, masks and truth.json, written into ``folder``."""
    spacing = (study.pixel_spacing, study.pixel_spacing)
    study_uid = None
    if suffix == ".dcm":
        from pydicom.uid import generate_uid

        study_uid = generate_uid(entropy_srcs=["spine-app synthetic study", study.study_id])  # same for every run
    for view, image in study.images.items():
        if suffix == ".dcm":
            write_dicom(
                folder / f"{view}.dcm",
                image,
                spacing=spacing,
                view=view,
                patient_id=study.study_id,
                study_uid=study_uid,
            )
        else:
            write_png(folder / f"{view}.png", image)
    for name, mask in study.masks.items():
        write_png(folder / f"{name}.png", mask)
    payload = json.dumps(study.truth, indent=1)
    write_atomic(folder / "truth.json", lambda tmp: tmp.write_text(payload))


def write_study(study: SyntheticStudy, root: str | Path, suffix: str = ".png", overwrite: bool = False) -> Path:
    """Write ``study`` as ``root/<class>/<study_id>/``.

    A new study folder appears complete or not at all (written in a hidden staging folder of its
    own, then renamed). An existing one is refused unless ``overwrite``; then each generated file is
    renamed over its old copy one by one, and every other file in the folder is kept.

    Raises:
        FolderNotEmptyError: the study folder exists and ``overwrite`` is False.
    """
    final = Path(root) / study.class_name / study.study_id
    if final.exists() and not overwrite:
        raise FolderNotEmptyError(f"{final}: study folder exists; pass --overwrite to replace its generated files")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{study.study_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    staging.mkdir()  # a new name: never an existing folder
    try:
        _write_files(study, staging, suffix)
        if final.is_dir():
            for path in sorted(staging.iterdir()):
                os.replace(path, final / path.name)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def _left_over(final: Path, suffix: str) -> list[str]:
    """One-line warnings for films of another format already in ``final``, or the same id in the other class."""
    notes = [
        f"{final / f'{view}{other}'}: kept, but the study now also has {view}{suffix}; remove the older film"
        for view in ("AP", "LAT")
        for other in (".png", ".dcm")
        if other != suffix and (final / f"{view}{other}").exists()
    ]
    for name in CLASS_NAMES:
        twin = final.parent.parent / name / final.name
        if twin != final and twin.exists():
            notes.append(f"{twin}: kept, but {final} now holds the same study id; remove one (import refuses both)")
    return notes


def _generate_and_write(args: tuple[SynthConfig, int, int, str, bool]) -> tuple[str, int, list[str]]:
    cfg, seed, index, root, overwrite = args
    study = generate_study(cfg, seed, index)
    suffix = image_suffix(cfg, index)
    final = write_study(study, root, suffix, overwrite)
    return study.study_id, study.label, _left_over(final, suffix) if overwrite else []


def check_count_and_seed(n: Any, seed: Any) -> None:
    """ValueError (one line) unless ``n`` is a whole number >= 1 and ``seed`` one >= 0."""
    for name, value, least in (("n", n, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")


def generate_dataset(
    out: str | Path,
    n: int,
    seed: int = 0,
    preset: str = "default",
    workers: int | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Generate ``n`` studies into ``out`` (canonical layout) and write ``out/synth_manifest.json``.

    ``out`` must be new or empty (hidden files aside) unless ``overwrite``: then only the files this
    generator writes are replaced, file by file, and any other file is kept. Returns the manifest:
    settings, counts per class, wall time, studies per second and warnings.

    Raises:
        ValueError: ``n`` < 1 or ``seed`` < 0 (or not whole numbers), or a bad preset/setting.
        FolderNotEmptyError: ``out`` holds files and ``overwrite`` is False.
    """
    check_count_and_seed(n, seed)
    check_output_folder(out, overwrite, "synth output folder")
    cfg = load_preset(preset, **overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    jobs = [(cfg, seed, i, str(out), overwrite) for i in range(n)]
    start = time.perf_counter()
    if workers == 1:
        results = [_generate_and_write(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_generate_and_write, jobs, chunksize=max(1, n // (workers * 8))))
    elapsed = time.perf_counter() - start
    counts = {name: sum(1 for _, label, _ in results if CLASS_NAMES[label] == name) for name in CLASS_NAMES}
    notes = [note for *_, study_notes in results for note in study_notes]
    for note in notes:
        logger.warning("%s", note)
    manifest = {
        "generator": "spine_app.synthetic",
        "spine_app_version": __version__,
        "preset": str(preset),
        "seed": seed,
        "n": n,
        "class_counts": counts,
        "settings": cfg.to_dict(),
        "workers": workers,
        "seconds": round(elapsed, 2),
        "studies_per_second": round(n / elapsed, 3) if elapsed > 0 else None,
        "warnings": notes,
    }
    write_atomic(out / "synth_manifest.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))
    return manifest
