"""Per-view overlay PNG for inference outputs: the radiograph, its predicted masks, a legend and,
on the lateral view, each vertebra's level and Genant grade."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from spine_app.channels import MASK_NAMES
from spine_app.data.io import atomic_path
from spine_app.morphometry.measure import VertebralBody
from spine_app.viz.contact_sheet import CHANNEL_COLORS, legend_strip, overlay

#: zlib level of the overlay PNGs: 3 writes them in half the default level 6's time
#: (an RGB sheet of 1121 rows: 0.063 s against 0.129 s on this CPU) for files 10 % larger
OVERLAY_PNG_LEVEL = 3

GRADE_COLORS = {0: (255, 255, 255), 1: (255, 220, 60), 2: (255, 150, 40), 3: (255, 60, 60), -1: (170, 170, 170)}


def wrap_text(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels in ``font`` (a word wider
    than that stays whole on its own line): a tall, narrow film keeps its whole title."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines  # split() gives at least one word


def body_text(body: VertebralBody, reported: Mapping[int, int] | None = None) -> tuple[str, int]:
    """(label, grade it is coloured by, -1 grey) of one measured body on the LAT overlay.

    ``reported`` (body index -> the grade result.json's levels give the body) is None without a
    level head: the body then reads as the morphometry grades it (type and height loss). With it,
    a body reads with its reported grade, so one the level head did not flag is G0 even where the
    morphometry measures a loss (shown in brackets: "#4 G0 (wedge 22%)"), and a body the head did not
    score (below its cap, or the second of a pair the canvas merged) reads "not scored", in grey.
    """
    name = body.label
    measured = f"{body.deformity} {100 * body.reduction:.0f}%"
    if body.grade < 0:
        return f"{name} not graded", -1
    if reported is None:
        return (f"{name} G0", 0) if body.grade == 0 else (f"{name} G{body.grade} {measured}", body.grade)
    grade = reported.get(body.index)
    bracket = f" ({measured})" if body.grade > 0 else ""
    if grade is None:
        return f"{name} not scored{bracket}", -1
    if grade == 0:
        return f"{name} G0{bracket}", 0
    return (f"{name} G{grade} {measured}" if body.grade > 0 else f"{name} G{grade}"), grade


def write_overlay(
    path: str | Path,
    image: np.ndarray,
    masks: dict[int, np.ndarray],
    title: str,
    bodies: Sequence[VertebralBody] = (),
    suspects: Sequence[tuple[tuple[float, float], str]] = (),
    max_height: int = 1024,
    reported: Mapping[int, int] | None = None,
) -> Path:
    """Draw ``masks`` (channel index -> (H, W) bool) on ``image`` (H, W) and save a PNG atomically.

    The picture is scaled to at most ``max_height`` rows; a title line and the legend of the drawn
    channels frame it; ``bodies`` (LAT morphometry) are labelled "level G<grade> <type> <loss %>"
    (:func:`body_text`; ``reported``: body index -> the grade the study reports for it, where the
    level head scored the body);
    ``suspects`` ((row, col) on the film, label): the levels that drive the decision, circled in
    magenta with their label on the left.
    """
    picture = Image.fromarray(overlay(image, masks))
    scale = min(1.0, max_height / picture.height)
    if scale < 1.0:
        picture = picture.resize(
            (round(picture.width * scale), round(picture.height * scale)), Image.Resampling.BILINEAR
        )
    font = ImageFont.load_default(size=max(12, picture.height // 60))
    draw = ImageDraw.Draw(picture)
    for body in bodies:
        row, col = (v * scale for v in body.centroid_px)
        text, grade = body_text(body, reported)
        draw.text((col + 4, row - 6), text, fill=GRADE_COLORS[grade], font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    radius = max(8, picture.height // 40)
    for (row, col), text in suspects:
        row, col = row * scale, col * scale
        draw.ellipse((col - radius, row - radius, col + radius, row + radius), outline=(255, 0, 255), width=3)
        width = draw.textlength(text, font=font)
        draw.text(
            (max(2, col - radius - 6 - width), row - 6),
            text,
            fill=(255, 0, 255),
            font=font,
            stroke_width=2,
            stroke_fill=(0, 0, 0),
        )
    names = [(MASK_NAMES[c], CHANNEL_COLORS[c]) for c in sorted(masks)]
    legend = legend_strip(picture.width, font, names)
    lines = wrap_text(title, font, picture.width - 12)
    header = 8 + len(lines) * (font.size + 4) + 4
    sheet = Image.new("RGB", (picture.width, header + picture.height + legend.height), "white")
    ImageDraw.Draw(sheet).text((6, 6), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=4)
    sheet.paste(picture, (0, header))
    sheet.paste(legend, (0, header + picture.height))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", compress_level=OVERLAY_PNG_LEVEL)
    return Path(path)
