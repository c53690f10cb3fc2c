"""Vertebral morphometry on drawn masks with known heights, and on the generator's own masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from spine_app.morphometry.measure import (
    genant_grade,
    match_truth,
    measure_lat_film,
    measure_vertebrae,
    study_fracture_score,
)

SPACING = (0.5, 0.5)


def column(
    heights: list[tuple[float, float]],
    gap: float = 16.0,
    depth: float = 70.0,
    tilt_deg: float = 0.0,
    chamfer: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(vertebra mask, spinous mask) of a straight column of trapezoids, anterior to the left.

    heights: (anterior, posterior) height of each body in pixels, top to bottom; ``chamfer`` cuts
    the corners (rounded bodies leave a notch where they touch).
    """
    size = (int(sum(max(h) for h in heights) + gap * (len(heights) + 1)) + 40, 260)
    vert = Image.new("L", (size[1], size[0]), 0)
    spin = Image.new("L", (size[1], size[0]), 0)
    draw_v, draw_s = ImageDraw.Draw(vert), ImageDraw.Draw(spin)
    left, top = 80.0, 20.0 + gap
    for ha, hp in heights:
        bottom = top + hp
        c, right, up = chamfer, left + depth, bottom - ha
        draw_v.polygon(
            [
                (left, up + c),
                (left + c, up),
                (right - c, top),
                (right, top + c),
                (right, bottom - c),
                (right - c, bottom),
                (left + c, bottom),
                (left, bottom - c),
            ],
            fill=255,
        )
        draw_s.rectangle([left + depth + 40, top + 4, left + depth + 70, bottom - 4], fill=255)
        top = bottom + gap
    if tilt_deg:
        vert, spin = vert.rotate(tilt_deg, expand=True), spin.rotate(tilt_deg, expand=True)
    return np.array(vert) > 127, np.array(spin) > 127


def test_genant_thresholds() -> None:
    assert [genant_grade(r) for r in (0.0, 0.19, 0.2, 0.249, 0.25, 0.39, 0.4, 0.7)] == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("tilt", [0.0, 15.0])
def test_heights_order_and_wedge_grade(tilt: float) -> None:
    heights = [(50, 50), (52, 52), (30, 54), (56, 56), (58, 58)]  # the middle body is wedged by 44 %
    vert, spin = column(heights, tilt_deg=tilt)
    bodies = measure_vertebrae(vert, SPACING, spin, lowest_level="L5")
    assert [b.level for b in bodies] == ["L1", "L2", "L3", "L4", "L5"]
    assert all(bodies[i].centroid_px[0] < bodies[i + 1].centroid_px[0] for i in range(4))
    for body, (ha, hp) in zip(bodies, heights):
        assert body.heights_mm["posterior"] == pytest.approx(hp * 0.5, abs=1.5)
        assert body.heights_mm["anterior"] == pytest.approx(ha * 0.5, abs=1.5)
    wedged = bodies[2]
    assert wedged.deformity == "wedge" and wedged.grade == 3
    assert wedged.ratios["anterior_posterior"] == pytest.approx(1 - wedged.reduction)
    assert [b.grade for i, b in enumerate(bodies) if i != 2] == [0, 0, 0, 0]
    assert study_fracture_score(bodies) == pytest.approx(wedged.reduction)


def test_crush_is_found_against_the_neighbours() -> None:
    heights = [(50, 50), (52, 52), (54, 54), (36, 37), (58, 58), (60, 60)]  # body 4 lost a third
    vert, spin = column(heights)
    bodies = measure_vertebrae(vert, SPACING, spin)
    crushed = bodies[3]
    assert crushed.deformity == "crush" and crushed.grade >= 2 and "lower than neighbours" in crushed.flags
    assert max(b.grade for i, b in enumerate(bodies) if i != 3) == 0


def test_touching_bodies_are_split_and_anterior_side_follows_the_spinous_mask() -> None:
    heights = [(50, 50), (52, 52), (54, 54), (56, 56)]
    vert, spin = column(heights, gap=0.0, chamfer=6.0)  # no disk space: one connected blob
    assert len(np.unique(ndimage.label(vert)[0])) == 2
    flipped = measure_vertebrae(vert[:, ::-1], SPACING, spin[:, ::-1])
    bodies = measure_vertebrae(vert, SPACING, spin)
    assert len(bodies) == len(flipped) == 4
    for a, b in zip(bodies, flipped):
        assert a.heights_mm["anterior"] == pytest.approx(b.heights_mm["anterior"], abs=0.6)


def test_truncated_body_is_not_graded_and_empty_mask_gives_nothing() -> None:
    vert, spin = column([(50, 50), (52, 52), (54, 54)])
    rows = np.nonzero(vert.any(axis=1))[0]
    cut = vert[rows[0] + 20 :]  # the top body runs off the film
    bodies = measure_vertebrae(cut, SPACING, spin[rows[0] + 20 :])
    assert bodies[0].truncated and bodies[0].grade == -1
    assert measure_vertebrae(np.zeros((100, 100), bool)) == []


def test_a_body_cut_by_the_exposed_field_is_not_graded() -> None:
    """A collimator band cuts the film inside the image: the body the network draws on into the band
    runs off the exposed field (``field_rows``) and is not graded; the others are measured as before."""
    vert, spin = column([(50, 50), (52, 52), (54, 54)])
    rows = np.nonzero(vert.any(axis=1))[0]
    whole = measure_vertebrae(vert, SPACING, spin)
    assert not any(body.truncated for body in whole)
    banded = measure_vertebrae(vert, SPACING, spin, field_rows=(rows[0] + 20, vert.shape[0] - 1))
    assert len(banded) == len(whole)
    assert banded[0].truncated and banded[0].grade == -1 and "exposed field" in banded[0].not_measurable
    for a, b in zip(whole[1:], banded[1:]):
        assert not b.truncated and b.heights_mm == a.heights_mm and b.grade == a.grade
    bottom = measure_vertebrae(vert, SPACING, spin, field_rows=(0, rows[-1] - 10))
    assert bottom[-1].truncated and not bottom[0].truncated


def test_generator_masks_agree_with_truth(synth_root: Path) -> None:
    errors, found = [], 0
    for truth_file in sorted(synth_root.glob("*/*/truth.json")):
        truth = json.loads(truth_file.read_text())
        folder = truth_file.parent
        vert = np.array(Image.open(folder / "Lat_Vertebra.png")) > 0
        spin = np.array(Image.open(folder / "Lat_Spinous_Process.png")) > 0
        pairs = match_truth(measure_vertebrae(vert, truth["pixel_spacing_mm"], spin), truth)
        found += len(pairs)
        errors += [body.heights_mm["posterior"] - level["heights_mm"]["posterior"] for body, level in pairs]
    assert found >= 40  # ~10 bodies per study
    assert np.median(np.abs(errors)) < 3.0  # mm


def test_evaluation_reads_reference_and_predicted_masks_alike(synth_root: Path, tmp_path: Path) -> None:
    from spine_app.data.importer import import_dataset
    from spine_app.morphometry.evaluate import evaluate_morphometry, format_morphometry

    datalist = tmp_path / "datalist.json"
    import_dataset(synth_root, datalist, seed=0, fractions=(0.0, 0.0, 1.0), workers=1)
    pred = tmp_path / "pred"
    for folder in synth_root.glob("*/*"):
        (pred / folder.name).mkdir(parents=True)
        for name in ("Lat_Vertebra.png", "Lat_Spinous_Process.png"):
            (pred / folder.name / name).write_bytes((folder / name).read_bytes())
    reference = evaluate_morphometry(datalist, "test")
    predicted = evaluate_morphometry(datalist, "test", pred)
    assert reference["studies"] == predicted["studies"] == 6
    assert reference["levels"] == predicted["levels"] and reference["heights"] == predicted["heights"]
    assert reference["fractures"]["total"] >= 3  # three Damaged studies with 1-3 fractures each
    truths = [json.loads(p.read_text()) for p in synth_root.glob("*/*/truth.json")]
    in_view = sum(any(lv["fracture"] and lv["in_roi"] and lv["in_view_lat"] for lv in t["levels"]) for t in truths)
    damaged = reference["damaged_studies"]
    assert damaged == predicted["damaged_studies"] and damaged["total"] == in_view >= 1
    assert damaged["fracture_found"] <= damaged["total"] and damaged["most_reduced_is_fractured"] <= damaged["total"]
    assert "study AUROC of the largest height reduction" in format_morphometry(reference)


def test_morphometry_probability_and_noisy_or() -> None:
    from spine_app.morphometry.measure import combine_probabilities, morphometry_probability

    probs = [morphometry_probability(r) for r in (0.0, 0.15, 0.2, 0.25, 0.4)]
    assert probs == sorted(probs) and probs[2] == pytest.approx(0.5) and probs[0] < 0.01 and probs[-1] > 0.99
    assert combine_probabilities(0.3, None) == 0.3
    assert combine_probabilities(0.5, 0.5) == pytest.approx(0.75)
    assert combine_probabilities(0.2, 0.0) == pytest.approx(0.2)


def test_a_merged_column_without_dips_is_not_graded() -> None:
    vert, spin = column([(50, 50), (52, 52), (54, 54), (56, 56)], gap=0.0)  # one smooth slab: no disk visible
    bodies = measure_vertebrae(vert, SPACING, spin)
    assert bodies and all(b.unseparated is True and b.grade == -1 for b in bodies)
    json.dumps([b.to_json() for b in bodies])  # result.json must be able to hold them
    assert study_fracture_score(bodies) == 0.0
    assert "not separated from a neighbour on the mask" in bodies[0].flags


def test_disk_spaces_split_a_vertebra_mask_that_bridges_them() -> None:
    """A predicted LAT vertebra mask often fills the thin disks; cutting the disk channel out separates
    the bodies again, and the widened cut trims what overshoots the endplates."""
    heights = [(50, 50), (52, 52), (30, 54), (56, 56), (58, 58)]  # the middle body is wedged by 44 %
    vert, spin = column(heights)
    disk = ndimage.binary_closing(vert, structure=np.ones((21, 1))) & ~vert  # the disk spaces between the bodies
    bridged = vert | disk
    assert all(b.grade == -1 for b in measure_vertebrae(bridged, SPACING, spin))  # one slab: nothing graded
    masks = {"Lat_Vertebra": bridged, "Lat_Disk_Height": disk, "Lat_Spinous_Process": spin}
    bodies = measure_lat_film(masks, SPACING, gap_mm=0.0)
    assert len(bodies) == 5 and [b.grade for b in bodies] == [0, 0, 3, 0, 0] and bodies[2].deformity == "wedge"
    for body, (_, hp) in zip(bodies, heights):
        assert body.heights_mm["posterior"] == pytest.approx(hp * 0.5, abs=1.5)
    trimmed = measure_lat_film(masks, SPACING, gap_mm=1.0)  # 2 px off each endplate
    for body, cut in zip(trimmed, bodies):
        assert body.heights_mm["posterior"] == pytest.approx(cut.heights_mm["posterior"] - 2.0, abs=1.0)


def test_levels_are_numbered_from_the_top_unless_the_lowest_is_named() -> None:
    vert, spin = column([(50, 50)] * 4)
    assert [b.level for b in measure_vertebrae(vert, SPACING, spin)] == [None] * 4
    assert [b.index for b in measure_vertebrae(vert, SPACING, spin)] == [0, 1, 2, 3]


def test_quality_control_refuses_implausible_bodies() -> None:
    """A giant blob below normal bodies is reported not measurable (with the reason) and never
    graded; the normal bodies above it are graded; no reduction leaves [0, 1]."""
    vert, spin = column([(50, 50), (52, 52), (54, 54), (56, 56), (58, 58)])
    rows = np.nonzero(vert.any(axis=1))[0]
    blob_top = rows.max() + 20
    big = np.zeros((blob_top + 260, vert.shape[1]), bool)
    big[: vert.shape[0]] = vert
    big[blob_top : blob_top + 200, 60:220] = True  # a "body" 4 x taller and twice as deep as its neighbours
    spin_big = np.zeros_like(big)
    spin_big[: spin.shape[0]] = spin
    bodies = measure_vertebrae(big, SPACING, spin_big)
    in_blob = [b for b in bodies if b.centroid_px[0] > blob_top]
    assert in_blob and all(b.not_measurable and b.not_measurable.startswith("not measurable") for b in in_blob)
    assert all(b.grade == -1 and b.reduction == 0.0 for b in in_blob)
    assert all(b.not_measurable is None and b.grade == 0 for b in bodies[:4])
    assert all(0.0 <= b.reduction <= 1.0 for b in bodies)
    whole = measure_vertebrae(np.pad(np.ones((400, 160), bool), 20), SPACING)  # the column merged into one blob
    assert whole and all(b.grade == -1 and b.not_measurable for b in whole)


def test_plausibility_problem_names_the_reason() -> None:
    from spine_app.morphometry.measure import VertebralBody, plausibility_problem

    def body(ha: float, hm: float, hp: float, area: int = 1000, depth: float = 30.0) -> VertebralBody:
        return VertebralBody(
            index=0,
            level=None,
            centroid_px=(0.0, 0.0),
            area_px=area,
            heights_mm={"anterior": ha, "middle": hm, "posterior": hp},
            ratios={},
            expected_posterior_mm=None,
            reduction=0.0,
            grade=0,
            deformity="none",
            depth_mm=depth,
        )

    assert plausibility_problem(body(24, 24, 25), 1000) is None
    assert "ratio 6.50" in plausibility_problem(body(26, 25, 4), 1000)
    assert "not positive" in plausibility_problem(body(-5.9, 20, 25), 1000)
    assert "median body" in plausibility_problem(body(24, 24, 25, area=4000), 1000)
    assert "height/depth" in plausibility_problem(body(24, 24, 25, depth=5.0), 1000)


def test_negative_expected_posterior_height_is_dropped() -> None:
    """Neighbours whose posterior heights fall steeply extrapolate to a negative expected height
    at the end of the column: no crush grade is made from it."""
    heights = [(60, 60), (45, 45), (30, 30), (22, 22)]
    vert, spin = column(heights)
    bodies = measure_vertebrae(vert, SPACING, spin)
    for b in bodies:
        assert b.expected_posterior_mm is None or b.expected_posterior_mm > 0
        assert 0.0 <= b.reduction <= 1.0


def test_expected_posterior_is_the_theil_sen_line_of_the_neighbours() -> None:
    """scipy's Theil-Sen (method="joint") gives exactly the hand-written estimator it replaced:
    median of the pairwise slopes, median of y - slope * x as the intercept."""
    import warnings

    from spine_app.morphometry.measure import _expected_posterior

    def by_hand(posterior: np.ndarray, index: int, reach: int = 3) -> float | None:
        idx = [j for j in range(max(0, index - reach), min(len(posterior), index + reach + 1)) if j != index]
        idx = [j for j in idx if np.isfinite(posterior[j])]
        if len(idx) < 2:
            return None
        x, y = np.asarray(idx, float), posterior[idx]
        slopes = [(y[b] - y[a]) / (x[b] - x[a]) for a in range(len(x)) for b in range(a + 1, len(x))]
        slope = float(np.median(slopes))
        return float(np.median(y - slope * x)) + slope * index

    rng = np.random.default_rng(3)
    columns = [np.array([20.0, 21.0, 22.0, 23.0]), np.array([30.0, np.nan, 28.0, 27.5, np.nan, 26.0, 25.0])]
    columns += [np.where(rng.random(n) < 0.2, np.nan, rng.normal(25, 4, n)) for n in rng.integers(2, 12, 40)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from scipy on short columns either
        for posterior in columns:
            for index in range(len(posterior)):
                assert _expected_posterior(posterior, index) == by_hand(posterior, index), (posterior, index)


def test_the_benchmark_measures_predicted_masks_inside_the_exposed_field(synth_root: Path, tmp_path: Path) -> None:
    """`spine-app bench morphometry --pred` measures a model's masks as inference does: a body the
    masks draw on into a white collimator band is not graded; the reference masks are measured whole."""
    import shutil

    from spine_app.data.importer import import_dataset
    from spine_app.morphometry.evaluate import evaluate_morphometry

    folder = next(p for p in sorted(synth_root.glob("Damaged/*")) if (p / "truth.json").is_file())
    root = tmp_path / "data"
    shutil.copytree(folder, root / "Damaged" / folder.name)
    datalist = tmp_path / "datalist.json"
    import_dataset(root, datalist, seed=0, fractions=(0.0, 0.0, 1.0), workers=1)
    pred = tmp_path / "pred" / folder.name
    shutil.copytree(folder, pred)  # the "model" draws the reference masks
    before = evaluate_morphometry(datalist, "test", tmp_path / "pred")
    reference = evaluate_morphometry(datalist, "test")
    # the collimator's white band down to the middle of the second body in the region of interest
    study = root / "Damaged" / folder.name
    truth = json.loads((study / "truth.json").read_text())
    rows = sorted(lv["center_lat_px"][0] for lv in truth["levels"] if lv["in_roi"] and lv["in_view_lat"])
    film = np.array(Image.open(study / "LAT.png"))
    film[: int(rows[1])] = np.iinfo(film.dtype).max
    Image.fromarray(film).save(study / "LAT.png")
    after = evaluate_morphometry(datalist, "test", tmp_path / "pred")
    assert after["levels"]["graded"] <= before["levels"]["graded"] - 2  # the two cut bodies are not graded
    assert evaluate_morphometry(datalist, "test")["levels"] == reference["levels"]  # the reference masks: whole


def test_a_height_that_could_not_be_measured_is_counted_not_averaged() -> None:
    """A body whose wall has too few pixels has a NaN height: the height errors leave it out of the
    bias and MAE (before, one such body made the benchmark's posterior MAE nan) and count it."""
    from spine_app.morphometry.evaluate import height_errors

    report = height_errors({"anterior": [1.0, -1.0, 2.0], "posterior": [0.5, float("nan")], "middle": []})
    assert report["anterior"] == pytest.approx(
        {"bias_mm": 2 / 3, "mae_mm": 4 / 3, "p95_mm": 1.9, "n": 3, "not_measured": 0}
    )
    assert report["posterior"]["mae_mm"] == 0.5 and report["posterior"]["n"] == 1
    assert report["posterior"]["not_measured"] == 1
    assert report["middle"] is None
    assert height_errors({"anterior": [float("nan")]})["anterior"] is None
