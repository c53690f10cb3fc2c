"""``prepare_batch`` for MONAI's SupervisedTrainer/Evaluator: a collated study batch -> (inputs, targets)."""

from __future__ import annotations

from typing import Any, TypedDict

import torch

from spine_app.channels import VIEW_KEYS, avail_key, geom_key, seg_key
from spine_app.data.levels import trim_levels

INPUT_KEYS = (*VIEW_KEYS, "present")
TARGET_KEYS = (*map(seg_key, VIEW_KEYS), *map(avail_key, VIEW_KEYS), "label", "present", *map(geom_key, VIEW_KEYS))
#: optional: the reference level boxes (training; spine_app.data.levels.LevelBoxesd) go to the network
LEVEL_INPUT_KEYS = ("level_centre", "level_axis", "level_size", "level_valid")
#: optional targets: the boxes' grades and types, and the level map (per-level scores in evaluation)
LEVEL_TARGET_KEYS = ("level_grade", "level_kind", "level_valid", "levels_lat")


class _StudyInputs(TypedDict):
    ap: torch.Tensor  # (B, 1, H, W) AP film on the canvas (zeros where absent)
    lat: torch.Tensor  # (B, 1, H, W) LAT film
    present: torch.Tensor  # (B, 2) 1 where the AP / LAT film exists


class StudyInputs(_StudyInputs, total=False):
    """The network's inputs of a prepared study batch (:func:`prepare_study_batch`); the level boxes
    (:data:`LEVEL_INPUT_KEYS`) only where the batch has them (training)."""

    level_centre: torch.Tensor
    level_axis: torch.Tensor
    level_size: torch.Tensor
    level_valid: torch.Tensor


class _StudyTargets(TypedDict):
    seg_ap: torch.Tensor  # (B, 8, H, W) truth masks, all eight channels (seg_key("ap"))
    seg_lat: torch.Tensor
    avail_ap: torch.Tensor  # (B, 8) 1 where the channel's truth exists on that view (avail_key)
    avail_lat: torch.Tensor
    label: torch.Tensor  # (B,) 0/1, -1 unlabelled
    present: torch.Tensor
    geom_ap: torch.Tensor  # (B, FilmGeometry.FIELDS) canvas <-> film (geom_key)
    geom_lat: torch.Tensor
    image_ap: torch.Tensor  # the inputs' films again, for report overlays
    image_lat: torch.Tensor
    study_id: list[str]
    path_ap: list[str]  # source files ("" where absent), load errors and notes, for the writer
    path_lat: list[str]
    error: list[str]
    notes: list[str]


class StudyTargets(_StudyTargets, total=False):
    """The targets of a prepared study batch; the level keys (:data:`LEVEL_TARGET_KEYS`) only where
    the batch has them."""

    level_grade: torch.Tensor
    level_kind: torch.Tensor
    level_valid: torch.Tensor
    levels_lat: torch.Tensor


def plain_tensor(value: Any) -> torch.Tensor:
    """``value`` as a plain ``torch.Tensor``: a MONAI ``MetaTensor`` drops its metadata (nothing after
    the transforms reads it, and its per-operation dispatch makes a CPU training step about 1.4x
    slower: docs/benchmarks.md), anything else goes through ``torch.as_tensor``."""
    from monai.data import MetaTensor

    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


def prepare_study_batch(
    batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[StudyInputs, StudyTargets]:
    """Inputs {ap, lat, present} and targets {seg_*, avail_*, label, present, geom_*} on ``device``, as
    plain tensors (:func:`plain_tensor`); the level keys (:data:`LEVEL_INPUT_KEYS`, :data:`LEVEL_TARGET_KEYS`) where the batch has them,
    cut to the batch's longest film (:func:`spine_app.data.levels.trim_levels`)."""

    def move(key: str) -> torch.Tensor:
        return plain_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking, **kwargs)

    inputs = {k: move(k) for k in INPUT_KEYS}
    targets = {k: move(k) for k in TARGET_KEYS}
    inputs.update({k: move(k) for k in LEVEL_INPUT_KEYS if k in batchdata})
    targets.update({k: move(k) for k in LEVEL_TARGET_KEYS if k in batchdata})
    inputs, targets = trim_levels(inputs), trim_levels(targets)  # the boxes and their grades cut alike
    targets["image_ap"], targets["image_lat"] = inputs["ap"], inputs["lat"]  # for example overlays in reports
    targets["study_id"] = list(batchdata.get("study_id", []))
    for key in ("path_ap", "path_lat", "error", "notes"):  # source files, load errors and notes, for the writer
        targets[key] = list(batchdata.get(key, [""] * len(targets["study_id"])))
    return inputs, targets


def output_loss(output: dict[str, Any]) -> float:
    """The iteration loss from a (non-decollated) trainer output, for StatsHandler/TensorBoard."""
    return float(output["loss"].detach())
