"""Network shapes for both views, a missing view, and every supported backbone."""

from __future__ import annotations

import pytest
import torch

from spine_app.networks import SUPPORTED_BACKBONES, SpineMultiTaskNet, StudyModel
from tests.helpers import twin_networks


@pytest.fixture(scope="module")
def net() -> SpineMultiTaskNet:
    torch.manual_seed(0)
    return SpineMultiTaskNet("resnet18").eval()


def test_forward_gives_eight_mask_logits(net) -> None:
    assert net(torch.rand(2, 1, 96, 64)).shape == (2, 8, 96, 64)


def test_study_forward_shapes_with_different_view_sizes(net) -> None:
    out = net.forward_study(torch.rand(2, 1, 96, 64), torch.rand(2, 1, 64, 96), torch.ones(2, 2))
    assert out["seg_ap"].shape == (2, 8, 96, 64) and out["seg_lat"].shape == (2, 8, 64, 96)
    assert out["cls"].shape == out["cls_ap"].shape == out["cls_lat"].shape == (2,)


def test_missing_view_does_not_influence_the_fused_logit(net) -> None:
    ap = torch.rand(1, 1, 64, 64)
    present = torch.tensor([[1.0, 0.0]])
    with torch.no_grad():
        a = net.forward_study(ap, torch.zeros(1, 1, 64, 64), present)["cls"]
        b = net.forward_study(ap, torch.rand(1, 1, 64, 64), present)["cls"]
    torch.testing.assert_close(a, b)


def test_study_model_wraps_forward_study(net) -> None:
    batch = {"ap": torch.rand(1, 1, 64, 64), "lat": torch.rand(1, 1, 64, 64), "present": torch.ones(1, 2)}
    with torch.no_grad():
        torch.testing.assert_close(StudyModel(net)(batch)["cls"], net.forward_study(**batch)["cls"])


@pytest.mark.parametrize("backbone", SUPPORTED_BACKBONES)
def test_backbones_build(backbone: str) -> None:
    out = (
        SpineMultiTaskNet(backbone)
        .eval()
        .forward_study(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64), torch.ones(1, 2))
    )
    assert out["seg_ap"].shape == (1, 8, 64, 64)


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="backbone 'vgg' is not supported"):
        SpineMultiTaskNet("vgg")


def test_classify_equals_the_study_forward_logits(net) -> None:
    ap, lat, present = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    with torch.no_grad():
        full, only = net.forward_study(ap, lat, present), net.classify(ap, lat, present)
    for key in ("cls", "cls_ap", "cls_lat"):
        torch.testing.assert_close(only[key], full[key])


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_cls_grad_scale_scales_only_the_classifier_gradient_into_the_encoder(scale: float) -> None:
    torch.manual_seed(0)
    plain, scaled = twin_networks((16, 16, 8, 8, 8), cls_grad_scale=scale)  # both see the same forward
    ap, lat, present = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64), torch.ones(2, 2)
    grads = []
    for model in (plain, scaled):
        out = model.forward_study(ap, lat, present)
        model.zero_grad()
        out["cls"].sum().backward()
        grads.append((out, model.unet.encoder.conv1.weight.grad.clone(), model.fusion_head.weight.grad.clone()))
    (out_p, enc_p, head_p), (out_s, enc_s, head_s) = grads
    assert all(torch.equal(out_p[k], out_s[k]) for k in out_p)  # forward values do not depend on the scale
    assert torch.allclose(head_s, head_p)  # the classifier itself learns as before
    assert enc_p.abs().sum() > 0 and torch.allclose(enc_s, scale * enc_p, atol=1e-7)
