"""Validation/evaluation inferer: sliding-window masks per view plus the whole-study classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SlidingWindowInferer
from torch import nn

from spine_app.networks.multitask import SpineMultiTaskNet, StudyModel


def unwrap_network(network: nn.Module) -> SpineMultiTaskNet:
    """The SpineMultiTaskNet inside a StudyModel and/or DistributedDataParallel wrapper."""
    module = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    return module.net if isinstance(module, StudyModel) else module


class StudyInferer(Inferer):
    """Masks by gaussian-blended sliding windows of ``roi_size`` on each view; the Normal/Damaged
    logits from one pass of the whole study (a classification vector cannot be window-stitched).

    ``__call__(inputs, network)`` takes the batch inputs {ap, lat, present} and returns the same
    dict as ``SpineMultiTaskNet.forward_study``.
    """

    def __init__(self, roi_size: Sequence[int], sw_batch_size: int = 2, overlap: float = 0.25) -> None:
        super().__init__()
        self.window = SlidingWindowInferer(
            roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian"
        )

    def __call__(
        self, inputs: dict[str, torch.Tensor], network: nn.Module, *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        net = unwrap_network(network)
        out = net.classify(inputs["ap"], inputs["lat"], inputs["present"])
        for view in ("ap", "lat"):
            out[f"seg_{view}"] = self.window(inputs[view], net)
        return out
