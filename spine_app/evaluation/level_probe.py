"""The level head on the reference bodies of a set of studies: how it scores each body when the body
finding of inference is taken out (``scripts/level_probe.py``).

A study's LAT film goes through the evaluation preprocessing (``LoadStudyd`` with the per-level
grades of its ``truth.json``, the canonical facing) and :class:`spine_app.data.levels.LevelBoxesd`
without jitter, so the head reads every labelled body in its reference box, as the level refit
collects them (:func:`spine_app.engines.level_refit.collect_level_rois`). Comparing these scores
with the end-to-end ones (bodies found on the predicted masks) tells a head that flags normal bodies
from a body finding that cuts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, Lambdad

from spine_app.data.augment import exposure_band
from spine_app.data.facing import CanonicalLatFacingd
from spine_app.data.levels import LevelBoxesd
from spine_app.data.study_transforms import LoadStudyd
from spine_app.engines.level_refit import collect_level_rois
from spine_app.metrics.classification import auroc
from spine_app.networks.precision import resolve_precision

#: the body groups of a probe: normal bodies of Normal studies, normal bodies of Damaged studies, fractured bodies
GROUPS = ("normal_in_normal", "normal_in_damaged", "fractured")


@dataclass(frozen=True)
class BodyGroup:
    """P(grade >= 1) of one group of reference bodies: how many, median, 90th percentile, maximum and
    the share at or above ``threshold`` (NaN when the group is empty)."""

    bodies: int
    median: float
    p90: float
    maximum: float
    flagged: float

    @classmethod
    def of(cls, probabilities: np.ndarray, threshold: float) -> BodyGroup:
        if probabilities.size == 0:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        return cls(
            int(probabilities.size),
            float(np.median(probabilities)),
            float(np.percentile(probabilities, 90)),
            float(probabilities.max()),
            float((probabilities >= threshold).mean()),
        )


@dataclass(frozen=True)
class LevelProbe:
    """The reference bodies of a set: each group's :class:`BodyGroup` (bodies the truth grades), the
    study AUROC of each study's highest body (every reference body, graded or not; studies with a LAT
    film and a body), the studies scored and the threshold."""

    groups: dict[str, BodyGroup]
    study_auroc: float
    studies: int
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "groups": {name: group.__dict__ for name, group in self.groups.items()},
            "study_auroc": self.study_auroc,
            "studies": self.studies,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class ExposureBand:
    """The lower ``extent`` of every LAT film pushed toward white by ``strength``
    (:func:`spine_app.data.augment.exposure_band`): the abdomen of a film framed on the thorax."""

    strength: float
    extent: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 <= self.strength <= 1.0 and 0.0 < self.extent <= 1.0):
            raise ValueError(f"exposure band: strength within [0, 1] and extent within (0, 1], got {self}")


def reference_transform(canvas: Sequence[int], band: ExposureBand | None = None) -> Compose:
    """The evaluation preprocessing with the truth's per-level grades and the reference level boxes
    (with ``band``, the LAT film's lower part pushed toward white before the boxes are cut)."""
    steps: list[Any] = [LoadStudyd(canvas=tuple(int(v) for v in canvas), level_labels="truth"), CanonicalLatFacingd()]
    if band is not None:
        steps.append(Lambdad("lat", partial(exposure_band, strength=band.strength, extent=band.extent)))
    return Compose([*steps, LevelBoxesd(shift=0.0, scale=0.0, turn_deg=0.0)])


def probe_levels(
    network: torch.nn.Module,
    entries: list[dict[str, Any]],
    canvas: Sequence[int],
    threshold: float,
    device: str | torch.device = "cpu",
    band: ExposureBand | None = None,
) -> LevelProbe:
    """:class:`LevelProbe` of ``network``'s level head on ``entries`` (datalist entries with
    ``truth.json``): the network in fp32 and eval mode (its mode restored after), each body's patch
    stored in bf16 as the refit stores it; bodies whose grade the truth does not give are left out.
    ``band``: the LAT films' lower part pushed toward white first (:class:`ExposureBand`)."""
    precision = resolve_precision("off", device, False)
    was_training = network.training
    network.eval()
    try:
        bodies = collect_level_rois(
            network,
            Dataset(entries, reference_transform(canvas, band)),
            precision,
            passes=1,
            num_workers=0,
            device=device,
        ).jittered
        with torch.no_grad():
            rois = type(bodies.rois)(bodies.rois.patches.float().to(device), bodies.rois.context.to(device))
            probability = torch.sigmoid(network.level_head.score(rois)[:, 0].float()).cpu().numpy()
    finally:
        network.train(was_training)
    grade = bodies.grade.numpy()
    study = np.repeat(bodies.label.numpy(), bodies.count.numpy())
    masks = {
        "normal_in_normal": (grade == 0) & (study == 0),
        "normal_in_damaged": (grade == 0) & (study == 1),
        "fractured": grade > 0,
    }
    groups = {name: BodyGroup.of(probability[mask], threshold) for name, mask in masks.items()}
    highest, labels = [], []
    for start, count, label, has_lat in zip(
        bodies.start.tolist(), bodies.count.tolist(), bodies.label.tolist(), bodies.has_lat.tolist()
    ):
        if count and has_lat and label >= 0:
            highest.append(float(probability[start : start + count].max()))
            labels.append(int(label))
    study_auroc = auroc(labels, highest) if len(set(labels)) == 2 else float("nan")
    return LevelProbe(groups, float(study_auroc), len(highest), float(threshold))


__all__ = ["GROUPS", "BodyGroup", "ExposureBand", "LevelProbe", "probe_levels", "reference_transform"]
