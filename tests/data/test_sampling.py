"""Curved spines are drawn more often in training: the column's deviation is read from the AP
vertebra reference mask, and the sampler's weights follow it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from spine_app.channels import MASK_NAMES
from spine_app.data.io import write_png
from spine_app.data.sampling import (
    FULL_MM,
    STRAIGHT_MM,
    column_deviation_mm,
    curvature_sampler,
    curvature_weight,
)


def _column(bend_px: float, rows: int = 400, cols: int = 200, half_width: int = 20) -> np.ndarray:
    """A vertical band (the column on an AP film) whose centre bows sideways by ``bend_px`` at mid-height."""
    mask = np.zeros((rows, cols), np.uint8)
    for r in range(40, rows - 40):
        centre = cols // 2 + bend_px * np.sin(np.pi * (r - 40) / (rows - 80))
        mask[r, int(round(centre - half_width)) : int(round(centre + half_width))] = 1
    return mask


def test_deviation_of_straight_and_bent_columns() -> None:
    assert column_deviation_mm(_column(0.0), spacing_mm=0.5) < 0.5
    bent = column_deviation_mm(_column(30.0), spacing_mm=0.5)
    # a half sine of amplitude 30 px: its straight fit leaves a residual of about 0.4-0.7 x 30 px
    assert 6.0 < bent < 15.0
    assert column_deviation_mm(np.zeros((50, 50))) != column_deviation_mm(np.zeros((50, 50)))  # NaN


def test_weight_ramp() -> None:
    assert curvature_weight(0.0, 2.0) == 1.0
    assert curvature_weight(STRAIGHT_MM, 2.0) == 1.0
    assert curvature_weight((STRAIGHT_MM + FULL_MM) / 2, 2.0) == pytest.approx(2.0)
    assert curvature_weight(FULL_MM + 10, 2.0) == pytest.approx(3.0)
    assert curvature_weight(float("nan"), 2.0) == 1.0


def _entry(tmp_path: Path, name: str, bend_px: float | None) -> dict:
    masks: list[str | None] = [None] * len(MASK_NAMES)
    present = [0] * len(MASK_NAMES)
    if bend_px is not None:
        path = write_png(tmp_path / f"{name}_Ap_Vertebra.png", _column(bend_px) * 255)
        masks[MASK_NAMES.index("Ap_Vertebra")] = str(path)
        present[MASK_NAMES.index("Ap_Vertebra")] = 1
    return {"study_id": name, "masks": masks, "mask_present": present, "meta_ap": {"spacing": [0.5, 0.5]}}


def test_sampler_draws_curved_studies_more_often(tmp_path: Path) -> None:
    entries = [_entry(tmp_path, "straight", 0.0), _entry(tmp_path, "bent", 60.0), _entry(tmp_path, "unmasked", None)]
    assert curvature_sampler(entries, 0.0) is None  # off: the loader shuffles
    with pytest.raises(ValueError, match="curvature_oversampling"):
        curvature_sampler(entries, -1.0)

    sampler = curvature_sampler(entries, 2.0)
    assert sampler is not None and len(sampler) == 3
    assert torch.allclose(sampler.weights, torch.tensor([1.0, 3.0, 1.0], dtype=torch.double))
    torch.manual_seed(0)
    drawn = Counter(i for _ in range(400) for i in sampler)
    assert drawn[1] > 2 * drawn[0] and drawn[1] > 2 * drawn[2]
