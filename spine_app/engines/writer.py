"""Inference output: each study's masks at the original resolution and a result.json.

For a study ``S`` the handler writes ``OUT/S/<MaskName>.png`` (0/255, the names of the input layout,
so predictions can be re-imported as labels and corrected) for the channels of each present view,
and ``OUT/S/result.json`` (Damaged probability fused / AP-only / LAT-only, per-mask area in px and
mm², versions). Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from spine_app import __version__
from spine_app.channels import CHANNEL_VIEW, MASK_NAMES
from spine_app.data.io import write_atomic, write_png
from spine_app.data.study_transforms import fit_geometry

logger = logging.getLogger(__name__)


def to_original(logits: torch.Tensor, geom: torch.Tensor) -> torch.Tensor:
    """Working-canvas logits (C, H, W) -> probabilities (C, rows, cols) of the original image.

    The crop is recomputed with the same ``fit_geometry`` that placed the image on the canvas.
    """
    rows, cols = int(geom[0]), int(geom[1])
    _, height, width, top, left = fit_geometry((rows, cols), logits.shape[-2:])
    crop = logits[:, top : top + height, left : left + width]
    resized = F.interpolate(crop[None].float(), size=(rows, cols), mode="bilinear", align_corners=False)[0]
    return torch.sigmoid(resized)


class StudyPredictionWriter:
    """Ignite handler (evaluator, ITERATION_COMPLETED) that writes every study of the batch.

    Args:
        output_dir: OUT folder.
        threshold: mask probability threshold.
        model_version: bundle version recorded in result.json.
    """

    def __init__(self, output_dir: str, threshold: float = 0.5, model_version: str = "unknown") -> None:
        self.output_dir, self.threshold, self.model_version = Path(output_dir), threshold, model_version

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        pred, target = engine.state.output["pred"], engine.state.output["label"]
        for b, study_id in enumerate(target["study_id"]):
            folder = self.output_dir / study_id
            folder.mkdir(parents=True, exist_ok=True)
            result: dict[str, Any] = {
                "study_id": study_id,
                "damaged_probability": float(torch.sigmoid(pred["cls"][b].float())),
                "view_probabilities": {},
                "mask_area_px": {},
                "mask_area_mm2": {},
                "spine_app_version": __version__,
                "bundle_version": self.model_version,
            }
            for i, view in enumerate(("AP", "LAT")):
                if float(target["present"][b, i]) <= 0:
                    continue
                key = view.lower()
                result["view_probabilities"][view] = float(torch.sigmoid(pred[f"cls_{key}"][b].float()))
                geom = target[f"geom_{key}"][b]
                probs = to_original(pred[f"seg_{key}"][b], geom)
                pixel_mm2 = float(geom[5] * geom[6])
                for c, (name, channel_view) in enumerate(zip(MASK_NAMES, CHANNEL_VIEW)):
                    if channel_view != view:
                        continue
                    mask = (probs[c] > self.threshold).cpu().numpy()
                    write_png(folder / f"{name}.png", mask)
                    result["mask_area_px"][name] = int(mask.sum())
                    result["mask_area_mm2"][name] = float(mask.sum() * pixel_mm2) if pixel_mm2 > 0 else None
            text = json.dumps(result, indent=2)
            write_atomic(folder / "result.json", lambda tmp, text=text: tmp.write_text(text))
