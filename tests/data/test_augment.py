"""The exposure region augmentation: a band of the film pushed toward white with its contrast
shrunk, the masks and the other transforms' draws untouched, and the refit's switch for it."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import Compose, RandGaussianNoised

from spine_app.data.augment import RandExposureRegiond, exposure_region_prob


def film(rows: int = 120, cols: int = 80) -> dict[str, torch.Tensor]:
    """A LAT film with vertical stripes (the 'bodies', grey 0.4/0.6) on a black left margin."""
    image = torch.full((1, rows, cols), 0.4)
    image[:, :, 40:] = torch.where(torch.arange(rows)[:, None] % 20 < 10, 0.6, 0.4).expand(rows, cols - 40)
    image[:, :, :10] = 0.0  # padding / air
    return {"lat": image, "seg_lat": (image > 0.5).float()}


def test_a_band_from_one_edge_gets_brighter_with_less_contrast_and_the_rest_stays() -> None:
    t = RandExposureRegiond(keys=["lat"], prob=1.0, strength=(0.9, 0.9), extent=(0.4, 0.4), softness=(0.02, 0.02))
    t.set_random_state(seed=3)
    data = film()
    out = t(data)
    before, after = data["lat"][0], out["lat"][0]
    band = slice(80, 120) if float(after[115, 50]) > float(before[115, 50]) + 0.1 else slice(0, 40)
    other = slice(0, 40) if band.start == 80 else slice(80, 120)
    assert torch.allclose(after[other, 40:], before[other, 40:], atol=1e-3)  # outside the band: as it was
    contrast = lambda x: float(x[band, 40:].max() - x[band, 40:].min())  # noqa: E731
    assert float(after[band, 40:].min()) > 0.57  # near the film's own white (0.6), from 0.4-0.6
    assert contrast(after) < 0.2 * contrast(before)  # 1 - 0.9 of the stripes' contrast, give or take the step
    assert torch.equal(after[:, :10], before[:, :10])  # black stays black
    assert torch.equal(out["seg_lat"], data["seg_lat"])  # masks are not images
    assert after.min() >= 0 and after.max() <= 0.6 + 1e-6  # within the film's own grey range


def test_both_edges_are_drawn_and_prob_zero_changes_nothing() -> None:
    t = RandExposureRegiond(keys=["lat"], prob=1.0, strength=(0.8, 0.8), extent=(0.3, 0.3))
    ends = set()
    for seed in range(12):
        t.set_random_state(seed=seed)
        after = t(film())["lat"][0]
        ends.add("bottom" if float(after[115, 50]) > 0.55 else "top")  # row 115 at 0.4 before
    assert ends == {"bottom", "top"}
    off = RandExposureRegiond(keys=["lat"], prob=0.0)
    data = film()
    assert torch.equal(off(data)["lat"], data["lat"])


def test_appended_last_it_leaves_the_other_transforms_draws_alone() -> None:
    """The training pipeline carries it last: at probability 0 the batches are those of a pipeline
    without it (the shipped trunk's training is reproduced byte for byte)."""
    noise = RandGaussianNoised(keys=["lat"], prob=1.0, std=0.1)
    with_it = Compose([noise, RandExposureRegiond(keys=["lat"], prob=0.0)])
    with_it.set_random_state(seed=5)
    a = with_it(film())["lat"]
    without = Compose([noise])
    without.set_random_state(seed=5)
    assert torch.equal(a, without(film())["lat"])


def test_the_refit_switch_sets_and_restores_the_probability_and_refuses_a_pipeline_without_it() -> None:
    inner = RandExposureRegiond(keys=["lat"], prob=0.0)
    pipeline = Compose([RandGaussianNoised(keys=["lat"], prob=0.0), Compose([inner])])
    with exposure_region_prob(pipeline, 0.4) as found:
        assert found == 1 and inner.prob == 0.4
    assert inner.prob == 0.0
    with exposure_region_prob(pipeline, None):
        assert inner.prob == 0.0
    with pytest.raises(ValueError, match="no RandExposureRegiond"), exposure_region_prob(Compose([]), 0.3):
        pass
    with pytest.raises(ValueError, match="within"), exposure_region_prob(pipeline, 1.5):
        pass
    with pytest.raises(ValueError, match="strength"):
        RandExposureRegiond(strength=(0.9, 0.5))
