"""``spine-app infer``: resolve what the user points at into studies, then run the bundle's
inference config on them (the same code path as ``python -m monai.bundle run --config_file
bundle/configs/inference.yaml``).

Accepted inputs (any mix, one or more):

- a study folder (canonical layout, or ``AP/`` and ``LAT/`` sub-folders), or a folder of study folders
  (with or without ``Normal``/``Damaged`` class folders);
- a DICOM folder whose files are not named by view: files are grouped into studies by
  StudyInstanceUID and assigned to AP/LAT by ViewPosition (then ImageLaterality / SeriesDescription);
  a file whose view no tag gives is reported, not guessed;
- a single image (PNG, 16-bit PNG, DICOM, TIFF, NIfTI): its view from ``--view``, its file name or its
  DICOM tags;
- a datalist JSON written by ``spine-app import`` (every split).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spine_app.channels import VIEWS, view_for_image_stem
from spine_app.data.importer import load_datalist
from spine_app.data.io import dicom_view, image_format
from spine_app.data.layout import find_studies, looks_like_study
from spine_app.engines.dataset import study_entry, weights_path
from spine_app.engines.writer import write_run_files

logger = logging.getLogger(__name__)

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundle"


def pixel_view(path: Path, model: str | Path | None, notes: list[str]) -> str | None:
    """The view of ``path`` guessed from its pixels (:mod:`spine_app.view_guess`), with a note saying so;
    None when the guess is not confident or the file cannot be read (it is reported when read)."""
    from spine_app.view_guess import guess_view

    try:
        guess = guess_view(path, model=model)
    except Exception as err:  # noqa: BLE001 - unreadable files are reported by the loader
        logger.info("%s: no view guess (%s)", path, err)
        return None
    if not guess.confident:
        return None
    notes.append(guess.note(path))
    logger.warning("%s", notes[-1])
    return guess.view


def _dicom_groups(folder: Path, model: str | Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Studies from the loose DICOM files of ``folder``, grouped by StudyInstanceUID; views from names or
    tags, else guessed from the pixels (noted in the study's ``notes``)."""
    import pydicom

    groups: dict[str, dict[str, Path]] = defaultdict(dict)
    errors: list[dict[str, str]] = []
    names: dict[str, str] = {}
    notes: dict[str, list[str]] = defaultdict(list)
    for path in sorted(p for p in folder.iterdir() if p.is_file() and image_format(p) == "dicom"):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        except Exception as err:  # noqa: BLE001
            errors.append({"study_id": path.stem, "error": f"{path}: unreadable DICOM header ({err})"})
            continue
        uid = str(getattr(ds, "StudyInstanceUID", "") or folder.name)
        view = view_for_image_stem(path.stem) or dicom_view(ds) or pixel_view(path, model, notes[uid])
        if view is None:
            errors.append({"study_id": path.stem, "error": f"{path}: no ViewPosition, ImageLaterality or description "
                           "names the view and the image does not show it clearly; pass the file with --view AP|LAT "
                           "or name it AP/LAT"})  # fmt: skip
            continue
        if view in groups[uid]:
            errors.append({"study_id": path.stem, "error": f"{path}: second {view} image of study {uid} "
                           f"(keeping {groups[uid][view].name})"})  # fmt: skip
            continue
        groups[uid][view] = path
        names.setdefault(uid, str(getattr(ds, "PatientID", "") or folder.name) + "_" + uid[-8:])
    return [_with_notes(study_entry(names[uid], images), notes[uid]) for uid, images in groups.items()], errors


def _with_notes(entry: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """``entry`` with ``notes`` (how its views were told, ...) that the writer copies into result.json."""
    if notes:
        entry["notes"] = " | ".join(notes)
    return entry


def resolve_inputs(
    inputs: list[str], view: str | None = None, split: str | None = None, model: str | Path | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(entries, errors): inference datalist entries for every study found in ``inputs``.

    ``split`` limits datalist inputs to one split (training, validation, test, unlabelled). A film
    whose view neither ``view``, its name nor its DICOM tags give is guessed from its pixels with
    ``model`` (default the shipped weights); the guess is noted in the study's result.json.

    ``errors`` has one {"study_id", "error"} per input that cannot become a study (missing path,
    unknown view, a folder with no image); the others are still returned.
    """
    if view is not None and view.upper() not in VIEWS:
        raise ValueError(f"--view must be AP or LAT, got {view!r}")
    entries: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            errors.append({"study_id": path.name, "error": f"{path}: no such file or folder"})
        elif path.is_file() and path.suffix.lower() == ".json":
            data = load_datalist(path)
            for name in (split,) if split else ("training", "validation", "test", "unlabelled"):
                entries += [study_entry(e["study_id"], _entry_images(e), e.get("label")) for e in data.get(name, [])]
        elif path.is_file():
            notes: list[str] = []
            chosen = view.upper() if view else view_of_file(path) or pixel_view(path, model, notes)
            if chosen is None:
                errors.append({"study_id": path.stem, "error": f"{path}: cannot tell the view (AP or LAT) from the file "
                               "name, DICOM tags or the image; pass --view AP or --view LAT"})  # fmt: skip
            else:
                entries.append(_with_notes(study_entry(path.stem, {chosen: path}), notes))
        elif looks_like_study(path) or any(p.is_dir() for p in path.iterdir()):
            for study in find_studies(path):
                if study.images:
                    entries.append(study_entry(study.study_id, study.images, study.label))
                else:
                    found = _dicom_groups(study.folder, model)
                    if found[0] or found[1]:
                        entries += found[0]
                        errors += found[1]
                    else:
                        errors.append(
                            {"study_id": study.study_id, "error": f"{study.folder}: no AP or LAT image found"}
                        )
        else:
            found = _dicom_groups(path, model)
            entries += found[0]
            errors += found[1]
            if not found[0] and not found[1]:
                errors.append({"study_id": path.name, "error": f"{path}: no AP or LAT image found"})
    return _unique_ids(entries), errors


def _entry_images(entry: dict[str, Any]) -> dict[str, Path]:
    return {v: Path(entry[f"image_{v.lower()}"]) for v in VIEWS if entry.get(f"image_{v.lower()}")}


def view_of_file(path: Path) -> str | None:
    """View of a single image from its name, else its DICOM tags."""
    name = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    found = view_for_image_stem(name)
    if found is None and image_format(path) == "dicom":
        import pydicom

        try:
            found = dicom_view(pydicom.dcmread(str(path), stop_before_pixels=True, force=True))
        except Exception:  # noqa: BLE001 - unreadable files are reported when they are read
            found = None
    return found


def _unique_ids(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Suffix repeated study ids (_2, _3, ...) so no two studies write into one output folder."""
    seen: dict[str, int] = defaultdict(int)
    for entry in entries:
        seen[entry["study_id"]] += 1
        if seen[entry["study_id"]] > 1:
            entry["study_id"] = f"{entry['study_id']}_{seen[entry['study_id']]}"
    return entries


def check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there; ``PermissionError`` naming it if not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".spine-app-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"{out}: output folder is not writable ({err.strerror or err})") from err


def run_inference(
    entries: list[dict[str, Any]],
    out: str | Path,
    model: str | Path | None = None,
    device: str = "auto",
    bundle_dir: str | Path = BUNDLE_DIR,
    errors: list[dict[str, str]] | None = None,
    on_evaluator: Callable[[Any], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the bundle's inference config on ``entries`` into ``out``; returns {"written", "errors"}.

    ``errors`` from input resolution are merged into ``out/errors.json`` and ``out/summary.csv``.
    ``overrides`` are config ids of inference.yaml (``write_nifti``, ``damaged_threshold``, ...);
    ``on_evaluator(evaluator)`` is called before the run (benchmarks attach timers there).
    """
    import torch
    from monai.bundle import ConfigWorkflow

    out, bundle_dir = Path(out), Path(bundle_dir)
    check_writable(out)
    model_path = weights_path(bundle_dir, model)
    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    written: list[dict[str, Any]] = []
    run_errors: list[dict[str, str]] = []
    if entries:
        workflow = ConfigWorkflow(
            str(bundle_dir / "configs" / "inference.yaml"),
            meta_file=str(bundle_dir / "configs" / "metadata.json"),
            logging_file=str(bundle_dir / "configs" / "logging.conf"),
            workflow_type="infer",
            **{"bundle_root": str(bundle_dir), "output_dir": str(out), "ckpt_path": str(model_path),
               "device": torch.device(device), "dataset#data": entries, **overrides},
        )  # fmt: skip
        workflow.initialize()
        if on_evaluator is not None:
            on_evaluator(workflow.parser.get_parsed_content("evaluator"))
        workflow.run()
        workflow.finalize()
        writer = next(h for h in workflow.parser.get_parsed_content("handlers") if hasattr(h, "rows"))
        written, run_errors = list(writer.rows), list(writer.errors)
    all_errors = list(errors or []) + run_errors
    rows = written + [{"study_id": e["study_id"], "status": "failed", "error": e["error"]} for e in errors or []]
    write_run_files(out, rows, all_errors)
    return {"written": [r for r in rows if r.get("status") == "ok"], "errors": all_errors}


def summary_line(result: dict[str, Any], out: str | Path) -> str:
    """One line for the console: how many studies were written and failed, and where."""
    return (
        f"{len(result['written'])} studies written, {len(result['errors'])} failed -> {out} (summary.csv, errors.json)"
    )


__all__ = ["BUNDLE_DIR", "check_writable", "pixel_view", "resolve_inputs", "run_inference", "summary_line", "view_of_file"]
