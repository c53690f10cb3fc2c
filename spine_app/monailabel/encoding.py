"""The label image exchanged with MONAI Label clients: one uint8 PNG per radiograph whose bit ``c``
(value ``2**c``) is set where channel ``c`` of the fixed channel order (docs/design.md) is foreground.

Eight channels fit one byte, so overlapping structures (a pedicle over its vertebra, the vertebral
lines along the body corners) survive the round trip that an index map (one label per pixel) would
lose. An AP film only ever uses bits 0-2, a LAT film bits 3-7. A client shows each distinct value as
a label; ``LABEL_VALUES`` names the single-structure values.
"""

from __future__ import annotations

import numpy as np

from spine_app.channels import MASK_NAMES, channels_of_view

#: structure name -> its pixel value when it is the only structure at a pixel (what /info lists)
LABEL_VALUES: dict[str, int] = {name: 1 << c for c, name in enumerate(MASK_NAMES)}


def encode_masks(masks: dict[int, np.ndarray]) -> np.ndarray:
    """{channel: bool (rows, cols)} -> uint8 (rows, cols) with bit ``channel`` set on its foreground."""
    if not masks:
        raise ValueError("no masks to encode")
    shapes = {m.shape for m in masks.values()}
    if len(shapes) != 1:
        raise ValueError(f"masks of different sizes cannot share one label image: {sorted(shapes)}")
    out = np.zeros(shapes.pop(), dtype=np.uint8)
    for channel, mask in masks.items():
        if not 0 <= channel < len(MASK_NAMES):
            raise ValueError(f"channel {channel} is not one of the {len(MASK_NAMES)} channels")
        out |= (np.asarray(mask) > 0).astype(np.uint8) << channel
    return out


def decode_masks(label: np.ndarray, view: str) -> dict[int, np.ndarray]:
    """uint8 label image of a ``view`` film -> {channel: bool (rows, cols)} for that view's channels.

    Raises:
        ValueError: a pixel sets a bit of the other view's channels (the label belongs to another film
            or was painted with index values rather than bit values).
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"a label image must be 2-D (rows, cols), got shape {label.shape}")
    if label.min() < 0 or label.max() > 255:
        raise ValueError(f"label values must be 0-255 (one bit per channel), got {label.min()}-{label.max()}")
    values = label.astype(np.uint8)
    own = channels_of_view(view)
    foreign = int(np.bitwise_or.reduce(values, axis=None)) & ~sum(1 << c for c in own) & 0xFF
    if foreign:
        names = [MASK_NAMES[c] for c in range(len(MASK_NAMES)) if foreign >> c & 1]
        raise ValueError(f"{view} label sets bits of channels not on a {view} film: {', '.join(names)}")
    return {c: (values >> c & 1).astype(bool) for c in own}


__all__ = ["LABEL_VALUES", "decode_masks", "encode_masks"]
