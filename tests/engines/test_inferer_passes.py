"""The study inferer runs each view once through the encoder and decoder when a film is one window,
and gives the same outputs as the separate classifier, window and level-head passes."""

from __future__ import annotations

import torch

from spine_app.engines.inferer import StudyInferer, predicted_levels
from spine_app.networks import SpineMultiTaskNet
from spine_app.networks.levels import LevelBatch

CANVAS = (96, 64)


def _net() -> SpineMultiTaskNet:
    torch.manual_seed(0)
    return SpineMultiTaskNet(decoder_channels=(16, 16, 8, 8, 8)).eval()


def _encoder_calls(net: SpineMultiTaskNet) -> list[int]:
    calls: list[int] = []
    net.unet.encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _inputs(size: tuple[int, int] = CANVAS) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"ap": torch.rand(2, 1, *size), "lat": torch.rand(2, 1, *size), "present": torch.ones(2, 2)}


def test_one_window_films_run_the_encoder_once_per_view_with_the_separate_passes_values() -> None:
    net, inputs = _net(), _inputs()
    calls = _encoder_calls(net)
    with torch.no_grad():
        out = StudyInferer(roi_size=CANVAS)(inputs, net)
        assert len(calls) == 2  # AP and LAT once each: masks, study logits and level head share them
        expected = net.classify(inputs["ap"], inputs["lat"], inputs["present"])
        for key in ("cls", "cls_ap", "cls_lat"):
            torch.testing.assert_close(out[key], expected[key])
        for view in ("ap", "lat"):
            torch.testing.assert_close(out[f"seg_{view}"], net(inputs[view]), atol=1e-5, rtol=1e-4)
        levels = predicted_levels(out["seg_lat"], inputs["present"][:, 1], lat=inputs["lat"])
        separate = net.level_logits(inputs["lat"], levels)  # runs the LAT film again
    torch.testing.assert_close(out["level_logits"], separate["level_logits"], atol=1e-5, rtol=1e-4)


def test_level_logits_from_a_pass_equal_a_fresh_pass_on_given_boxes() -> None:
    net, lat = _net(), torch.rand(1, 1, *CANVAS)
    boxes = LevelBatch(
        centre=torch.tensor([[[30.0, 32.0], [60.0, 32.0]]]),
        axis=torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]),
        size=torch.tensor([[12.0, 12.0]]),
        valid=torch.tensor([[1.0, 1.0]]),
    )
    with torch.no_grad():
        reused = net.level_logits(lat, boxes, net.view_pass(lat))
        fresh = net.level_logits(lat, boxes)
    torch.testing.assert_close(reused["level_logits"], fresh["level_logits"])
    torch.testing.assert_close(reused["cls_levels"], fresh["cls_levels"])


def test_a_film_larger_than_the_window_is_stitched_and_classified_whole() -> None:
    net, inputs = _net(), _inputs((160, 64))
    calls = _encoder_calls(net)
    with torch.no_grad():
        out = StudyInferer(roi_size=CANVAS)(inputs, net)
        expected = net.classify(inputs["ap"], inputs["lat"], inputs["present"])
    assert len(calls) > 2  # windows, the whole-film classifier and the level head: separate passes
    assert out["seg_ap"].shape == (2, 8, 160, 64)
    torch.testing.assert_close(out["cls"], expected["cls"])


def test_the_shared_evaluation_path_runs_each_film_once_with_forward_studys_values() -> None:
    from spine_app.evaluation.runner import plain_forward

    net, inputs = _net(), _inputs()
    calls = _encoder_calls(net)
    with torch.no_grad():
        out = plain_forward(inputs, net)
        assert len(calls) == 2  # bench compare's latency column counts what spine-app infer runs
        expected = net.forward_study(inputs["ap"], inputs["lat"], inputs["present"])
        levels = predicted_levels(out["seg_lat"], inputs["present"][:, 1], lat=inputs["lat"])
        separate = net.level_logits(inputs["lat"], levels)
    for key in ("cls", "cls_ap", "cls_lat", "seg_ap", "seg_lat"):
        torch.testing.assert_close(out[key], expected[key], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["level_logits"], separate["level_logits"], atol=1e-5, rtol=1e-4)
