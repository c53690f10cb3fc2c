"""Working canvas <-> original image: what the loader places, the writer maps back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spine_app.data.study_transforms import fit_geometry, fit_to_canvas
from spine_app.engines.writer import to_original


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (1337, 911)])
def test_masks_survive_the_round_trip(shape: tuple[int, int]) -> None:
    image = np.zeros((1, *shape), np.float32)
    image[0, shape[0] // 3 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] = 1.0
    canvas = fit_to_canvas(image, (128, 96))
    assert canvas.shape == (1, 128, 96)
    scale, rows, cols, top, left = fit_geometry(shape, (128, 96))
    assert rows <= 128 and cols <= 96 and (rows == 128 or cols == 96)  # aspect kept, one side fills
    logits = (canvas - 0.5) * 20
    back = to_original(logits, torch.tensor([*shape, scale, top, left, 0.0, 0.0]))
    assert back.shape == (1, *shape)
    assert ((back[0] > 0.5).numpy() == (image[0] > 0.5)).mean() > 0.995
