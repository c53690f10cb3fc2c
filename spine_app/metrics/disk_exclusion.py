"""The disk space exclusive of the vertebral bodies: a LAT pixel the network finds likely enough to be
bone (its ``Lat_Vertebra`` probability above a threshold) is not disk space.

The reference masks are made that way: the generator's and the DRR's disk mask is the space between
two endplates minus the projected bodies (:func:`spine_app.synthetic.imaging.lat_column_masks`), and no
disk pixel of a reference mask lies in a vertebra mask. Where a curved spine tilts an endplate, its rim projects as
an ellipse into the disk space and the reference disk narrows to a bow tie, while the network draws
the dark gap it sees as a band of even height (docs/results.md, "The fresh disk channel and curved
spines"). Taking out of the disk the pixels the vertebra channel already half claims follows the
reference's own rule. How far (the vertebra probability above which a pixel leaves the disk) depends
on the model, so it is chosen on the validation split (:func:`choose_disk_exclusion`, by the
evaluate config's report) and set in inference.yaml's ``disk_exclusion`` (None: no exclusion).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: vertebra probabilities tried as the exclusion threshold on validation
EXCLUSION_GRID: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
#: the key of the Dice without exclusion in :func:`exclusion_dice`'s dictionary
NO_EXCLUSION = "none"
#: validation disk Dice an exclusion must gain over none to be chosen
MIN_GAIN = 0.002


def check_exclusion(threshold: float | None) -> float | None:
    """``threshold`` as a float in (0, 1), or None; ValueError naming the setting otherwise."""
    if threshold is None:
        return None
    value = float(threshold)
    if not 0.0 < value < 1.0:
        raise ValueError(f"disk_exclusion must be a vertebra probability in (0, 1) or null, got {threshold!r}")
    return value


def exclusive_disk(disk: np.ndarray, vertebra_probability: np.ndarray, threshold: float | None) -> np.ndarray:
    """The disk mask ``disk`` (bool) without the pixels whose vertebra probability exceeds ``threshold``
    (unchanged for None)."""
    threshold = check_exclusion(threshold)
    return disk if threshold is None else disk & ~(vertebra_probability > threshold)


def _dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool masks, 1 when both are empty (as the bundle's metric counts it)."""
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else float(2 * int((predicted & truth).sum()) / total)


def exclusion_dice(
    disk_probability: np.ndarray,
    vertebra_probability: np.ndarray,
    truth: np.ndarray,
    grid: Sequence[float] = EXCLUSION_GRID,
    mask_threshold: float = 0.5,
) -> dict[str, float]:
    """Dice of one film's disk mask (``disk_probability > mask_threshold``) against ``truth``, without
    exclusion (key :data:`NO_EXCLUSION`) and excluded at each threshold of ``grid`` (keys "0.2", ...)."""
    disk = disk_probability > mask_threshold
    out = {NO_EXCLUSION: _dice(disk, truth)}
    for threshold in grid:
        out[f"{threshold:g}"] = _dice(exclusive_disk(disk, vertebra_probability, threshold), truth)
    return out


@dataclass(frozen=True)
class DiskExclusionChoice:
    """The exclusion chosen on validation: ``threshold`` (None: none gains :data:`MIN_GAIN`), the mean
    validation disk Dice with it (``dice``) and without (``dice_without``), over ``n`` films."""

    threshold: float | None
    dice: float
    dice_without: float
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {"threshold": self.threshold, "dice": self.dice, "dice_without": self.dice_without, "n": self.n}


def mean_exclusion_dice(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean over films of :func:`exclusion_dice` dictionaries (the keys of the first)."""
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]} if rows else {}


def choose_disk_exclusion(
    rows: Sequence[Mapping[str, float]], min_gain: float = MIN_GAIN
) -> DiskExclusionChoice | None:
    """The exclusion threshold with the highest mean disk Dice over the validation films' ``rows``
    (:func:`exclusion_dice`), kept only if it gains at least ``min_gain`` over none; None without rows."""
    means = mean_exclusion_dice(rows)
    if not means:
        return None
    without = means[NO_EXCLUSION]
    best = max((k for k in means if k != NO_EXCLUSION), key=lambda k: (means[k], -float(k)), default=None)
    if best is None or means[best] < without + min_gain:
        return DiskExclusionChoice(None, without, without, len(rows))
    return DiskExclusionChoice(float(best), means[best], without, len(rows))


__all__ = [
    "EXCLUSION_GRID",
    "MIN_GAIN",
    "NO_EXCLUSION",
    "DiskExclusionChoice",
    "check_exclusion",
    "choose_disk_exclusion",
    "exclusion_dice",
    "exclusive_disk",
    "mean_exclusion_dice",
]
