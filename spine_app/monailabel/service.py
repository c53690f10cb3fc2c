"""What the MONAI Label tasks compute, without MONAI Label: one study through the bundle's own
inference config (``spine_app.inference.run.run_inference``, the code path of ``spine-app infer`` and of
``python -m monai.bundle run --config_file bundle/configs/inference.yaml``), read back as masks and
``result.json``. Results therefore match ``spine-app infer`` on the same files exactly.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spine_app.channels import MASK_NAMES, channels_of_view
from spine_app.data.io import read_mask
from spine_app.engines.dataset import study_entry
from spine_app.monailabel.encoding import encode_masks


class StudyFailed(ValueError):
    """A study the bundle could not run (unreadable film, wrong view ...): one line naming the file."""


@dataclass
class StudyPrediction:
    """The bundle's answer for one study: ``result`` is its result.json (probabilities, label,
    threshold, morphometry, versions); ``masks`` maps channel -> bool (rows, cols) at the film's size."""

    result: dict[str, Any]
    masks: dict[int, np.ndarray]


def predict_study(
    images: dict[str, str | Path], study_id: str, model: str | Path, bundle_dir: str | Path, device: str = "auto"
) -> StudyPrediction:
    """Run the bundle on one study ("AP"/"LAT" -> film path; one view is enough)."""
    from spine_app.inference.run import run_inference

    with tempfile.TemporaryDirectory(prefix="spine-monailabel-") as tmp:
        outcome = run_inference(
            [study_entry(study_id, images)],
            tmp,
            model=model,
            device=device,
            bundle_dir=bundle_dir,
            **{"handlers#0#overlays": False},
        )
        if outcome["errors"]:
            raise StudyFailed(outcome["errors"][0]["error"])
        folder = Path(tmp) / study_id
        result = json.loads((folder / "result.json").read_text())
        masks = {c: read_mask(folder / f"{MASK_NAMES[c]}.png") for view in images for c in channels_of_view(view)}
    return StudyPrediction(result, masks)


def segmentation_label(prediction: StudyPrediction, view: str) -> np.ndarray:
    """The ``view`` film's masks as one uint8 label image (see :mod:`spine_app.monailabel.encoding`)."""
    return encode_masks({c: prediction.masks[c] for c in channels_of_view(view)})


def classification_json(prediction: StudyPrediction) -> dict[str, Any]:
    """MONAI Label's classification answer ({"prediction": [{idx, label, score}]}) plus the bundle's
    decision (label, threshold, which views were used, per-view probabilities, the suspected
    vertebrae of the level head, versions)."""
    result = prediction.result
    damaged = float(result["damaged_probability"])
    return {
        "prediction": [
            {"idx": 0, "label": "Normal", "score": round(1.0 - damaged, 4)},
            {"idx": 1, "label": "Damaged", "score": round(damaged, 4)},
        ],
        "label": result["label"],
        "threshold": result["threshold"],
        "decision": result.get("decision"),
        "views": sorted(result.get("inputs", {})),
        "view_probabilities": result.get("view_probabilities", {}),
        "suspected_levels": [
            {key: lv.get(key) for key in ("number", "name", "label", "centre_px", "fracture_probability", "grade")}
            for lv in (result.get("levels") or {}).get("levels", [])
            if lv["number"] in (result.get("levels") or {}).get("drives_decision", [])
        ],
        "bundle_version": result.get("bundle_version"),
        "spine_app_version": result.get("spine_app_version"),
    }


__all__ = ["StudyFailed", "StudyPrediction", "classification_json", "predict_study", "segmentation_label"]
