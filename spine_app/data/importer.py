"""``spine-app import`` and ``spine-app check``: validate a study folder tree and write a datalist.

Every image and mask is decoded once, so a corrupt file is found here, not in the middle of
training. A study with a problem (unreadable image, mask whose size differs from its image, no
view image at all) is skipped with a one-line reason; a missing view or missing mask is *not* a
problem: the study is kept and the channel is recorded as absent (unknown, not empty).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from spine_app import __version__
from spine_app.channels import CHANNEL_VIEW, MASK_NAMES, VIEWS
from spine_app.data.io import ImageReadError, read_image, read_mask, write_atomic
from spine_app.data.layout import CLASS_NAMES, StudyFiles, find_studies
from spine_app.data.split import SPLITS, stratified_split

logger = logging.getLogger(__name__)
DATALIST_FORMAT = "spine-app datalist v1"
#: value of a datalist's "paths" key when its paths are relative to the datalist's own folder (older
#: datalists have none: their relative paths are relative to their absolute "root")
PATHS_RELATIVE_TO_DATALIST = "relative to the datalist's folder"


class DuplicateStudyError(ValueError):
    """One study id in two study folders (e.g. under Normal/ and Damaged/); ``str(err)`` is one line."""


@dataclass
class StudyCheck:
    """Outcome of validating one study: a datalist entry, or the reason it was skipped."""

    study_id: str
    folder: str
    entry: dict[str, Any] | None = None
    error: str | None = None  # one line: "<path>: <reason>"
    error_kind: str | None = None  # short category for the summary
    warnings: list[str] = field(default_factory=list)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


class DatalistEntry(TypedDict, total=False):
    """One study of a datalist split, as :func:`check_study` writes it and :func:`load_datalist` reads
    it back (paths absolute after loading); ``LoadStudyd`` turns it into a study sample. Inference
    entries (``spine_app.inference.run``) carry the paths, masks of None and ``notes``."""

    study_id: str
    label: int | None  # 0 Normal, 1 Damaged, None unlabelled
    class_name: str | None
    image_ap: str | None  # None where the study has no such film
    image_lat: str | None
    meta_ap: dict[str, Any]  # shape, bit_depth, format, spacing, spacing_source, dicom_view, constant
    meta_lat: dict[str, Any]
    views: list[str]
    masks: list[str | None]  # one per channel, in MASK_NAMES order
    mask_present: list[int]
    empty_masks: list[str]
    truth: str | None  # truth.json of the study (synthetic data)
    notes: str  # inference: notes passed on to result.json


def truth_spacing(truth: Path | None) -> list[float] | None:
    """The pixel spacing (mm) a study's truth.json records (synthetic studies), or None."""
    if truth is None:
        return None
    try:
        value = json.loads(truth.read_text()).get("pixel_spacing_mm")
    except (OSError, ValueError, AttributeError):
        return None
    return [float(v) for v in value] if isinstance(value, list) and len(value) == 2 else None


def check_study(study: StudyFiles, root: Path) -> StudyCheck:
    """Decode every file of ``study`` and build its datalist entry (or a skip reason)."""
    result = StudyCheck(study.study_id, str(study.folder), warnings=list(study.notes))
    if not study.images:
        result.error = f"{study.folder}: no AP or LAT image found"
        result.error_kind = "no view image"
        return result
    entry: dict[str, Any] = {"study_id": study.study_id, "label": study.label, "class_name": study.class_name}
    spacing_of_truth = truth_spacing(study.truth)
    shapes: dict[str, tuple[int, int]] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for view in VIEWS:
            key = view.lower()
            path = study.images.get(view)
            entry[f"image_{key}"] = _relative(path, root) if path else None
            if path is None:
                continue
            try:
                array, meta = read_image(path)
            except ImageReadError as err:
                result.error, result.error_kind = str(err), "unreadable image"
                return result
            shapes[view] = meta.shape
            spacing = list(meta.spacing) if meta.spacing else spacing_of_truth
            entry[f"meta_{key}"] = {
                "shape": list(meta.shape),
                "bit_depth": meta.bit_depth,
                "format": meta.format,
                "spacing": spacing,
                "spacing_source": meta.spacing_source or ("truth.json" if spacing_of_truth else None),
                "dicom_view": meta.view,
                "constant": bool(array.min() == array.max()),
            }
            if meta.view is not None and meta.view != view:
                result.warnings.append(f"{path}: DICOM ViewPosition says {meta.view} but the file is used as {view}")
            if entry[f"meta_{key}"]["constant"]:
                result.warnings.append(f"{path}: image is constant (every pixel {array.flat[0]:g})")
    result.warnings += [str(w.message) for w in caught]

    masks, present, empty = [], [], []
    for name, view in zip(MASK_NAMES, CHANNEL_VIEW):
        path = study.masks.get(name)
        if path is not None and view not in shapes:
            result.warnings.append(f"{path}: mask ignored, the study has no {view} image")
            path = None
        if path is None:
            masks.append(None)
            present.append(0)
            continue
        try:
            mask = read_mask(path, shapes[view])
        except ImageReadError as err:
            mismatch = "px but its image is" in err.reason
            result.error, result.error_kind = str(err), "mask size mismatch" if mismatch else "unreadable mask"
            return result
        masks.append(_relative(path, root))
        present.append(1)
        if not mask.any():
            empty.append(name)
    entry.update(
        views=[v for v in VIEWS if v in shapes],
        masks=masks,
        mask_present=present,
        empty_masks=empty,
        truth=_relative(study.truth, root) if study.truth else None,
    )
    result.entry = entry
    return result


def _check_job(args: tuple[StudyFiles, Path]) -> StudyCheck:
    """``check_study``; an unexpected failure skips this study with its reason instead of ending the batch."""
    study, root = args
    try:
        return check_study(study, root)
    except Exception as err:  # noqa: BLE001 - one bad study must not stop the others
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        return StudyCheck(
            study.study_id,
            str(study.folder),
            error=f"{study.folder}: {type(err).__name__}: {reason}",
            error_kind="unexpected error",
            warnings=list(study.notes),
        )


def duplicate_ids(studies: list[StudyFiles]) -> dict[str, list[Path]]:
    """study id -> its folders, for every id found in more than one study folder."""
    folders: dict[str, list[Path]] = {}
    for study in studies:
        folders.setdefault(study.study_id, []).append(study.folder)
    return {study_id: paths for study_id, paths in folders.items() if len(paths) > 1}


def refuse_duplicates(studies: list[StudyFiles]) -> None:
    """Raise :class:`DuplicateStudyError` naming the first duplicate id and its folders, if there is one."""
    duplicates = duplicate_ids(studies)
    if duplicates:
        study_id, folders = next(iter(duplicates.items()))
        more = f" (and {len(duplicates) - 1} more duplicate ids)" if len(duplicates) > 1 else ""
        raise DuplicateStudyError(
            f"duplicate study id {study_id!r}: {' and '.join(map(str, folders))}; a study may be in one folder only"
            f" (else it lands in both classes or splits): rename or remove one{more}"
        )


def check_dataset(root: str | Path, workers: int | None = None) -> list[StudyCheck]:
    """Find and validate every study under ``root`` (in parallel over ``workers`` processes).

    Every copy of a study id found in more than one folder is skipped ("duplicate study id").
    """
    return _check_studies(find_studies(root), Path(root), workers)


def _check_studies(studies: list[StudyFiles], root: Path, workers: int | None) -> list[StudyCheck]:
    """``check_dataset`` on studies already found."""
    duplicates = duplicate_ids(studies)
    jobs = [(s, root) for s in studies if s.study_id not in duplicates]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    if workers == 1:
        checked = [_check_job(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            checked = list(pool.map(_check_job, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    by_folder = {c.folder: c for c in checked}
    checks = []
    for study in studies:
        if study.study_id in duplicates:
            others = " and ".join(str(f) for f in duplicates[study.study_id] if f != study.folder)
            error = f"{study.folder}: study id {study.study_id!r} is also in {others}"
            checks.append(
                StudyCheck(
                    study.study_id,
                    str(study.folder),
                    error=error,
                    error_kind="duplicate study id",
                    warnings=list(study.notes),
                )
            )
        else:
            checks.append(by_folder[str(study.folder)])
    return checks


def _size_stats(shapes: list[list[int]]) -> dict[str, Any] | None:
    if not shapes:
        return None
    arr = np.asarray(shapes)
    return {
        "min": arr.min(axis=0).tolist(),
        "median": np.median(arr, axis=0).astype(int).tolist(),
        "max": arr.max(axis=0).tolist(),
    }


def summarize(checks: list[StudyCheck]) -> dict[str, Any]:
    """Counts for the report: classes, views, missing/empty masks, sizes, bit depths, skips and why."""
    entries = [c.entry for c in checks if c.entry is not None]
    skipped = [c for c in checks if c.entry is None]
    views = Counter("+".join(e["views"]) if len(e["views"]) == 2 else f"{e['views'][0]} only" for e in entries)
    missing = {name: sum(1 for e in entries if not e["mask_present"][i]) for i, name in enumerate(MASK_NAMES)}
    empty = {name: sum(1 for e in entries if name in e["empty_masks"]) for name in MASK_NAMES}
    per_view: dict[str, Any] = {}
    for view in VIEWS:
        metas = [e[f"meta_{view.lower()}"] for e in entries if f"meta_{view.lower()}" in e]
        per_view[view] = {
            "images": len(metas),
            "size_px": _size_stats([m["shape"] for m in metas]),
            "bit_depths": dict(Counter(str(m["bit_depth"]) for m in metas)),
            "formats": dict(Counter(m["format"] for m in metas)),
            "with_spacing": sum(1 for m in metas if m["spacing"]),
        }
    return {
        "studies_found": len(checks),
        "imported": len(entries),
        "skipped": len(skipped),
        "skipped_reasons": dict(Counter(c.error_kind for c in skipped)),
        "classes": dict(Counter(e["class_name"] or "unlabelled" for e in entries)),
        "views": dict(views),
        "masks_missing": missing,
        "masks_empty": empty,
        "per_view": per_view,
        "warnings": sum(len(c.warnings) for c in checks),
    }


def skipped_studies(checks: list[StudyCheck]) -> list[dict[str, Any]]:
    """One record (study, folder, kind, one-line error) per skipped study."""
    return [
        {"study_id": c.study_id, "folder": c.folder, "kind": c.error_kind, "error": c.error}
        for c in checks
        if c.entry is None
    ]


def all_warnings(checks: list[StudyCheck]) -> list[str]:
    """Every study's one-line warnings, in study order."""
    return [w for c in checks for w in c.warnings]


def _rebase(path: str | None, root: Path, folder: Path) -> str | None:
    """A path relative to ``root`` made relative to ``folder`` (absolute paths, e.g. outside root, stay)."""
    if path is None or os.path.isabs(path):
        return path
    try:
        return os.path.relpath(root / path, folder)
    except ValueError:  # another drive (Windows)
        return str(root / path)


def _rebase_entry(entry: dict[str, Any], root: Path, folder: Path) -> dict[str, Any]:
    """A copy of ``entry`` whose file paths are relative to ``folder`` instead of ``root``."""
    return {
        **entry,
        "image_ap": _rebase(entry["image_ap"], root, folder),
        "image_lat": _rebase(entry["image_lat"], root, folder),
        "masks": [_rebase(m, root, folder) for m in entry["masks"]],
        "truth": _rebase(entry["truth"], root, folder),
    }


def build_datalist(
    root: str | Path,
    checks: list[StudyCheck],
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    folder: str | Path | None = None,
) -> dict[str, Any]:
    """The datalist: settings, summary, errors and the split (labelled studies) plus unlabelled ones.

    ``folder`` is where the datalist will be written (default ``root``): ``root`` and every file path
    are stored relative to it, so a dataset folder copied or moved with its datalist still works.
    """
    root = Path(root).resolve()
    folder = Path(folder).resolve() if folder is not None else root
    entries = [_rebase_entry(c.entry, root, folder) for c in checks if c.entry is not None]
    labelled = [e for e in entries if e["label"] is not None]
    split = stratified_split([e["study_id"] for e in labelled], [e["label"] for e in labelled], fractions, seed)
    by_id = {e["study_id"]: e for e in labelled}
    summary = summarize(checks)
    summary["split"] = {name: dict(Counter(by_id[i]["class_name"] for i in ids)) for name, ids in split.items()}
    datalist: dict[str, Any] = {
        "format": DATALIST_FORMAT,
        "paths": PATHS_RELATIVE_TO_DATALIST,
        "root": _rebase(".", root, folder),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spine_app_version": __version__,
        "channels": list(MASK_NAMES),
        "class_names": list(CLASS_NAMES),
        "split_settings": {"seed": seed, "fractions": dict(zip(SPLITS, fractions)), "stratified_by": "label"},
        "summary": summary,
        "errors": skipped_studies(checks),
        "warnings": all_warnings(checks),
    }
    for name, ids in split.items():
        datalist[name] = [by_id[i] for i in ids]
    datalist["unlabelled"] = [e for e in entries if e["label"] is None]
    return datalist


def import_dataset(
    root: str | Path,
    out: str | Path,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    workers: int | None = None,
) -> dict[str, Any]:
    """Validate ``root``, split it, and write the datalist JSON to ``out`` atomically. Returns it.

    Raises:
        DuplicateStudyError: a study id is in two folders (nothing is written).
    """
    studies = find_studies(root)
    refuse_duplicates(studies)
    checks = _check_studies(studies, Path(root), workers)
    datalist = build_datalist(root, checks, seed, fractions, folder=Path(out).parent)
    text = json.dumps(datalist, indent=1)
    write_atomic(out, lambda tmp: tmp.write_text(text))
    return datalist


def load_datalist(path: str | Path) -> dict[str, Any]:
    """Read a datalist and make ``root`` and its file paths absolute.

    Relative paths are resolved against the datalist's folder (older datalists without a "paths"
    key: against their absolute ``root``); absolute paths are kept.
    """
    datalist = json.loads(Path(path).read_text())
    if datalist.get("format") != DATALIST_FORMAT:
        raise ValueError(f"{path}: not a spine-app datalist (format {datalist.get('format')!r})")
    if datalist.get("paths") == PATHS_RELATIVE_TO_DATALIST:
        base = Path(path).resolve().parent
        datalist["root"] = os.path.normpath(base / datalist["root"])
    else:
        base = Path(datalist["root"])

    def absolute(p: str | None) -> str | None:
        return None if p is None else os.path.normpath(base / p) if not os.path.isabs(p) else p

    for split in (*SPLITS, "unlabelled"):
        for entry in datalist.get(split, []):
            entry["image_ap"], entry["image_lat"] = absolute(entry["image_ap"]), absolute(entry["image_lat"])
            entry["masks"] = [absolute(m) for m in entry["masks"]]
            entry["truth"] = absolute(entry["truth"])
    return datalist


def format_report(summary: dict[str, Any], errors: list[dict[str, Any]], warnings_: list[str]) -> str:
    """Human-readable dataset report (what ``spine-app check`` prints)."""
    lines = [
        f"studies found: {summary['studies_found']}   imported: {summary['imported']}   skipped: {summary['skipped']}",
        "classes: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["classes"].items())),
        "views: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["views"].items())),
    ]
    for view, info in summary["per_view"].items():
        size = info["size_px"]
        size_text = f"{size['min'][1]}x{size['min'][0]} .. {size['max'][1]}x{size['max'][0]} px" if size else "-"
        lines.append(
            f"{view}: {info['images']} images, {size_text}, bit depths {info['bit_depths']}, formats {info['formats']},"
            f" pixel spacing known for {info['with_spacing']}"
        )
    lines.append("masks missing (not annotated -> excluded from loss/metrics):")
    width = max(len(n) for n in MASK_NAMES)
    for name in MASK_NAMES:
        lines.append(
            f"  {name:<{width}}  missing {summary['masks_missing'][name]:>5}   empty {summary['masks_empty'][name]:>5}"
        )
    if "split" in summary:
        lines.append("split: " + "; ".join(f"{k} {dict(sorted(v.items()))}" for k, v in summary["split"].items()))
    if errors:
        lines.append(
            f"skipped studies ({len(errors)}): " + ", ".join(f"{k} {v}" for k, v in summary["skipped_reasons"].items())
        )
        lines += [f"  ERROR {e['error']}" for e in errors]
    if warnings_:
        lines.append(f"warnings ({len(warnings_)}):")
        lines += [f"  WARNING {w}" for w in warnings_[:50]]
        if len(warnings_) > 50:
            lines.append(f"  ... {len(warnings_) - 50} more in the datalist's 'warnings'")
    return "\n".join(lines)
