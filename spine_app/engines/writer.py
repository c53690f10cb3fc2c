"""Inference output: each study's masks at the original resolution, overlays, morphometry and a
result.json; a run-level summary.csv and errors.json.

For a study ``S`` the handler writes into ``OUT/S/``:

- ``<MaskName>.png`` (0/255, the names of the input layout, so predictions can be re-imported as
  labels and corrected) for the channels of each present view, and ``<MaskName>.nii.gz`` with the
  pixel spacing when ``nifti`` is on;
- ``overlay_AP.png`` / ``overlay_LAT.png``: masks on the radiograph with a legend; the LAT overlay
  labels each vertebra with its level and Genant grade;
- ``result.json``: Damaged probability (``decision="levels"``: pooled from the level head's
  per-vertebra fracture probabilities; ``"network"``: the network's fused (global) probability;
  ``"combined"``: the fused probability's noisy-OR with the morphometry's, see
  :func:`spine_app.morphometry.combine_probabilities`; all are recorded, with the AP-only /
  LAT-only network probabilities), label and the threshold used; ``levels``: every vertebral
  body the level head scored (number from the top, name where morphometry names it, centre on the
  film, fracture probability, Genant grade, height measurements) and which levels drive the
  decision (the overlay circles them),
  per-mask area (px, mm²), per-vertebra morphometry (:mod:`spine_app.morphometry.measure`), model file and
  versions, and the SHA-256 of each input file.

``OUT/summary.csv`` has one row per study of this run (failed ones too) and ``OUT/errors.json``
lists each failed study with its reason; both are rewritten (atomically) when the run starts and after
every study, so an interrupted run leaves a summary of exactly the studies it finished.

A study is written into a hidden temporary folder ``OUT/.S.<pid>-<random>.partial`` and renamed onto
``OUT/S`` only when all its files are complete; an earlier output of ``S`` (a folder holding only the
files this writer writes) is replaced at that moment, so a folder never mixes two runs. A folder
``OUT/S`` with other files (a study's own images, say) is never touched: that study fails. Temporary
folders left by a killed run are removed (or, for a replaced output, restored) by the next run.

``result.json`` is strict JSON: a value that is not a finite number (a body height the mask does not
allow to measure, ...) is written as null and ``null_values`` maps its path to the reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from spine_app import __version__
from spine_app.channels import CHANNEL_VIEW, MASK_NAMES, VIEWS, geom_key, seg_key
from spine_app.data.io import fsync_folder, image_format, read_image, write_atomic, write_nifti, write_png
from spine_app.data.layout import CLASS_NAMES
from spine_app.data.levels import INFERENCE_MAX_LEVELS, exposed_rows
from spine_app.data.study_transforms import FilmGeometry, fit_geometry
from spine_app.engines.inferer import PARTING_DISK_KEY, parting_disk
from spine_app.metrics.level_suppression import NO_SUPPRESSION, NeighbourSuppression
from spine_app.metrics.levels import GRADE_HELD_BACK, level_per_body
from spine_app.metrics.matching import nearest_matches

logger = logging.getLogger(__name__)

#: what decides Normal/Damaged (see StudyPredictionWriter)
DECISIONS: tuple[str, ...] = ("levels", "levels_network", "network", "combined")

#: the summary.csv columns copied from result.json as they are
RESULT_COLUMNS = (
    "damaged_probability",
    "label",
    "threshold",
    "network_probability",
    "morphometry_probability",
    "levels_probability",
)
SUMMARY_COLUMNS = (
    "study_id",
    "status",
    *RESULT_COLUMNS,
    "suspected_levels",
    "probability_ap",
    "probability_lat",
    "vertebrae",
    "max_genant_grade",
    "graded_levels",
    "output",
    "error",
)


def resize_to_original(values: torch.Tensor, geom: torch.Tensor) -> torch.Tensor:
    """Working-canvas maps (C, H, W) -> (C, rows, cols) on the original image (bilinear).

    The crop is recomputed with the same ``fit_geometry`` that placed the image on the canvas.
    """
    film = FilmGeometry.from_tensor(geom)
    rows, cols = film.rows, film.cols
    _, height, width, top, left = fit_geometry((rows, cols), values.shape[-2:])
    crop = values[:, top : top + height, left : left + width]
    return F.interpolate(crop[None].float(), size=(rows, cols), mode="bilinear", align_corners=False)[0]


def to_original(logits: torch.Tensor, geom: torch.Tensor) -> torch.Tensor:
    """Working-canvas logits (C, H, W) -> probabilities (C, rows, cols) of the original image."""
    return torch.sigmoid(resize_to_original(logits, geom))


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: why a value of result.json is null, by the key it sits under (the nearest one wins)
NULL_REASONS: dict[str, str] = {
    "heights_mm": "not measurable: too few vertebra-mask pixels in the measuring band at this position of the body",
    "heights_px": "not measurable: too few vertebra-mask pixels in the measuring band at this position of the body",
    "depth_mm": "not measurable: too few vertebra-mask pixels",
    "depth_px": "not measurable: too few vertebra-mask pixels",
    "ratios": "not computable: a height it needs is not measurable",
    "expected_posterior_mm": "not computable from the neighbouring bodies' posterior heights",
    "expected_posterior_px": "not computable from the neighbouring bodies' posterior heights",
}
#: the files a study folder of this writer holds (``replaceable`` accepts no others)
OUTPUT_FILES: frozenset[str] = frozenset(
    {
        "result.json",
        "overlay_AP.png",
        "overlay_LAT.png",
        "saliency_AP.png",
        "saliency_LAT.png",
        "seg_AP.dcm",
        "seg_LAT.dcm",
        "report.dcm",
    }
    | {f"{name}.png" for name in MASK_NAMES}
    | {f"{name}.nii.gz" for name in MASK_NAMES}
)
PARTIAL, ASIDE = ".partial", ".old"  # suffixes of the hidden folders of a study being written / replaced
HOLD_ENV = "SPINE_APP_TEST_HOLD_STUDY"  # tests only: stall before renaming this study into place


class OutputError(OSError):
    """An output file could not be written; ``str(err)`` is "<path>: cannot write (<reason>)"."""

    def __init__(self, path: str | Path, err: OSError) -> None:
        self.message = f"{path}: cannot write ({err.strerror or err})"
        super().__init__(err.errno, self.message)

    def __str__(self) -> str:
        return self.message


def finite_json(payload: Any, reasons: Mapping[str, str] = NULL_REASONS) -> Any:
    """A copy of ``payload`` that strict JSON accepts: NaN and +-inf become null and, when ``payload``
    is a dict, its ``null_values`` maps each such value's path (``morphometry.vertebrae[2].ratios.x``)
    to the reason (``reasons`` by the nearest key above it, else "not a finite number")."""
    nulls: dict[str, str] = {}

    def clean(value: Any, path: str, keys: tuple[str, ...]) -> Any:
        if isinstance(value, (float, np.floating)):
            if math.isfinite(value):
                return float(value)
            nulls[path] = next((reasons[k] for k in reversed(keys) if k in reasons), f"not a finite number ({value})")
            return None
        if isinstance(value, Mapping):
            return {k: clean(v, f"{path}.{k}" if path else str(k), (*keys, str(k))) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}[{i}]", keys) for i, v in enumerate(value)]
        return value

    out = clean(payload, "", ())
    if nulls and isinstance(out, dict):
        out["null_values"] = {**(out.get("null_values") or {}), **nulls}
    return out


def write_json(path: str | Path, payload: Any, strict: bool = False) -> Path:
    """Pretty JSON, atomically; ``strict``: ValueError instead of writing NaN or infinity."""
    text = json.dumps(payload, indent=2, allow_nan=not strict)
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_run_files(output_dir: str | Path, rows: list[dict[str, Any]], errors: list[dict[str, str]]) -> None:
    """``summary.csv`` (one row per study, SUMMARY_COLUMNS) and ``errors.json`` of a run, atomically.

    Raises:
        OutputError: "<file>: cannot write (<reason>)" (a full disk, a read-only folder, ...).
    """
    buffer = io.StringIO()
    table = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    table.writeheader()
    table.writerows(rows)
    text = buffer.getvalue()
    summary, listed = Path(output_dir) / "summary.csv", Path(output_dir) / "errors.json"
    for path, content in ((summary, text), (listed, json.dumps(errors, indent=2, allow_nan=False))):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda tmp, content=content: tmp.write_text(content))
        except OSError as err:
            raise OutputError(path, err) from err


def is_study_output(folder: Path) -> bool:
    """True if ``folder`` holds a ``result.json`` written by this writer."""
    try:
        data = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "spine_app_version" in data and "study_id" in data


def is_run_output(folder: Path) -> bool:
    """True if ``folder`` is the output folder of an inference run (it has summary.csv and errors.json)."""
    return (folder / "summary.csv").is_file() and (folder / "errors.json").is_file()


def replaceable(folder: Path) -> bool:
    """May a new output of the study replace ``folder``: it is absent, an empty folder, or an earlier
    output of this writer holding only the files the writer writes (and leftover temporary files)."""
    if not folder.exists() and not folder.is_symlink():
        return True
    if folder.is_symlink() or not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    ours = [p.is_file() and not p.is_symlink() and (p.name in OUTPUT_FILES or _is_tmp_file(p.name)) for p in entries]
    return not entries or (all(ours) and is_study_output(folder))


def _is_tmp_file(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")  # spine_app.data.io.atomic_path's temporary names


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def hidden_folder(output_dir: Path, study_id: str, suffix: str) -> Path:
    """A new hidden folder name ``.S.<pid>-<random><suffix>`` in ``output_dir`` (not created)."""
    return output_dir / f".{study_id}.{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def _rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process in a torch.distributed run, (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This process's share of ``entries`` in a torch.distributed run (every ``world``-th study from
    its rank: each study is done by exactly one rank), all of them outside one."""
    rank, world = _rank_and_world()
    return list(entries)[rank::world]


def remove_stale(output_dir: Path) -> None:
    """Clean what a killed run left in ``output_dir``: delete its temporary study folders, and put an
    earlier study output it had moved aside back in place (or delete it when a newer one is there)."""
    for path in output_dir.iterdir() if output_dir.is_dir() else ():
        name = path.name
        if not (name.startswith(".") and name.endswith((PARTIAL, ASIDE)) and path.is_dir() and not path.is_symlink()):
            continue
        stem, _, tag = name[1:].rpartition(".")[0].rpartition(".")
        pid = tag.split("-")[0]
        if not stem or not pid.isdigit() or _pid_alive(int(pid)):
            continue  # not ours, or its run is still going
        final = output_dir / stem
        if name.endswith(ASIDE) and not final.exists() and not final.is_symlink():
            os.rename(path, final)
            logger.warning("%s: restored the earlier output a killed run had moved aside", final)
        else:
            shutil.rmtree(path, ignore_errors=True)


def put_in_place(staged: Path, final: Path) -> None:
    """Rename the complete folder ``staged`` onto ``final``; an earlier ``final`` is moved aside first
    and deleted once the new one is in place (put back if the rename fails)."""
    if not final.exists() and not final.is_symlink():
        os.rename(staged, final)
        fsync_folder(final.parent)
        return
    aside = hidden_folder(final.parent, final.name, ASIDE)
    os.rename(final, aside)
    try:
        os.rename(staged, final)
    except OSError:
        os.rename(aside, final)
        raise
    fsync_folder(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _hold_for_tests(study_id: str) -> None:
    """Stall forever before ``study_id`` is renamed into place when the test switch ``HOLD_ENV`` names
    it (tests kill the process there to check what an interrupted run leaves)."""
    if os.environ.get(HOLD_ENV) == study_id:
        print(f"{HOLD_ENV}: holding {study_id}", flush=True)
        while True:
            time.sleep(60)


class _WrittenView(NamedTuple):
    """One film as :meth:`StudyPredictionWriter._write_view` wrote it."""

    view: str
    source: str
    masks: dict[int, np.ndarray]  # channel -> bool mask at the original resolution
    bodies: list  # morphometry.measure.VertebralBody (LAT only)
    geom: torch.Tensor
    dicom: bool  # a DICOM film with a SEG written beside it


class StudyPredictionWriter:
    """Ignite handler for the inference evaluator: writes every study of each batch (see module doc).

    Args:
        output_dir: OUT folder.
        threshold: mask probability threshold.
        damaged_threshold: probability at or above which a study is labelled Damaged (the
            evaluation report's validation-chosen threshold for the shipped model).
        model_version: bundle version recorded in result.json.
        model_path: weights file, recorded with its SHA-256.
        nifti: also write each mask as NIfTI with the pixel spacing.
        overlays: write the overlay PNGs.
        lowest_level: level name of the lowest vertebra on the LAT film (morphometry labels).
        decision: "levels" (the level head's pooled probability decides), "levels_network" (the
            logistic of the mean of its logit and the fused head's), "network" (the fused network
            probability) or "combined" (its noisy-OR with the morphometry probability).
        level_threshold: fracture probability at or above which a level is flagged (the
            evaluation report's validation-chosen level threshold).
        level_neighbour_suppression: the weight of the neighbour suppression of the level head's
            probabilities (:mod:`spine_app.metrics.level_suppression`, from the evaluation report);
            0: the head's own probabilities.
        levels_follow_decision: in a study the decision labels Normal, no level is flagged or graded:
            the levels above the level threshold are kept with their probabilities and marked
            ``held_back`` (:func:`hold_back_levels`); False reports them flagged and graded whatever
            the study's label.
        explain: the saliency method the inferer ran (``StudyInferer(explain=...)``), or None: with
            a method, ``saliency_<VIEW>.png`` and result.json's ``explanation`` are written.
        dicom_out: for a film read from DICOM, also write ``seg_<VIEW>.dcm``, a DICOM Segmentation
            of its structures, and for the study ``report.dcm``, a DICOM Structured Report (TID 1500)
            of the measurements and the decision (:mod:`spine_app.engines.dicom_out`).
        level_shape_check: a level whose body's predicted mask cannot be a vertebral body's, fractured
            or not (:func:`spine_app.morphometry.measure.shape_implausible`, on the film's own morphometry)
            is left out of the study probability: it cannot make a study Damaged on its own
            (:func:`level_summary`).
        level_pooling: the network's pooling of the level logits into the study logit
            (:data:`spine_app.networks.levels.MIL_POOLING`; inference.yaml passes the network's own),
            used where a level is left out.
        pipeline: the inference settings before the writer that change its outputs (inference.yaml:
            canvas, tall-film spacing, mirroring TTA), recorded in result.json's ``settings`` so a
            re-run with other ones redoes the study.
    """

    def __init__(
        self,
        output_dir: str,
        threshold: float = 0.5,
        damaged_threshold: float = 0.5,
        model_version: str = "unknown",
        model_path: str | None = None,
        nifti: bool = False,
        overlays: bool = True,
        lowest_level: str | None = None,
        decision: str = "network",
        explain: str | None = None,
        dicom_out: bool = True,
        level_threshold: float = 0.5,
        pipeline: Mapping[str, Any] | None = None,
        level_neighbour_suppression: float = 0.0,
        levels_follow_decision: bool = True,
        level_shape_check: bool = True,
        level_pooling: str = "lse",
    ) -> None:
        from spine_app.networks.levels import MIL_POOLING

        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        self.level_threshold = float(level_threshold)
        self.level_suppression = NeighbourSuppression(float(level_neighbour_suppression or 0.0))
        self.levels_follow_decision = bool(levels_follow_decision)
        if level_pooling not in MIL_POOLING:
            raise ValueError(f"level_pooling must be one of {', '.join(MIL_POOLING)}, got {level_pooling!r}")
        self.level_shape_check, self.level_pooling = bool(level_shape_check), level_pooling
        self.decision, self.explain, self.dicom_out = decision, explain or None, bool(dicom_out)
        self.output_dir = Path(output_dir)
        self.threshold, self.damaged_threshold = float(threshold), float(damaged_threshold)
        self.model_version, self.nifti, self.overlays, self.lowest_level = model_version, nifti, overlays, lowest_level
        self.pipeline = json.loads(json.dumps(dict(pipeline or {}), default=str))  # as result.json reads back
        self.model = (
            {"path": str(model_path), "sha256": sha256_of(model_path)}
            if model_path and Path(model_path).is_file()
            else None
        )
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        #: studies whose complete output was already there (set by ``spine_app.inference.run.run_inference``)
        self.skipped: list[dict[str, Any]] = []
        #: inputs that never became a study (set by ``spine_app.inference.run.run_inference``): listed as failed
        self.input_errors: list[dict[str, str]] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def reset(self, engine: Any = None) -> None:
        """Start a run: clean what a killed run left and write this run's (still empty) summary.

        Across processes (torchrun, ``multi_gpu_inference.yaml``) rank 0 cleans and the others wait."""
        self.rows, self.errors = [], []
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rank, world = _rank_and_world()
        if rank == 0:
            remove_stale(self.output_dir)
            self.progress()
        if world > 1:
            import torch.distributed as dist

            dist.barrier()

    def settings(self) -> dict[str, Any]:
        """The settings a study's output depends on besides the model and the films (in result.json;
        a re-run with other settings redoes the study)."""
        return {
            "mask_threshold": self.threshold,
            "damaged_threshold": self.damaged_threshold,
            "decision": self.decision,
            "level_threshold": self.level_threshold,
            "level_neighbour_suppression": self.level_suppression.weight,
            "levels_follow_decision": self.levels_follow_decision,
            "level_shape_check": self.level_shape_check,
            "explain": self.explain,
            "lowest_level": self.lowest_level,
            "nifti": bool(self.nifti),
            "overlays": bool(self.overlays),
            "dicom_out": self.dicom_out,
            "pipeline": self.pipeline,
        }

    def finished(self, entry: Mapping[str, Any]) -> dict[str, Any] | None:
        """The summary row of ``entry``'s complete earlier output in OUT, made with the same model
        (SHA-256), the same films (SHA-256 of each input) and the same settings; None when the study
        must be (re)done. The row's status is ``skipped``."""
        folder = self.output_dir / str(entry.get("study_id"))
        try:
            result = json.loads((folder / "result.json").read_text())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(result, dict)
            or not self.model
            or (result.get("model") or {}).get("sha256") != self.model["sha256"]
        ):
            return None
        if result.get("settings") != self.settings():
            return None
        films = {view: entry.get(f"image_{view.lower()}") for view in VIEWS}
        inputs = result.get("inputs") or {}
        if set(inputs) != {view for view, path in films.items() if path}:
            return None
        for view, item in inputs.items():
            if not Path(films[view]).is_file() or sha256_of(films[view]) != item.get("sha256"):
                return None
        expected = {"result.json"} | {f"{name}.png" for name, c in zip(MASK_NAMES, CHANNEL_VIEW) if c in inputs}
        expected |= {f"overlay_{view}.png" for view in inputs} if self.overlays else set()
        expected |= {f"saliency_{view}.png" for view in inputs} if self.explain else set()
        if self.nifti:
            expected |= {f"{name}.nii.gz" for name, c in zip(MASK_NAMES, CHANNEL_VIEW) if c in inputs}
        if self.dicom_out:
            segs = {f"seg_{view}.dcm" for view in inputs if image_format(Path(films[view])) == "dicom"}
            expected |= segs | ({"report.dcm"} if segs else set())
        if not all((folder / name).is_file() for name in expected):
            return None
        return summary_row(result, entry["study_id"], "skipped", str(folder))

    def run_files(self) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """(summary rows, errors) of the run so far: skipped studies, input errors included."""
        failed = [{"study_id": e["study_id"], "status": "failed", "error": e["error"]} for e in self.input_errors]
        return self.skipped + self.rows + failed, self.input_errors + self.errors

    def progress(self) -> None:
        """Rewrite summary.csv and errors.json with the studies finished so far (a failure is logged:
        the run goes on, and its end reports it). Across processes only rank 0 writes them while the
        run goes on (its own studies); :meth:`finish` merges every rank's."""
        if _rank_and_world()[0] != 0:
            return
        try:
            write_run_files(self.output_dir, *self.run_files())
        except OSError as err:
            logger.warning("%s", err)

    def __call__(self, engine: Any) -> None:
        pred, target = engine.state.output["pred"], engine.state.output["label"]
        for b, study_id in enumerate(target["study_id"]):
            error = (target.get("error") or [""] * len(target["study_id"]))[b]
            if not error:
                try:
                    self.rows.append(self.write_study(study_id, pred, target, b))
                    self.progress()
                    continue
                except OSError as err:  # a full disk, ...
                    error = f"{self.output_dir / study_id}: cannot write ({err.strerror or err})".splitlines()[0]
                except Exception as err:  # noqa: BLE001 - one study's failure must not stop the batch
                    error = f"{self.output_dir / study_id}: {err}".splitlines()[0]
            logger.error("study %s failed: %s", study_id, error)
            self.errors.append({"study_id": study_id, "error": error})
            self.rows.append({"study_id": study_id, "status": "failed", "error": error})
            self.progress()

    def finish(self, engine: Any = None) -> None:
        """Write summary.csv and errors.json for the run (OutputError when they cannot be written).
        Across processes every rank's rows are gathered and rank 0 writes them, in study-id order."""
        rank, world = _rank_and_world()
        if world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, (self.skipped, self.rows, self.errors))
            if rank != 0:
                return
            self.skipped = sorted((r for g in gathered for r in g[0]), key=lambda r: str(r["study_id"]))
            self.rows = sorted((r for g in gathered for r in g[1]), key=lambda r: str(r["study_id"]))
            self.errors = sorted((e for g in gathered for e in g[2]), key=lambda e: str(e["study_id"]))
        write_run_files(self.output_dir, *self.run_files())
        done = sum(row.get("status") == "ok" for row in self.rows)
        logger.warning(
            "inference: %d studies written, %d skipped (already done), %d failed -> %s",
            done,
            len(self.skipped),
            len(self.errors),
            self.output_dir,
        )

    def write_study(self, study_id: str, pred: dict, target: dict, b: int) -> dict[str, Any]:
        """Write one study into a hidden temporary folder, then rename it onto ``OUT/<study_id>``
        (replacing an earlier output of the study); returns its summary row."""
        final = self.output_dir / study_id
        if not study_id or Path(study_id).name != study_id or study_id.startswith("."):
            raise ValueError(f"study id {study_id!r} is not a plain folder name")
        if not replaceable(final):
            raise ValueError(
                "the folder exists and holds files spine-app did not write (not replaced); "
                "move it or choose another output folder"
            )
        staged = hidden_folder(self.output_dir, study_id, PARTIAL)
        staged.mkdir()
        try:
            row = self._write_files(study_id, staged, pred, target, b)
            _hold_for_tests(study_id)
            put_in_place(staged, final)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
        return {**row, "output": str(final)}

    def _explain(self, folder: Path, study_id: str, probability: float, pred: dict, b: int, overlays: list) -> dict:
        """Write the saliency PNGs of study ``b``; returns result.json's ``explanation`` block."""
        from spine_app.explain.study import write_explanation

        views = _explanation_views(pred, b, overlays)
        return write_explanation(folder, views, self.explain, study_id, probability)

    def _write_files(self, study_id: str, folder: Path, pred: dict, target: dict, b: int) -> dict[str, Any]:
        """Write one study's files into ``folder``; returns its summary row."""
        network = float(torch.sigmoid(pred["cls"][b].float()))
        result = self._new_result(study_id, network, target, b)
        spacing = None
        views: list[_WrittenView] = []
        for i, view in enumerate(VIEWS):
            if float(target["present"][b, i]) <= 0:
                result["warnings"].append(
                    f"no {view} view: its masks" + (" and morphometry" if view == "LAT" else "") + " are missing"
                )
                continue
            written = self._write_view(folder, view, pred, target, b, result)
            spacing = FilmGeometry.from_tensor(written.geom).spacing
            views.append(written)
        lat_bodies = next((v.bodies for v in views if v.view == "LAT"), [])
        probability, levels_block = self._decide(result, network, pred, target, b, lat_bodies)
        dicom_films = {v.view: v.source for v in views if v.dicom}  # view -> DICOM source, for the SR
        if dicom_films:
            from spine_app.engines.dicom_out import write_sr

            segs = [folder / f"seg_{view}.dcm" for view in dicom_films]
            write_sr(
                dicom_films,
                segs,
                result,
                lat_bodies,
                folder / "report.dcm",
                self.model_version,
                (self.model or {}).get("sha256"),
            )
            result["dicom_outputs"].append("report.dcm")
        overlays = [(v.view, v.source, v.masks, v.bodies, v.geom) for v in views]
        if self.overlays:
            self._write_overlays(folder, study_id, result, probability, overlays, levels_block, target, b)
        if self.explain and "saliency_ap" in pred:
            result["explanation"] = self._explain(folder, study_id, probability, pred, b, overlays)
        if spacing is None and result["inputs"]:
            result["warnings"].append("pixel spacing unknown: areas and heights are in pixels")
        probabilities = [
            network,
            result["combined_probability"],
            *result["view_probabilities"].values(),
            result.get("levels_probability", 0.0),
        ]
        if not all(math.isfinite(p) for p in probabilities):
            raise ValueError("the network's probabilities are not finite numbers (NaN/inf): broken weights?")
        result = finite_json(result)
        write_json(folder / "result.json", result, strict=True)
        return summary_row(result, study_id, "ok")

    def _new_result(self, study_id: str, network: float, target: dict, b: int) -> dict[str, Any]:
        """result.json before the views are written: the run's settings, the network's probability,
        the study's notes as warnings; the rest is filled view by view and by the decision."""
        return {
            "study_id": study_id,
            "damaged_probability": None,  # the decision's probability (filled by _decide)
            "label": None,
            "threshold": self.damaged_threshold,
            "network_probability": round(network, 4),
            "morphometry_probability": None,
            "view_probabilities": {},
            "mask_threshold": self.threshold,
            "mask_area_px": {},
            "mask_area_mm2": {},
            "morphometry": None,
            "warnings": [n for n in ((target.get("notes") or [""] * (b + 1))[b] or "").split(" | ") if n],
            "inputs": {},
            "model": self.model,
            "settings": self.settings(),
            "process": dict(zip(("rank", "world_size"), _rank_and_world())),
            "bundle_version": self.model_version,
            "spine_app_version": __version__,
        }

    def _write_view(self, folder: Path, view: str, pred: dict, target: dict, b: int, result: dict) -> _WrittenView:
        """One present film: its masks at the original resolution (PNG, NIfTI, DICOM SEG), their
        areas, and on the LAT film the morphometry; ``result`` gets the view's entries."""
        from spine_app.morphometry.measure import measure_lat_film, morphometry_probability, study_fracture_score

        key = view.lower()
        source = target[f"path_{key}"][b]
        result["inputs"][view] = {"path": source, "sha256": sha256_of(source)}
        if view == "LAT" and "lat_mirrored" in pred and float(pred["lat_mirrored"][b]) > 0:
            result["warnings"].append(
                "LAT film faces right (anterior to the right): its masks were drawn on the mirrored film"
            )
        result["view_probabilities"][view] = round(float(torch.sigmoid(pred[f"cls_{key}"][b].float())), 4)
        geom = target[geom_key(view)][b]
        spacing = FilmGeometry.from_tensor(geom).spacing
        channels = [c for c, v in enumerate(CHANNEL_VIEW) if v == view]
        probs = to_original(pred[seg_key(view)][b][channels], geom)  # only this view's channels are resized
        masks = {c: (probs[i] > self.threshold).cpu().numpy() for i, c in enumerate(channels)}
        for c, mask in masks.items():
            name = MASK_NAMES[c]
            write_png(folder / f"{name}.png", mask)
            if self.nifti:
                write_nifti(folder / f"{name}.nii.gz", mask, spacing)
            result["mask_area_px"][name] = int(mask.sum())
            result["mask_area_mm2"][name] = round(float(mask.sum() * spacing[0] * spacing[1]), 1) if spacing else None
        dicom = self.dicom_out and image_format(Path(source)) == "dicom"
        if dicom:
            from spine_app.engines.dicom_out import write_seg

            write_seg(source, masks, view, folder / f"seg_{view}.dcm", self.model_version)
            result.setdefault("dicom_outputs", []).append(f"seg_{view}.dcm")
        bodies = []
        if view == "LAT":
            parted = {MASK_NAMES[c]: m for c, m in masks.items()}
            if PARTING_DISK_KEY in pred:  # the disk the network drew parts the bodies (StudyInferer)
                drawn = to_original(parting_disk(pred, b)[None], geom)[0] > self.threshold
                parted["Lat_Disk_Height"] = drawn.cpu().numpy()
            bodies = measure_lat_film(
                parted,
                spacing or (1.0, 1.0),
                self.lowest_level,
                field_rows=exposed_film_rows(target, b, geom),
            )
            result["morphometry"] = _morphometry_summary(bodies, spacing, self.lowest_level)
            result["morphometry_probability"] = round(morphometry_probability(study_fracture_score(bodies)), 4)
        return _WrittenView(view, source, masks, bodies, geom, dicom)

    def _decide(
        self, result: dict, network: float, pred: dict, target: dict, b: int, lat_bodies: list
    ) -> tuple[float, dict[str, Any] | None]:
        """The decision (:data:`DECISIONS`; a level decision falls back to the network without level
        head output) into ``result``: its probability and label; returns (probability, levels block)."""
        from spine_app.morphometry.measure import combine_probabilities

        combined = combine_probabilities(network, result["morphometry_probability"])
        decision = self.decision
        levels_block = None
        if "level_logits" in pred and float(target["present"][b, 1]) > 0:
            levels_block = level_summary(
                pred,
                b,
                target[geom_key("lat")][b],
                lat_bodies,
                self.level_threshold,
                self.level_suppression,
                self.level_shape_check,
                self.level_pooling,
            )
            result["levels"] = levels_block
            result["levels_probability"] = levels_block["study_probability"]
            if levels_block["unscored"]:
                result["warnings"].append(
                    f"the level head scores at most {INFERENCE_MAX_LEVELS} bodies per LAT film, top to bottom: "
                    f"{', '.join(levels_block['unscored'])} below them are not scored (their morphometry is in 'morphometry')"
                )
        elif decision in ("levels", "levels_network"):
            decision = "network"
            result["warnings"].append(
                "no level head output (no LAT film, or a network without level head): "
                "the network's fused probability decides"
            )
        probability = {"levels": result.get("levels_probability"), "combined": combined}.get(decision, network)
        if decision == "levels_network":
            from spine_app.engines.metrics import levels_and_fused

            probability = levels_and_fused(result["levels_probability"], network)
        result["decision"] = decision
        result["combined_probability"] = round(combined, 4)
        result["damaged_probability"] = round(probability, 4)
        result["label"] = "Damaged" if probability >= self.damaged_threshold else "Normal"
        if levels_block is not None:
            levels_block["follows_decision"] = self.levels_follow_decision
            if self.levels_follow_decision and result["label"] == "Normal":
                hold_back_levels(levels_block)
        return probability, levels_block

    def _write_overlays(
        self,
        folder: Path,
        study_id: str,
        result: dict,
        probability: float,
        overlays: list,
        levels_block: dict[str, Any] | None,
        target: dict,
        b: int,
    ) -> None:
        """overlay_<view>.png: the masks (and on LAT the bodies and flagged levels) on each film."""
        from spine_app.viz.overlay import write_overlay

        known = float(target["label"][b]) if "label" in target else -1.0
        title_end = f" | known label: {CLASS_NAMES[int(known)]}" if known in (0.0, 1.0) else ""
        for view, source, masks, bodies, _ in overlays:
            image, _ = read_image(source)
            title = (
                f"{study_id} {view} | prediction: {result['label']} "
                f"(P(Damaged) {probability:.2f}, threshold {self.damaged_threshold:.2f}){title_end}"
            )
            marks = _suspect_marks(levels_block) if view == "LAT" else ()
            reported = _reported_grades(levels_block) if view == "LAT" else None
            write_overlay(folder / f"overlay_{view}.png", image, masks, title, bodies, marks, reported=reported)


def summary_row(result: dict[str, Any], study_id: str, status: str, output: str | None = None) -> dict[str, Any]:
    """A study's ``summary.csv`` row (:data:`SUMMARY_COLUMNS`) from its result.json content: the
    same row whether the study was just written or skipped as already done."""
    views = result.get("view_probabilities") or {}
    morphometry = result.get("morphometry")
    row = {key: result.get(key) for key in RESULT_COLUMNS}
    row.update(
        study_id=study_id,
        status=status,
        output=output,
        suspected_levels="; ".join(text for _, text in _suspect_marks(result.get("levels"))),
        probability_ap=views.get("AP"),
        probability_lat=views.get("LAT"),
        vertebrae=None if morphometry is None else len(morphometry.get("vertebrae") or []),
        **_graded_columns(result),
    )
    return row


def _graded_columns(result: dict[str, Any]) -> dict[str, Any]:
    """summary.csv's ``max_genant_grade`` and ``graded_levels``: the findings of result.json's
    ``levels`` where the level head scored the film (the flagged levels and their reported grades: none
    in a study the decision labels Normal, as the overlay and the SR), else the morphometry's grades of
    the predicted masks."""
    levels = (result.get("levels") or {}).get("levels")
    if levels:
        flagged = [lv for lv in levels if lv.get("flagged")]
        return {
            "max_genant_grade": max((int(lv["grade"]) for lv in flagged), default=0),
            "graded_levels": "; ".join(f"{_level_text(lv)}: grade {lv['grade']}" for lv in flagged),
        }
    morphometry = result.get("morphometry")
    return {
        "max_genant_grade": None if morphometry is None else morphometry.get("max_grade"),
        "graded_levels": "" if morphometry is None else "; ".join(morphometry.get("fractured_levels") or []),
    }


def level_summary(
    pred: dict,
    b: int,
    geom: torch.Tensor,
    bodies: list,
    threshold: float,
    suppression: NeighbourSuppression = NO_SUPPRESSION,
    shape_check: bool = False,
    pooling: str = "lse",
) -> dict[str, Any]:
    """result.json's ``levels`` block of study ``b``: every body the level head scored, top to bottom.

    Each level: ``number`` (the level head's count, 1 = top of the field), ``name`` (the morphometry
    level name at its centre, when the films are named by ``lowest_level``, else None), ``label``
    (:func:`level_label`: what the overlay and the morphometry call the body), ``centre_px`` on the film,
    ``fracture_probability`` (P(grade >= 1) after the neighbour ``suppression``,
    :mod:`spine_app.metrics.level_suppression`), ``head_probability`` (the level head's own),
    ``flagged`` (``fracture_probability`` at or above ``threshold``), ``left_out`` (with ``shape_check``:
    the level lies on a body whose predicted mask cannot be a vertebral body's, fractured or not,
    :func:`spine_app.morphometry.measure.shape_implausible` on the film's own morphometry: a fragment,
    a blob merged with something beside the column; ``study_probability`` is the network's level
    logits pooled by ``pooling`` without it, so it cannot decide the study on its own: a study the other
    levels leave Normal holds it back with them (:func:`hold_back_levels`), one they make Damaged lists
    it flagged and graded as any other; where every level would be left out, none is), ``grade`` with its
    ``grade_source`` (:func:`spine_app.metrics.levels.reported_grade`: a flagged body's higher of the morphometry's
    grade and the head's), ``grade_head`` (the network's own grade at ``threshold``,
    :func:`spine_app.metrics.levels.graded`: the grade head's where the model has one),
    ``grade_probabilities`` (P(grade 0-3): one minus ``fracture_probability``, then it times
    ``severity_probabilities``) and ``severity_probabilities`` (P(grade 1-3) of a fractured body, the
    grade head's where the model has one; ``grade_head`` is their median on a flagged level), both
    :func:`spine_app.metrics.levels.grade_distribution`, and the
    morphometry of the same body (heights, ratios, ``not_measurable``) where it measured one.
    ``drives_decision``: the flagged levels, or the most suspicious one when none is.
    ``unscored``: where the film has :data:`~spine_app.data.levels.INFERENCE_MAX_LEVELS` levels or more,
    the labels of the measured bodies below the lowest scored one (the level head's cap), else empty.
    """
    from spine_app.metrics.levels import grade_distribution, graded, reported_grade
    from spine_app.morphometry.measure import shape_implausible
    from spine_app.networks.levels import mil_pool

    valid = pred["level_valid"][b] > 0
    logits = pred["level_logits"][b].float()[valid]
    cumulative = torch.sigmoid(logits).cpu().numpy()
    centres = pred["level_centre"][b][valid].float().cpu().numpy()
    suppressed = suppression.probabilities(cumulative[:, 0]) if len(cumulative) else []
    placement = FilmGeometry.from_tensor(geom)
    on_film = [placement.to_film(float(c[0]), float(c[1])) for c in centres]
    on_bodies = [_nearest_body(bodies, film) for film in on_film]
    left_out = [shape_check and body is not None and shape_implausible(body) for body in on_bodies]
    if all(left_out):  # nothing would be left to decide on: every level counts
        left_out = [False] * len(left_out)
    study_logit = pred["cls_levels"][b].float()
    if any(left_out):
        kept = torch.tensor([not out for out in left_out], dtype=logits.dtype)[None]
        study_logit = mil_pool(logits[None, :, 0], kept, pooling)[0]
    levels = []
    scored, lowest = set(), -np.inf  # the bodies the levels lie on, the lowest level's row on the film
    for i, (cum, film, body, probability, out) in enumerate(zip(cumulative, on_film, on_bodies, suppressed, left_out)):
        scored.add(id(body))
        lowest = max(lowest, float(film[0]))
        probability = float(probability)
        at_least = [float(v) for v in cum]  # P(grade >= 1), P(grade >= 2), P(grade >= 3)
        head_grade = graded(at_least, threshold, probability)
        distribution = grade_distribution(at_least, probability)
        flagged = bool(probability >= threshold)
        measured = body is not None and body.not_measurable is None
        grade, source = reported_grade(head_grade, flagged, body.grade if measured else None)
        entry = {
            "number": i + 1,
            "name": body.level if body is not None else None,
            "label": level_label(i + 1, body),
            "centre_px": [round(film[0], 1), round(film[1], 1)],
            "fracture_probability": round(probability, 4),
            "head_probability": round(float(cum[0]), 4),
            "grade": grade,
            "grade_source": source,
            "grade_head": head_grade,
            "grade_probabilities": [round(v, 4) for v in distribution.grades],
            "severity_probabilities": [round(v, 4) for v in distribution.severity],
            "flagged": flagged,
            "held_back": False,
            "left_out": bool(out),
            "morphometry": None
            if body is None
            else {
                "body": body.index + 1,
                "heights": {k: round(float(v), 2) for k, v in body.heights_mm.items()},
                "ratios": {k: round(float(v), 3) for k, v in body.ratios.items()},
                "genant_grade": body.grade,
                "not_measurable": body.not_measurable,
            },
        }
        levels.append(entry)
    unscored = []
    if len(levels) >= INFERENCE_MAX_LEVELS:
        unscored = [body.label for body in bodies if body.centroid_px[0] > lowest and id(body) not in scored]
    flagged = [lv["number"] for lv in levels if lv["flagged"]]
    top_level = _most_suspicious(levels)
    return {
        "method": "level head of the shared network (spine_app.networks.levels), bodies from the predicted LAT masks",
        "level_threshold": threshold,
        "neighbour_suppression": suppression.weight,
        "study_probability": round(float(torch.sigmoid(study_logit)), 4),
        "shape_check": shape_check,
        "numbering": "1 = top-most body of the LAT film",
        "levels": levels,
        "drives_decision": flagged or ([top_level] if top_level is not None else []),
        "unscored": unscored,
    }


def hold_back_levels(levels_block: dict[str, Any]) -> list[int]:
    """Hold back the findings of a study the decision labels Normal: every flagged level of
    ``levels_block`` (:func:`level_summary`) is unflagged, its ``grade`` and ``grade_head`` set to 0
    (``grade_source``: :data:`GRADE_HELD_BACK`) and marked ``held_back``; its probabilities, grade
    distribution and morphometry stay, so a reader still sees how suspicious it was. ``drives_decision``
    becomes the most suspicious level. Returns the numbers of the levels held back.

    Why: the level threshold flags a level at a lower probability than the study decision needs
    (it is chosen to find fractured levels, the decision to separate studies), so a study called
    Normal could list a graded fracture. Held back, the output says one thing: on the benchmark and
    fresh sets and the other fields of view, Normal studies with a graded level fell from 13 to 2 of
    149; on the default framing the fractured levels found and graded exactly stayed within one per
    set, while on thoracic films, where the decision misses 3 of 8 Damaged studies, 4 of 12 found
    levels are held back (docs/results.md, "Level grades follow the study decision")."""
    held = []
    for level in levels_block["levels"]:
        if level["flagged"]:
            level.update(flagged=False, grade=0, grade_head=0, grade_source=GRADE_HELD_BACK, held_back=True)
            held.append(level["number"])
    if held:
        levels_block["drives_decision"] = [_most_suspicious(levels_block["levels"])]
    return held


def _most_suspicious(levels: list[dict[str, Any]]) -> int | None:
    """The number of the level with the highest fracture probability among those the study decision
    counts (not ``left_out``; all of them where every one is), None without levels."""
    counted = [lv for lv in levels if not lv.get("left_out")] or levels
    return max(counted, key=lambda lv: lv["fracture_probability"])["number"] if counted else None


def exposed_film_rows(target: dict, b: int, geom: torch.Tensor) -> tuple[int, int] | None:
    """The rows of study ``b``'s LAT film (original pixels) that show the patient: the exposed field of
    its working-canvas film in the batch (:func:`spine_app.data.levels.exposed_rows`), placed on the
    film by ``geom``; None without the canvas film."""
    film = target.get("image_lat")
    if film is None:
        return None
    field = exposed_rows(film[b, 0].float().cpu().numpy())
    return None if field is None else FilmGeometry.from_tensor(geom).rows_on_film(*field)


def level_label(number: int, body: Any) -> str:
    """A level's name for people, the same as the overlay's and the morphometry's for that body:
    its level name, else ``#k`` with k the morphometry's body number on the film (1 = top-most),
    else ``level <number>`` where the morphometry measured no body there. The level head's
    ``number`` can differ from the body number: where the canvas merges two bodies the film keeps
    apart, the head scores them as one level and counts one less below it."""
    if body is None:
        return f"level {number}"
    return body.label


def _nearest_body(bodies: list, centre: tuple[float, float]) -> Any:
    """The morphometry body whose centroid is nearest ``centre`` (film px), within half its height."""
    match = nearest_matches(
        [centre], [b.centroid_px for b in bodies], lambda _i, j: 0.6 * math.sqrt(max(bodies[j].area_px, 1))
    )[0]
    return None if match is None else bodies[match]


def _level_text(level: dict[str, Any]) -> str:
    """A result.json level's name in the overlay, ``summary.csv`` and the marks: its ``label``, else its
    ``name``, else ``level <number>`` (result.json before 0.6.0 has no label)."""
    return level.get("label") or level["name"] or f"level {level['number']}"


def _suspect_marks(levels_block: dict[str, Any] | None) -> list[tuple[tuple[float, float], str]]:
    """Overlay marks of the levels that drive the decision: (centre on the film, label)."""
    if not levels_block:
        return []
    by_number = {lv["number"]: lv for lv in levels_block["levels"]}
    marks = []
    for number in levels_block["drives_decision"]:
        lv = by_number[number]
        label = _level_text(lv)
        marks.append((tuple(lv["centre_px"]), f"{label} P(fracture) {lv['fracture_probability']:.2f} G{lv['grade']}"))
    return marks


def _reported_grades(levels_block: dict[str, Any] | None) -> dict[int, int] | None:
    """Morphometry body index -> the grade result.json's levels report for it (None without levels):
    what the LAT overlay labels each body with (:func:`spine_app.metrics.levels.level_per_body`)."""
    if not levels_block:
        return None
    return {body - 1: int(level["grade"]) for body, level in level_per_body(levels_block["levels"]).items()}


def _explanation_views(pred: dict, b: int, overlays: list) -> dict:
    """view -> ViewExplanation (film, saliency at the film's size, vertebra centres) of study ``b``."""
    from spine_app.explain.study import ViewExplanation, ap_vertebra_centres

    lat_levels: list[str] = []
    views = {}
    for view, source, masks, bodies, geom in sorted(overlays, key=lambda o: o[0] != "LAT"):  # LAT first
        image, _ = read_image(source)
        saliency = resize_to_original(pred[f"saliency_{view.lower()}"][b], geom)[0].clamp(0, 1).cpu().numpy()
        if view == "LAT":
            centres = {body.label: body.centroid_px for body in bodies}
            lat_levels = list(centres)
        else:
            centres = ap_vertebra_centres(masks[MASK_NAMES.index("Ap_Vertebra")], lat_levels)
        views[view] = ViewExplanation(image, saliency, centres)
    return views


def _morphometry_summary(
    bodies: list, spacing: tuple[float, float] | None, lowest_level: str | None = None
) -> dict[str, Any]:
    """The result.json ``morphometry`` block of one LAT image."""
    graded = [b for b in bodies if b.grade > 0]
    units = "mm" if spacing else "px"
    return {
        "units": units,
        "method": "quantitative morphometry, Genant thresholds 20/25/40 % (spine_app.morphometry.measure)",
        "level_naming": (
            f"counted up from {lowest_level} (lowest_level: the lowest body on the film)"
            if lowest_level
            else "numbered from the top of the field (#1 = top-most body); set lowest_level when "
            "the films show which vertebra is the lowest"
        ),
        "not_measurable": [f"{b.label}: {b.not_measurable}" for b in bodies if b.not_measurable],
        "vertebrae": [b.to_json(units) for b in bodies],
        "max_grade": max((b.grade for b in bodies), default=0),
        "fractured_levels": [f"{b.label}: grade {b.grade} {b.deformity}" for b in graded],
        "max_height_reduction": round(float(max((b.reduction for b in bodies if b.grade >= 0), default=0.0)), 3),
    }
