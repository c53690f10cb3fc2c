"""Saliency of the study decision with ``monai.visualize``: where on each film the network looks
when it calls a study Damaged.

The decision is the fused Normal/Damaged logit (``SpineMultiTaskNet.forward_study``'s ``cls``),
which reads one embedding per view from the shared encoder. A map of one view is computed for that
logit with the other view's embedding held fixed (:class:`ViewDecision`): the gradient then flows
through this view's encoder pass only, so the hooks of MONAI's CAM classes see one activation.

Methods (:data:`METHODS`):

- ``gradcam``: :class:`monai.visualize.GradCAM` on the deepest encoder features (stride 32);
- ``gradcampp``: :class:`monai.visualize.GradCAMpp`, same layer;
- ``occlusion``: :class:`monai.visualize.OcclusionSensitivity`, the model-agnostic check: how much
  the logit drops when a patch of the film is blurred away (slow: hundreds of forward passes).

Every map is (B, 1, H, W) on the working canvas, scaled to [0, 1] per film (1 = strongest
evidence for Damaged; an all-zero map stays zero: no region raises the logit).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from spine_app.channels import VIEW_KEYS
from spine_app.networks.precision import FP32, Precision

METHODS = ("gradcam", "gradcampp", "occlusion")


def scale_per_film(maps: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> each film's map linearly scaled to [0, 1] by its own maximum (min 0).

    Unlike MONAI's ``default_normalizer`` (which maps (min, max) to (1, 0), flipping magnitudes),
    large stays large; a map without positive evidence stays all zero.
    """
    maps = maps.float().clamp_min(0)
    peak = maps.amax(dim=tuple(range(1, maps.ndim)), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp_min(1e-12), torch.zeros_like(maps))


class ViewDecision(nn.Module):
    """The fused Damaged logit of one study as a function of one view's film, the other view's
    embedding fixed.

    ``other_embedding`` (1, E) and ``present`` (1, 2) describe the study; ``forward(image)``
    (N, 1, H, W) -> (N, 1) logits of N versions of its film (N > 1 for occlusion's batches). ``deepest`` is an identity on the deepest
    encoder features: the layer the CAM hooks attach to (``target_layers="deepest"``), whatever the
    backbone.
    """

    def __init__(
        self,
        net: nn.Module,
        view: str,
        other_embedding: torch.Tensor,
        present: torch.Tensor,
        precision: Precision = FP32,
    ) -> None:
        super().__init__()
        if view not in VIEW_KEYS:
            raise ValueError(f"view must be one of {VIEW_KEYS}, got {view!r}")
        self.net, self.view, self.precision = net, view, precision
        self.deepest = nn.Identity()
        self.register_buffer("other_embedding", other_embedding.detach().float(), persistent=False)
        self.register_buffer("present", present.detach().float(), persistent=False)
        self.train(net.training)  # MONAI's hooks put the wrapper back in its own mode afterwards

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            deepest = self.deepest(self.net.unet.encoder(self.precision.to_input(image))[-1])
            embedding = self.net._embedding(deepest)
        n = image.shape[0]
        other = self.other_embedding.expand(n, -1).to(embedding.dtype)
        present = self.present.expand(n, -1)
        pair = (embedding, other) if self.view == "ap" else (other, embedding)
        with self.precision.autocast():
            logit = self.net.study_logits(*pair, present)["cls"]
        return logit.float()[:, None]


def _view_embeddings(net: nn.Module, ap: torch.Tensor, lat: torch.Tensor, precision: Precision) -> dict:
    with torch.no_grad(), precision.autocast():
        return {
            "ap": net._embedding(net.unet.encoder(precision.to_input(ap))[-1]).float(),
            "lat": net._embedding(net.unet.encoder(precision.to_input(lat))[-1]).float(),
        }


def _cam(method: str, model: ViewDecision) -> Callable[[torch.Tensor], torch.Tensor]:
    from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity

    if method == "occlusion":

        def occlude(image: torch.Tensor) -> torch.Tensor:
            size = max(16, min(image.shape[-2:]) // 6)  # 48 px patches on the 384 x 288 canvas: ~90 passes
            occlusion = OcclusionSensitivity(
                model, mask_size=size, overlap=0.25, mode="gaussian", n_batch=16, verbose=False, activate=False
            )
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Using a non-tuple sequence")  # inside MONAI
                base = model(image)  # (1, 1)
                logits, _ = occlusion(image)  # (1, 1, H, W): the logit with each patch blurred away
            return base[:, :, None, None] - torch.as_tensor(logits)  # the drop: evidence the patch carried

        return occlude
    cls = GradCAM if method == "gradcam" else GradCAMpp
    cam = cls(model, target_layers="deepest", postprocessing=lambda x: x)
    return lambda image: cam(image, class_idx=0)


def saliency_maps(
    net: nn.Module,
    ap: torch.Tensor,
    lat: torch.Tensor,
    present: torch.Tensor,
    method: str = "gradcam",
    precision: Precision = FP32,
) -> dict[str, torch.Tensor]:
    """Maps of the fused Damaged logit on each view: {"ap": (B, 1, H, W), "lat": ...} in [0, 1].

    ``net`` is a :class:`spine_app.networks.SpineMultiTaskNet` (its weights are not changed; its
    mode is restored). A missing view (``present`` 0) gets an all-zero map.

    Raises:
        ValueError: an unknown ``method``.
    """
    if method not in METHODS:
        raise ValueError(f"saliency method must be one of {', '.join(METHODS)}, got {method!r}")
    was_training = net.training
    net.eval()  # the decision as inference makes it (dropout off, batch statistics fixed)
    embeddings = _view_embeddings(net, ap, lat, precision)
    images = {"ap": ap, "lat": lat}
    maps: dict[str, list[torch.Tensor]] = {view: [] for view in VIEW_KEYS}
    with torch.enable_grad():
        # one study at a time: the fixed embedding belongs to one study (and MONAI's GradCAM++ and
        # occlusion take one image per call)
        for b in range(ap.shape[0]):
            for i, view in enumerate(VIEW_KEYS):
                if float(present[b, i]) <= 0:
                    maps[view].append(torch.zeros_like(images[view][b : b + 1], dtype=torch.float32))
                    continue
                other = embeddings["lat" if view == "ap" else "ap"][b : b + 1]
                model = ViewDecision(net, view, other, present[b : b + 1], precision)
                raw = _cam(method, model)(images[view][b : b + 1].float())
                maps[view].append(scale_per_film(raw.detach()))
                net.zero_grad(set_to_none=True)
    net.train(was_training)
    return {view: torch.cat(maps[view]) for view in VIEW_KEYS}


def peak_position(saliency: torch.Tensor, smooth: int = 9) -> tuple[int, int] | None:
    """(row, col) of the strongest response of one (H, W) or (1, H, W) map after a ``smooth``-pixel
    box average (a single hot pixel does not win); None for an all-zero map."""
    m = saliency.float().reshape(1, 1, *saliency.shape[-2:])
    if float(m.max()) <= 0:
        return None
    if smooth > 1:
        m = torch.nn.functional.avg_pool2d(m, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
    flat = int(torch.argmax(m))
    return flat // m.shape[-1], flat % m.shape[-1]


def nearest_level(
    peak: tuple[float, float] | None, centres: dict[str, tuple[float, float]], max_distance: float | None = None
) -> str | None:
    """The name of the vertebra whose centre (row, col) is nearest to ``peak``, or None when there is
    no peak, no vertebra, or the nearest centre is farther than ``max_distance`` (default: 0.75 of
    the median distance between neighbouring centres: the response is then not on a vertebra)."""
    if peak is None or not centres:
        return None
    names = list(centres)
    points = torch.tensor([centres[n] for n in names], dtype=torch.float64)
    distance = torch.linalg.norm(points - torch.tensor(peak, dtype=torch.float64), dim=1)
    best = int(torch.argmin(distance))
    if max_distance is None and len(names) > 1:
        ordered = points[torch.argsort(points[:, 0])]
        max_distance = 0.75 * float(torch.linalg.norm(ordered[1:] - ordered[:-1], dim=1).median())
    if max_distance is not None and float(distance[best]) > max_distance:
        return None
    return names[best]
