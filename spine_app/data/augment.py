"""Training augmentation (domain randomisation), defined once and configured by name in train.yaml.

Each view's image and its masks get the same spatial transform (small rotation, scaling,
translation, elastic deformation, horizontal flip: a flipped LAT view is still a LAT view, so films
facing either way are covered); the image alone gets intensity transforms (gamma, contrast,
windowing shift, blur, noise, histogram-shape changes) wide enough that a model trained only on
synthetic studies meets contrast, noise and exposure it has not seen.
"""

from __future__ import annotations

import math

from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)


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
    for view in ("ap", "lat"):
        spatial_keys = [view, f"seg_{view}"]
        transforms += [
            RandAffined(
                keys=spatial_keys,
                prob=prob,
                rotate_range=(math.radians(rotate_deg),),
                scale_range=(scale, scale),
                translate_range=(translate * canvas[0], translate * canvas[1]),
                mode=("bilinear", "bilinear"),
                padding_mode="zeros",
            ),
            Rand2DElasticd(
                keys=spatial_keys,
                prob=elastic_prob,
                spacing=(64, 64),
                magnitude_range=(1.0, 3.0),
                mode=("bilinear", "bilinear"),
                padding_mode="zeros",
            ),
            RandFlipd(keys=spatial_keys, prob=flip_prob, spatial_axis=1),
            RandAdjustContrastd(keys=view, prob=prob, gamma=gamma),
            RandScaleIntensityd(keys=view, prob=prob, factors=contrast),
            RandShiftIntensityd(keys=view, prob=prob, offsets=shift),
            RandHistogramShiftd(keys=view, prob=histogram_prob, num_control_points=(5, 10)),
            RandGaussianSmoothd(keys=view, prob=prob * 0.5, sigma_x=blur_sigma, sigma_y=blur_sigma),
            RandGaussianNoised(keys=view, prob=prob, std=noise_std),
        ]
    return Compose(transforms)
