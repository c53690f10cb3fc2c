"""Multi-task loss: masked per-channel Dice + BCE for the eight masks, BCE for Normal/Damaged.

A channel that is not annotated for an image (the other view's channels, a missing mask, a missing
view) is *unknown*: it is left out of the average, so it contributes exactly zero gradient.
"""

from __future__ import annotations

import torch
from monai.losses import SoftclDiceLoss
from torch import nn
from torch.nn import functional as F

from spine_app.channels import CHANNEL_VIEW, LINE_CHANNELS, MASK_NAMES, VIEW_KEYS, avail_key, seg_key


def cumulative_targets(grade: torch.Tensor, grades: int = 3) -> torch.Tensor:
    """(...,) Genant grades 0-3 -> (..., 3) ordinal targets [grade >= 1, >= 2, >= 3] of the level head."""
    thresholds = torch.arange(1, grades + 1, device=grade.device)
    return (grade[..., None] >= thresholds).to(torch.float32)


def masked_dice_bce(
    logits: torch.Tensor, target: torch.Tensor, available: torch.Tensor, smooth: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft Dice loss, BCE) averaged over the available (image, channel) pairs only.

    Args:
        logits: (B, C, H, W) mask logits.
        target: (B, C, H, W) targets in [0, 1] (soft after resizing is fine).
        available: (B, C) 1 where the channel is annotated for that image, else 0.

    Returns:
        two scalars; both are 0 (still attached to the graph) when nothing is available.
    """
    weight = available.to(logits.dtype)
    prob = torch.sigmoid(logits)
    dims = (2, 3)
    intersection = (prob * target).sum(dims)
    dice = 1.0 - (2.0 * intersection + smooth) / (prob.sum(dims) + target.sum(dims) + smooth)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dims)
    count = weight.sum().clamp(min=1.0)
    return (dice * weight).sum() / count, (bce * weight).sum() / count


class MultiTaskLoss(nn.Module):
    """Weighted sum of the segmentation loss of both views and the classification loss.

    ``forward(pred, target)`` takes the network's study output (``seg_ap``, ``seg_lat``, ``cls``,
    ``cls_ap``, ``cls_lat``) and the batch targets (``seg_ap``, ``seg_lat`` (B, 8, H, W), ``avail_ap``,
    ``avail_lat`` (B, 8), ``label`` (B,), ``present`` (B, 2)).

    Args:
        seg_weight, cls_weight: task weights.
        dice_weight, bce_weight: weights inside the segmentation loss.
        line_weight: extra weight on the two thin line channels (their Dice is harder to move).
        view_cls_weight: weight of the single-view logits' BCE relative to the fused one.
        line_cldice_weight: weight of an extra soft-clDice term (Shit et al. 2021) on the line
            channels; 0 disables it (the measured default, see docs/results.md).
        level_weight: weight of the per-level loss (BCE of the cumulative grade logits on the levels
            whose grade is known: ``level_grade`` >= 0 where ``level_valid``).
        level_positive_weight: weight of a fractured level against a normal one in that loss
            (about one body in ten is fractured in a Damaged study).
        level_study_weight: weight of the BCE of the study logit pooled from the levels
            (``cls_levels``) against the study label: multiple-instance learning, the only level
            signal when a dataset has study labels alone.
    """

    def __init__(
        self,
        seg_weight: float = 1.0,
        cls_weight: float = 0.5,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        line_weight: float = 1.0,
        view_cls_weight: float = 0.5,
        line_cldice_weight: float = 0.0,
        level_weight: float = 1.0,
        level_positive_weight: float = 3.0,
        level_study_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self.level_weight, self.level_positive_weight = level_weight, level_positive_weight
        self.level_study_weight = level_study_weight
        self.line_cldice_weight = line_cldice_weight
        self.cldice = SoftclDiceLoss(iter_=3, sigmoid=True, reduction="none") if line_cldice_weight > 0 else None
        self.seg_weight, self.cls_weight = seg_weight, cls_weight
        self.dice_weight, self.bce_weight = dice_weight, bce_weight
        self.view_cls_weight = view_cls_weight
        channel_weight = torch.ones(len(MASK_NAMES))
        for name in LINE_CHANNELS:
            channel_weight[MASK_NAMES.index(name)] = line_weight
        self.register_buffer("channel_weight", channel_weight)
        self.last: dict[str, float] = {}

    def forward(self, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        seg = pred[seg_key("ap")].new_zeros(())
        for view in VIEW_KEYS:
            available = target[avail_key(view)] * self.channel_weight.to(target[avail_key(view)].device)
            dice, bce = masked_dice_bce(
                pred[seg_key(view)], target[seg_key(view)].to(pred[seg_key(view)].dtype), available
            )
            seg = seg + self.dice_weight * dice + self.bce_weight * bce
        if self.cldice is not None:
            seg = seg + self.line_cldice_weight * self._line_cldice(pred, target)
        label = target["label"].to(pred["cls"].dtype)
        known = (label >= 0).to(label.dtype)  # label -1: class unknown (masks only), no classification term
        label = label.clamp(min=0.0)
        per_study = F.binary_cross_entropy_with_logits(pred["cls"], label, reduction="none")
        cls = (per_study * known).sum() / known.sum().clamp(min=1.0)
        present = target["present"].to(label.dtype)
        for i, view in enumerate(VIEW_KEYS):
            per_study = F.binary_cross_entropy_with_logits(pred[f"cls_{view}"], label, reduction="none")
            weight = present[:, i] * known
            cls = cls + self.view_cls_weight * (per_study * weight).sum() / weight.sum().clamp(min=1.0)
        total = self.seg_weight * seg + self.cls_weight * cls
        self.last = {"seg": float(seg.detach()), "cls": float(cls.detach())}
        if "level_logits" in pred:
            level = self.level_loss(pred, target, label, known * present[:, 1])
            total = total + level
            self.last["level"] = float(level.detach())
        return total

    def level_loss(
        self, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor], label: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """Per-level cumulative BCE on the known levels + the pooled study BCE: ``pred`` with
        ``level_logits`` (B, L, 3) and ``cls_levels`` (B,), ``target`` with ``level_valid`` and
        ``level_grade`` (B, L), ``label`` (B,) the study labels in {0, 1}, ``weight`` (B,) 1 for
        labelled studies with a LAT film (also used alone by the level refit,
        :mod:`spine_app.engines.level_refit`)."""
        logits = pred["level_logits"].float()
        valid = target["level_valid"].to(logits.dtype)
        grade = target["level_grade"].to(logits.device)
        known = valid * (grade >= 0).to(logits.dtype)
        targets = cumulative_targets(grade.clamp(min=0))
        per_level = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=-1)
        level_w = known * (1.0 + (self.level_positive_weight - 1.0) * (grade > 0).to(logits.dtype))
        level = (per_level * level_w).sum() / level_w.sum().clamp(min=1.0)
        has_levels = weight * (valid.sum(dim=1) > 0).to(logits.dtype)
        pooled = F.binary_cross_entropy_with_logits(pred["cls_levels"].float(), label.float(), reduction="none")
        study = (pooled * has_levels).sum() / has_levels.sum().clamp(min=1.0)
        return self.level_weight * level + self.level_study_weight * study

    def _line_cldice(self, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        """Soft-clDice loss of the line channels, averaged over the images where they are annotated."""
        total = pred[seg_key("lat")].new_zeros(())
        for name in LINE_CHANNELS:
            c, view = MASK_NAMES.index(name), CHANNEL_VIEW[MASK_NAMES.index(name)]
            available = target[avail_key(view)][:, c].to(total.dtype)
            per_image = self.cldice(
                pred[seg_key(view)][:, c : c + 1], target[seg_key(view)][:, c : c + 1].to(total.dtype)
            )
            total = total + (per_image.reshape(-1) * available).sum() / available.sum().clamp(min=1.0)
        return total / len(LINE_CHANNELS)
