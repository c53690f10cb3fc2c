"""Metrics against hand-computed cases, including empty prediction and empty truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spine_app.metrics.classification import auroc, auroc_ci, threshold_scores, youden_threshold
from spine_app.metrics.segmentation import cldice, hd95, nsd, score_masks


def square(shape=(20, 20), top=5, left=5, size=6) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_overlap_scores_by_hand() -> None:
    truth = square()  # 36 px
    pred = square(left=8)  # 36 px, 18 overlap
    s = score_masks(pred, truth)
    assert s.dice == pytest.approx(0.5) and s.iou == pytest.approx(18 / 54)
    assert s.tpr == pytest.approx(0.5) and s.precision == pytest.approx(0.5)
    assert s.hd95_px == pytest.approx(3.0) and not s.empty_truth


def test_identical_masks_and_spacing() -> None:
    s = score_masks(square(), square(), spacing_mm=(0.5, 0.5))
    assert s.dice == 1.0 and s.hd95_px == 0.0 and s.hd95_mm == 0.0
    shifted = score_masks(square(left=7), square(), spacing_mm=(0.5, 0.5))
    assert shifted.hd95_mm == pytest.approx(shifted.hd95_px * 0.5)


def test_hd95_in_mm_matches_monai_with_square_and_other_pixels() -> None:
    """Square pixels scale the pixel HD95; other pixels are measured with MONAI's spacing kernel."""
    pred, truth = square((40, 40), top=5, left=8, size=12), square((40, 40), top=9, left=5, size=7)
    for spacing in ((0.7, 0.7), (0.5, 2.0), (2.0, 0.5)):
        assert score_masks(pred, truth, spacing_mm=spacing).hd95_mm == pytest.approx(hd95(pred, truth, spacing))
    # shifted down: the rows' spacing is what counts, so the two anisotropic pixels disagree
    assert score_masks(pred, truth, spacing_mm=(0.5, 2.0)).hd95_mm != pytest.approx(
        score_masks(pred, truth, spacing_mm=(2.0, 0.5)).hd95_mm
    )
    empty = score_masks(np.zeros((30, 40), bool), square((30, 40)), spacing_mm=(0.5, 0.5))
    assert empty.hd95_mm == pytest.approx(25.0)  # the diagonal in mm


def test_empty_prediction_gets_the_worst_case_distance() -> None:
    s = score_masks(np.zeros((30, 40), bool), square((30, 40)))
    assert s.dice == 0.0 and s.tpr == 0.0 and s.empty_pred
    assert s.hd95_px == pytest.approx(50.0)  # the image diagonal, not NaN
    assert not math.isnan(hd95(square((30, 40)), np.zeros((30, 40), bool)))


def test_empty_truth_and_empty_prediction_is_perfect_and_flagged() -> None:
    s = score_masks(np.zeros((10, 10), bool), np.zeros((10, 10), bool), line=True)
    assert s.dice == s.iou == s.cldice == s.nsd == 1.0 and s.hd95_px == 0.0
    assert s.empty_truth and s.empty_pred


def test_cldice_and_nsd_on_lines() -> None:
    line = np.zeros((40, 40), bool)
    line[5:35, 20] = True
    assert cldice(line, line) == pytest.approx(1.0)
    broken = line.copy()
    broken[15:25, 20] = False
    assert 0.6 < cldice(broken, line) < 0.9
    shifted = np.zeros_like(line)
    shifted[5:35, 23] = True
    assert nsd(shifted, line, tolerance=2.0) == 0.0 and nsd(shifted, line, tolerance=3.0) == 1.0


def test_auroc_by_hand_and_ties() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    lo, hi = auroc_ci([0] * 20 + [1] * 20, list(np.linspace(0, 1, 40)), n_boot=200)
    assert lo == hi == 1.0


def test_threshold_choice_and_scores() -> None:
    labels = [0, 0, 0, 1, 1, 1]
    probs = [0.1, 0.2, 0.6, 0.55, 0.7, 0.9]
    t = youden_threshold(labels, probs)
    # J = 2/3 both in (0.2, 0.55] and in (0.6, 0.7]: the wider gap wins, at its middle
    assert t == pytest.approx(0.375)
    scores = threshold_scores(labels, probs, t)
    assert scores["sensitivity"] == 1.0 and scores["specificity"] == pytest.approx(2 / 3)
    # a separable validation set: midway between its highest Normal and lowest Damaged score, not on
    # the Damaged study (a held-out Normal study just above it would be called Damaged)
    assert youden_threshold([0, 0, 1, 1], [0.05, 0.1, 0.3, 0.9]) == pytest.approx(0.2)
    assert youden_threshold([1, 1, 0], [0.2, 0.4, 0.6]) == pytest.approx(0.2)  # all Damaged is best
    assert youden_threshold([1, 1], [0.2, 0.4]) == 0.5
    scores = threshold_scores(labels, probs, 0.65)
    assert scores["confusion_matrix"] == [[3, 0], [1, 2]]
    assert scores["sensitivity"] == pytest.approx(2 / 3) and scores["specificity"] == 1.0
    assert scores["accuracy"] == pytest.approx(5 / 6) and scores["f1"] == pytest.approx(0.8)


def _youden_j(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    scores = threshold_scores(labels, probs, threshold)
    return scores["sensitivity"] + scores["specificity"] - 1


def test_youden_threshold_reaches_the_best_j_of_any_threshold() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        labels = rng.integers(0, 2, 20)
        labels[:2] = [0, 1]
        probs = np.round(rng.random(20), 2)  # ties between scores too
        threshold = youden_threshold(labels, probs)
        best = max(_youden_j(labels, probs, t) for t in np.unique(probs))
        assert _youden_j(labels, probs, threshold) == pytest.approx(best)
        assert threshold == probs.min() or threshold not in probs  # between two scores, never on one


def _wall_masks(shape=(80, 60), anterior_x=15, posterior_x=40):
    """Hand-made lateral lines: two vertical walls (anterior on the left, posterior on the right)."""
    anterior, posterior = np.zeros(shape, bool), np.zeros(shape, bool)
    anterior[10:70, anterior_x], posterior[10:70, posterior_x] = True, True
    return anterior, posterior


def test_line_side_check_passes_a_correct_prediction_and_fails_a_swapped_one() -> None:
    from spine_app.channels import LINE_CHANNELS
    from spine_app.metrics.segmentation import lat_line_sides, line_side_check

    anterior, posterior = _wall_masks()
    near_anterior, near_posterior = _wall_masks(anterior_x=17, posterior_x=37)  # a few px off each wall
    assert line_side_check(near_anterior, anterior, posterior) is True
    assert line_side_check(near_posterior, anterior, posterior) is False  # anterior channel drawn on the back wall
    assert line_side_check(np.zeros_like(anterior), anterior, posterior) is False  # nothing predicted
    assert line_side_check(near_anterior, np.zeros_like(anterior), posterior) is None  # no truth: no answer
    truth = dict(zip(LINE_CHANNELS, (anterior, posterior)))
    assert lat_line_sides(dict(zip(LINE_CHANNELS, (near_anterior, near_posterior))), truth) is True
    assert lat_line_sides(dict(zip(LINE_CHANNELS, (near_posterior, near_anterior))), truth) is False  # swapped
    assert (
        lat_line_sides(dict(zip(LINE_CHANNELS, (near_posterior, near_posterior))), truth) is False
    )  # both on one wall


def test_line_side_summary_counts_films() -> None:
    from spine_app.engines.metrics import line_side_summary

    records = [
        {"study_id": "a", "line_side_ok": True},
        {"study_id": "b", "line_side_ok": False},
        {"study_id": "c", "line_side_ok": None},
        {"study_id": "d"},
    ]
    assert line_side_summary(records) == {"n": 2, "pass": 1, "fraction": 0.5, "failed": ["b"]}
