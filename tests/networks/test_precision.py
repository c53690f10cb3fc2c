"""Mixed precision: the ``amp``/``channels_last`` settings and the bf16 autocast path on the CPU."""

from __future__ import annotations

import pytest
import torch

from spine_app.losses import MultiTaskLoss
from spine_app.networks import SpineMultiTaskNet, StudyModel, resolve_precision
from spine_app.networks.precision import Precision, cpu_has_native_bf16


@pytest.mark.parametrize(
    ("amp", "expected"),
    [("off", None), (False, None), ("false", None), ("fp32", None), ("bf16", torch.bfloat16), ("BF16", torch.bfloat16)],
)
def test_amp_settings_parse(amp, expected) -> None:
    assert resolve_precision(amp, "cpu").dtype == expected


def test_amp_auto_follows_the_cpu() -> None:
    auto = resolve_precision("auto", "cpu")
    assert auto.dtype == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert resolve_precision(True, "cpu") == auto
    assert auto.channels_last == (auto.dtype is not None)  # channels-last auto: on with mixed precision
    assert not auto.engine_amp


def test_channels_last_setting_and_bad_values() -> None:
    assert resolve_precision("off", "cpu", "true").channels_last
    assert not resolve_precision("bf16", "cpu", False).channels_last
    with pytest.raises(ValueError, match="amp 'fast' is not one of"):
        resolve_precision("fast", "cpu")
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="channels_last 'maybe'"):
        resolve_precision("off", "cpu", "maybe")


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {k: torch.rand(2, 1, 64, 64, generator=g) for k in ("ap", "lat")}
    batch |= {f"seg_{v}": (torch.rand(2, 8, 64, 64, generator=g) > 0.8).float() for v in ("ap", "lat")}
    batch |= {f"avail_{v}": torch.ones(2, 8) for v in ("ap", "lat")}
    return batch | {"label": torch.tensor([0.0, 1.0]), "present": torch.ones(2, 2)}


def test_bf16_autocast_forward_backward_is_finite_and_close_to_fp32() -> None:
    torch.manual_seed(0)
    net = SpineMultiTaskNet(decoder_channels=(32, 16, 16, 8, 8))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    batch, loss_fn = _batch(), MultiTaskLoss()
    losses, grads = {}, {}
    for name, precision in {"fp32": Precision(), "bf16": Precision(torch.bfloat16, "cpu", True)}.items():
        net.load_state_dict(state)
        model = StudyModel(net, precision).train()
        out = model(batch)
        assert all(v.dtype == torch.float32 for v in out.values())  # the loss always sees fp32
        loss = loss_fn(out, batch)
        model.zero_grad()
        loss.backward()
        losses[name] = float(loss)
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert torch.isfinite(loss) and torch.isfinite(grads[name]).all()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    cosine = torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0)
    assert cosine > 0.7  # bf16 rounding of a random-init net (measured ~0.8); a broken path gives ~0
