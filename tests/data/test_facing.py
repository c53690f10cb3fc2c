"""Training puts every LAT film with reference masks the canonical way round, so a dataset whose
lateral films face either way still teaches each line channel its own wall."""

from __future__ import annotations

from pathlib import Path

import torch

from spine_app.channels import LINE_CHANNELS, MASK_NAMES
from spine_app.data.facing import CanonicalLatFacingd
from spine_app.data.study_transforms import LoadStudyd
from spine_app.engines.dataset import TRAINING_ONLY, datalist_split, ensure_datalist

ANT, POST = (MASK_NAMES.index(n) for n in LINE_CHANNELS)
CANVAS = (192, 144)


def _loaded(tmp_path: Path, facing: str) -> dict:
    """The same synthetic patient (seed 5) with its LAT film facing ``facing``, loaded on the canvas."""
    datalist = ensure_datalist(str(tmp_path / facing), 1, 5, "easy", 0, TRAINING_ONLY, {"lat_facing": facing})
    (entry,) = datalist_split(datalist, "training")
    return LoadStudyd(CANVAS)(entry)


def _centre_col(mask: torch.Tensor) -> float:
    cols = torch.arange(mask.shape[-1], dtype=torch.float32)
    return float((mask.sum(dim=0) * cols).sum() / mask.sum())


def test_right_facing_film_is_mirrored_with_its_masks(tmp_path: Path) -> None:
    left, right = _loaded(tmp_path, "left"), _loaded(tmp_path, "right")
    seg = torch.as_tensor(right["seg_lat"])
    assert _centre_col(seg[ANT]) > _centre_col(seg[POST])  # as written: anterior wall on the right

    fixed = CanonicalLatFacingd()(right)
    out_seg, out_img = torch.as_tensor(fixed["seg_lat"]), torch.as_tensor(fixed["lat"])
    assert _centre_col(out_seg[ANT]) < _centre_col(out_seg[POST])  # anterior line on the anterior wall
    assert torch.equal(out_img, torch.flip(torch.as_tensor(right["lat"]), dims=(-1,)))
    assert torch.equal(out_seg, torch.flip(seg, dims=(-1,)))
    canonical = torch.as_tensor(left["seg_lat"])  # the same patient's film facing left
    assert abs(_centre_col(out_seg[ANT]) - _centre_col(canonical[ANT])) <= 1.5  # the same wall, up to padding
    assert abs(_centre_col(out_seg[POST]) - _centre_col(canonical[POST])) <= 1.5
    assert torch.equal(torch.as_tensor(fixed["ap"]), torch.as_tensor(right["ap"]))  # the AP film is left alone


def test_canonical_film_and_film_without_masks_are_left_alone(tmp_path: Path) -> None:
    left = _loaded(tmp_path, "left")
    assert torch.equal(torch.as_tensor(CanonicalLatFacingd()(left)["lat"]), torch.as_tensor(left["lat"]))
    right = _loaded(tmp_path, "right")
    right["avail_lat"] = torch.zeros(len(MASK_NAMES))  # no reference masks: nothing tells the facing
    assert torch.equal(torch.as_tensor(CanonicalLatFacingd()(right)["lat"]), torch.as_tensor(right["lat"]))
