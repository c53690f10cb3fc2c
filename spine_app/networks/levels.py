"""The level head: a fracture score and a Genant grade for every vertebral body of a lateral film.

Each body is given as an oriented square box (:class:`spine_app.data.levels.LevelBoxes`, padded to
a fixed count per film). The head samples a ``roi`` x ``roi`` patch of the shared network's
full-resolution decoder features, the film and the vertebra/disk probabilities inside the box,
turned so the column runs top to bottom (``torch.nn.functional.grid_sample``: ROI pooling without
torchvision), plus a coarse patch of the deep encoder features for context, and returns three
*cumulative* logits per level: P(grade >= 1), P(grade >= 2), P(grade >= 3) (ordinal regression;
the first is the level's fracture logit).

:func:`mil_pool` turns level logits into a study logit (max, log-sum-exp or noisy-OR over the
film's real levels): the study decision built from levels, and the only training signal when a
dataset has study labels alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

#: cumulative grade thresholds predicted per level (grade >= 1, >= 2, >= 3)
GRADE_LOGITS = 3
#: study pooling of level logits
MIL_POOLING: tuple[str, ...] = ("max", "lse", "noisy_or")
#: logit given to a film without any level (no evidence of a fracture)
NO_LEVEL_LOGIT = -12.0


@dataclass
class LevelBatch:
    """Level boxes of a batch of LAT films, canvas pixels: ``centre`` (B, L, 2) row/col, ``axis``
    (B, L, 2) unit vector along the column, ``size`` (B, L) box side, ``valid`` (B, L) 1 for a real
    body (0 = padding)."""

    centre: torch.Tensor
    axis: torch.Tensor
    size: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor]) -> LevelBatch | None:
        """The boxes carried by a batch (keys ``level_centre``, ``level_axis``, ``level_size``,
        ``level_valid``), or None when it carries none."""
        if "level_centre" not in batch:
            return None
        return cls(batch["level_centre"], batch["level_axis"], batch["level_size"], batch["level_valid"])


class LevelRois(NamedTuple):
    """What the level head reads of N boxes: ``patches`` (N, Cf, roi, roi) of the full-resolution
    stack, turned along the column, and ``context`` (N, Cd) the mean deep features around each box."""

    patches: torch.Tensor
    context: torch.Tensor


def roi_grid(boxes: LevelBatch, height: int, width: int, roi: int) -> torch.Tensor:
    """(B * L, roi, roi, 2) sampling grid (x, y in [-1, 1], ``align_corners=False``) of every box,
    rows of the patch along the box axis (top to bottom of the column)."""
    b, n = boxes.centre.shape[:2]
    dtype = boxes.centre.dtype
    steps = (torch.arange(roi, device=boxes.centre.device, dtype=dtype) + 0.5) / roi - 0.5  # (-0.5, 0.5)
    along, across = torch.meshgrid(steps, steps, indexing="ij")  # (roi, roi)
    size = boxes.size.reshape(b * n, 1, 1)
    axis = boxes.axis.reshape(b * n, 1, 1, 2)
    normal = torch.stack([-axis[..., 1], axis[..., 0]], dim=-1)
    centre = boxes.centre.reshape(b * n, 1, 1, 2)
    points = centre + size[..., None] * (along[None, ..., None] * axis + across[None, ..., None] * normal)
    x = (points[..., 1] + 0.5) / width * 2.0 - 1.0
    y = (points[..., 0] + 0.5) / height * 2.0 - 1.0
    return torch.stack([x, y], dim=-1)


def sample_rois(image: torch.Tensor, boxes: LevelBatch, roi: int, canvas: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) feature map covering the (rows, cols) ``canvas`` the boxes are given in ->
    (B * L, C, roi, roi) patches of every box (zeros outside the map); any feature resolution works."""
    b, c = image.shape[:2]
    n = boxes.centre.shape[1]
    # every film's L patches are sampled from its own map in one call, the patches stacked along the
    # grid's rows: a (B * L, C, H, W) copy of the map per level (and its gradient) is never built
    grid = roi_grid(boxes, canvas[0], canvas[1], roi).to(image.dtype).reshape(b, n * roi, roi, 2)
    patches = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return patches.reshape(b, c, n, roi, roi).transpose(1, 2).reshape(b * n, c, roi, roi)


def mil_pool(logits: torch.Tensor, valid: torch.Tensor, method: str = "lse", temperature: float = 4.0) -> torch.Tensor:
    """Study logits (B,) from level logits (B, L) over the valid levels (B, L).

    ``max``: the most suspicious level (its gradient reaches that level only); ``lse``: a smooth
    maximum, log-sum-exp of ``temperature`` x logits / temperature (most of the gradient goes to
    the highest levels); ``noisy_or``: P(study) = 1 - prod(1 - p_level). Padding levels contribute
    nothing; a film without levels gets :data:`NO_LEVEL_LOGIT`.
    """
    if method not in MIL_POOLING:
        raise ValueError(f"MIL pooling must be one of {', '.join(MIL_POOLING)}, got {method!r}")
    mask = valid > 0
    any_level = mask.any(dim=1)
    floor = torch.full_like(logits, -1e4)
    masked = torch.where(mask, logits, floor)
    if method == "max":
        pooled = masked.max(dim=1).values
    elif method == "lse":
        count = mask.sum(dim=1).clamp(min=1).to(logits.dtype)
        pooled = (torch.logsumexp(temperature * masked, dim=1) - torch.log(count)) / temperature
    else:
        log_not = torch.where(mask, F.logsigmoid(-logits), torch.zeros_like(logits)).sum(dim=1)  # log prod(1 - p)
        log_not = log_not.clamp(max=-1e-6)
        pooled = torch.log(-torch.expm1(log_not)) - log_not  # logit of 1 - prod(1 - p)
    return torch.where(any_level, pooled, torch.full_like(pooled, NO_LEVEL_LOGIT))


class LevelHead(nn.Module):
    """Per-level cumulative grade logits from the shared network's features inside each body's box.

    Args:
        fine_channels: channels of the full-resolution stack (decoder features + film + masks).
        deep_channels: channels of the deep encoder features sampled for context.
        roi: patch side of the fine stack (the deep features are sampled at ``roi // 8``).
        width: hidden width.
    """

    def __init__(self, fine_channels: int, deep_channels: int, roi: int = 40, width: int = 64) -> None:
        super().__init__()
        self.roi = roi

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.GroupNorm(8, cout), nn.GELU()
            )

        self.fine = nn.Sequential(
            nn.Conv2d(fine_channels, 32, 3, padding=1, bias=False),
            nn.GroupNorm(8, 32),
            nn.GELU(),
            block(32, 48),
            block(48, width),
            block(width, width),
        )
        self.deep = nn.Sequential(nn.Linear(deep_channels, width), nn.GELU())
        self.out = nn.Sequential(
            nn.Linear(3 * width, width), nn.GELU(), nn.Dropout(0.1), nn.Linear(width, GRADE_LOGITS)
        )
        with torch.no_grad():  # start every level at a low fracture prior (most bodies are normal)
            self.out[-1].bias.copy_(torch.tensor([-2.0, -2.5, -3.0]))

    def rois(self, fine: torch.Tensor, deep: torch.Tensor, boxes: LevelBatch) -> LevelRois:
        """What the head reads of every box (padding boxes included): fine (B, Cf, H, W) at canvas
        resolution, deep (B, Cd, h, w) -> :class:`LevelRois` of B * L boxes."""
        canvas = (int(fine.shape[-2]), int(fine.shape[-1]))  # the boxes are in the fine stack's pixels
        return LevelRois(
            patches=sample_rois(fine, boxes, self.roi, canvas),
            context=sample_rois(deep, boxes, max(2, self.roi // 8), canvas).mean(dim=(2, 3)),
        )

    def score(self, rois: LevelRois) -> torch.Tensor:
        """(N, 3) cumulative grade logits of N boxes' :class:`LevelRois`."""
        fine_vec = self.fine(rois.patches)
        fine_vec = torch.cat([fine_vec.mean(dim=(2, 3)), fine_vec.amax(dim=(2, 3))], dim=1)
        return self.out(torch.cat([fine_vec, self.deep(rois.context)], dim=1))

    def forward(self, fine: torch.Tensor, deep: torch.Tensor, boxes: LevelBatch) -> torch.Tensor:
        """fine (B, Cf, H, W) at canvas resolution, deep (B, Cd, h, w) -> (B, L, 3) cumulative logits."""
        b, n = boxes.centre.shape[:2]
        return self.score(self.rois(fine, deep, boxes)).reshape(b, n, GRADE_LOGITS)


def with_grades(detect: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """(..., 3) cumulative logits whose P(grade >= 1) is ``detect``'s (the level head: which bodies
    are fractured) and P(grade >= 2), P(grade >= 3) are ``grades``' (the grade head: how badly)."""
    return torch.cat([detect[..., :1], grades[..., 1:]], dim=-1)


def level_probability(cumulative: torch.Tensor) -> torch.Tensor:
    """Fracture probability (grade >= 1) of each level from its cumulative logits (..., 3)."""
    return torch.sigmoid(cumulative[..., 0])


def predicted_grade(cumulative: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Genant grade of each level: the number of cumulative probabilities at or above ``threshold``
    (after making them monotone)."""
    above = torch.cummin(torch.sigmoid(cumulative), dim=-1).values
    return (above >= threshold).sum(dim=-1)


__all__ = [
    "GRADE_LOGITS",
    "MIL_POOLING",
    "NO_LEVEL_LOGIT",
    "LevelBatch",
    "LevelHead",
    "LevelRois",
    "level_probability",
    "mil_pool",
    "predicted_grade",
    "roi_grid",
    "sample_rois",
    "with_grades",
]
