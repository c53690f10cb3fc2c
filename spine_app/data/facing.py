"""Which way a lateral film faces, told from its masks, and the training transform that puts every
LAT film with reference masks the canonical way round (anterior to the left).

The two vertebral-line channels are learnt on canonical films only (the augmentation hides the lines
of the films it mirrors; :class:`spine_app.engines.StudyInferer` mirrors a film facing the other way
before it draws them). A dataset whose LAT films face either way (real archives do) would otherwise
teach the anterior-line channel the posterior wall on half of its films.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.transforms import MapTransform

from spine_app.channels import MASK_NAMES, avail_key

VERTEBRA, SPINOUS = MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Spinous_Process")


def lat_faces_right(seg_lat: torch.Tensor, min_pixels: int = 50) -> torch.Tensor:
    """(B,) bool: LAT films facing the other way (anterior to the right), told from mask logits
    (or from masks mapped to logits: positive inside).

    The spinous processes are posterior: on a film facing the canonical way (anterior to the left,
    as the generator draws them) their centre lies right of the vertebral bodies' centre. A film
    with too few pixels of either structure (< ``min_pixels``) is taken as canonical.
    """
    masks = (seg_lat[:, [VERTEBRA, SPINOUS]].float() > 0).float()  # logit > 0 <=> probability > 0.5
    columns = torch.arange(masks.shape[-1], device=masks.device, dtype=masks.dtype)
    mass = masks.sum(dim=(2, 3))
    centre = (masks.sum(dim=2) * columns).sum(dim=-1) / mass.clamp(min=1.0)
    return (mass.min(dim=1).values >= min_pixels) & (centre[:, 1] < centre[:, 0])


class CanonicalLatFacingd(MapTransform):
    """Mirror a LAT film whose reference masks show it facing right, with its masks and level map,
    so that its vertebral lines are supervised on their own walls. Films without both reference
    masks (vertebra, spinous process) are left as they are.

    Args:
        keys: the LAT keys mirrored together (image, masks, level map).
        mask_key: the (8, H, W) LAT masks that tell the facing.
    """

    def __init__(self, keys: tuple[str, ...] = ("lat", "seg_lat", "levels_lat"), mask_key: str = "seg_lat") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        masks = out.get(self.mask_key)
        known = out.get(avail_key("lat"))
        if masks is None or (known is not None and not (known[VERTEBRA] and known[SPINOUS])):
            return out
        if not bool(lat_faces_right(torch.as_tensor(masks)[None] - 0.5)[0]):
            return out
        for key in self.key_iterator(out):
            out[key] = torch.flip(torch.as_tensor(out[key]), dims=(-1,))
        return out


__all__ = ["CanonicalLatFacingd", "lat_faces_right"]
