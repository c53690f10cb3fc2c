"""Corruptions: deterministic for a seed, in range, stronger with severity; suite files checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spine_app.robustness.corruptions import CORRUPTIONS, CorruptionSpec, load_suite

SUITE = Path(__file__).resolve().parents[2] / "configs" / "robustness" / "default.yaml"
GEOMETRIC = {"rotate", "flip_lat", "collimation"}


@pytest.fixture(scope="module")
def film() -> tuple[np.ndarray, np.ndarray]:
    """A smooth 16-bit 'radiograph' with structure, and one mask channel."""
    rows, cols = np.mgrid[0:192, 0:160]
    image = 20000 + 15000 * np.sin(rows / 17.0) * np.cos(cols / 23.0) + 80 * rows
    mask = ((rows - 96) ** 2 / 40**2 + (cols - 80) ** 2 / 25**2) < 1
    return image.astype(np.float32), mask[None]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(65535.0**2 / mse)


def test_default_suite_covers_the_issue_list() -> None:
    names = {spec.name for spec in load_suite(SUITE)}
    assert names == set(CORRUPTIONS)
    assert dict((s.name, s.values) for s in load_suite(SUITE))["gaussian_noise"][-1] == 5000


@pytest.mark.parametrize("spec", load_suite(SUITE), ids=lambda s: s.name)
def test_deterministic_in_range_and_stronger_with_severity(spec: CorruptionSpec, film) -> None:
    image, mask = film
    outputs = []
    for severity in range(1, 6):
        out, out_mask = spec.apply(image, mask, severity, seed=3, view="LAT")
        again, _ = spec.apply(image, mask, severity, seed=3, view="LAT")
        assert np.array_equal(out, again)
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 65535
        assert out_mask.shape[1:] == out.shape and out_mask.dtype == bool
        if spec.name not in GEOMETRIC:
            assert out.shape == image.shape and out_mask is mask  # intensity corruptions leave the masks
        outputs.append(out)
    if spec.name in GEOMETRIC:
        return
    scores = [psnr(image, out) for out in outputs]
    if len(set(spec.values)) == 1:
        assert len(set(scores)) == 1 and scores[0] < 40  # binary corruption: the same at every severity
    else:
        assert all(a > b for a, b in zip(scores, scores[1:])), (spec.name, scores)


def test_geometric_corruptions_move_the_masks(film) -> None:
    image, mask = film
    specs = {s.name: s for s in load_suite(SUITE)}
    flipped, flipped_mask = specs["flip_lat"].apply(image, mask, 1, 0, "LAT")
    assert np.array_equal(flipped, image[:, ::-1]) and np.array_equal(flipped_mask, mask[:, :, ::-1])
    untouched, _ = specs["flip_lat"].apply(image, mask, 1, 0, "AP")
    assert untouched is image  # flip_lat is for the lateral view only
    areas = [specs["collimation"].apply(image, mask, s, 0, "AP")[0].size for s in range(1, 6)]
    assert all(a > b for a, b in zip(areas, areas[1:]))
    rotated, rotated_mask = specs["rotate"].apply(image, mask, 5, 0, "AP")
    assert abs(int(rotated_mask.sum()) - int(mask.sum())) < 0.05 * mask.sum() and not np.array_equal(rotated_mask, mask)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("corruptions: {fog: [1, 2, 3, 4, 5]}", "unknown corruption 'fog'"),
        ("corruptions: {jpeg: [75, 50, 30]}", "five numbers"),
        ("corruptions: {jpeg: [75, 50, 30, 15, 0]}", "outside the valid range"),
        ("gaussian_noise: [1, 2]", "expected a mapping"),
    ],
)
def test_bad_suite_files_give_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_suite(path)
    assert str(path) in str(err.value)
