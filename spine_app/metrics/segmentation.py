"""Segmentation metrics for one binary mask pair, defined once for the whole project (docs/design.md).

Conventions:

- Dice, IoU, TPR (sensitivity) and precision of a pair where truth and prediction are both empty
  are 1 and the pair is flagged ``empty_truth`` (reported separately, not hidden in the mean).
- HD95 is the larger of the two directed 95th-percentile surface distances, in pixels and, when
  the pixel spacing is known, in mm. When exactly one of the masks is empty, it is the image
  diagonal (the worst case), never NaN, so misses make the mean worse instead of being dropped.
- clDice (for thin lines) uses the morphological skeletons; NSD is the fraction of surface points
  of both masks within ``tolerance`` of the other surface.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from spine_app.channels import LINE_CHANNELS


@dataclass
class MaskScores:
    """Scores of one (prediction, truth) pair."""

    dice: float
    iou: float
    tpr: float
    precision: float
    hd95_px: float
    hd95_mm: float | None
    empty_truth: bool
    empty_pred: bool
    cldice: float | None = None
    nsd: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Distance from every point of ``from_surface`` to the nearest point of ``to_surface``."""
    distance_map = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance_map[from_surface]


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance (units of ``spacing``); worst case if one is empty."""
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float(np.hypot(pred.shape[0] * spacing[0], pred.shape[1] * spacing[1]))
    sp, st = _surface(pred), _surface(truth)
    return float(
        max(
            np.percentile(_directed_distances(sp, st, spacing), 95),
            np.percentile(_directed_distances(st, sp, spacing), 95),
        )
    )


def cldice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Centreline Dice: harmonic mean of topology precision and sensitivity (1 if both empty)."""
    if not pred.any() and not truth.any():
        return 1.0
    if not pred.any() or not truth.any():
        return 0.0
    skel_pred, skel_truth = skeletonize(pred), skeletonize(truth)
    t_prec = (skel_pred & truth).sum() / max(skel_pred.sum(), 1)
    t_sens = (skel_truth & pred).sum() / max(skel_truth.sum(), 1)
    return float(2 * t_prec * t_sens / (t_prec + t_sens)) if t_prec + t_sens > 0 else 0.0


def nsd(pred: np.ndarray, truth: np.ndarray, tolerance: float, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Normalised surface distance (surface Dice) at ``tolerance`` (units of ``spacing``)."""
    if not pred.any() and not truth.any():
        return 1.0
    if not pred.any() or not truth.any():
        return 0.0
    sp, st = _surface(pred), _surface(truth)
    close_p = (_directed_distances(sp, st, spacing) <= tolerance).sum()
    close_t = (_directed_distances(st, sp, spacing) <= tolerance).sum()
    return float((close_p + close_t) / (sp.sum() + st.sum()))


def score_masks(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing_mm: tuple[float, float] | None = None,
    line: bool = False,
    nsd_tolerance_px: float = 2.0,
) -> MaskScores:
    """All scores of one binary pair (bool arrays of the same shape).

    Args:
        spacing_mm: (row, col) pixel spacing, when known, for HD95 in mm.
        line: also compute clDice and NSD (at ``nsd_tolerance_px`` pixels) for thin structures.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    pred, truth = pred.astype(bool), truth.astype(bool)
    tp = float((pred & truth).sum())
    n_pred, n_truth = float(pred.sum()), float(truth.sum())
    empty_truth, empty_pred = n_truth == 0, n_pred == 0
    if empty_truth and empty_pred:
        dice = iou = tpr = precision = 1.0
    else:
        dice = 2 * tp / (n_pred + n_truth)
        iou = tp / (n_pred + n_truth - tp)
        tpr = tp / n_truth if n_truth else 0.0
        precision = tp / n_pred if n_pred else 0.0
    hd_px = hd95(pred, truth)
    hd_mm = hd95(pred, truth, spacing_mm) if spacing_mm else None
    scores = MaskScores(dice, iou, tpr, precision, hd_px, hd_mm, empty_truth, empty_pred)
    if line:
        scores.cldice = cldice(pred, truth)
        scores.nsd = nsd(pred, truth, nsd_tolerance_px)
    return scores


def line_side_check(pred_line: np.ndarray, true_same: np.ndarray, true_other: np.ndarray) -> bool | None:
    """Is a predicted vertebral line on the right wall? (the *line side check*)

    True when the predicted line's pixels lie, by their median distance, nearer the true line of the
    same name than the true line of the other wall (anterior vs posterior); False when they lie
    nearer the other wall or nothing is predicted; None when either true line is empty (no answer).
    """
    if not true_same.any() or not true_other.any():
        return None
    if not pred_line.any():
        return False
    to_same = ndimage.distance_transform_edt(~true_same)[pred_line]
    to_other = ndimage.distance_transform_edt(~true_other)[pred_line]
    return bool(np.median(to_same) < np.median(to_other))


def lat_line_sides(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> bool | None:
    """The line side check of one lateral film: both predicted lines on their own wall.

    ``pred``/``truth`` map the two line channel names (anterior, posterior) to bool masks. None when
    the truth lacks a line; else True only if the anterior *and* the posterior lines pass.
    """
    anterior, posterior = LINE_CHANNELS
    checks = [
        line_side_check(pred[anterior], truth[anterior], truth[posterior]),
        line_side_check(pred[posterior], truth[posterior], truth[anterior]),
    ]
    return None if None in checks else all(checks)
