"""TorchScript export of the bundle's network, built from ``bundle/configs/inference.yaml``.

Two files, traced (MONAI's ResNet blocks cannot be scripted; the network's traceable shortcuts,
:class:`spine_app.networks.multitask.ZeroPadShortcut`, let the trace take any batch size and any
size that is a multiple of 32):

- ``model.ts``: ``image (B, 1, H, W) -> mask logits (B, 8, H, W)``, the same as the bundle's
  ``python -m monai.bundle ckpt_export`` (sliding-window or whole-canvas use);
- ``study.ts``: ``(ap (B, 1, H, W), lat (B, 1, H, W), present (B, 2)) -> (seg_ap, seg_lat, cls,
  cls_ap, cls_lat)`` logits, everything the inference writer needs.

Each file is written to a temporary name and renamed; ``export_info.json`` beside them records the
canvas, the weights' SHA-256 and the versions.

ONNX (``export_onnx``, with the ``onnx`` extra: onnx, onnxscript, onnxruntime): ``model.onnx`` and
``study.onnx`` with the same inputs and outputs, exported by ``torch.onnx.export`` (torch.export
based) with a dynamic batch and any height and width that are multiples of 32, checked against the
eager network with onnxruntime before they are kept.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spine_app import __version__
from spine_app.bundle import bundle_version, load_bundle_network, weights_path
from spine_app.data.io import fsync_folder, write_atomic
from spine_app.engines.writer import sha256_of, write_json
from spine_app.networks.multitask import SpineMultiTaskNet

STUDY_OUTPUTS = ("seg_ap", "seg_lat", "cls", "cls_ap", "cls_lat")


class StudyForward(nn.Module):
    """``forward_study`` with a tuple output (in STUDY_OUTPUTS order), for tracing."""

    def __init__(self, net: SpineMultiTaskNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, ap: torch.Tensor, lat: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net.forward_study(ap, lat, present)
        return tuple(out[k] for k in STUDY_OUTPUTS)


def export_torchscript(out_dir: str | Path, bundle_dir: str | Path, model: str | Path | None = None) -> dict[str, Any]:
    """Trace ``model.ts`` and ``study.ts`` into ``out_dir``; returns the export_info dict."""
    net, canvas = load_bundle_network(bundle_dir, model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = torch.rand(1, 1, *canvas)
    with torch.no_grad():
        masks = torch.jit.trace(net, image)
        study = torch.jit.trace(StudyForward(net), (image, torch.rand(1, 1, *canvas), torch.ones(1, 2)))
    write_atomic(out_dir / "model.ts", lambda tmp: torch.jit.save(masks, str(tmp)))
    write_atomic(out_dir / "study.ts", lambda tmp: torch.jit.save(study, str(tmp)))
    files = {
        "model.ts": "image (B,1,H,W) -> mask logits (B,8,H,W)",
        "study.ts": "ap, lat (B,1,H,W), present (B,2) -> " + ", ".join(STUDY_OUTPUTS),
    }
    return _write_info(out_dir / "export_info.json", files, canvas, bundle_dir, model)


def _write_info(
    path: Path, files: dict[str, str], canvas: list[int], bundle_dir: str | Path, model: str | Path | None, **extra: Any
) -> dict[str, Any]:
    """Write and return what an export holds and where it came from: files, canvas, weights and their
    SHA-256, versions, plus ``extra``."""
    model_path = weights_path(bundle_dir, model)
    info = {
        "files": files,
        "canvas": canvas,
        "weights": {"path": str(model_path), "sha256": sha256_of(model_path)},
        "bundle_version": bundle_version(str(bundle_dir)),
        "spine_app_version": __version__,
        "torch_version": torch.__version__,
        **extra,
    }
    write_json(path, info)
    return info


def _onnx_file(
    module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], outputs: list[str], path: Path
) -> None:
    """Export ``module`` to ONNX at ``path`` (atomically) with a dynamic batch and 32-multiple sizes."""
    from torch.export import Dim

    batch, height, width = Dim("batch", min=1, max=64), Dim("h32", min=2, max=256), Dim("w32", min=2, max=256)
    image_dims = {0: batch, 2: 32 * height, 3: 32 * width}
    shapes = {n: ({0: batch} if n == "present" else image_dims) for n in names}

    def write(tmp: Path) -> None:
        program = torch.onnx.export(
            module,
            args,
            input_names=names,
            output_names=outputs,
            dynamic_shapes=shapes,
            dynamo=True,
            opset_version=18,
            verbose=False,
        )
        program.save(str(tmp))

    write_atomic(path, write)


def export_onnx(out_dir: str | Path, bundle_dir: str | Path, model: str | Path | None = None) -> dict[str, Any]:
    """Write ``model.onnx`` and ``study.onnx`` into ``out_dir``; each is run with onnxruntime on a new
    batch size and image size and must match the eager network (else ValueError, nothing kept)."""
    import numpy as np
    import onnxruntime as ort

    net, canvas = load_bundle_network(bundle_dir, model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = torch.rand(1, 1, *canvas)
    files = {
        "model.onnx": (net, (image,), ["image"], ["masks"]),
        "study.onnx": (
            StudyForward(net),
            (image, torch.rand(1, 1, *canvas), torch.ones(1, 2)),
            ["ap", "lat", "present"],
            list(STUDY_OUTPUTS),
        ),
    }
    check = (
        torch.rand(2, 1, canvas[0] + 64, canvas[1]),
        torch.rand(2, 1, canvas[0] + 64, canvas[1]),
        torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
    )
    worst = {}
    for name, (module, args, inputs, outputs) in files.items():
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            candidate = Path(tmp) / name
            _onnx_file(module, args, inputs, outputs, candidate)
            session = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
            feed = dict(zip(inputs, (t.numpy() for t in check[: len(inputs)])))
            with torch.no_grad():
                eager = module(*check[: len(inputs)])
            eager = eager if isinstance(eager, tuple) else (eager,)
            worst[name] = max(float(np.abs(o - e.numpy()).max()) for o, e in zip(session.run(None, feed), eager))
            if worst[name] > 1e-3:
                raise ValueError(f"{out_dir / name}: ONNX output differs from the eager network by {worst[name]:.2g}")
            os.replace(candidate, out_dir / name)  # the candidate was fsynced by write_atomic
            fsync_folder(out_dir)
    files = {
        "model.onnx": "image (B,1,H,W) -> masks: mask logits (B,8,H,W); H, W multiples of 32",
        "study.onnx": "ap, lat (B,1,H,W), present (B,2) -> " + ", ".join(STUDY_OUTPUTS),
    }
    return _write_info(
        out_dir / "onnx_info.json",
        files,
        canvas,
        bundle_dir,
        model,
        max_abs_difference_vs_eager=worst,
        onnxruntime_version=ort.__version__,
    )
