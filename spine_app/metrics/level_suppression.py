"""Neighbour suppression of the level head's fracture probabilities, its weight fitted on validation.

The level head scores each body from its own box, but a fractured body also raises the scores of
the bodies just above and below it: on the benchmark's test split, 14 of the 18 normal levels the
shipped weights flagged were next to a fractured one (docs/results.md, "Neighbour suppression of
level flags"). A fractured body stands out from its neighbours; a normal body beside a fracture
scores under it. So a level's logit is lowered by how far its more suspicious neighbour exceeds it:

    suppressed logit = head logit - weight * max(0, max(neighbour head logits) - head logit)

with the neighbours the levels just above and below it on the same film. The weight comes from
a logistic regression of the validation split's reference levels on the head logit and that
excess (:func:`fit_neighbour_suppression`). The suppressed probability is the level's reported
``fracture_probability`` and is compared with the head's own level threshold, chosen on
validation as before. So the suppression can only withdraw flags, never add one: a level with no
more suspicious neighbour keeps the head's probability. A level next to a more suspicious
fractured one can be withdrawn too; that is the cost (docs/results.md). Without per-level labels
(study labels only) the weight is 0 (:data:`NO_SUPPRESSION`). The study decision (the level
head's pooled probability) does not use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

#: head probabilities are clipped to [EPS, 1 - EPS] before taking logits (|logit| <= 9.2)
EPS = 1e-4
#: fewest fractured and normal reference levels a weight is fitted from (else no suppression)
MIN_LEVELS_PER_CLASS = 5


def logit(probability: np.ndarray | Sequence[float]) -> np.ndarray:
    """Logits of probabilities clipped to [EPS, 1 - EPS]."""
    return special.logit(np.clip(np.asarray(probability, dtype=float), EPS, 1.0 - EPS))


def neighbour_excess(head_probabilities: Sequence[float]) -> np.ndarray:
    """How far the more suspicious neighbour (the level just above or below, on the same film, given
    top to bottom) exceeds each level, in head logits; 0 where neither does."""
    z = logit(head_probabilities).reshape(-1)
    if z.size < 2:
        return np.zeros(z.size)
    padded = np.r_[-np.inf, z, -np.inf]
    return np.maximum(np.maximum(padded[:-2], padded[2:]) - z, 0.0)


@dataclass(frozen=True)
class NeighbourSuppression:
    """``weight`` (>= 0) of the neighbour excess subtracted from a level's head logit."""

    weight: float = 0.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"level_neighbour_suppression must be a finite number >= 0, got {self.weight!r}")

    def probabilities(self, head_probabilities: Sequence[float]) -> np.ndarray:
        """Suppressed fracture probabilities of a film's levels, given top to bottom (each at most its
        head probability; exactly it with weight 0, up to the EPS clip)."""
        head = np.asarray(head_probabilities, dtype=float).reshape(-1)
        if self.weight == 0 or head.size == 0:
            return head.copy()
        z = logit(head) - self.weight * neighbour_excess(head)
        return np.minimum(head, special.expit(z))


#: the head's own probabilities
NO_SUPPRESSION = NeighbourSuppression(0.0)


def fit_neighbour_suppression(films: Sequence[tuple[Sequence[float], Sequence[int | None]]]) -> NeighbourSuppression:
    """The weight from validation films: each is (head probabilities of its predicted levels, top to
    bottom; label of each: 1 fractured, 0 normal, None unknown / on no reference level). Logistic
    regression (scikit-learn, L2 with C = 1) of the labelled levels on [head logit, neighbour excess];
    the weight is minus the excess coefficient over the logit's (0 where that is not positive), or no
    suppression with fewer than :data:`MIN_LEVELS_PER_CLASS` levels of either class."""
    from sklearn.linear_model import LogisticRegression

    rows, ys = [], []
    for probs, labels in films:
        for z, excess, y in zip(logit(probs).reshape(-1), neighbour_excess(probs), labels):
            if y is not None:
                rows.append((z, excess))
                ys.append(int(y))
    y = np.asarray(ys)
    if min(int((y == 1).sum()), int((y == 0).sum())) < MIN_LEVELS_PER_CLASS:
        return NO_SUPPRESSION
    model = LogisticRegression(C=1.0, max_iter=1000).fit(np.asarray(rows), y)
    scale, excess = (float(v) for v in model.coef_[0])
    return NeighbourSuppression(round(max(0.0, -excess / scale), 4) if scale > 0 else 0.0)


__all__ = [
    "EPS",
    "MIN_LEVELS_PER_CLASS",
    "NO_SUPPRESSION",
    "NeighbourSuppression",
    "fit_neighbour_suppression",
    "logit",
    "neighbour_excess",
]
