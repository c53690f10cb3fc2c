"""A level whose body's predicted mask cannot be a vertebral body's, fractured or not (a fragment left
where the network drew a disk at a collimator edge, a blob merged with something beside the column:
its front half again as tall as its back, or a height missing) is scored but does not decide the study
on its own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from spine_app.channels import geom_key
from spine_app.data.study_transforms import FilmGeometry
from spine_app.engines.writer import StudyPredictionWriter, hold_back_levels, level_summary
from spine_app.morphometry.measure import measure_vertebrae, shape_implausible
from spine_app.networks.levels import mil_pool
from tests.engines.test_level_labels import body

ROWS = [50.0, 110.0, 170.0, 230.0]
GEOM = FilmGeometry(rows=600, cols=300, scale=1.0, top=0.0, left=0.0).to_tensor()


def wedge(index: int, row: float) -> object:
    """A film body 24 px tall at the front and 9 at the back: Ha/Hp 2.7, no vertebral body's."""
    heights = {"anterior": 24.0, "middle": 16.0, "posterior": 9.0}
    return dataclasses.replace(body(index, row), heights_mm=heights, not_measurable="not measurable: ratio")


def pred_of(fracture: list[float]) -> dict[str, torch.Tensor]:
    logits = torch.full((1, len(fracture), 3), -6.0)
    logits[0, :, 0] = torch.logit(torch.tensor(fracture))
    valid = torch.ones(1, len(fracture))
    return {
        "level_valid": valid,
        "level_logits": logits,
        "level_centre": torch.tensor([[[r, 100.0] for r in ROWS[: len(fracture)]]]),
        "cls_levels": mil_pool(logits[..., 0], valid, "lse"),
    }


def test_a_missing_height_or_a_front_over_1_5_times_the_back_fails_and_a_fracture_shape_does_not() -> None:
    assert shape_implausible(wedge(0, 50.0)) and not shape_implausible(body(0, 50.0))
    missing = dataclasses.replace(
        body(0, 50.0), heights_mm={"anterior": 20.0, "middle": float("nan"), "posterior": 20.0}
    )
    assert shape_implausible(missing)
    # out of the quality range but what a fractured body on a poor mask measures: kept
    for heights in (
        {"anterior": 5.0, "middle": 14.0, "posterior": 20.0},
        {"anterior": 11.0, "middle": 20.0, "posterior": 11.0},
    ):
        assert not shape_implausible(dataclasses.replace(body(0, 50.0), heights_mm=heights))
    assert not shape_implausible(dataclasses.replace(wedge(0, 50.0), truncated=True))  # cut, not wrong
    small = dataclasses.replace(body(0, 50.0), area_px=100, not_measurable="not measurable: body area 0.06 x")
    assert not shape_implausible(small)  # only far smaller than the film's median: a T1 beside an L5
    # on a measured mask: a body far taller at the front than at the back
    mask = np.zeros((120, 80), bool)
    for i, top in enumerate((10, 40, 70)):
        for col in range(20, 50):
            back = 6 if i == 1 else 22
            mask[top : top + round(22 - (22 - back) * (col - 20) / 29), col] = True
    posterior = np.zeros_like(mask)
    posterior[10:95, 55:57] = True  # the posterior line behind the column on the right
    measured = measure_vertebrae(mask, (1.0, 1.0), posterior)
    assert [shape_implausible(b) for b in measured] == [False, True, False]


def test_the_left_out_level_does_not_decide_the_study_on_its_own() -> None:
    bodies = [body(0, 50.0), wedge(1, 110.0), body(2, 170.0)]
    pred = pred_of([0.05, 0.98, 0.1])
    block = level_summary(pred, 0, GEOM, bodies, threshold=0.5, shape_check=True)
    first, out, last = block["levels"]
    assert out["left_out"] and out["fracture_probability"] == 0.98  # what the head read stays
    assert not first["left_out"] and not last["left_out"]
    kept = torch.tensor([[1.0, 0.0, 1.0]])
    expected = torch.sigmoid(mil_pool(pred["level_logits"][..., 0], kept, "lse"))[0]
    assert block["study_probability"] == pytest.approx(float(expected), abs=1e-4) and block["study_probability"] < 0.2
    unchecked = level_summary(pred, 0, GEOM, bodies, threshold=0.5)
    assert not unchecked["levels"][1]["left_out"]
    assert unchecked["study_probability"] == pytest.approx(float(torch.sigmoid(pred["cls_levels"][0])), abs=1e-4)
    # a study the decision calls Normal holds the level back with the others; the overlay circles the
    # most suspicious level that counts
    held = hold_back_levels(block)
    assert held == [2] and not out["flagged"] and out["grade"] == 0 and out["held_back"]
    assert block["drives_decision"] == [3]


def test_a_left_out_level_in_a_study_other_levels_make_damaged_is_flagged_and_graded() -> None:
    """The check keeps a blob from deciding the study; it removes no finding from a Damaged study (on
    thoracic DRR films fractured bodies' masks also measure so)."""
    bodies = [body(0, 50.0), wedge(1, 110.0), body(2, 170.0)]
    block = level_summary(pred_of([0.05, 0.98, 0.97]), 0, GEOM, bodies, threshold=0.5, shape_check=True)
    out = block["levels"][1]
    assert out["left_out"] and out["flagged"] and out["grade"] >= 1
    assert block["study_probability"] > 0.9 and block["drives_decision"] == [2, 3]


def test_a_film_whose_every_level_fails_keeps_them_all() -> None:
    """Nothing would be left to decide on: every level counts as without the check."""
    pred = pred_of([0.9, 0.2])
    block = level_summary(pred, 0, GEOM, [wedge(0, 50.0), wedge(1, 110.0)], threshold=0.5, shape_check=True)
    assert not any(lv["left_out"] for lv in block["levels"]) and block["levels"][0]["flagged"]
    assert block["study_probability"] == pytest.approx(float(torch.sigmoid(pred["cls_levels"][0])), abs=1e-4)


@pytest.mark.parametrize("check", [True, False])
def test_the_writer_decides_without_the_left_out_level(check: bool) -> None:
    """A study whose only suspicious level lies on a fragment is Normal with the check, Damaged without."""
    writer = StudyPredictionWriter(
        "unused", damaged_threshold=0.5, decision="levels", level_threshold=0.5, level_shape_check=check
    )
    assert writer.settings()["level_shape_check"] is check  # a re-run with the other setting redoes the study
    target = {"present": torch.ones(1, 2), geom_key("lat"): GEOM[None]}
    result = {"morphometry_probability": 0.0, "warnings": []}
    bodies = [body(0, 50.0), wedge(1, 110.0), body(2, 170.0)]
    writer._decide(result, 0.5, pred_of([0.05, 0.98, 0.1]), target, 0, bodies)
    assert result["label"] == ("Normal" if check else "Damaged")
    assert result["levels"]["shape_check"] is check


def test_the_writer_refuses_an_unknown_pooling() -> None:
    with pytest.raises(ValueError, match="level_pooling"):
        StudyPredictionWriter("unused", level_pooling="mean")
