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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from spine_app import __version__
from spine_app.data.io import write_atomic
from spine_app.engines.dataset import bundle_version
from spine_app.engines.writer import sha256_of, write_json
from spine_app.networks.multitask import SpineMultiTaskNet, load_weights

STUDY_OUTPUTS = ("seg_ap", "seg_lat", "cls", "cls_ap", "cls_lat")


class StudyForward(nn.Module):
    """``forward_study`` with a tuple output (in STUDY_OUTPUTS order), for tracing."""

    def __init__(self, net: SpineMultiTaskNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, ap: torch.Tensor, lat: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net.forward_study(ap, lat, present)
        return tuple(out[k] for k in STUDY_OUTPUTS)


def load_bundle_network(bundle_dir: str | Path, model: str | Path | None = None) -> tuple[SpineMultiTaskNet, list[int]]:
    """(network in eval mode with the weights loaded, working canvas [H, W]) from the inference config."""
    from monai.bundle import ConfigParser

    bundle_dir = Path(bundle_dir)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle_dir)
    model_path = Path(model) if model else bundle_dir / "models" / "model.pt"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no model weights (train one, see README, or pass --model)")
    net = load_weights(parser.get_parsed_content("network_def"), str(model_path))
    return net.eval(), [int(v) for v in parser.get_parsed_content("patch_size")]


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
    model_path = Path(model) if model else Path(bundle_dir) / "models" / "model.pt"
    info = {
        "files": {"model.ts": "image (B,1,H,W) -> mask logits (B,8,H,W)",
                  "study.ts": "ap, lat (B,1,H,W), present (B,2) -> " + ", ".join(STUDY_OUTPUTS)},
        "canvas": canvas,
        "weights": {"path": str(model_path), "sha256": sha256_of(model_path)},
        "bundle_version": bundle_version(str(bundle_dir)),
        "spine_app_version": __version__,
        "torch_version": torch.__version__,
    }  # fmt: skip
    write_json(out_dir / "export_info.json", info)
    return info
