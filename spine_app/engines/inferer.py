"""Validation/evaluation inferer: sliding-window masks per view plus the whole-study classifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer, SlidingWindowInferer
from torch import nn

from spine_app.channels import LINE_CHANNELS, MASK_NAMES, VIEW_KEYS, seg_key
from spine_app.data.facing import lat_faces_right
from spine_app.data.levels import INFERENCE_MAX_LEVELS, exposed_rows, film_level_boxes, pad_boxes, trim_levels
from spine_app.metrics.disk_exclusion import check_exclusion
from spine_app.networks.levels import LevelBatch
from spine_app.networks.multitask import SpineMultiTaskNet, StudyModel, ViewPass
from spine_app.networks.precision import FP32, Precision

#: widening (canvas pixels) of the predicted disk spaces cut out of the predicted vertebra mask
#: when the bodies are separated for the level head (a predicted mask bridges thin disks)
PREDICTED_DISK_GAP_PX = 1
#: the disk logit of a pixel taken out of the disk space by the exclusion (probability about 2e-9)
EXCLUDED_LOGIT = -20.0
#: prediction key of the LAT disk logits (B, 1, H, W) as the network drew them, before the disk
#: exclusion (present only with one): what parts the bodies for the level head and the morphometry
PARTING_DISK_KEY = "lat_disk_drawn"


def parting_disk(pred: Mapping[str, torch.Tensor], b: int) -> torch.Tensor:
    """Study ``b``'s LAT disk logits (H, W) that part the bodies: the network's own before the disk
    exclusion (:data:`PARTING_DISK_KEY`) where the inferer applied one, else ``seg_lat``'s."""
    if PARTING_DISK_KEY in pred:
        return pred[PARTING_DISK_KEY][b, 0]
    return pred[seg_key("lat")][b, MASK_NAMES.index("Lat_Disk_Height")]


def unwrap_network(network: nn.Module) -> SpineMultiTaskNet:
    """The SpineMultiTaskNet inside a StudyModel and/or DistributedDataParallel wrapper."""
    module = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    return module.net if isinstance(module, StudyModel) else module


def predicted_levels(
    seg_lat: torch.Tensor,
    present_lat: torch.Tensor,
    max_levels: int = INFERENCE_MAX_LEVELS,
    lat: torch.Tensor | None = None,
) -> LevelBatch:
    """Level boxes of each LAT film from its predicted masks (logits (B, 8, H, W)): the bodies of
    ``Lat_Vertebra`` minus the widened ``Lat_Disk_Height`` (:mod:`spine_app.data.levels`). With the
    films ``lat`` (B, 1, H, W) the bodies cut by the exposed field's top or bottom edge are left out
    (:func:`spine_app.data.levels.drop_cut_bodies`): only part of such a body is on the film. Blobs no
    vertebral body could be (far larger than the others, off the column: the heart or mediastinum
    of a real chest film read as bone, or beyond a gap in it: blobs in the pelvis) are left out too
    (:func:`spine_app.data.levels.drop_implausible_bodies`). Merged blobs are split against their
    neighbours' size (``local=True``, not the training's film-wide rule), and up to ``max_levels``
    bodies a film are kept: every body of a whole-spine film."""
    vb, disk = MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Disk_Height")
    masks = (seg_lat[:, [vb, disk]].float() > 0).cpu().numpy()
    films = lat.float().cpu().numpy()[:, 0] if lat is not None else None
    rows = []
    for b in range(masks.shape[0]):
        vertebra = masks[b, 0] if float(present_lat[b]) > 0 else np.zeros_like(masks[b, 0])
        field = exposed_rows(films[b]) if films is not None else None
        boxes = film_level_boxes(
            vertebra, masks[b, 1], PREDICTED_DISK_GAP_PX, field_rows=field, plausible_only=True, local=True
        )
        rows.append(pad_boxes(boxes, max_levels))
    stacked = trim_levels({key: torch.stack([r[key] for r in rows]).to(seg_lat.device) for key in rows[0]})
    return LevelBatch(stacked["level_centre"], stacked["level_axis"], stacked["level_size"], stacked["level_valid"])


def exclude_disk(seg_lat: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """LAT logits (B, 8, H, W) whose ``Lat_Disk_Height`` is at most :data:`EXCLUDED_LOGIT` wherever the
    ``Lat_Vertebra`` probability exceeds ``threshold`` (:mod:`spine_app.metrics.disk_exclusion`: the
    disk space is exclusive of the bodies); ``seg_lat`` itself for None."""
    threshold = check_exclusion(threshold)
    if threshold is None:
        return seg_lat
    vb, disk = MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Disk_Height")
    bone = torch.sigmoid(seg_lat[:, vb].float()) > threshold  # the rule of metrics.disk_exclusion.exclusive_disk
    out = seg_lat.clone()
    out[:, disk] = torch.where(bone, out[:, disk].clamp(max=EXCLUDED_LOGIT), out[:, disk])
    return out


def whole_film_outputs(
    net: SpineMultiTaskNet, passes: dict[str, ViewPass], present: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The study logits and each view's masks (fp32) from whole-film :meth:`SpineMultiTaskNet.view_pass`
    results: what ``forward_study`` gives, without running the films again."""
    out = net.study_logits(passes["ap"].embedding, passes["lat"].embedding, present)
    out.update({seg_key(view): passes[view].seg.float() for view in VIEW_KEYS})
    return out


def add_level_outputs(
    net: nn.Module,
    lat: torch.Tensor,
    present_lat: torch.Tensor,
    out: dict[str, torch.Tensor],
    lat_pass: ViewPass | None = None,
) -> None:
    """With a level head: find the bodies on ``out["seg_lat"]`` and add ``level_logits``,
    ``cls_levels``, ``level_centre``, ``level_size``, ``level_valid`` to ``out`` (in place).
    ``lat_pass``: the films' whole-film pass if it was already run (its features are reused)."""
    if getattr(net, "level_head", None) is None:
        return
    levels = predicted_levels(out["seg_lat"], present_lat, lat=lat)
    out.update(net.level_logits(lat, levels, lat_pass))
    out.update(level_centre=levels.centre, level_size=levels.size, level_valid=levels.valid)


class StudyInferer(Inferer):
    """Masks by gaussian-blended sliding windows of ``roi_size`` on each view; the Normal/Damaged
    logits from one pass of the whole study (a classification vector cannot be window-stitched).

    ``__call__(inputs, network)`` takes the batch inputs {ap, lat, present} and returns the same
    dict as ``SpineMultiTaskNet.forward_study`` (fp32 tensors whatever ``precision`` runs the network in),
    plus ``lat_mirrored`` (B,): 1 where the LAT film faced the other way (:func:`lat_faces_right`)
    and its masks were drawn on the mirrored film and mirrored back, so that the anterior and
    posterior lines land on their own walls (the lines are learnt on films facing the canonical way).

    With a level head: ``level_logits`` (B, L, 3) of the bodies found on the predicted LAT masks,
    their boxes ``level_centre`` (B, L, 2) / ``level_size`` (B, L) / ``level_valid`` (B, L) in canvas
    pixels, and ``cls_levels`` (B,) the study logit pooled from them.

    A film of exactly ``roi_size`` is one window: then each view runs once through the encoder and
    decoder, and the masks, the study logits and the level head all come from that pass (the same
    values as separate passes; 2 encoder passes per study instead of 5). A larger film (a tall
    whole-spine film on its taller canvas) is window-stitched and the classifier and level head see
    it whole.

    ``mirror_tta``: also run every film mirrored left-right and average the two passes' logits on every
    channel but the two LAT lines (those come from the canonical-facing pass only), nnU-Net's
    mirroring test-time augmentation; twice the segmentation cost.

    ``disk_exclusion`` (a vertebra probability in (0, 1), or None): the returned LAT disk space leaves
    out the pixels whose ``Lat_Vertebra`` probability exceeds it (:func:`exclude_disk`): the written
    and scored disk mask. What parts the bodies stays the disk the network drew (the level head's
    boxes, found before the exclusion, as the level refit fitted the heads; the morphometry through
    :data:`PARTING_DISK_KEY`): taken out, a thin disk whose every pixel borders a body (vertebra
    probability 0.2-0.5 at its edge) would no longer part two bodies. The threshold is the model's
    own, chosen on validation by the evaluate config.

    ``explain`` (one of :data:`spine_app.explain.METHODS`, or None): also ``saliency_ap`` and
    ``saliency_lat`` (B, 1, H, W) in [0, 1], the map of the fused Damaged logit on each view
    (:func:`spine_app.explain.saliency_maps`; gradients are computed for it even under no_grad).
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        sw_batch_size: int = 2,
        overlap: float = 0.25,
        precision: Precision = FP32,
        explain: str | None = None,
        mirror_tta: bool = False,
        disk_exclusion: float | None = None,
    ) -> None:
        super().__init__()
        from spine_app.explain import METHODS

        if explain is not None and explain not in METHODS:
            raise ValueError(f"explain must be one of {', '.join(METHODS)} or None, got {explain!r}")
        self.precision, self.explain, self.mirror_tta = precision, explain, bool(mirror_tta)
        self.disk_exclusion = check_exclusion(disk_exclusion)
        self.roi_size = tuple(int(s) for s in roi_size)
        self.window = SlidingWindowInferer(
            roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian"
        )

    def __call__(
        self, inputs: dict[str, torch.Tensor], network: nn.Module, *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        net = unwrap_network(network)
        to_input = self.precision.to_input
        with self.precision.autocast():
            passes = self._whole_film_passes(net, inputs)
            if passes is not None:
                out = whole_film_outputs(net, passes, inputs["present"])
            else:
                out = net.classify(to_input(inputs["ap"]), to_input(inputs["lat"]), inputs["present"])
                for view in VIEW_KEYS:
                    out[seg_key(view)] = self.window(to_input(inputs[view]), net)
            mirrored = lat_faces_right(out["seg_lat"]) & (inputs["present"][:, 1] > 0)
            if self.mirror_tta:
                self._mirror_average(net, inputs, out, mirrored)
            elif mirrored.any():
                flipped = self.window(to_input(torch.flip(inputs["lat"][mirrored], dims=[-1])), net)
                out["seg_lat"][mirrored] = torch.flip(flipped, dims=[-1]).to(out["seg_lat"].dtype)
            lat_pass = passes["lat"] if passes is not None else None
            add_level_outputs(net, to_input(inputs["lat"]), inputs["present"][:, 1], out, lat_pass)
        if self.disk_exclusion is not None:
            out[PARTING_DISK_KEY] = out["seg_lat"][:, [MASK_NAMES.index("Lat_Disk_Height")]]
            out["seg_lat"] = exclude_disk(out["seg_lat"], self.disk_exclusion)
        out["lat_mirrored"] = mirrored.float()
        if self.explain:
            from spine_app.explain import saliency_maps

            maps = saliency_maps(net, inputs["ap"], inputs["lat"], inputs["present"], self.explain, self.precision)
            out.update({f"saliency_{view}": value for view, value in maps.items()})
        return {key: value.float() for key, value in out.items()}

    def _whole_film_passes(self, net: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, ViewPass] | None:
        """Each view's :meth:`SpineMultiTaskNet.view_pass` where every film is exactly one window
        (None otherwise: a larger film is stitched, a smaller one padded by the window; a network
        without ``view_pass`` runs its ``classify`` and its window passes)."""
        if not hasattr(net, "view_pass") or any(tuple(inputs[view].shape[2:]) != self.roi_size for view in VIEW_KEYS):
            return None
        return {view: net.view_pass(self.precision.to_input(inputs[view])) for view in VIEW_KEYS}

    def _mirrored_pass(self, net: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Window logits of the left-right mirrored film, mirrored back onto the film."""
        return torch.flip(self.window(self.precision.to_input(torch.flip(image, dims=[-1])), net), dims=[-1])

    def _mirror_average(
        self, net: nn.Module, inputs: dict[str, torch.Tensor], out: dict[str, torch.Tensor], mirrored: torch.Tensor
    ) -> None:
        """Mirroring TTA (in place): logits averaged over the film and its mirror image; the LAT lines
        from whichever pass saw the film facing the canonical way."""
        ap = self._mirrored_pass(net, inputs["ap"]).to(out["seg_ap"].dtype)
        out["seg_ap"] = 0.5 * (out["seg_ap"] + ap)
        lat = self._mirrored_pass(net, inputs["lat"]).to(out["seg_lat"].dtype)
        lines = [MASK_NAMES.index(name) for name in LINE_CHANNELS]
        canonical = torch.where(mirrored[:, None, None, None], lat, out["seg_lat"])
        averaged = 0.5 * (out["seg_lat"] + lat)
        averaged[:, lines] = canonical[:, lines]
        out["seg_lat"] = averaged
