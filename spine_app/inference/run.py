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

import json
import logging
import pickle
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from spine_app.bundle import BUNDLE_DIR, config_workflow, weights_path
from spine_app.channels import VIEWS, view_for_image_stem
from spine_app.data.importer import load_datalist, truth_spacing
from spine_app.data.io import dicom_view, file_stem, image_format
from spine_app.data.layout import find_studies, looks_like_study
from spine_app.engines.dataset import study_entry
from spine_app.engines.writer import OutputError, is_run_output, is_study_output, write_run_files

logger = logging.getLogger(__name__)

RUN_FILES = ("summary.csv", "errors.json")  # names in the output folder no study id may take


class BadArgument(ValueError):
    """A bad command-line value (device, model file, ...): one line naming it and the reason; the
    command line exits with status ``exit_status`` (2)."""

    exit_status = 2


def pixel_view(path: Path, model: str | Path | None, notes: list[str]) -> str | None:
    """The view of ``path`` guessed from its pixels (:mod:`spine_app.inference.view_guess`), with a note saying so;
    None when the guess is not confident or the file cannot be read (it is reported when read)."""
    from spine_app.inference.view_guess import guess_view

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
            errors.append(
                {
                    "study_id": path.stem,
                    "error": f"{path}: no ViewPosition, ImageLaterality or description "
                    "names the view and the image does not show it clearly; pass the file with --view AP|LAT "
                    "or name it AP/LAT",
                }
            )
            continue
        if view in groups[uid]:
            errors.append(
                {
                    "study_id": path.stem,
                    "error": f"{path}: second {view} image of study {uid} (keeping {groups[uid][view].name})",
                }
            )
            continue
        groups[uid][view] = path
        names.setdefault(uid, str(getattr(ds, "PatientID", "") or folder.name) + "_" + uid[-8:])
    return [_with_notes(study_entry(names[uid], images), notes[uid]) for uid, images in groups.items()], errors


def _with_notes(entry: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """``entry`` with ``notes`` (how its views were told, ...) that the writer copies into result.json."""
    if notes:
        entry["notes"] = " | ".join(notes)
    return entry


def _inside(folder: Path, out: Path | None) -> bool:
    """True if ``folder`` is the run's (resolved) output folder ``out`` or inside it."""
    resolved = folder.resolve()
    return out is not None and (resolved == out or out in resolved.parents)


def _is_output(folder: Path, out: Path | None) -> bool:
    """True if ``folder`` is (inside) the run's output folder ``out``, the output folder of another
    inference run, or a study folder of one: never an input."""
    return _inside(folder, out) or is_run_output(folder) or is_study_output(folder)


def resolve_inputs(
    inputs: list[str],
    view: str | None = None,
    split: str | None = None,
    model: str | Path | None = None,
    out: str | Path | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(entries, errors): inference datalist entries for every study found in ``inputs``.

    ``split`` limits datalist inputs to one split (training, validation, test, unlabelled). A film
    whose view neither ``view``, its name nor its DICOM tags give is guessed from its pixels with
    ``model`` (default the shipped weights); the guess is noted in the study's result.json.
    Folders of studies skip the output folder ``out`` and any folder an inference run wrote.

    ``errors`` has one {"study_id", "error"} per input that cannot become a study (missing path,
    unknown view, a folder with no image); the others are still returned. Study ids are made unique
    and safe as folder names (:func:`unique_ids`).
    """
    if view is not None and view.upper() not in VIEWS:
        raise BadArgument(f"--view must be AP or LAT, got {view!r}")
    out_dir = Path(out).resolve() if out is not None else None
    entries: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir() and _is_output(path, out_dir):
            where = f"inside the output folder {out}" if _inside(path, out_dir) else "written by spine-app infer"
            errors.append({"study_id": path.name, "error": f"{path}: {where}, not read as input"})
        elif not path.exists():
            errors.append({"study_id": path.name, "error": f"{path}: no such file or folder"})
        elif path.is_file() and path.suffix.lower() == ".json":
            data = load_datalist(path)
            for name in (split,) if split else ("training", "validation", "test", "unlabelled"):
                entries += [_datalist_study(e) for e in data.get(name, [])]
        elif path.is_file():
            notes: list[str] = []
            chosen = view.upper() if view else view_of_file(path) or pixel_view(path, model, notes)
            if chosen is None:
                errors.append(
                    {
                        "study_id": path.stem,
                        "error": f"{path}: cannot tell the view (AP or LAT) from the file "
                        "name, DICOM tags or the image; pass --view AP or --view LAT",
                    }
                )
            else:
                entries.append(_with_notes(study_entry(path.stem, {chosen: path}), notes))
        elif looks_like_study(path) or any(p.is_dir() for p in path.iterdir()):
            for study in find_studies(path):
                if _is_output(study.folder, out_dir):
                    logger.info("%s: skipped, an output folder of spine-app infer", study.folder)
                elif study.images:
                    entries.append(study_entry(study.study_id, study.images, study.label, truth_spacing(study.truth)))
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
    unique_ids(entries + errors)  # in place; the studies keep their ids first
    return entries, errors


def _entry_images(entry: dict[str, Any]) -> dict[str, Path]:
    return {v: Path(entry[f"image_{v.lower()}"]) for v in VIEWS if entry.get(f"image_{v.lower()}")}


def view_of_file(path: Path) -> str | None:
    """View of a single image from its name, else its DICOM tags."""
    found = view_for_image_stem(file_stem(path))
    if found is None and image_format(path) == "dicom":
        import pydicom

        try:
            found = dicom_view(pydicom.dcmread(str(path), stop_before_pixels=True, force=True))
        except Exception:  # noqa: BLE001 - unreadable files are reported when they are read
            found = None
    return found


def safe_id(study_id: Any) -> str:
    """``study_id`` as a plain folder name: path separators and control characters become "_", a
    leading dot (hidden names, "..") becomes "_", and an empty id becomes "study"."""
    name = re.sub(r"[\x00-\x1f/\\]", "_", str(study_id)).strip()[:200]
    return ("_" + name[1:] if name.startswith(".") else name) or "study"


def _datalist_study(entry: dict[str, Any]) -> dict[str, Any]:
    """An inference entry of one datalist entry: its images, label and the films' recorded metadata
    (pixel spacing from the files or truth.json), without its masks."""
    out = study_entry(entry["study_id"], _entry_images(entry), entry.get("label"))
    out.update({key: entry[key] for key in ("meta_ap", "meta_lat") if entry.get(key)})
    return out


def unique_ids(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make the ``study_id`` of ``entries`` safe (:func:`safe_id`) and unique, ignoring case (a
    case-insensitive disk would merge them): a repeated id gets the first suffix _2, _3, ... that no
    other id of the list has, so no two studies write into one output folder."""
    for entry in entries:
        entry["study_id"] = safe_id(entry["study_id"])
    taken = {e["study_id"].casefold() for e in entries} | set(RUN_FILES)
    seen: set[str] = set()
    for entry in entries:
        study_id = entry["study_id"]
        if study_id.casefold() in seen or study_id.casefold() in RUN_FILES:
            n = 2
            while f"{study_id}_{n}".casefold() in taken:
                n += 1
            study_id = entry["study_id"] = f"{study_id}_{n}"
            taken.add(study_id.casefold())
        seen.add(study_id.casefold())
    return entries


def resolve_device(device: str) -> str:
    """``device`` checked: "auto" -> "cuda:0" when CUDA works, else "cpu"; "cpu", "cuda", "cuda:N"
    ("gpu", "gpu:N" the same), "mps". BadArgument naming it when it is unknown or not on this machine."""
    import torch

    name = str(device).strip().lower()
    if name == "gpu" or name.startswith("gpu:"):
        name = "cuda" + name[3:]
    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise BadArgument(f"--device {device}: unknown device; use auto, cpu, cuda, cuda:N or gpu") from None
    if chosen.type == "cpu":
        return "cpu"
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no GPU or driver found"
            raise BadArgument(f"--device {device}: CUDA is not available on this machine ({why}); use --device cpu")
        if (chosen.index or 0) >= torch.cuda.device_count():
            raise BadArgument(f"--device {device}: no such GPU (this machine has {torch.cuda.device_count()})")
        return f"cuda:{chosen.index or 0}"
    if chosen.type == "mps" and torch.backends.mps.is_available():
        return "mps"
    raise BadArgument(f"--device {device}: not available here; use auto, cpu or cuda[:N]")


def check_model(bundle_dir: str | Path, model: str | Path | None = None, **overrides: Any) -> Path:
    """The weights file (``model`` or the bundle's), checked to be weights of the bundle's network
    (with the config ``overrides``, e.g. ``backbone``): a readable state dict with every key and shape
    and only finite values. BadArgument naming the file and the reason otherwise."""
    try:
        path = weights_path(bundle_dir, model)
    except FileNotFoundError as err:
        raise BadArgument(str(err)) from None
    stat = path.stat()
    network = tuple(sorted((k, json.dumps(v)) for k, v in overrides.items() if k in ("backbone", "decoder_channels")))
    problem = _weights_problem(str(path), stat.st_mtime_ns, stat.st_size, str(bundle_dir), network)
    if problem is None and model is None:
        problem = _listed_hash_problem(str(path), stat.st_mtime_ns, stat.st_size, str(bundle_dir))
    if problem:
        raise BadArgument(f"{path}: {problem}")
    return path


@lru_cache(maxsize=8)
def _listed_hash_problem(path: str, mtime_ns: int, size: int, bundle_dir: str) -> str | None:
    """Why the bundle's own weights do not match the SHA-256 in its large_files.yml, or None."""
    from spine_app.engines.runs import LARGE_FILES, listed_sha256
    from spine_app.engines.writer import sha256_of

    expected = listed_sha256(bundle_dir)
    if expected is None or sha256_of(path) == expected:
        return None
    return (
        f"SHA-256 does not match {Path(bundle_dir) / LARGE_FILES} (a damaged copy or a replaced file; "
        "spine-app publish writes both)"
    )


@lru_cache(maxsize=8)
def _weights_problem(path: str, mtime_ns: int, size: int, bundle_dir: str, network: tuple) -> str | None:
    """Why the file at ``path`` is not usable weights of the bundle's network, or None (cached per
    file version: MONAI Label checks the served model on every request)."""
    state = _read_state(path, size)
    return state if isinstance(state, str) else _state_problem(state, bundle_dir, dict(network))


def _read_state(path: str, size: int) -> dict[str, Any] | str:
    """The state dict saved at ``path`` (plain or a CheckpointSaver's {"model": ...}), or why there is none."""
    import torch

    if size == 0:
        return "empty file (0 bytes), not model weights"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04":  # torch.save's zip archive
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            return f"truncated or damaged weights file (its zip archive is incomplete: {err})"
        if damaged:
            return f"damaged weights file ({damaged} fails its checksum)"
    elif head[:1] != b"\x80":  # nor a (legacy) pickle
        return "not a PyTorch weights file (neither a torch.save zip archive nor a pickle)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return "holds pickled objects, not a plain state dict (e.g. a whole model: save model.state_dict())"
    except Exception as err:  # noqa: BLE001 - zip and torch errors alike mean "not weights"
        reason = re.sub(r"\x1b\[[0-9;]*m", "", (str(err).strip().splitlines() or [""])[0])[:160]
        return f"not loadable as weights ({type(err).__name__}: {reason})"
    if isinstance(state, dict) and set(state) == {"model"}:
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "not a state dict of tensors"
    return state


def _state_problem(state: dict[str, Any], bundle_dir: str, network: dict[str, str]) -> str | None:
    """Why ``state`` does not fit the bundle's ``network_def`` (``network``: JSON config overrides) or
    holds non-finite values, or None."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(bundle_dir) / "configs" / "inference.yaml"))
    parser["bundle_root"] = bundle_dir
    for key, value in network.items():
        parser[key] = json.loads(value)
    net = parser.get_parsed_content("network_def")
    expected = net.state_dict()
    upgrade = getattr(net, "upgrade_state", None)  # weights saved before the grade head load into it unfitted
    state = upgrade(dict(state)) if upgrade is not None else state
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    shapes = sorted(k for k in expected.keys() & state.keys() if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} keys missing, e.g. {missing[0]}" if missing else "",
            f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}" if unexpected else "",
            f"{len(shapes)} keys of another shape, e.g. {shapes[0]}" if shapes else "",
        ]
        found = "; ".join(part for part in parts if part)
        return f"weights of another network than the bundle's {parser.get_parsed_content('backbone')} ({found})"
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if broken:
        return f"{len(broken)} weight tensors hold NaN or infinite values (e.g. {broken[0]}): a damaged file"
    return None


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
    force: bool = False,
    progress: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the bundle's inference config on ``entries`` into ``out``; returns {"written", "skipped", "errors"}.

    A study whose complete output is already in ``out`` for the same model, films and settings is
    skipped (listed in summary.csv as ``skipped``) unless ``force``; ``progress`` shows a per-study
    progress bar with its ETA (Ignite's ProgressBar).

    ``errors`` from input resolution are merged into ``out/errors.json`` and ``out/summary.csv``
    (rewritten after every study, see :mod:`spine_app.engines.writer`).
    ``overrides`` are config ids of inference.yaml (``write_nifti``, ``damaged_threshold``, ...);
    ``on_evaluator(evaluator)`` is called before the run (benchmarks attach timers there).

    Raises:
        BadArgument: unknown or unavailable ``device``, unusable ``model`` (nothing is written).
        PermissionError: ``out`` cannot be written.
        OutputError: summary.csv / errors.json could not be written at the end (a full disk, ...).
    """
    import torch

    out, bundle_dir = Path(out), Path(bundle_dir)
    device = resolve_device(device)
    model_path = check_model(bundle_dir, model, **overrides)
    check_writable(out)
    input_errors = list(errors or [])
    if not entries:
        rows = [{"study_id": e["study_id"], "status": "failed", "error": e["error"]} for e in input_errors]
        write_run_files(out, rows, input_errors)
        return {"written": [], "errors": input_errors}
    workflow = config_workflow(
        "inference.yaml",
        bundle_dir,
        workflow_type="infer",
        **{
            "bundle_root": str(bundle_dir),
            "output_dir": str(out),
            "ckpt_path": str(model_path),
            "device": torch.device(device),
            "dataset#data": entries,
            **overrides,
        },
    )
    workflow.initialize()
    writer = next(h for h in workflow.parser.get_parsed_content("handlers") if hasattr(h, "input_errors"))
    writer.input_errors = input_errors
    dataset = workflow.parser.get_parsed_content("dataset")
    if not force:
        finished = {e["study_id"]: writer.finished(e) for e in dataset.data}
        writer.skipped = [row for row in finished.values() if row is not None]
        dataset.data = [e for e in dataset.data if finished[e["study_id"]] is None]
    evaluator = workflow.parser.get_parsed_content("evaluator")
    loader = workflow.parser.get_parsed_content("dataloader")
    evaluator.state.epoch_length = len(loader)  # counted before the finished studies were taken out
    if progress and dataset.data:
        from ignite.contrib.handlers import ProgressBar

        ProgressBar(persist=True, desc="studies").attach(evaluator)
    if on_evaluator is not None:
        on_evaluator(evaluator)
    if not dataset.data:  # nothing left to do: still write this run's summary
        writer.reset()
        writer.finish()
        rows, all_errors = writer.run_files()
        return {"written": [], "skipped": writer.skipped, "errors": all_errors}
    try:
        workflow.run()
    except RuntimeError as err:  # MONAI wraps what the run raised ("Failed to evaluate ...")
        cause = err.__cause__
        while cause is not None and not isinstance(cause, OutputError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
    workflow.finalize()
    rows, all_errors = writer.run_files()
    return {"written": [r for r in rows if r.get("status") == "ok"], "skipped": writer.skipped, "errors": all_errors}


def summary_line(result: dict[str, Any], out: str | Path) -> str:
    """One line for the console: how many studies were written, skipped and failed, and where."""
    skipped = len(result.get("skipped") or [])
    done = f", {skipped} already done (skipped; --force redoes them)" if skipped else ""
    return f"{len(result['written'])} studies written{done}, {len(result['errors'])} failed -> {out} (summary.csv, errors.json)"


__all__ = [
    "BadArgument",
    "check_model",
    "check_writable",
    "pixel_view",
    "resolve_device",
    "resolve_inputs",
    "run_inference",
    "safe_id",
    "summary_line",
    "unique_ids",
    "view_of_file",
]
