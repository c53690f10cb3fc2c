"""FilmGeometry: the named contract of a batch's ``geom_<view>`` vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spine_app.data.study_transforms import FilmGeometry, fit_geometry


def test_round_trip_spacing_and_canvas_to_film() -> None:
    scale, rows, cols, top, left = fit_geometry((1232, 820), (384, 288))
    geometry = FilmGeometry(1232, 820, scale, top, left, (0.35, 0.35))
    back = FilmGeometry.from_tensor(geometry.to_tensor())
    assert (back.rows, back.cols, back.top, back.left) == (1232, 820, top, left)
    assert back.scale == pytest.approx(scale) and back.spacing == pytest.approx((0.35, 0.35))
    assert back.working_spacing == pytest.approx((0.35 / scale, 0.35 / scale))
    # the canvas centre of the fitted film is the film's centre
    row, col = back.to_film(top + rows / 2, left + cols / 2)
    assert row == pytest.approx(616, abs=2) and col == pytest.approx(410, abs=2)


def test_a_missing_view_and_unknown_spacing() -> None:
    missing = FilmGeometry.from_tensor(torch.zeros(FilmGeometry.FIELDS))
    assert missing.spacing is None and missing.working_spacing is None
    unknown = FilmGeometry(100, 80, 0.5, 0, 4, (0.0, 0.0))
    assert unknown.spacing is None and unknown.working_spacing is None
    assert np.allclose(unknown.to_tensor().numpy(), [100, 80, 0.5, 0, 4, 0, 0])
