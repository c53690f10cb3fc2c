"""Finding studies on disk: the canonical layout of docs/design.md and the seed dataset's variants.

Accepted layouts (names case-insensitive, mask names with the aliases of :mod:`spine_app.channels`)::

    ROOT/<Normal|Damaged>/<study>/AP.png LAT.dcm Ap_Vertebra.png ... [truth.json]
    ROOT/<Normal|Damaged>/<study>/AP/<image> <masks>   LAT/<image> <masks>   (unprefixed mask names allowed)
    ROOT/<study>/...                                  (unlabelled studies, e.g. for inference)

A DICOM image whose name names no view is assigned by its ViewPosition tag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spine_app.channels import mask_name_for, view_for_folder, view_for_image_stem
from spine_app.data.io import dicom_view, file_stem, image_format

CLASS_NAMES: tuple[str, str] = ("Normal", "Damaged")
SIDECAR_NAMES = {"truth.json"}
#: the source CT that ``spine-app synth --ct`` writes beside a study (kept, not imported)
CT_SIDECAR_NAMES = {"ct.nii.gz", "ct_labels.nii.gz"}
IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


@dataclass
class StudyFiles:
    """The files of one study folder, sorted into views, masks, truth and unknowns."""

    study_id: str
    folder: Path
    class_name: str | None = None
    images: dict[str, Path] = field(default_factory=dict)  # "AP"/"LAT" -> path
    masks: dict[str, Path] = field(default_factory=dict)  # canonical mask name -> path
    truth: Path | None = None
    unknown: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one-line warnings ("<path>: <reason>")

    @property
    def label(self) -> int | None:
        return None if self.class_name is None else CLASS_NAMES.index(self.class_name)


def class_for_folder(name: str) -> str | None:
    """ "Normal"/"Damaged" for a class folder name (any case), else None."""
    return {c.lower(): c for c in CLASS_NAMES}.get(name.lower())


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower() not in IGNORED_NAMES


def _dicom_view_of(path: Path) -> str | None:
    import pydicom

    try:
        return dicom_view(pydicom.dcmread(str(path), stop_before_pixels=True, force=True))
    except Exception:
        return None


def looks_like_study(folder: Path) -> bool:
    """True if ``folder`` holds a view image (by name) or an AP/LAT sub-folder."""
    for child in folder.iterdir():
        if child.is_dir() and view_for_folder(child.name):
            return True
        if child.is_file() and image_format(child) and view_for_image_stem(file_stem(child)):
            return True
    return False


def _add(study: StudyFiles, kind: str, key: str, path: Path) -> None:
    table = study.images if kind == "image" else study.masks
    if key in table:
        study.notes.append(f"{path}: second file for {key} (keeping {table[key].name})")
        return
    table[key] = path


def scan_study(folder: Path, class_name: str | None = None) -> StudyFiles:
    """Sort the files of one study folder; never reads pixels (DICOM headers only when needed)."""
    study = StudyFiles(study_id=folder.name, folder=folder, class_name=class_name)
    unnamed: list[tuple[Path, str | None]] = []
    entries = [(p, None) for p in sorted(folder.iterdir()) if _visible(p)]
    for sub in [p for p, _ in entries if p.is_dir()]:
        hint = view_for_folder(sub.name)
        if hint is None:
            study.unknown.append(sub)
            continue
        entries += [(p, hint) for p in sorted(sub.iterdir()) if _visible(p) and p.is_file()]
    for path, hint in entries:
        if path.is_dir():
            continue
        if path.name.lower() in SIDECAR_NAMES and hint is None:
            study.truth = path
            continue
        if path.name.lower() in CT_SIDECAR_NAMES and hint is None:
            continue
        if image_format(path) is None:
            study.unknown.append(path)
            continue
        stem = file_stem(path)
        mask = mask_name_for(stem, hint)
        if mask is not None:
            _add(study, "mask", mask, path)
            continue
        view = view_for_image_stem(stem)
        if view is not None and hint not in (None, view):
            study.notes.append(f"{path}: image named {view} inside the {hint}/ folder; using the folder's view")
            view = hint
        if view is not None:
            _add(study, "image", view, path)
        else:
            unnamed.append((path, hint))
    for path, hint in unnamed:  # images whose name names no view: folder hint, then DICOM tags
        view = hint or (_dicom_view_of(path) if image_format(path) == "dicom" else None)
        if view is None or view in study.images:
            study.unknown.append(path)
        else:
            if hint is None:
                study.notes.append(f"{path}: view {view} taken from the DICOM ViewPosition tag")
            study.images[view] = path
    for path in study.unknown:
        study.notes.append(f"{path}: unknown file ignored (not a view image, mask or truth.json)")
    return study


def find_studies(root: str | Path) -> list[StudyFiles]:
    """All study folders under ``root`` (class folders, unlabelled study folders, or ``root`` itself)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    if looks_like_study(root):
        return [scan_study(root)]
    studies: list[StudyFiles] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        class_name = class_for_folder(child.name)
        if class_name is not None:
            studies += [scan_study(s, class_name) for s in sorted(child.iterdir()) if s.is_dir() and _visible(s)]
        else:
            studies.append(scan_study(child))
    return studies
