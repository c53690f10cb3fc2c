"""The shared-encoder multi-task network: eight mask logits per radiograph and a study-level
Normal/Damaged logit from the deepest encoder features of both views.

Shapes (B = batch, H x W = working resolution, any size; multiples of 32 avoid padding):

- ``forward(image)``: (B, 1, H, W) -> (B, 8, H, W) mask logits, channel order of
  :data:`spine_app.channels.MASK_NAMES`. This is what the bundle's ``network_def`` exposes to
  sliding-window inference, ``verify_net_in_out`` and TorchScript export.
- ``forward_study(ap, lat, present)``: ap (B, 1, Ha, Wa), lat (B, 1, Hl, Wl), present (B, 2) float
  (1 = view exists, AP then LAT) -> dict with ``seg_ap`` (B, 8, Ha, Wa), ``seg_lat`` (B, 8, Hl, Wl),
  ``cls`` (B,) fused logit, ``cls_ap`` and ``cls_lat`` (B,) single-view logits. A missing view's
  image may be anything (zeros); it is excluded from the fused logit. With ``levels`` (the boxes of
  the LAT film's vertebral bodies, :class:`spine_app.networks.levels.LevelBatch`) also
  ``level_logits`` (B, L, 3) cumulative Genant-grade logits per body and ``cls_levels`` (B,) the
  study logit pooled from the levels (:func:`spine_app.networks.levels.mil_pool`). Once the grade
  head is fitted (``grade_head_fitted``, by the level refit), a body's P(grade >= 1) is still the
  level head's and its P(grade >= 2), P(grade >= 3) are the grade head's
  (:func:`spine_app.networks.levels.with_grades`).
- ``level_logits(lat, levels)``: only the level outputs of LAT films (inference, where the boxes
  come from the predicted masks).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn
from torch.nn import functional as F

from spine_app.channels import MASK_NAMES
from spine_app.networks.levels import GRADE_LOGITS, LevelBatch, LevelHead, mil_pool, with_grades
from spine_app.networks.precision import FP32, Precision

SUPPORTED_BACKBONES = (
    "resnet18",
    "resnet34",
    "efficientnet-b0",
    "efficientnet-b1",
    "efficientnet-b2",
    "efficientnet-b3",
)


class ZeroPadShortcut(nn.Module):
    """ResNet "A" shortcut (strided identity, zero channels appended) that traces correctly.

    MONAI's version concatenates ``out.data``, which ``torch.jit.trace`` records as a constant of the
    example input (the exported model then ignores its input on that path) and which stops the
    gradient through the shortcut. Same forward values, no parameters. (B, C, H, W) ->
    (B, planes, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x[:, :, :: self.stride, :: self.stride]
        return F.pad(out, (0, 0, 0, 0, 0, self.planes - x.shape[1]))


def traceable_shortcuts(module: nn.Module) -> None:
    """Replace every MONAI zero-padding shortcut (a ``functools.partial``) by :class:`ZeroPadShortcut`."""
    for block in module.modules():
        shortcut = getattr(block, "downsample", None)
        if isinstance(shortcut, partial) and getattr(shortcut.func, "__name__", "") == "_downsample_basic_block":
            block.downsample = ZeroPadShortcut(shortcut.keywords["planes"], shortcut.keywords["stride"])


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged in the forward pass; the gradient flowing back through it is multiplied by ``scale``."""
    if scale == 1.0:
        return x
    return x * scale + x.detach() * (1.0 - scale)


class ViewPass(NamedTuple):
    """What one whole-film pass of :class:`SpineMultiTaskNet` computes for a batch of films."""

    image: torch.Tensor  # (B, 1, H, W) the films
    seg: torch.Tensor  # (B, 8, H, W) mask logits
    embedding: torch.Tensor  # (B, embed_dim) view embedding (the classifier heads' input)
    context: torch.Tensor  # stride-16 encoder features (the level head's context)
    decoded: torch.Tensor  # last decoder features at full resolution (the level head's fine input)


class SpineMultiTaskNet(nn.Module):
    """FlexibleUNet (shared encoder + U-Net decoder, 8 sigmoid channels) with a study classifier.

    Args:
        backbone: encoder name, one of SUPPORTED_BACKBONES (MONAI's FlexibleUNet registry).
        in_channels: image channels (1 for radiographs).
        num_masks: segmentation channels (8).
        embed_dim: width of the per-view embedding fed to the classifier heads.
        dropout: dropout before the classifier heads.
        decoder_channels: FlexibleUNet decoder widths.
        cls_grad_scale: factor on the gradient the classification loss sends into the shared
            encoder (1 = plain multi-task training, 0 = the classifier reads the encoder without
            training it). Forward values do not depend on it, so weights load whatever its value.
        level_head: build the per-vertebra level head (False: the network of bundle 0.3.x and
            earlier, whose weights have none).
        level_pooling: how the study logit is pooled from the level logits (``max``, ``lse``,
            ``noisy_or``; :func:`spine_app.networks.levels.mil_pool`).
        level_grad_scale: factor on the gradient the level loss sends into the shared features the
            level head reads (the last decoder layer, which also makes the masks, and the stride-16
            encoder features); the head's own layers always learn in full. Forward values do not
            depend on it.
        grade_head: also build the grade head, a second head of the level head's shape that reads
            the same box features and grades the bodies the level head flags. It is fitted only by
            the level refit (on the reference boxes, :mod:`spine_app.engines.level_refit`): until then
            (``grade_head_fitted`` 0, and for weights saved without one, bundle 0.8 and earlier) it
            is frozen and unused, and the level head grades.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        in_channels: int = 1,
        num_masks: int = len(MASK_NAMES),
        embed_dim: int = 128,
        dropout: float = 0.2,
        decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16),
        cls_grad_scale: float = 1.0,
        level_head: bool = True,
        level_pooling: str = "lse",
        level_grad_scale: float = 1.0,
        grade_head: bool = True,
    ) -> None:
        super().__init__()
        self.cls_grad_scale = float(cls_grad_scale)
        self.level_grad_scale = float(level_grad_scale)
        if backbone not in SUPPORTED_BACKBONES:
            raise ValueError(f"backbone {backbone!r} is not supported; choose from {', '.join(SUPPORTED_BACKBONES)}")
        self.unet = FlexibleUNet(
            in_channels=in_channels,
            out_channels=num_masks,
            backbone=backbone,
            pretrained=False,
            decoder_channels=tuple(decoder_channels),
            spatial_dims=2,
        )
        traceable_shortcuts(self.unet)
        deepest = int(FLEXUNET_BACKBONE.register_dict[backbone]["feature_channel"][-1])
        # average + max pooling: a fracture is one local finding among ten vertebrae, which an average dilutes
        self.embed = nn.Sequential(
            nn.LayerNorm(2 * deepest), nn.Linear(2 * deepest, embed_dim), nn.GELU(), nn.Dropout(dropout)
        )
        self.view_heads = nn.Linear(embed_dim, 2)  # column 0: AP-only logit, column 1: LAT-only logit
        self.fusion_head = nn.Linear(2 * embed_dim + 2, 1)
        self.level_pooling = level_pooling
        fine = int(decoder_channels[-1]) + in_channels + 2  # decoder features, the film, vertebra + disk
        context = int(FLEXUNET_BACKBONE.register_dict[backbone]["feature_channel"][-2])
        self.level_head = LevelHead(fine, context) if level_head else None
        self.grade_head: LevelHead | None = None
        if level_head and grade_head:
            with torch.random.fork_rng(devices=[]):  # the rest of a run draws the same numbers as without it
                self.grade_head = LevelHead(fine, context).requires_grad_(False)
            self.register_buffer("grade_head_fitted", torch.zeros((), dtype=torch.bool))
            self.register_load_state_dict_pre_hook(SpineMultiTaskNet._upgrade_on_load)

    def upgrade_state(self, state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """``state_dict`` (in place, and returned) with what weights saved before the grade head lack:
        weights of bundle 0.8 and earlier get this network's grade head, unfitted, so the level head
        grades as before. Weights with a grade head, or a network without one, are left as they are."""
        if self.grade_head is None or prefix + "grade_head_fitted" in state_dict:
            return state_dict
        state_dict[prefix + "grade_head_fitted"] = torch.zeros((), dtype=torch.bool)
        for key, value in self.grade_head.state_dict().items():
            state_dict.setdefault(f"{prefix}grade_head.{key}", value)
        return state_dict

    def _upgrade_on_load(self, state_dict: dict, prefix: str, *_args: object) -> None:
        """``load_state_dict`` pre-hook: :meth:`upgrade_state` on the weights being loaded."""
        self.upgrade_state(state_dict, prefix)

    @property
    def grades_fitted(self) -> bool:
        """True once the grade head has been fitted (then it grades the flagged bodies)."""
        return self.grade_head is not None and bool(self.grade_head_fitted)

    def fit_grade_head(self, state: dict[str, torch.Tensor]) -> None:
        """Load a fitted grade head's weights (a :class:`LevelHead` state dict) and use it from now on."""
        if self.grade_head is None:
            raise RuntimeError("this network has no grade head (grade_head=False)")
        self.grade_head.load_state_dict(state)
        self.grade_head_fitted.fill_(True)

    def _embedding(self, deepest: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) deepest encoder features -> (B, embed_dim) view embedding."""
        deepest = scale_gradient(deepest, self.cls_grad_scale)
        return self.embed(torch.cat([deepest.mean(dim=(2, 3)), deepest.amax(dim=(2, 3))], dim=1))

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask logits (B, 8, H, W), view embedding (B, embed_dim)) of one batch of radiographs."""
        view = self.view_pass(image)
        return view.seg, view.embedding

    def view_pass(self, image: torch.Tensor) -> ViewPass:
        """One whole-film pass of the encoder and decoder: the masks, the view embedding and the
        features the level head reads (:meth:`levels_of`), so that nothing runs twice."""
        features = self.unet.encoder(image)
        decoded = self.unet.decoder(features, self.unet.skip_connect)
        return ViewPass(
            image=image,
            seg=self.unet.segmentation_head(decoded),
            embedding=self._embedding(features[-1]),
            context=features[-2],
            decoded=decoded,
        )

    def level_features(self, view: ViewPass) -> tuple[torch.Tensor, torch.Tensor]:
        """What the level head reads of a LAT film's :class:`ViewPass`: the full-resolution stack
        (B, Cf, H, W) [decoder features, film, vertebra and disk probabilities (not back-propagated
        into the masks)] and the stride-16 encoder features, both passing ``level_grad_scale`` of
        the level loss's gradient back."""
        vb, disk = MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Disk_Height")
        masks = torch.sigmoid(view.seg[:, [vb, disk]]).detach()
        decoded, context = (scale_gradient(t, self.level_grad_scale) for t in (view.decoded, view.context))
        fine = torch.cat([decoded, view.image.to(decoded.dtype), masks.to(decoded.dtype)], dim=1)
        return fine, context

    def levels_of(self, view: ViewPass, levels: LevelBatch) -> torch.Tensor:
        """Level logits (B, L, 3) of the bodies ``levels`` on a LAT film's :class:`ViewPass`
        (:meth:`level_features` through the level head, the grades through the grade head once fitted)."""
        if self.level_head is None:
            raise RuntimeError("this network has no level head (level_head=False)")
        b, n = levels.centre.shape[:2]
        rois = self.level_head.rois(*self.level_features(view), levels)
        logits = self.level_head.score(rois)
        if self.grades_fitted:
            logits = with_grades(logits, self.grade_head.score(rois))
        return logits.reshape(b, n, GRADE_LOGITS)

    def level_logits(
        self, lat: torch.Tensor, levels: LevelBatch, view: ViewPass | None = None
    ) -> dict[str, torch.Tensor]:
        """``level_logits`` (B, L, 3) and ``cls_levels`` (B,) of LAT films (B, 1, H, W) with the
        bodies' boxes ``levels`` (in the films' pixels); ``view``: the films' pass if it was already
        run (its ``image`` must be ``lat``), else the encoder and decoder run here."""
        logits = self.levels_of(view if view is not None else self.view_pass(lat), levels)
        return {"level_logits": logits, "cls_levels": mil_pool(logits[..., 0], levels.valid, self.level_pooling)}

    def study_logits(
        self, emb_ap: torch.Tensor, emb_lat: torch.Tensor, present: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``cls`` (fused), ``cls_ap`` and ``cls_lat`` (B,) from the two view embeddings; a missing
        view (``present`` 0) is zeroed out of the fused head's input."""
        present = present.to(emb_ap.dtype)
        emb_ap = emb_ap * present[:, 0:1]
        emb_lat = emb_lat * present[:, 1:2]
        return {
            "cls": self.fusion_head(torch.cat([emb_ap, emb_lat, present], dim=1)).squeeze(1),
            "cls_ap": self.view_heads(emb_ap)[:, 0],
            "cls_lat": self.view_heads(emb_lat)[:, 1],
        }

    def study_embedding(self, ap: torch.Tensor, lat: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, 2 * embed_dim): the fused head's input, the AP and LAT embeddings (a missing view's zeroed)."""
        present = present.to(ap.dtype)
        emb_ap = self._embedding(self.unet.encoder(ap)[-1]) * present[:, 0:1]
        emb_lat = self._embedding(self.unet.encoder(lat)[-1]) * present[:, 1:2]
        return torch.cat([emb_ap, emb_lat], dim=1)

    def classify(self, ap: torch.Tensor, lat: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
        """Only the study logits ``cls``, ``cls_ap``, ``cls_lat`` (B,): the encoder runs, the decoder does not."""
        return self.study_logits(
            self._embedding(self.unet.encoder(ap)[-1]), self._embedding(self.unet.encoder(lat)[-1]), present
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, 8, H, W) of radiographs (B, 1, H, W)."""
        return self.unet(image)

    def forward_study(
        self, ap: torch.Tensor, lat: torch.Tensor, present: torch.Tensor, levels: LevelBatch | None = None
    ) -> dict[str, torch.Tensor]:
        """Masks of both views, the study's Normal/Damaged logits and, with ``levels``, the level
        outputs (see the module docstring)."""
        seg_ap, emb_ap = self.encode(ap)
        lat_pass = self.view_pass(lat)
        seg_lat, emb_lat = lat_pass.seg, lat_pass.embedding
        level_logits = self.levels_of(lat_pass, levels) if levels is not None and self.level_head is not None else None
        out = {"seg_ap": seg_ap, "seg_lat": seg_lat, **self.study_logits(emb_ap, emb_lat, present)}
        if level_logits is not None:
            valid = levels.valid * present[:, 1:2].to(levels.valid.dtype)
            out["level_logits"] = level_logits
            out["cls_levels"] = mil_pool(level_logits[..., 0].float(), valid, self.level_pooling)
        return out


class StudyModel(nn.Module):
    """Calls ``net.forward_study`` from ``forward``: the module the trainer (and DDP) wraps.

    The batch's level boxes (``level_*`` keys, training: from the reference masks) are passed on.
    The checkpoint saves ``net`` itself, so the weights load into the plain network (``network_def``)
    used for inference and export. ``precision`` (see :mod:`spine_app.networks.precision`) sets the
    autocast dtype and memory format of the forward pass; the outputs are always fp32, so the loss
    is computed in fp32.
    """

    def __init__(self, net: SpineMultiTaskNet, precision: Precision = FP32) -> None:
        super().__init__()
        self.net = precision.prepare(net)
        self.precision = precision

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        to_input = self.precision.to_input
        with self.precision.autocast():
            out = self.net.forward_study(
                to_input(batch["ap"]), to_input(batch["lat"]), batch["present"], LevelBatch.from_batch(batch)
            )
        return {key: value.float().contiguous() for key, value in out.items()}


def set_prior_bias(segmentation_head: nn.Module, priors: list[float]) -> None:
    """Set the bias of a segmentation head's last convolution to each channel's prior log-odds."""
    head = [m for m in segmentation_head.modules() if isinstance(m, nn.Conv2d)][-1]
    p = torch.as_tensor(priors, dtype=head.bias.dtype).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        head.bias.copy_(torch.log(p / (1 - p)))


def init_output_bias(net: SpineMultiTaskNet, priors: list[float] | None) -> SpineMultiTaskNet:
    """Set the mask head's output bias to each channel's prior log-odds (Lin et al. 2017, "Focal
    loss", section 3.3): a channel covering 1 % of the film starts at p = 0.01, not 0.5, so the first
    steps are not spent pushing the whole film to background. ``priors`` None: ``net`` unchanged.
    """
    if priors is not None:
        set_prior_bias(net.unet.segmentation_head, priors)
    return net


def load_weights(net: nn.Module, path: str | None) -> nn.Module:
    """``net`` with the plain state dict at ``path`` loaded (fp16 files are cast to the net's dtype);
    ``net`` unchanged when ``path`` is None or empty (training from scratch)."""
    if path:
        net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    return net
