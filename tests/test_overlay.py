"""The overlay picture: a tall, narrow film keeps its whole title (wrapped, not cut at the edge); the
truth-against-prediction picture paints each pixel by agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from spine_app.morphometry.measure import VertebralBody
from spine_app.viz.contact_sheet import agreement_rgb
from spine_app.viz.overlay import body_text, wrap_text, write_overlay

TITLE = "syn7_00000 LAT | prediction: Damaged (P(Damaged) 0.97, threshold 0.29) | known label: Normal"


def test_wrap_text_keeps_every_word_within_the_width() -> None:
    font = ImageFont.load_default(size=14)
    lines = wrap_text(TITLE, font, 150)
    assert len(lines) > 1 and " ".join(lines) == TITLE
    assert all(font.getlength(line) <= 150 or " " not in line for line in lines)
    assert wrap_text(TITLE, font, 10_000) == [TITLE]


def test_a_narrow_film_gets_a_taller_header_than_a_wide_one(tmp_path: Path) -> None:
    narrow, wide = (
        Image.open(
            write_overlay(tmp_path / f"{cols}.png", np.random.rand(400, cols), {0: np.zeros((400, cols), bool)}, TITLE)
        )
        for cols in (100, 1200)
    )
    # same picture height (400 rows), same legend line: the difference is the wrapped title
    assert narrow.height > wide.height


def test_agreement_rgb_paints_truth_only_prediction_only_and_both() -> None:
    image = np.linspace(0, 1000, 16, dtype=float).reshape(4, 4)
    truth = np.zeros((4, 4), bool)
    pred = np.zeros((4, 4), bool)
    truth[0, :2] = True
    pred[0, 1:3] = True
    rgb = agreement_rgb(image, truth, pred)
    assert rgb.shape == (4, 4, 3)
    assert tuple(rgb[0, 0]) == (0.0, 1.0, 0.0)  # truth only
    assert tuple(rgb[0, 1]) == (1.0, 1.0, 0.0)  # both
    assert tuple(rgb[0, 2]) == (1.0, 0.0, 0.0)  # prediction only
    grey = rgb[1:]
    assert np.allclose(grey[..., 0], grey[..., 1]) and grey.max() <= 0.7 + 1e-9  # the film, dimmed
    assert grey[-1, -1, 0] > grey[0, 0, 0]  # brighter pixels stay brighter


def _body(index: int, grade: int, reduction: float, deformity: str = "wedge") -> VertebralBody:
    return VertebralBody(
        index=index,
        level=None,
        centroid_px=(50.0 + 40 * index, 100.0),
        area_px=1600,
        heights_mm={"anterior": 20.0, "middle": 24.0, "posterior": 24.0},
        ratios={"anterior_posterior": 0.8},
        expected_posterior_mm=24.0,
        reduction=reduction,
        grade=grade,
        deformity=deformity,
    )


def test_a_body_reads_with_the_grade_the_study_reports_for_it() -> None:
    measured = _body(3, 1, 0.22)  # the morphometry measures a grade-1 wedge
    assert body_text(measured) == ("#4 G1 wedge 22%", 1)  # no level head: the morphometry's grade
    assert body_text(measured, {3: 0}) == ("#4 G0 (wedge 22%)", 0)  # the head did not flag it
    assert body_text(measured, {3: 2}) == ("#4 G2 wedge 22%", 2)  # flagged, graded by the film's pixels
    assert body_text(_body(3, 0, 0.05), {3: 1}) == ("#4 G1", 1)  # flagged, the head's grade
    assert body_text(_body(19, 3, 0.51), {3: 0}) == ("#20 not scored (wedge 51%)", -1)  # below the head's cap
    assert body_text(_body(5, -1, 0.0), {5: 0})[0] == "#6 not graded"
