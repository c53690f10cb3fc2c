"""``spine-app drr``: read a CT and its vertebra label map, write DRR studies in the canonical layout."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from spine_app.data.layout import CLASS_NAMES
from spine_app.drr.study import GENERATOR, DrrSettings, FrameError, Volume, prepare, render_study, study_stem
from spine_app.synthetic.ct import read_metadata
from spine_app.synthetic.generator import write_study


class BadInput(ValueError):
    """A bad file or setting: ``str(err)`` is the one line to print (exit status 2)."""

    exit_status = 2


def load_volume(ct_path: str | Path, labels_path: str | Path) -> Volume:
    """The CT (HU) and label map as one :class:`Volume`.

    Raises:
        BadInput: a file is missing or unreadable, or the two grids differ (shape or affine).
    """
    import nibabel as nib

    arrays = []
    images = []
    for path, what in ((Path(ct_path), "CT"), (Path(labels_path), "label map")):
        if not path.is_file():
            raise BadInput(f"{path}: {what} not found")
        try:
            image = nib.load(str(path))
            data = np.asanyarray(image.dataobj)
        except Exception as err:  # nibabel raises many types for a broken file
            raise BadInput(f"{path}: not a readable NIfTI {what} ({type(err).__name__}: {err})") from None
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise BadInput(f"{path}: {what} must be a 3-D volume, got shape {data.shape}")
        arrays.append(data)
        images.append(image)
    hu, labels = arrays
    if hu.shape != labels.shape:
        raise BadInput(f"{labels_path}: label map shape {labels.shape} differs from the CT's {hu.shape} ({ct_path})")
    if not np.allclose(images[0].affine, images[1].affine, atol=1e-3):
        raise BadInput(f"{labels_path}: label map affine differs from the CT's ({ct_path}); resample it onto the CT")
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.round(labels)
        if not np.allclose(rounded, labels):
            raise BadInput(f"{labels_path}: label values must be whole numbers")
        labels = rounded
    return Volume(
        hu=np.asarray(hu, np.float32),
        labels=np.asarray(labels, np.int32),
        affine=np.asarray(images[0].affine, float),
        meta=read_metadata(images[0]),
    )


def _made_by_us(folder: Path) -> bool:
    try:
        return json.loads((folder / "truth.json").read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def generate(
    ct_path: str | Path,
    labels_path: str | Path,
    out: str | Path,
    settings: DrrSettings | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``settings.poses`` studies of one CT into ``out/<class>/<study id>/``; returns a summary.

    A study folder that exists is refused unless it was written by this command (its truth.json says
    so) or ``overwrite``; files are written under temporary names and renamed.

    Raises:
        BadInput: bad files or settings; FileExistsError (as BadInput) for a foreign study folder.
    """
    s = settings or DrrSettings()
    if isinstance(s.poses, bool) or not isinstance(s.poses, int) or s.poses < 1:
        raise BadInput(f"poses must be a whole number >= 1, got {s.poses!r}")
    if isinstance(s.seed, bool) or not isinstance(s.seed, int) or s.seed < 0:
        raise BadInput(f"seed must be a whole number >= 0, got {s.seed!r}")
    for name in ("pixel_mm", "ray_step_mm", "max_rotation_deg", "max_shift_mm"):
        value = getattr(s, name)
        least_ok = value is None and name == "ray_step_mm"
        if not least_ok and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise BadInput(f"{name} must be a number >= 0, got {value!r}")
    if s.pixel_mm <= 0 or (s.ray_step_mm is not None and s.ray_step_mm <= 0):
        raise BadInput("pixel_mm and ray_step_mm must be > 0")
    if Path(out).exists() and not Path(out).is_dir():
        raise BadInput(f"{out}: not a folder")
    from spine_app.drr.labels import convention
    from spine_app.drr.project import Beam

    try:
        convention(s.labels)
        Beam(s.beam, s.sid_mm, s.sod_mm)
    except ValueError as err:
        raise BadInput(str(err)) from None
    start = time.perf_counter()
    vol = load_volume(ct_path, labels_path)
    try:
        vol, parts, levels, fracture = prepare(vol, s)
    except ValueError as err:
        raise BadInput(f"{labels_path}: {err}") from None
    stem = study_stem(Path(ct_path), vol.meta)
    source = {
        "ct": str(Path(ct_path).resolve()),
        "labels": str(Path(labels_path).resolve()),
        "label_convention": s.labels,
        "ct_shape": list(vol.hu.shape),
        "ct_affine_ras": vol.affine.tolist(),
        "generator_ct": vol.meta,
    }
    out = Path(out)
    written = []
    for pose in range(s.poses):
        study_id = f"{stem}_drr{s.seed}_{pose:02d}"
        existing = [out / name / study_id for name in CLASS_NAMES if (out / name / study_id).exists()]
        foreign = [p for p in existing if not _made_by_us(p)]
        if foreign and not overwrite:
            raise BadInput(f"{foreign[0]}: study folder exists and was not written by spine-app drr; pass --overwrite")
        try:
            study = render_study(vol, parts, levels, s, pose, study_id, source, fracture)
        except FrameError as err:
            raise BadInput(f"{ct_path}: {err}") from None
        final = write_study(study, out, ".png", overwrite=True)
        for old in existing:  # the same study moved class (e.g. --fracture added): keep one copy
            if old != final and _made_by_us(old):
                import shutil

                shutil.rmtree(old)
        written.append(str(final))
    return {
        "studies": written,
        "levels": [lv.name for lv in levels],
        "fracture": None if fracture is None else fracture.__dict__,
        "seconds": round(time.perf_counter() - start, 2),
    }
