"""TorchScript export from the bundle's inference config gives the eager model's outputs on new
inputs (a trace that froze part of its example input would fail here)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spine_app.bundle import BUNDLE_DIR, load_bundle_network
from spine_app.inference.export import STUDY_OUTPUTS, export_torchscript
from spine_app.networks import SpineMultiTaskNet


def test_export_matches_eager(tmp_path: Path) -> None:
    torch.manual_seed(1)
    weights = tmp_path / "model.pt"
    torch.save(SpineMultiTaskNet().state_dict(), weights)
    info = export_torchscript(tmp_path / "ts", BUNDLE_DIR, weights)
    assert json.loads((tmp_path / "ts" / "export_info.json").read_text())["canvas"] == info["canvas"]
    net, canvas = load_bundle_network(BUNDLE_DIR, weights)
    masks, study = (torch.jit.load(str(tmp_path / "ts" / name)) for name in ("model.ts", "study.ts"))
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # both views, AP only, LAT only
    for shape in ((3, 1, *canvas), (3, 1, canvas[0] + 64, canvas[1])):  # other inputs, batch and size than traced
        ap, lat = torch.rand(*shape), torch.rand(*shape)
        with torch.no_grad():
            eager = net.forward_study(ap, lat, present)
            assert torch.allclose(masks(ap), net(ap), atol=1e-4)
            for name, value in zip(STUDY_OUTPUTS, study(ap, lat, present)):
                assert torch.allclose(value, eager[name], atol=1e-4), name
    assert not list((tmp_path / "ts").glob("*.tmp"))


def test_onnx_export_matches_eager(tmp_path: Path) -> None:
    import os

    import pytest

    if os.environ.get("SPINE_APP_REQUIRE_EXTRAS") != "1":  # CI installs the extras: there it must run
        pytest.importorskip("onnxruntime", reason='ONNX extra not installed: pip install -e ".[onnx]"')
        pytest.importorskip("onnxscript")
    import numpy as np
    import onnxruntime as ort

    from spine_app.inference.export import export_onnx

    torch.manual_seed(2)
    weights = tmp_path / "model.pt"
    torch.save(SpineMultiTaskNet().state_dict(), weights)
    info = export_onnx(tmp_path / "onnx", BUNDLE_DIR, weights)
    assert max(info["max_abs_difference_vs_eager"].values()) < 1e-3
    net, canvas = load_bundle_network(BUNDLE_DIR, weights)
    masks = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    study = ort.InferenceSession(str(tmp_path / "onnx" / "study.onnx"), providers=["CPUExecutionProvider"])
    ap, lat = torch.rand(3, 1, canvas[0] - 64, canvas[1] + 32), torch.rand(3, 1, canvas[0] - 64, canvas[1] + 32)
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    with torch.no_grad():
        assert np.allclose(masks.run(None, {"image": ap.numpy()})[0], net(ap).numpy(), atol=1e-3)
        eager = net.forward_study(ap, lat, present)
    outputs = study.run(None, {"ap": ap.numpy(), "lat": lat.numpy(), "present": present.numpy()})
    for name, value in zip(STUDY_OUTPUTS, outputs):
        assert np.allclose(value, eager[name].numpy(), atol=1e-3), name
    assert not list((tmp_path / "onnx").glob("**/*.tmp")) and not list((tmp_path / "onnx").glob("tmp*"))
