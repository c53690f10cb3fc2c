"""Neighbour-aware calibration of the level head's fracture probabilities, fitted on validation.

The level head scores each body from its own box, but a fractured body also raises the scores of
the bodies just above and below it: on the benchmark's test split, 14 of the 18 normal levels the
shipped weights flagged were next to a fractured one (docs/results.md, "Neighbour-aware level
calibration"). A fractured body stands out from its neighbours; a normal body beside a fracture
does not. The calibration reads each level's head logit beside the highest head logit of the
levels just above and below it on the same film:

    calibrated logit = scale * head logit + neighbour * max(neighbour head logits) + bias

a logistic regression fitted on the validation split's reference levels (per-level labels). It
is the level's reported ``fracture_probability``; the head's own is kept as ``head_probability``.
The study decision (the level head's pooled probability) does not use it. Without per-level labels
(study labels only) the calibration is the identity (:data:`IDENTITY`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: head probabilities are clipped to [EPS, 1 - EPS] before taking logits (|logit| <= 9.2)
EPS = 1e-4
#: fewest fractured and normal reference levels a calibration is fitted from (else the identity)
MIN_LEVELS_PER_CLASS = 5


def logit(probability: np.ndarray | Sequence[float]) -> np.ndarray:
    """Logits of probabilities clipped to [EPS, 1 - EPS]."""
    p = np.clip(np.asarray(probability, dtype=float), EPS, 1.0 - EPS)
    return np.log(p / (1.0 - p))


@dataclass(frozen=True)
class LevelCalibration:
    """``scale``, ``neighbour``, ``bias`` of the calibrated logit (module docstring), and
    ``lone_logit``: the neighbour head logit taken for a film's only level (a typical normal
    level's: the median head logit of the validation normal levels)."""

    scale: float = 1.0
    neighbour: float = 0.0
    bias: float = 0.0
    lone_logit: float = float(logit([0.01])[0])

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> LevelCalibration:
        """From inference.yaml's ``level_calibration`` (None or empty: the identity); unknown keys are an error."""
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"level_calibration: unknown keys {sorted(unknown)}; known: {list(cls.__dataclass_fields__)}"
            )
        return cls(**{k: float(v) for k, v in values.items()})

    def as_dict(self) -> dict[str, float]:
        """Rounded values, as inference.yaml's ``level_calibration`` takes them."""
        return {k: round(float(v), 4) for k, v in asdict(self).items()}

    def features(self, head_probabilities: Sequence[float]) -> np.ndarray:
        """(L, 2) head logit and highest neighbour head logit of a film's levels, top to bottom."""
        z = logit(head_probabilities).reshape(-1)
        if z.size == 0:
            return np.zeros((0, 2))
        padded = np.r_[-np.inf, z, -np.inf]
        near = np.maximum(padded[:-2], padded[2:])
        near[~np.isfinite(near)] = self.lone_logit
        return np.stack([z, near], axis=1)

    def probabilities(self, head_probabilities: Sequence[float]) -> np.ndarray:
        """Calibrated fracture probabilities of a film's levels, given top to bottom."""
        x = self.features(head_probabilities)
        if x.shape[0] == 0:
            return np.zeros(0)
        z = self.scale * x[:, 0] + self.neighbour * x[:, 1] + self.bias
        return 1.0 / (1.0 + np.exp(-z))


#: the head's own probabilities
IDENTITY = LevelCalibration(scale=1.0, neighbour=0.0, bias=0.0)


def fit_level_calibration(films: Sequence[tuple[Sequence[float], Sequence[int | None]]]) -> LevelCalibration:
    """Fit on validation films: each is (head probabilities of its predicted levels, top to bottom;
    label of each: 1 fractured, 0 normal, None unknown / not on a reference level). Logistic
    regression (scikit-learn, L2 with C = 1) on the labelled levels; the identity with fewer than
    :data:`MIN_LEVELS_PER_CLASS` of either class."""
    from sklearn.linear_model import LogisticRegression

    normal_logits = [float(z) for probs, labels in films for z, y in zip(logit(probs).reshape(-1), labels) if y == 0]
    lone = float(np.median(normal_logits)) if normal_logits else IDENTITY.lone_logit
    base = LevelCalibration(lone_logit=lone)
    rows, ys = [], []
    for probs, labels in films:
        x = base.features(probs)
        for features, y in zip(x, labels):
            if y is not None:
                rows.append(features)
                ys.append(int(y))
    y = np.asarray(ys)
    if min(int((y == 1).sum()), int((y == 0).sum())) < MIN_LEVELS_PER_CLASS:
        return IDENTITY
    model = LogisticRegression(C=1.0, max_iter=1000).fit(np.asarray(rows), y)
    scale, neighbour = (float(v) for v in model.coef_[0])
    return LevelCalibration(scale=scale, neighbour=neighbour, bias=float(model.intercept_[0]), lone_logit=lone)


__all__ = ["EPS", "IDENTITY", "MIN_LEVELS_PER_CLASS", "LevelCalibration", "fit_level_calibration", "logit"]
