"""A MONAI Label studies folder is flat (one file per radiograph); this module maps its image ids
back to studies, views and classes.

Naming: ``<study>_<VIEW>.<ext>`` (``_AP`` / ``_LAT``, any case; ``-`` or ``.`` also separate), so the
two films of a study pair up by name. A file whose name names no view gets it from its DICOM tags
(ViewPosition, then descriptions), else from its pixels (:mod:`spine_app.inference.view_guess`), and is a
study of its own; a request may name the view itself (``{"view": "LAT"}``). The Normal/Damaged class of a study comes from the label's info
(``{"study_class": "Damaged"}`` sent with the label), else from ``study_classes.json`` in the studies
folder (written by ``spine-app monailabel prepare`` from a dataset's class folders), else it is
unknown (the study then trains the masks only).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from spine_app.channels import VIEWS, view_for_image_stem
from spine_app.data.importer import refuse_duplicates
from spine_app.data.io import check_output_folder, file_stem, file_suffix, write_atomic
from spine_app.data.layout import CLASS_NAMES, find_studies

CLASSES_FILE = "study_classes.json"
_SUFFIX = re.compile(r"^(?P<study>.+?)[_\-. ](?P<view>[A-Za-z]+)$")


def split_image_id(image_id: str) -> tuple[str, str | None]:
    """``"case7_LAT"`` -> ``("case7", "LAT")``; an id that ends in no view name -> ``(image_id, None)``."""
    match = _SUFFIX.match(image_id)
    if match:
        view = view_for_image_stem(match["view"])
        if view is not None:
            return match["study"], view
    return image_id, None


def resolve_view(
    path: str | Path, image_id: str, requested: str | None = None, model: str | Path | None = None
) -> tuple[str, str]:
    """(view, how it was told) of one radiograph: the request's, else its name's, else its DICOM tags',
    else guessed from its pixels with ``model`` (:mod:`spine_app.inference.view_guess`).

    Raises:
        ValueError: nothing names the view and the image does not show it clearly (one line naming the file).
    """
    from spine_app.inference.run import view_of_file
    from spine_app.inference.view_guess import guess_view

    if requested:
        if str(requested).upper() not in VIEWS:
            raise ValueError(f"{path}: view must be AP or LAT, got {requested!r}")
        return str(requested).upper(), "request"
    named = split_image_id(image_id)[1]
    if named:
        return named, "file name"
    tagged = view_of_file(Path(path))
    if tagged:
        return tagged, "file name or DICOM tags"
    guess = guess_view(path, model=model)
    if guess.confident:
        return guess.view, f"guessed from the image (score {guess.score:+.2f})"
    raise ValueError(
        f"{path}: cannot tell the view (AP or LAT): name it <study>_AP / <study>_LAT, give it a DICOM "
        'ViewPosition, or send params {"view": "AP"} (the image does not show it clearly)'
    )


def class_index(value: Any) -> int | None:
    """0 (Normal) / 1 (Damaged) from a class name or number; None for missing or unknown values."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and int(value) in (0, 1):
        return int(value)
    names = {c.lower(): i for i, c in enumerate(CLASS_NAMES)}
    return names.get(str(value).strip().lower())


def known_classes(studies: str | Path) -> dict[str, int]:
    """study -> class index from ``studies/study_classes.json`` (empty without the file)."""
    path = Path(studies) / CLASSES_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {study: idx for study, value in data.items() if (idx := class_index(value)) is not None}


def _link_atomic(target: Path, source: Path) -> None:
    """Make ``target`` a symlink to ``source`` by renaming a new link onto it (never half-made)."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.symlink_to(source.resolve())
    try:
        os.replace(tmp, target)
    finally:
        if tmp.is_symlink():
            tmp.unlink()


def prepare_studies(dataset: str | Path, out: str | Path, copy: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Flatten a dataset in the canonical layout into a MONAI Label studies folder.

    Every film becomes ``out/<study>_<VIEW><ext>`` (copied, or symlinked with ``copy=False``); the
    classes of the class folders go to ``out/study_classes.json``. ``out`` must be new or empty
    (hidden files aside) unless ``overwrite``: then only those films and ``study_classes.json`` are
    replaced (classes of other studies in it are kept) and every other file, e.g. the saved
    ``labels/``, stays. Returns {"images", "studies", "classes", "warnings"}.

    Raises:
        FolderNotEmptyError: ``out`` holds files and ``overwrite`` is False.
        DuplicateStudyError: a study id is in two folders of ``dataset`` (nothing is written).
    """
    out = Path(out)
    check_output_folder(out, overwrite, "studies folder")
    found = find_studies(dataset)
    refuse_duplicates(found)
    out.mkdir(parents=True, exist_ok=True)
    existing: dict[str, list[str]] = {}
    for path in sorted(out.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            existing.setdefault(file_stem(path.name), []).append(path.name)
    classes: dict[str, str] = {}
    images = studies = 0
    notes: list[str] = []
    for study in found:
        studies += bool(study.images)
        for view, source in study.images.items():
            target = out / f"{study.study_id}_{view}{file_suffix(source)}"
            notes += [
                f"{out / name}: kept, but {target.name} now has the same image id; remove the older film"
                for name in existing.get(file_stem(target.name), [])
                if name != target.name
            ]
            if copy:
                write_atomic(target, lambda tmp, src=source: shutil.copyfile(src, tmp))
            else:
                _link_atomic(target, source)
            images += 1
        if study.class_name:
            classes[study.study_id] = study.class_name
    previous = {}
    if (out / CLASSES_FILE).is_file():
        previous = json.loads((out / CLASSES_FILE).read_text())
    merged = {**previous, **classes}
    write_atomic(out / CLASSES_FILE, lambda tmp: tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n"))
    return {"images": images, "studies": studies, "classes": len(merged), "warnings": notes}


__all__ = ["CLASSES_FILE", "class_index", "known_classes", "prepare_studies", "resolve_view", "split_image_id"]
