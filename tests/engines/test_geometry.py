"""Working canvas <-> original image: what the loader places, the writer maps back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spine_app.data.study_transforms import fit_geometry, fit_to_canvas
from spine_app.engines.writer import exposed_film_rows, to_original


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


@pytest.mark.parametrize("shape", [(1300, 980), (600, 900)])
def test_the_exposed_field_is_placed_back_on_the_film(shape: tuple[int, int]) -> None:
    """A film whose top 10 % and bottom 5 % lie under white collimator blades: the rows the writer's
    morphometry takes as the exposed field are those rows of the original film, within a pixel or two."""
    rng = np.random.default_rng(0)
    film = rng.uniform(0.1, 0.9, shape).astype(np.float32)
    first, last = int(0.10 * shape[0]), int(0.95 * shape[0]) - 1
    film[:first] = 1.0
    film[last + 1 :] = 1.0
    canvas = fit_to_canvas(film[None], (384, 288))
    scale, _, _, top, left = fit_geometry(shape, (384, 288))
    geom = torch.tensor([*shape, scale, top, left, 0.2, 0.2])
    rows = exposed_film_rows({"image_lat": canvas[None]}, 0, geom)
    assert rows is not None and abs(rows[0] - first) <= 2 / scale and abs(rows[1] - last) <= 2 / scale
    assert exposed_film_rows({}, 0, geom) is None  # no canvas film in the batch: no field
