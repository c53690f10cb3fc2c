"""Contact sheet of studies: each row one study, AP and LAT side by side with coloured masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from spine_app.channels import CHANNEL_VIEW, MASK_NAMES, VIEWS
from spine_app.data.importer import load_datalist
from spine_app.data.io import atomic_path, read_image, read_mask
from spine_app.data.layout import CLASS_NAMES
from spine_app.data.study_transforms import normalize_intensity

#: one colour per channel (RGB 0..255), used by every overlay the project draws
CHANNEL_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 60, 60),  # Ap_Vertebra
    (60, 200, 80),  # Ap_Pedicle
    (80, 110, 255),  # Ap_Spinous_Process
    (230, 60, 60),  # Lat_Vertebra
    (80, 110, 255),  # Lat_Spinous_Process
    (245, 210, 40),  # Lat_Disk_Height
    (40, 220, 230),  # Lat_Anterior_Vertebral_Line
    (230, 70, 230),  # Lat_Posterior_Vertebral_Line
)


def to_display(image: np.ndarray) -> np.ndarray:
    """Float image to uint8 with the 0.5-99.5 percentile window the network input uses."""
    return (normalize_intensity(image) * 255).astype(np.uint8)


def overlay(image: np.ndarray, masks: dict[int, np.ndarray], alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 overlay of channel masks (index -> bool array) on a grey image."""
    grey = to_display(image)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for channel, mask in masks.items():
        colour = np.asarray(CHANNEL_COLORS[channel], dtype=np.float32)
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
    return rgb.astype(np.uint8)


def _fit(array: np.ndarray, height: int) -> Image.Image:
    img = Image.fromarray(array)
    return img.resize((max(1, round(img.width * height / img.height)), height), Image.Resampling.LANCZOS)


def study_tiles(entry: dict, height: int) -> list[Image.Image]:
    """[AP image, AP overlay, LAT image, LAT overlay] for one datalist entry."""
    tiles = []
    for view in VIEWS:
        path = entry[f"image_{view.lower()}"]
        if path is None:
            blank = np.zeros((height, height // 2, 3), np.uint8)
            tiles += [Image.fromarray(blank), Image.fromarray(blank)]
            continue
        image, _ = read_image(path)
        masks = {
            c: read_mask(entry["masks"][c], image.shape)
            for c, v in enumerate(CHANNEL_VIEW)
            if v == view and entry["masks"][c] is not None
        }
        tiles += [_fit(np.repeat(to_display(image)[..., None], 3, axis=2), height), _fit(overlay(image, masks), height)]
    return tiles


def contact_sheet(datalist: str | Path, out: str | Path, per_class: int = 2, height: int = 420) -> Path:
    """Write a PNG with ``per_class`` Normal and Damaged studies of the datalist's test split (or any split)."""
    data = load_datalist(datalist)
    entries = data["test"] + data["validation"] + data["training"]
    chosen = [e for c in CLASS_NAMES for e in [e for e in entries if e["class_name"] == c][:per_class]]
    if not chosen:
        raise ValueError(f"{datalist}: no labelled studies to show")
    font = ImageFont.load_default(size=18)
    rows = []
    for entry in chosen:
        tiles = study_tiles(entry, height)
        width = sum(t.width for t in tiles) + 10 * (len(tiles) - 1)
        row = Image.new("RGB", (width, height + 28), (255, 255, 255))
        x = 0
        for tile in tiles:
            row.paste(tile, (x, 28))
            x += tile.width + 10
        fractures = ""
        if entry.get("truth"):
            truth = json.loads(Path(entry["truth"]).read_text())
            fractures = ", ".join(f"{f['level']} {f['kind']} grade {f['grade']}" for f in truth.get("fractures", []))
        caption = f"{entry['study_id']}  {entry['class_name']}" + (f"  ({fractures})" if fractures else "")
        ImageDraw.Draw(row).text((4, 4), caption + "    AP | AP masks | LAT | LAT masks", fill=(0, 0, 0), font=font)
        rows.append(row)
    legend = legend_strip(max(r.width for r in rows), font)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 8 for r in rows) + legend.height), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + 8
    sheet.paste(legend, (0, y))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(out)


def legend_strip(
    width: int, font: ImageFont.ImageFont, items: list[tuple[str, tuple[int, int, int]]] | None = None
) -> Image.Image:
    """Colour key of (name, colour) items (default: the eight channels), wrapped to ``width``."""
    items = list(zip(MASK_NAMES, CHANNEL_COLORS)) if items is None else items
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = int(getattr(font, "size", 18))
    line = size + 12
    sized = [(name, colour, 2 * size + int(probe.textlength(name, font=font))) for name, colour in items]
    rows: list[list[tuple]] = [[]]
    for item in sized:
        if rows[-1] and sum(i[2] for i in rows[-1]) + item[2] > width:
            rows.append([])
        rows[-1].append(item)
    legend = Image.new("RGB", (width, line * len(rows) + 6), "white")
    draw = ImageDraw.Draw(legend)
    for r, row in enumerate(rows):
        x, y = 4, 6 + line * r
        for name, colour, item_width in row:
            draw.rectangle([x, y, x + size, y + size], fill=colour)
            draw.text((x + size + 6, y), name, fill=(0, 0, 0), font=font)
            x += item_width
    return legend


def agreement_rgb(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, dim: float = 0.7) -> np.ndarray:
    """(H, W, 3) float RGB of a film (dimmed grey) with one channel's agreement painted on it: truth
    only green, prediction only red, both yellow."""
    image = np.asarray(image, dtype=float)
    gray = (image - image.min()) / (np.ptp(image) + 1e-9)
    rgb = np.repeat(gray[..., None] * dim, 3, axis=-1)
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    rgb[truth & ~pred] = (0.0, 1.0, 0.0)
    rgb[pred & ~truth] = (1.0, 0.0, 0.0)
    rgb[truth & pred] = (1.0, 1.0, 0.0)
    return rgb
