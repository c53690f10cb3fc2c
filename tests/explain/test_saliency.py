"""Saliency maps of the study decision (spine_app.explain) on small networks."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from spine_app.explain import METHODS, nearest_level, peak_position, saliency_maps, scale_per_film
from spine_app.networks import SpineMultiTaskNet

SIZE = (96, 64)


def _net(seed: int) -> SpineMultiTaskNet:
    torch.manual_seed(seed)
    return SpineMultiTaskNet(decoder_channels=(16, 16, 16, 8, 8), embed_dim=16, dropout=0.0).eval()


def _films(n: int, seed: int, square_at: list[tuple[int, int] | None]) -> torch.Tensor:
    """Noise films; a bright 16 x 16 square at (row, col) where given (the "fracture" of the toy task)."""
    g = torch.Generator().manual_seed(seed)
    films = 0.3 * torch.rand(n, 1, *SIZE, generator=g)
    for i, where in enumerate(square_at):
        if where is not None:
            films[i, 0, where[0] : where[0] + 16, where[1] : where[1] + 16] = 1.0
    return films


@pytest.mark.parametrize("method", METHODS)
def test_maps_have_the_films_shape_and_lie_in_0_1(method: str) -> None:
    net = _net(0)
    ap, lat = torch.rand(2, 1, *SIZE), torch.rand(2, 1, *SIZE)
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    maps = saliency_maps(net, ap, lat, present, method)
    assert set(maps) == {"ap", "lat"}
    for view in ("ap", "lat"):
        assert maps[view].shape == (2, 1, *SIZE)
        assert float(maps[view].min()) >= 0.0 and float(maps[view].max()) <= 1.0
    assert float(maps["lat"][1].abs().max()) == 0.0  # the missing LAT view has no map
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # weights untouched


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="gradcam"):
        saliency_maps(_net(0), torch.rand(1, 1, *SIZE), torch.rand(1, 1, *SIZE), torch.ones(1, 2), "lime")


def test_scale_per_film_keeps_magnitudes_and_an_empty_map_empty() -> None:
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 1, 2] = 3.0
    maps[0, 0, 0, 0] = 1.5
    scaled = scale_per_film(maps)
    assert float(scaled[0, 0, 1, 2]) == 1.0 and float(scaled[0, 0, 0, 0]) == 0.5  # not flipped
    assert float(scaled[1].abs().max()) == 0.0


def test_peak_and_nearest_level() -> None:
    m = torch.zeros(100, 60)
    m[70:76, 30:36] = 1.0
    m[10, 5] = 1.0  # a single hot pixel does not win over a blob after smoothing
    peak = peak_position(m)
    assert peak is not None and 70 <= peak[0] <= 75 and 30 <= peak[1] <= 35
    centres = {"L1": (20.0, 32.0), "L2": (45.0, 32.0), "L3": (72.0, 32.0)}
    assert nearest_level(peak, centres) == "L3"
    assert nearest_level((72.0, 2000.0), centres) is None  # far from every vertebra
    assert peak_position(torch.zeros(10, 10)) is None and nearest_level(None, centres) is None


def test_trained_maps_find_the_evidence_and_randomised_weights_do_not() -> None:
    """Train a small net to call a study Damaged when its LAT film has a bright square; the map of
    the trained net peaks on the square, the map of the same net with random weights does not
    match it (the sanity check of Adebayo et al. 2018)."""
    torch.manual_seed(0)
    net = _net(1).train()
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    where = [(16, 8), (60, 40), (40, 24), (70, 10)]
    for step in range(60):
        labels = torch.tensor([1.0, 0.0] * 4)
        squares = [where[(step + i) % 4] if labels[i] > 0 else None for i in range(8)]
        lat, ap = _films(8, step, squares), _films(8, 1000 + step, [None] * 8)
        logits = net.classify(ap, lat, torch.ones(8, 2))["cls"]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    lat, ap = _films(1, 999, [(56, 32)]), _films(1, 998, [None])
    assert float(torch.sigmoid(net.classify(ap, lat, torch.ones(1, 2))["cls"])) > 0.8
    trained = saliency_maps(net, ap, lat, torch.ones(1, 2), "gradcam")["lat"][0, 0]
    peak = peak_position(trained)
    assert peak is not None and 56 - 16 <= peak[0] <= 72 + 16 and 32 - 16 <= peak[1] <= 48 + 16
    randomised = saliency_maps(_net(7), ap, lat, torch.ones(1, 2), "gradcam")["lat"][0, 0]
    rho = spearmanr(trained.flatten().numpy(), randomised.flatten().numpy()).statistic
    assert rho < 0.5, rho
