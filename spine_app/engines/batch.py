"""``prepare_batch`` for MONAI's SupervisedTrainer/Evaluator: a collated study batch -> (inputs, targets)."""

from __future__ import annotations

from typing import Any

import torch

INPUT_KEYS = ("ap", "lat", "present")
TARGET_KEYS = ("seg_ap", "seg_lat", "avail_ap", "avail_lat", "label", "present", "geom_ap", "geom_lat")
#: optional: the reference level boxes (training; spine_app.data.levels.LevelBoxesd) go to the network
LEVEL_INPUT_KEYS = ("level_centre", "level_axis", "level_size", "level_valid")
#: optional targets: the boxes' grades and types, and the level map (per-level scores in evaluation)
LEVEL_TARGET_KEYS = ("level_grade", "level_kind", "level_valid", "levels_lat")


def plain_tensor(value: Any) -> torch.Tensor:
    """``value`` as a plain ``torch.Tensor``: a MONAI ``MetaTensor`` drops its metadata (nothing after
    the transforms reads it, and its per-operation dispatch makes a CPU training step about 1.4x
    slower: docs/benchmarks.md), anything else goes through ``torch.as_tensor``."""
    from monai.data import MetaTensor

    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


def prepare_study_batch(
    batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Inputs {ap, lat, present} and targets {seg_*, avail_*, label, present, geom_*} on ``device``, as
    plain tensors (:func:`plain_tensor`); the level keys (:data:`LEVEL_INPUT_KEYS`, :data:`LEVEL_TARGET_KEYS`) where the batch has them."""

    def move(key: str) -> torch.Tensor:
        return plain_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking, **kwargs)

    inputs = {k: move(k) for k in INPUT_KEYS}
    targets = {k: move(k) for k in TARGET_KEYS}
    inputs.update({k: move(k) for k in LEVEL_INPUT_KEYS if k in batchdata})
    targets.update({k: move(k) for k in LEVEL_TARGET_KEYS if k in batchdata})
    targets["image_ap"], targets["image_lat"] = inputs["ap"], inputs["lat"]  # for example overlays in reports
    targets["study_id"] = list(batchdata.get("study_id", []))
    for key in ("path_ap", "path_lat", "error", "notes"):  # source files, load errors and notes, for the writer
        targets[key] = list(batchdata.get(key, [""] * len(targets["study_id"])))
    return inputs, targets


def output_loss(output: dict[str, Any]) -> float:
    """The iteration loss from a (non-decollated) trainer output, for StatsHandler/TensorBoard."""
    return float(output["loss"].detach())
