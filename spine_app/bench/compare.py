"""``spine-app bench compare``: the shared-encoder multi-task network against the seed projects'
approach (one segmentation network per mask plus a two-view classifier) and two ablations, on the
same split, the same batches and the same number of optimisation steps.

Variants (each exposes ``forward_study`` like :class:`SpineMultiTaskNet`, so one loss, one training
loop and one metric serve all):

- ``ours``: the bundle's network (masks + Damaged head + level head, one encoder) with the
  bundle's ``cls_grad_scale`` and ``level_grad_scale`` (train.yaml);
- ``seed-style``: eight single-channel FlexibleUNets of the same encoder family, each trained only
  on its view's channel, and a two-view classifier (one encoder per view, fused pooled features);
- ``ours, no classification head``: ours trained with the classification weight 0;
- ``ours, classification only``: ours trained with the segmentation weight 0 (the classification
  loss then trains the encoder: ``cls_grad_scale`` 1);
- ``ours, classifier trains the encoder`` / ``ours, classifier reads the encoder``: ours with
  ``cls_grad_scale`` 1 / 0, whichever the bundle's default is not (does sharing the encoder
  between the tasks help?).

Every variant starts its mask outputs at the channel priors, as the bundle's recipe does. Every
score comes from :class:`spine_app.engines.StudyMetrics` (the bundle's metric); MACs per study
from ``torch.utils.flop_counter``; latency is the median network time per study.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import FlexibleUNet
from torch import nn

from spine_app.bench.speed import to_device, training_batches
from spine_app.channels import CHANNEL_VIEW, MASK_NAMES
from spine_app.losses import MultiTaskLoss
from spine_app.networks import SpineMultiTaskNet
from spine_app.networks.levels import LevelBatch
from spine_app.networks.multitask import init_output_bias, set_prior_bias, traceable_shortcuts
from spine_app.networks.precision import FP32, Precision, resolve_precision

logger = logging.getLogger(__name__)


class SeedStyleModels(nn.Module):
    """Eight one-mask segmentation networks and a two-view classifier, behind ``forward_study``.

    Args:
        backbone: encoder of every network (the same family as ours).
        decoder_channels: decoder widths of the segmentation networks.
    """

    def __init__(self, backbone: str = "resnet18", decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16)) -> None:
        super().__init__()
        self.segmenters = nn.ModuleList(
            FlexibleUNet(1, 1, backbone, pretrained=False, decoder_channels=decoder_channels, spatial_dims=2)
            for _ in MASK_NAMES
        )
        self.classifier = SpineMultiTaskNet(backbone, decoder_channels=decoder_channels)  # AP encoder + heads
        self.classifier.unet.decoder = nn.Identity()  # the classifier has no decoder
        self.classifier.unet.segmentation_head = nn.Identity()
        self.lat_encoder = SpineMultiTaskNet(backbone, decoder_channels=decoder_channels).unet.encoder
        traceable_shortcuts(self.segmenters)  # the SpineMultiTaskNet encoders already have them

    def forward_study(
        self, ap: torch.Tensor, lat: torch.Tensor, present: torch.Tensor, levels: object = None
    ) -> dict[str, torch.Tensor]:
        """Seed-style outputs (``levels`` ignored: the seed approach has no level head)."""
        seg = {
            "ap": torch.zeros(ap.shape[0], len(MASK_NAMES), *ap.shape[2:], device=ap.device),
            "lat": torch.zeros(lat.shape[0], len(MASK_NAMES), *lat.shape[2:], device=lat.device),
        }
        for c, view in enumerate(CHANNEL_VIEW):
            image = ap if view == "AP" else lat
            seg[view.lower()][:, c : c + 1] = self.segmenters[c](image)
        cls = self.classifier
        emb_ap = cls._embedding(cls.unet.encoder(ap)[-1])
        emb_lat = cls._embedding(self.lat_encoder(lat)[-1])
        return {"seg_ap": seg["ap"], "seg_lat": seg["lat"], **cls.study_logits(emb_ap, emb_lat, present)}


def bundle_grad_scale(key: str) -> float:
    """The bundle's default gradient scale ``key`` (``cls_grad_scale`` or ``level_grad_scale``,
    bundle/configs/train.yaml)."""
    from spine_app.bundle import config_value

    return float(config_value("train.yaml", key, 1.0))


def _variants() -> dict[str, tuple[Any, dict[str, float]]]:
    """variant -> (network builder, loss weights)."""
    ours, level = bundle_grad_scale("cls_grad_scale"), bundle_grad_scale("level_grad_scale")
    other = 0.0 if ours else 1.0
    other_name = "ours, classifier trains the encoder" if other else "ours, classifier reads the encoder"

    def net(cls_grad_scale: float) -> SpineMultiTaskNet:
        return SpineMultiTaskNet(cls_grad_scale=cls_grad_scale, level_grad_scale=level)

    return {
        "ours": (lambda: net(ours), {}),
        "seed-style (8 nets + classifier)": (lambda: SeedStyleModels(), {}),
        "ours, no classification head": (lambda: net(ours), {"cls_weight": 0.0}),
        "ours, classification only": (lambda: net(1.0), {"seg_weight": 0.0}),
        other_name: (lambda: net(other), {}),
    }


VARIANTS = _variants()
#: short names for the command line (the variant names contain commas)
SHORT_NAMES = dict(zip(("ours", "seed-style", "no-cls", "cls-only", "other-sharing"), VARIANTS))


def variant_name(name: str) -> str:
    """A variant's full name from its full or short name; ValueError for an unknown one."""
    full = SHORT_NAMES.get(name, name)
    if full not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(SHORT_NAMES)}")
    return full


def init_output_biases(model: nn.Module, priors: list[float]) -> None:
    """Start every variant's mask outputs at the channel priors, as the bundle's recipe does
    (``output_bias_init``): our network's 8-channel head, or each seed-style network's one channel."""
    if isinstance(model, SpineMultiTaskNet):
        init_output_bias(model, priors)
    elif isinstance(model, SeedStyleModels):
        for c, segmenter in enumerate(model.segmenters):
            set_prior_bias(segmenter.segmentation_head, [priors[c]])


def macs_per_study(model: nn.Module, canvas: tuple[int, int]) -> float:
    """Multiply-accumulates of one study's forward pass (both views), from torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    ap, lat = torch.rand(1, 1, *canvas), torch.rand(1, 1, *canvas)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.forward_study(ap, lat, torch.ones(1, 2))
    return counter.get_total_flops() / 2


def train_variant(
    model: nn.Module,
    loss_weights: dict[str, float],
    datalist: str,
    steps: int,
    batch: int,
    canvas: tuple[int, int],
    seed: int,
    workers: int,
    device: torch.device,
    precision: Precision = FP32,
) -> float:
    """Train ``model`` for ``steps`` AdamW steps (forward pass in ``precision``, loss in fp32);
    returns the wall time of the steps in seconds (the training split's deterministic preprocessing
    is cached before the clock starts, as the main job caches it, and shared by the variants)."""
    torch.manual_seed(seed)
    precision.prepare(model.to(device).train())
    loss_fn = MultiTaskLoss(**loss_weights).to(device)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-4)
    batches = training_batches(datalist, batch, canvas, workers, seed)
    start = time.perf_counter()
    from tqdm import tqdm

    for _ in tqdm(range(steps), desc="training steps", disable=not sys.stderr.isatty()):
        b = to_device(next(batches), device)
        levels = LevelBatch.from_batch(b) if isinstance(model, SpineMultiTaskNet) else None  # ours: the level head too
        with precision.autocast():
            out = model.forward_study(precision.to_input(b["ap"]), precision.to_input(b["lat"]), b["present"], levels)
        loss = loss_fn({key: value.float() for key, value in out.items()}, b)  # the loss in fp32
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def evaluate_variant(model: nn.Module, datalist: str, canvas: tuple[int, int], device: torch.device) -> dict[str, Any]:
    """Bundle metric records on the test split plus the median network latency per study."""
    from spine_app.data.importer import load_datalist
    from spine_app.evaluation.runner import SplitRunner, plain_forward

    test = load_datalist(datalist)["test"]
    runner = SplitRunner(model, test, list(canvas), device, batch_size=1, workers=0, inferer=plain_forward)
    records = runner.run()
    return {"records": records, "latency_s": float(np.median(runner.forward_seconds))}


def compare(
    datalist: str,
    out: str | Path,
    steps: int = 300,
    batch: int = 4,
    canvas: tuple[int, int] = (384, 288),
    seed: int = 0,
    workers: int = 1,
    device: str = "cpu",
    variants: list[str] | None = None,
    amp: str = "auto",
) -> dict[str, Any]:
    """Train and evaluate every variant with the same budget; write compare.json/.md/.png into ``out``.

    Every variant trains in the same ``amp`` setting as the bundle (``auto``: bf16 autocast and
    channels-last on CPUs with native bf16, see :mod:`spine_app.networks.precision`) and is scored in fp32.
    """
    from spine_app.bench.compare_report import write_compare_report
    from spine_app.engines.dataset import mask_priors

    dev = torch.device(device)
    priors = mask_priors(datalist, tuple(canvas))
    precision = resolve_precision(amp, dev)
    results: dict[str, Any] = {
        "steps": steps,
        "batch": batch,
        "canvas": list(canvas),
        "seed": seed,
        "precision": precision.name,
        "variants": {},
    }
    for name in [variant_name(v) for v in variants] if variants else list(VARIANTS):
        build, weights = VARIANTS[name]
        torch.manual_seed(seed)
        model = build()
        init_output_biases(model, priors)
        params = sum(p.numel() for p in model.parameters())
        macs = macs_per_study(model, canvas)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = train_variant(model, weights, datalist, steps, batch, canvas, seed, workers, dev, precision)
        model.to(memory_format=torch.contiguous_format)  # scored in fp32, the standard layout
        peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
        evaluation = evaluate_variant(model, datalist, canvas, dev)
        results["variants"][name] = {
            "params": params,
            "macs_per_study": macs,
            "train_s": seconds,
            "peak_train_mib": peak,
            "loss_weights": weights,
            **evaluation,
        }
        logger.warning("compare: %s trained %d steps in %.0f s", name, steps, seconds)  # progress of a long run
    write_compare_report(results, out)
    return results
