"""The overlay picture: a tall, narrow film keeps its whole title (wrapped, not cut at the edge)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from spine_app.viz.overlay import wrap_text, write_overlay

TITLE = "syn7_00000 LAT | prediction: Damaged (P(Damaged) 0.97, threshold 0.29) | known label: Normal"


def test_wrap_text_keeps_every_word_within_the_width() -> None:
    font = ImageFont.load_default(size=14)
    lines = wrap_text(TITLE, font, 150)
    assert len(lines) > 1 and " ".join(lines) == TITLE
    assert all(font.getlength(line) <= 150 or " " not in line for line in lines)
    assert wrap_text(TITLE, font, 10_000) == [TITLE]


def test_a_narrow_film_gets_a_taller_header_than_a_wide_one(tmp_path: Path) -> None:
    narrow, wide = (
        Image.open(
            write_overlay(tmp_path / f"{cols}.png", np.random.rand(400, cols), {0: np.zeros((400, cols), bool)}, TITLE)
        )
        for cols in (100, 1200)
    )
    # same picture height (400 rows), same legend line: the difference is the wrapped title
    assert narrow.height > wide.height
