"""Segmentation metrics for one binary mask pair, defined once for the whole project (docs/design.md).

Conventions:

- Dice, IoU, TPR (sensitivity) and precision of a pair where truth and prediction are both empty
  are 1 and the pair is flagged ``empty_truth`` (reported separately, not hidden in the mean).
- HD95 is the larger of the two directed 95th-percentile surface distances, in pixels and, when
  the pixel spacing is known, in mm. When exactly one of the masks is empty, it is the image
  diagonal (the worst case), never NaN, so misses make the mean worse instead of being dropped.
- clDice (for thin lines) uses the morphological skeletons; NSD is the fraction of surface points
  of both masks within ``tolerance`` of the other surface.

The kernels are MONAI's (``get_confusion_matrix``, ``compute_hausdorff_distance`` with
``percentile=95``, ``compute_surface_dice``); this module adds the conventions above for empty masks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice, get_confusion_matrix
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


def _batch(mask: np.ndarray) -> torch.Tensor:
    """(H, W) bool -> (1, 1, H, W) float: one study, one channel, as MONAI's metric kernels take it."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def _diagonal(shape: tuple[int, ...], spacing: tuple[float, float]) -> float:
    return float(np.hypot(shape[0] * spacing[0], shape[1] * spacing[1]))


@contextmanager
def _quiet_monai() -> Iterator[None]:
    """MONAI 1.5's surface kernels pass a deprecated argument to its own ``get_mask_edges`` and warn
    on every call (thousands of lines in an evaluation); the warning is MONAI's, not the caller's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        yield


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance (units of ``spacing``; MONAI's
    ``compute_hausdorff_distance``); 0 if both are empty, the image diagonal if one is."""
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return _diagonal(pred.shape, spacing)
    with _quiet_monai():
        distance = compute_hausdorff_distance(
            _batch(pred), _batch(truth), include_background=True, percentile=95, spacing=[float(s) for s in spacing]
        )
    return float(distance.item())


def _hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float], hd_px: float) -> float:
    """HD95 in mm: on square pixels every distance scales by the one spacing (so do the 95th
    percentile and the empty-mask conventions, 0 and the diagonal), saving MONAI's second pass over
    the edges; otherwise measured with the spacing."""
    row, col = (float(s) for s in spacing)
    if np.isclose(row, col, rtol=1e-9, atol=0.0):
        return hd_px * row
    return hd95(pred, truth, (row, col))


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
    """Normalised surface distance (surface Dice, MONAI's ``compute_surface_dice``) at ``tolerance``
    (units of ``spacing``); 1 if both are empty, 0 if one is."""
    if not pred.any() and not truth.any():
        return 1.0
    if not pred.any() or not truth.any():
        return 0.0
    with _quiet_monai():
        value = compute_surface_dice(
            _batch(pred),
            _batch(truth),
            [float(tolerance)],
            include_background=True,
            spacing=[float(s) for s in spacing],
        )
    return float(value.item())


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
    tp, fp, _, fn = (float(v) for v in get_confusion_matrix(_batch(pred), _batch(truth)).flatten())
    n_pred, n_truth = tp + fp, tp + fn
    empty_truth, empty_pred = n_truth == 0, n_pred == 0
    if empty_truth and empty_pred:
        dice = iou = tpr = precision = 1.0
    else:
        dice = 2 * tp / (n_pred + n_truth)
        iou = tp / (n_pred + n_truth - tp)
        tpr = tp / n_truth if n_truth else 0.0
        precision = tp / n_pred if n_pred else 0.0
    hd_px = hd95(pred, truth)
    hd_mm = _hd95_mm(pred, truth, spacing_mm, hd_px) if spacing_mm else None
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
