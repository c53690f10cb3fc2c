"""Classification metrics for Normal (0) vs Damaged (1): AUROC with a bootstrap CI, a threshold
chosen on validation (Youden's J, midway in its widest gap), and the threshold-dependent scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN if a class is absent."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_ci(
    labels: Sequence[int], scores: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUROC, resampling within each class (seeded)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    pos, neg = np.nonzero(y)[0], np.nonzero(~y)[0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        values.append(auroc(y[idx], s[idx]))
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def youden_threshold(labels: Sequence[int], probabilities: Sequence[float]) -> float:
    """Probability threshold maximising Youden's J (sensitivity + specificity - 1), placed midway in
    the widest gap between consecutive scores that gives the best J (0.5 if undefined).

    Every threshold in the gap below a study's score makes the same calls, so a threshold on the
    score itself sits on a validation study and calls the nearest held-out study either way by a
    hair; the middle of the gap keeps the validation calls with the most margin on both sides. Of
    several gaps with the same best J the widest wins (ties: the lowest). Below the lowest score
    (every study called Damaged) the threshold is that score.
    """
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(probabilities, dtype=float)
    if y.all() or not y.any():
        return 0.5
    values = np.unique(p)  # candidate thresholds: a study is called Damaged at p >= threshold
    positives, negatives = np.sort(p[y]), np.sort(p[~y])
    sensitivity = 1 - np.searchsorted(positives, values, "left") / positives.size
    specificity = np.searchsorted(negatives, values, "left") / negatives.size
    j = sensitivity + specificity - 1
    best = np.flatnonzero(j >= j.max() - 1e-9)
    gaps = np.where(best > 0, values[best] - values[np.maximum(best - 1, 0)], 0.0)
    i = int(best[np.argmax(gaps)])
    return float(values[0]) if i == 0 else float((values[i - 1] + values[i]) / 2)


def threshold_scores(
    labels: Sequence[int], probabilities: Sequence[float], threshold: float
) -> dict[str, float | list]:
    """Accuracy, sensitivity, specificity, F1 and confusion matrix [[TN, FP], [FN, TP]] at ``threshold``."""
    y = np.asarray(labels, dtype=bool)
    pred = np.asarray(probabilities, dtype=float) >= threshold
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * prec * sens / (prec + sens) if prec + sens and not np.isnan(sens) else 0.0
    return {
        "threshold": float(threshold),
        "accuracy": (tp + tn) / max(len(y), 1),
        "sensitivity": sens,
        "specificity": spec,
        "f1": f1,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }
