"""Inference output: each study's masks at the original resolution, overlays, morphometry and a
result.json; a run-level summary.csv and errors.json.

For a study ``S`` the handler writes into ``OUT/S/``:

- ``<MaskName>.png`` (0/255, the names of the input layout, so predictions can be re-imported as
  labels and corrected) for the channels of each present view, and ``<MaskName>.nii.gz`` with the
  pixel spacing when ``nifti`` is on;
- ``overlay_AP.png`` / ``overlay_LAT.png``: masks on the radiograph with a legend; the LAT overlay
  labels each vertebra with its level and Genant grade;
- ``result.json``: Damaged probability (by default the network's fused probability; with
  ``decision="combined"`` its noisy-OR with the morphometry's, see
  :func:`spine_app.morphometry.combine_probabilities`; all three are recorded, with the AP-only /
  LAT-only network probabilities), label and the threshold used,
  per-mask area (px, mm²), per-vertebra morphometry (:mod:`spine_app.morphometry`), model file and
  versions, and the SHA-256 of each input file.

At the end of the run ``OUT/summary.csv`` has one row per study (failed ones too) and
``OUT/errors.json`` lists each failed study with its reason. Every file is written to a temporary
name and renamed, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from spine_app import __version__
from spine_app.channels import CHANNEL_VIEW, MASK_NAMES
from spine_app.data.io import read_image, write_atomic, write_nifti, write_png
from spine_app.data.study_transforms import fit_geometry

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "study_id", "status", "damaged_probability", "label", "threshold", "network_probability",
    "morphometry_probability", "probability_ap", "probability_lat",
    "vertebrae", "max_genant_grade", "graded_levels", "output", "error",
)  # fmt: skip


def to_original(logits: torch.Tensor, geom: torch.Tensor) -> torch.Tensor:
    """Working-canvas logits (C, H, W) -> probabilities (C, rows, cols) of the original image.

    The crop is recomputed with the same ``fit_geometry`` that placed the image on the canvas.
    """
    rows, cols = int(geom[0]), int(geom[1])
    _, height, width, top, left = fit_geometry((rows, cols), logits.shape[-2:])
    crop = logits[:, top : top + height, left : left + width]
    resized = F.interpolate(crop[None].float(), size=(rows, cols), mode="bilinear", align_corners=False)[0]
    return torch.sigmoid(resized)


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, payload: Any) -> Path:
    """Pretty JSON, atomically."""
    text = json.dumps(payload, indent=2)
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_run_files(output_dir: str | Path, rows: list[dict[str, Any]], errors: list[dict[str, str]]) -> None:
    """``summary.csv`` (one row per study, SUMMARY_COLUMNS) and ``errors.json`` of a run, atomically."""
    buffer = io.StringIO()
    table = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    table.writeheader()
    table.writerows(rows)
    text = buffer.getvalue()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(output_dir) / "summary.csv", lambda tmp: tmp.write_text(text))
    write_json(Path(output_dir) / "errors.json", errors)


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
        decision: "network" (the fused network probability decides) or "combined" (its noisy-OR
            with the morphometry probability).
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
        lowest_level: str | None = "L5",
        decision: str = "network",
    ) -> None:
        if decision not in ("network", "combined"):
            raise ValueError(f"decision must be 'network' or 'combined', got {decision!r}")
        self.decision = decision
        self.output_dir = Path(output_dir)
        self.threshold, self.damaged_threshold = float(threshold), float(damaged_threshold)
        self.model_version, self.nifti, self.overlays, self.lowest_level = model_version, nifti, overlays, lowest_level
        self.model = (
            {"path": str(model_path), "sha256": sha256_of(model_path)}
            if model_path and Path(model_path).is_file()
            else None
        )
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def reset(self, engine: Any = None) -> None:
        self.rows, self.errors = [], []

    def __call__(self, engine: Any) -> None:
        pred, target = engine.state.output["pred"], engine.state.output["label"]
        for b, study_id in enumerate(target["study_id"]):
            error = (target.get("error") or [""] * len(target["study_id"]))[b]
            if not error:
                try:
                    self.rows.append(self.write_study(study_id, pred, target, b))
                    continue
                except Exception as err:  # noqa: BLE001 - one study's failure must not stop the batch
                    error = f"{self.output_dir / study_id}: {err}".splitlines()[0]
            logger.error("study %s failed: %s", study_id, error)
            self.errors.append({"study_id": study_id, "error": error})
            self.rows.append({"study_id": study_id, "status": "failed", "error": error})

    def finish(self, engine: Any = None) -> None:
        """Write summary.csv and errors.json for the run."""
        write_run_files(self.output_dir, self.rows, self.errors)
        done = sum(row.get("status") == "ok" for row in self.rows)
        logger.warning("inference: %d studies written, %d failed -> %s", done, len(self.errors), self.output_dir)

    def write_study(self, study_id: str, pred: dict, target: dict, b: int) -> dict[str, Any]:
        """Write one study's files; returns its summary row."""
        from spine_app.morphometry import (
            combine_probabilities,
            measure_lat_film,
            morphometry_probability,
            study_fracture_score,
        )

        folder = self.output_dir / study_id
        folder.mkdir(parents=True, exist_ok=True)
        network = float(torch.sigmoid(pred["cls"][b].float()))
        result: dict[str, Any] = {
            "study_id": study_id,
            "damaged_probability": None,  # the decision's probability (filled below)
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
            "bundle_version": self.model_version,
            "spine_app_version": __version__,
        }
        row: dict[str, Any] = {"study_id": study_id, "status": "ok", "output": str(folder)}
        spacing = None
        overlays: list[tuple[str, str, dict, list]] = []
        for i, view in enumerate(("AP", "LAT")):
            key = view.lower()
            if float(target["present"][b, i]) <= 0:
                result["warnings"].append(
                    f"no {view} view: its masks" + (" and morphometry" if view == "LAT" else "") + " are missing"
                )
                continue
            source = target[f"path_{key}"][b]
            result["inputs"][view] = {"path": source, "sha256": sha256_of(source)}
            result["view_probabilities"][view] = round(float(torch.sigmoid(pred[f"cls_{key}"][b].float())), 4)
            geom = target[f"geom_{key}"][b]
            spacing = (float(geom[5]), float(geom[6])) if float(geom[5]) > 0 else None
            channels = [c for c, v in enumerate(CHANNEL_VIEW) if v == view]
            probs = to_original(pred[f"seg_{key}"][b][channels], geom)  # only this view's channels are resized
            masks = {c: (probs[i] > self.threshold).cpu().numpy() for i, c in enumerate(channels)}
            for c, mask in masks.items():
                name = MASK_NAMES[c]
                write_png(folder / f"{name}.png", mask)
                if self.nifti:
                    write_nifti(folder / f"{name}.nii.gz", mask, spacing)
                result["mask_area_px"][name] = int(mask.sum())
                result["mask_area_mm2"][name] = (
                    round(float(mask.sum() * spacing[0] * spacing[1]), 1) if spacing else None
                )
            bodies = []
            if view == "LAT":
                bodies = measure_lat_film({MASK_NAMES[c]: m for c, m in masks.items()}, spacing or (1.0, 1.0),
                                          self.lowest_level)  # fmt: skip
                result["morphometry"] = _morphometry_summary(bodies, spacing)
                result["morphometry_probability"] = round(morphometry_probability(study_fracture_score(bodies)), 4)
                row.update(vertebrae=len(bodies), max_genant_grade=result["morphometry"]["max_grade"],
                           graded_levels="; ".join(result["morphometry"]["fractured_levels"]))  # fmt: skip
            overlays.append((view, source, masks, bodies))
        combined = combine_probabilities(network, result["morphometry_probability"])
        probability = combined if self.decision == "combined" else network
        result["decision"] = self.decision
        result["combined_probability"] = round(combined, 4)
        result["damaged_probability"] = round(probability, 4)
        result["label"] = "Damaged" if probability >= self.damaged_threshold else "Normal"
        if self.overlays:
            from spine_app.viz.overlay import write_overlay

            for view, source, masks, bodies in overlays:
                image, _ = read_image(source)
                title = f"{study_id} {view}: Damaged p={probability:.2f} ({result['label']})"
                write_overlay(folder / f"overlay_{view}.png", image, masks, title, bodies)
        if spacing is None and result["inputs"]:
            result["warnings"].append("pixel spacing unknown: areas and heights are in pixels")
        write_json(folder / "result.json", result)
        row.update(damaged_probability=result["damaged_probability"], label=result["label"], threshold=self.damaged_threshold,
                   network_probability=result["network_probability"], morphometry_probability=result["morphometry_probability"],
                   probability_ap=result["view_probabilities"].get("AP"), probability_lat=result["view_probabilities"].get("LAT"))  # fmt: skip
        return row


def _morphometry_summary(bodies: list, spacing: tuple[float, float] | None) -> dict[str, Any]:
    """The result.json ``morphometry`` block of one LAT image."""
    graded = [b for b in bodies if b.grade > 0]
    return {
        "units": "mm" if spacing else "px",
        "method": "quantitative morphometry, Genant thresholds 20/25/40 % (spine_app.morphometry)",
        "vertebrae": [b.to_json() for b in bodies],
        "max_grade": max((b.grade for b in bodies), default=0),
        "fractured_levels": [f"{b.level or '#' + str(b.index + 1)}: grade {b.grade} {b.deformity}" for b in graded],
        "max_height_reduction": round(float(max((b.reduction for b in bodies if b.grade >= 0), default=0.0)), 3),
    }
