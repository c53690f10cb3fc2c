"""Saliency PNG of one view: the film in grey, the map of the Damaged decision as a colour wash
(transparent where the map is 0), the strongest response circled and named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from spine_app.data.io import atomic_path
from spine_app.viz.contact_sheet import to_display


def saliency_picture(image: np.ndarray, saliency: np.ndarray, max_alpha: float = 0.6) -> np.ndarray:
    """RGB uint8: ``saliency`` (H, W) in [0, 1] as an "inferno" wash over the grey ``image`` (H, W),
    its opacity growing with the map (0 shows the film unchanged)."""
    grey = np.repeat(to_display(image)[..., None], 3, axis=2).astype(np.float32)
    s = np.clip(np.nan_to_num(saliency.astype(np.float32)), 0.0, 1.0)
    colour = colormaps["inferno"](s)[..., :3] * 255.0
    alpha = (max_alpha * s)[..., None]
    return ((1 - alpha) * grey + alpha * colour).astype(np.uint8)


def write_saliency(
    path: str | Path,
    image: np.ndarray,
    saliency: np.ndarray,
    title: str,
    peak: tuple[int, int] | None = None,
    label: str | None = None,
    max_height: int = 1024,
) -> Path:
    """Write the saliency picture with a title line; ``peak`` (row, col) circled and ``label`` written
    beside it. Scaled to at most ``max_height`` rows; written atomically."""
    picture = Image.fromarray(saliency_picture(image, saliency))
    scale = min(1.0, max_height / picture.height)
    if scale < 1.0:
        size = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    font = ImageFont.load_default(size=max(12, picture.height // 60))
    draw = ImageDraw.Draw(picture)
    if peak is not None:
        row, col = peak[0] * scale, peak[1] * scale
        radius = max(8, picture.height // 40)
        draw.ellipse((col - radius, row - radius, col + radius, row + radius), outline=(0, 255, 255), width=3)
        if label:
            draw.text(
                (col + radius + 4, row - radius),
                label,
                fill=(0, 255, 255),
                font=font,
                stroke_width=2,
                stroke_fill=(0, 0, 0),
            )
    header = 8 + font.size + 8
    sheet = Image.new("RGB", (picture.width, header + picture.height), "white")
    ImageDraw.Draw(sheet).text((6, 6), title, fill=(0, 0, 0), font=font)
    sheet.paste(picture, (0, header))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
