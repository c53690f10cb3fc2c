"""Training augmentation (domain randomisation), defined once and configured by name in train.yaml.

Each view's image and its masks get the same spatial transform (small rotation, scaling,
translation, elastic deformation, horizontal flip); the image alone gets intensity transforms (gamma, contrast,
windowing shift, blur, noise, histogram-shape changes) wide enough that a model trained only on
synthetic studies meets contrast, noise and exposure it has not seen.

A flipped LAT film faces the other way. Its vertebra, spinous process and disk masks stay
supervised (the network must find them on films facing either way: inference tells the facing
from them), but its two vertebral lines become *unknown* for that sample: the lines are learnt on
films facing the canonical way only (anterior to the left, as the generator draws them), and
:class:`spine_app.engines.StudyInferer` mirrors a film facing the other way before it draws the
lines. Supervising the lines on mirrored films taught the first shipped model to draw the anterior
line on the posterior wall (docs/results.md, "Lines on the right wall").

:class:`RandExposureRegiond` pushes a band of the film toward white: the abdomen below the
diaphragm on a film framed on the thorax, where the whole body's thickness puts the bodies near the
top of the grey range with little contrast (docs/results.md, "Bodies near the top of the grey range").
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.transforms import (
    Compose,
    MapTransform,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.utils import convert_to_dst_type

from spine_app.channels import LINE_CHANNELS, MASK_NAMES, VIEW_KEYS, seg_key
from spine_app.data.compose import transforms_changed, transforms_of


def study_augmentation(
    prob: float = 0.5,
    rotate_deg: float = 8.0,
    scale: float = 0.1,
    translate: float = 0.05,
    elastic_prob: float = 0.15,
    flip_prob: float = 0.5,
    gamma: tuple[float, float] = (0.6, 1.7),
    contrast: float = 0.25,
    shift: float = 0.1,
    blur_sigma: tuple[float, float] = (0.3, 1.5),
    noise_std: float = 0.06,
    histogram_prob: float = 0.3,
    canvas: tuple[int, int] = (512, 384),
) -> Compose:
    """The training transform for the keys produced by :class:`LoadStudyd` (both views).

    Args:
        prob: probability of each intensity transform and of the affine transform.
        rotate_deg, scale, translate: affine ranges (translate as a fraction of the canvas).
        elastic_prob: probability of a smooth elastic deformation.
        flip_prob: probability of a left-right flip per view.
        gamma: gamma range; contrast: +-scale of intensities; shift: +-windowing offset.
        blur_sigma: Gaussian blur sigma range (px); noise_std: Gaussian noise std (image in [0, 1]).
        histogram_prob: probability of a random non-linear histogram shift.
        canvas: working size, for the translation range.
    """
    transforms = []
    for view in VIEW_KEYS:
        spatial_keys = [view, seg_key(view)] + (["levels_lat"] if view == "lat" else [])
        modes = ("bilinear", "bilinear", "nearest")[: len(spatial_keys)]
        transforms += [
            RandAffined(
                keys=spatial_keys,
                prob=prob,
                rotate_range=(math.radians(rotate_deg),),
                scale_range=(scale, scale),
                translate_range=(translate * canvas[0], translate * canvas[1]),
                mode=modes,
                padding_mode="zeros",
            ),
            Rand2DElasticd(
                keys=spatial_keys,
                prob=elastic_prob,
                spacing=(64, 64),
                magnitude_range=(1.0, 3.0),
                mode=modes,
                padding_mode="zeros",
            ),
            RandFlipd(keys=spatial_keys, prob=flip_prob, spatial_axis=1)
            if view == "ap"
            else RandFlipLatd(keys=spatial_keys, prob=flip_prob),
            RandAdjustContrastd(keys=view, prob=prob, gamma=gamma),
            RandScaleIntensityd(keys=view, prob=prob, factors=contrast),
            RandShiftIntensityd(keys=view, prob=prob, offsets=shift),
            RandHistogramShiftd(keys=view, prob=histogram_prob, num_control_points=(5, 10)),
            RandGaussianSmoothd(keys=view, prob=prob * 0.5, sigma_x=blur_sigma, sigma_y=blur_sigma),
            RandGaussianNoised(keys=view, prob=prob, std=noise_std),
        ]
    return Compose(transforms)


class RandFlipLatd(RandomizableTransform):
    """Left-right flip of the LAT image and masks; a flipped sample's line channels become unknown.

    Args:
        keys: the LAT image and mask keys (flipped together).
        prob: flip probability.
        avail_key: the (8,) availability vector of the LAT channels.
    """

    def __init__(self, keys: list[str], prob: float = 0.5, avail_key: str = "avail_lat") -> None:
        RandomizableTransform.__init__(self, prob=prob)
        self.flip = RandFlipd(keys=keys, prob=1.0, spatial_axis=1)
        self.avail_key = avail_key

    def __call__(self, data: dict) -> dict:
        self.randomize(None)
        if not self._do_transform:
            return dict(data)
        out = self.flip(data)
        if self.avail_key in out:
            avail = out[self.avail_key].clone() if hasattr(out[self.avail_key], "clone") else out[self.avail_key].copy()
            for name in LINE_CHANNELS:
                avail[MASK_NAMES.index(name)] = 0
            out[self.avail_key] = avail
        return out


class RandExposureRegiond(RandomizableTransform, MapTransform):
    """A band of the film, from its top or bottom edge, pushed toward white: ``I + s * w * (1 - I)``
    on the film's own grey range, ``w`` a soft step along the rows (1 inside the band), so the band's
    contrast shrinks by ``1 - s``. Near-black pixels (the canvas padding, air) are left as they are.

    Args:
        keys: the image keys (each view drawn on its own).
        prob: probability per view.
        strength: range of ``s`` (0: nothing, 1: the band white).
        extent: range of the band's share of the film's height.
        softness: range of the step's width, as a share of the height.
        dark: grey (share of the range) under which pixels are left alone, with a linear ramp to 2 x it.
    """

    def __init__(
        self,
        keys: Sequence[str] = VIEW_KEYS,
        prob: float = 0.0,
        strength: Sequence[float] = (0.5, 0.95),
        extent: Sequence[float] = (0.2, 0.6),
        softness: Sequence[float] = (0.02, 0.12),
        dark: float = 0.05,
    ) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        for name, bounds in (("strength", strength), ("extent", extent), ("softness", softness)):
            if len(bounds) != 2 or not 0.0 <= bounds[0] <= bounds[1] <= 1.0:
                raise ValueError(f"RandExposureRegiond: {name} must be (low, high) within [0, 1], got {bounds}")
        if softness[0] <= 0 or not 0 <= dark < 0.5:
            raise ValueError(f"RandExposureRegiond: softness > 0 and 0 <= dark < 0.5, got {softness}, {dark}")
        self.strength, self.extent, self.softness, self.dark = tuple(strength), tuple(extent), tuple(softness), dark

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            self.randomize(None)
            strength = self.R.uniform(*self.strength)
            extent = self.R.uniform(*self.extent)
            softness = self.R.uniform(*self.softness)
            from_bottom = bool(self.R.rand() < 0.5)
            if self._do_transform:
                out[key] = exposure_band(out[key], strength, extent, softness, from_bottom, self.dark)
        return out


def exposure_band(
    image: Any, strength: float, extent: float, softness: float = 0.05, from_bottom: bool = True, dark: float = 0.05
) -> Any:
    """``image`` (..., H, W) with the band of ``extent`` of its height at the bottom (or top) pushed
    toward its own white by ``strength`` (:class:`RandExposureRegiond`); same type as ``image``."""
    tensor = torch.as_tensor(image)
    low, high = float(tensor.min()), float(tensor.max())
    if high <= low or strength <= 0:
        return image
    rows = int(tensor.shape[-2])
    position = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    inside = position - (1.0 - extent) if from_bottom else extent - position
    band = torch.sigmoid(inside / (softness / 4.0))[:, None]
    grey = (tensor.float() - low) / (high - low)
    lit = torch.clamp((grey - dark) / dark, 0.0, 1.0) if dark > 0 else torch.ones_like(grey)
    grey = grey + strength * band * lit * (1.0 - grey)
    return convert_to_dst_type(grey * (high - low) + low, image, dtype=tensor.dtype)[0]


def exposure_region_prob(transform: Any, prob: float | None) -> contextlib.AbstractContextManager[int]:
    """Within the block every :class:`RandExposureRegiond` of ``transform`` fires with ``prob`` (None:
    as built); yields how many it found. A probability above 0 for a transform without one is refused
    (it would change nothing). Restored on leaving, also after an error."""
    found = list(transforms_of(transform, RandExposureRegiond))
    if prob is not None and not 0.0 <= prob <= 1.0:
        raise ValueError(f"exposure region probability must be within [0, 1], got {prob}")
    if prob and not found:
        raise ValueError(f"exposure region probability {prob}: the transform has no RandExposureRegiond")
    return transforms_changed(found, [{} if prob is None else {"prob": prob} for _ in found])


class RandCorruptiond(RandomizableTransform):
    """Training-time corruption from a robustness suite, on the working-canvas images ``ap``/``lat``.

    With probability ``prob`` per view, one of the suite's five severities (uniformly) of each named
    intensity corruption is applied; the canvas image in [0, 1] counts as the full grey-level range,
    so noise sigmas keep their 16-bit meaning. ``corruptions`` empty or None: the identity (the
    bundle's default). Geometric corruptions are refused (the masks are not moved here).

    Args:
        corruptions: names from the suite (e.g. ["gaussian_noise"]), or None.
        suite: the suite YAML with the severity values.
        prob: probability per view and corruption.
    """

    def __init__(
        self,
        corruptions: list[str] | str | None = None,
        suite: str = "configs/robustness/default.yaml",
        prob: float = 0.5,
    ) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        from spine_app.robustness.corruptions import load_suite

        names = [corruptions] if isinstance(corruptions, str) else list(corruptions or [])
        specs = {s.name: s for s in load_suite(suite)} if names else {}
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise ValueError(f"{suite}: training corruption(s) {unknown} not in the suite")
        geometric = [n for n in names if n in ("rotate", "flip_lat", "collimation")]
        if geometric:
            raise ValueError(f"training corruptions must be intensity corruptions, not {geometric}")
        self.specs = [specs[n] for n in names]

    def __call__(self, data: dict) -> dict:
        if not self.specs:
            return data
        out = dict(data)
        for view in VIEW_KEYS:
            for spec in self.specs:
                self.randomize(None)
                if not self._do_transform:
                    continue
                severity = int(self.R.randint(1, 6))
                image = out[view][0].numpy() if hasattr(out[view], "numpy") else out[view][0]
                corrupted, _ = spec.apply(image, None, severity, int(self.R.randint(1 << 30)), view.upper(), 1.0)
                # keep the input's type (MetaTensor in the pipeline) so a batch mixing corrupted and
                # clean studies still collates
                out[view] = convert_to_dst_type(corrupted[None], out[view])[0]
        return out
