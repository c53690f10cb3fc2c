"""Fields of view, the thorax and what real patients have: framing, truth, brightness of metal and cement,
the heart's shadow, grid lines, and the default study left as it was (small films for speed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from spine_app.synthetic.config import ALL_LEVELS, FIELDS_OF_VIEW, closest_field_of_view, load_preset
from spine_app.synthetic.generator import generate_study, render_study
from spine_app.synthetic.render import Projections
from spine_app.synthetic.thorax import add_soft_organs

SMALL = {"long_side_px": (320, 320), "render_voxel_mm": 1.2}


@pytest.mark.parametrize("name", ["lumbar", "thoracolumbar", "thoracic", "whole_spine"])
def test_a_framings_own_levels_and_a_wider_film_of_them_file_under_it(name: str) -> None:
    framed = FIELDS_OF_VIEW[name].level_names()
    assert closest_field_of_view(framed).name == name
    first = ALL_LEVELS.index(framed[0]) if framed[0] in ALL_LEVELS else 0
    wider = list(ALL_LEVELS[max(0, first - 1) : first]) + framed  # one level of context above
    assert closest_field_of_view(wider).name == name


def test_films_outside_every_framing_file_under_none_and_a_chest_ct_under_thoracic() -> None:
    assert closest_field_of_view([]) is None and closest_field_of_view(["C3", "C4"]) is None
    chest = ["C7", *(f"T{i}" for i in range(1, 13)), "L1", "L2"]  # a chest CT's labelled bodies
    assert closest_field_of_view(chest).name == "thoracic"
    assert closest_field_of_view(["T11", "T12", "L1", "L2", "L3"]).name == "thoracolumbar"


@pytest.mark.parametrize("name", ["lumbar", "thoracolumbar", "thoracic", "whole_spine"])
def test_each_field_of_view_frames_its_levels(name: str) -> None:
    study = generate_study(load_preset(name, **SMALL), 3, 1)
    truth, fov = study.truth, FIELDS_OF_VIEW[name]
    assert truth["field_of_view"] == {"name": name, "levels": fov.level_names()}
    in_view = truth["levels_in_view"]
    assert set(fov.level_names()) <= set(in_view)  # every framed level is on both films
    assert len(in_view) <= len(fov.level_names()) + 6  # context above and below, not another region
    rows = [lv["center_ap_px"][0] for lv in truth["levels"] if lv["name"] in fov.level_names()]
    height = study.images["AP"].shape[0]
    assert abs(np.mean([min(rows), max(rows)]) - height / 2) < 0.2 * height  # the framed levels are centred
    assert max(study.images["AP"].shape) == 320
    for view, mask_name in (("AP", "Ap_Vertebra"), ("LAT", "Lat_Vertebra")):
        mask = study.masks[mask_name]
        assert mask.shape == study.images[view].shape
        for level in truth["levels"]:
            if level["name"] in fov.level_names():
                row, col = (int(x) for x in level[f"center_{view.lower()}_px"])
                assert mask[row, col], f"{name} {view}: {level['name']} centre outside its vertebra mask"


def _local_level(image: np.ndarray, point, half: int = 3) -> float:
    r, c = (int(x) for x in point)
    return float(np.percentile(image[r - half : r + half + 1, c - half : c + half + 1], 75))


def test_cement_and_screws_are_brighter_than_bone() -> None:
    cfg = load_preset(
        "thoracolumbar",
        long_side_px=(700, 700),
        thorax=False,
        damaged_fraction=1.0,
        cement_probability=1.0,
        instrumentation_probability=1.0,
    )
    study = generate_study(cfg, 0, 2)
    realism, levels = study.truth["realism"], {lv["name"]: lv for lv in study.truth["levels"]}
    assert realism["cement"] and realism["instrumented"]
    treated = set(realism["cement"]) | set(realism["instrumented"]) | {f["level"] for f in study.truth["fractures"]}
    normal = [lv for name, lv in levels.items() if name not in treated and lv["in_view_ap"] and lv["in_roi"]]
    image = study.images["AP"].astype(float)
    bone = np.median([_local_level(image, lv["center_ap_px"]) for lv in normal])
    for name in realism["cement"]:
        assert _local_level(image, levels[name]["center_ap_px"]) > bone + 2000
    lat = study.images["LAT"].astype(float)
    lat_bone = np.median([_local_level(lat, lv["center_lat_px"]) for lv in normal])
    for name in realism["instrumented"]:
        assert _local_level(lat, levels[name]["center_lat_px"]) > lat_bone + 4000  # the screws cross the body


def test_heart_shadow_darkens_the_lateral_film_in_front_of_the_thoracic_column() -> None:
    """The same thoracic study with and without its heart: more attenuation in front of T7-T9 on the LAT
    film (less transmission), none behind the column."""
    cfg = load_preset("thoracic", long_side_px=(400, 400), breast_probability=0.0)
    _, _, model, film, _, extras = render_study(cfg, 5, 0)
    attenuation = {}
    for heart in (True, False):
        chest = extras.thorax if heart else dataclasses.replace(extras.thorax, heart_radii=np.full(3, 1e-3))
        proj = Projections.empty(film)
        add_soft_organs(film, proj, chest)
        attenuation[heart] = proj.attenuation["LAT"]
    by_name = {v.name: v for v in model.vertebrae}
    top, bottom = (film.to_detector("LAT", by_name[n].center) / film.upsample for n in ("T7", "T9"))
    t8 = by_name["T8"]
    front = film.to_detector("LAT", t8.to_world(np.array([0.0, -t8.half_depth_anterior, 0]))) / film.upsample
    back = film.to_detector("LAT", t8.to_world(np.array([0.0, t8.half_depth_posterior + 40.0, 0]))) / film.upsample
    rows, mm = slice(int(top[0]), int(bottom[0])), 1.0 / film.step
    gain = attenuation[True] - attenuation[False]
    in_front = gain[rows, int(front[1] - 70 * mm) : int(front[1] - 15 * mm)].mean()
    behind = gain[rows, int(back[1]) : int(back[1] + 30 * mm)].mean()
    assert in_front > 0.5 and abs(behind) < 0.1, (in_front, behind)


def test_grid_lines_are_a_column_pattern_on_the_same_film() -> None:
    plain = generate_study(load_preset("default"), 0, 0)
    lined = generate_study(load_preset("default", grid_line_probability=1.0), 0, 0)
    diff = lined.images["AP"].astype(float) - plain.images["AP"].astype(float)
    grid = lined.truth["realism"]["grid_lines"]
    assert grid is not None
    inside = (plain.images["AP"] > 2000) & (plain.images["AP"] < 63000)  # not clipped
    columns = np.nanmean(np.where(inside, diff, np.nan), axis=0)
    assert np.nanstd(columns) > 0.25 * grid["amplitude"] * 65535
    assert np.nanstd(np.nanmean(np.where(inside, diff, np.nan), axis=1)) < 0.1 * np.nanstd(columns)


def test_features_off_reproduce_the_default_and_on_leave_the_spine_alone() -> None:
    """Realism features draw from their own stream: the spine, its fractures and its exposure are the default's."""
    base = generate_study(load_preset("default"), 7, 1)
    off = generate_study(load_preset("default", thorax=False, field_of_view={}, ecg_probability=0.0), 7, 1)
    for view in ("AP", "LAT"):
        np.testing.assert_array_equal(off.images[view], base.images[view])
    assert off.truth == base.truth
    on = generate_study(load_preset("default", osteoporosis_probability=1.0, ecg_probability=1.0), 7, 1)
    assert on.truth["levels"] == base.truth["levels"] and on.truth["fractures"] == base.truth["fractures"]
    assert on.truth["realism"]["osteoporosis"] > 0 and on.truth["realism"]["ecg_electrodes"] >= 3
    assert not np.array_equal(on.images["AP"], base.images["AP"])
    for name in base.masks:
        np.testing.assert_array_equal(on.masks[name], base.masks[name])  # masks: the bodies alone
    # degeneration narrows the disks below its levels and nothing else of the spine
    worn = generate_study(load_preset("default", degeneration_probability=1.0), 7, 1)
    narrowing = worn.truth["realism"]["disk_narrowing"]
    assert narrowing and worn.truth["fractures"] == base.truth["fractures"]
    heights = [lv["heights_mm"] for lv in base.truth["levels"]]
    assert [lv["heights_mm"] for lv in worn.truth["levels"]] == heights
    for disk, height in base.truth["disk_heights_mm"].items():
        factor = narrowing.get(disk.split("-")[0], 1.0)
        assert worn.truth["disk_heights_mm"][disk] == pytest.approx(height * factor, abs=0.01)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"field_of_view": {"neck": 1.0}}, "field_of_view: unknown framing 'neck'"),
        ({"field_of_view": {"lumbar": -1.0}}, "field_of_view: weight of lumbar"),
        ({"field_of_view": {"lumbar": 0.0}}, "field_of_view: at least one weight"),
        ({"long_side_px": [900, 100]}, "long_side_px"),
        ({"cement_probability": 1.5}, "cement_probability must be within"),
        ({"thorax": "yes"}, "thorax must be true or false"),
    ],
)
def test_bad_realism_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_preset("default", **overrides)


def test_lateral_mask_follows_biconcave_endplates_only_when_asked() -> None:
    """With ``lat_mask_concavity`` a biconcave body's LAT mask is lower at its centre; the AP mask is unchanged."""
    cfg = {"damaged_fraction": 1.0, "type_weights": {"biconcave": 1.0}, "grade_weights": (0.0, 0.0, 1.0)}
    rims = generate_study(load_preset("default", **cfg), 0, 0)
    concave = generate_study(load_preset("default", lat_mask_concavity=True, **cfg), 0, 0)
    np.testing.assert_array_equal(concave.masks["Ap_Vertebra"], rims.masks["Ap_Vertebra"])
    level = next(lv for lv in rims.truth["levels"] if lv["fracture"])
    row, col = (int(x) for x in level["center_lat_px"])
    spacing = rims.pixel_spacing

    def height_at_centre(mask: np.ndarray) -> int:
        column = mask[:, col]
        top, bottom = row, row
        while column[top - 1]:
            top -= 1
        while column[bottom + 1]:
            bottom += 1
        return bottom - top + 1

    loss = level["heights_mm"]["posterior"] - level["heights_mm"]["middle"]  # at least 40 % of the height
    assert height_at_centre(rims.masks["Lat_Vertebra"]) - height_at_centre(concave.masks["Lat_Vertebra"]) > (
        0.5 * loss / spacing
    )


def test_aortic_calcification_lies_in_front_of_the_lumbar_column() -> None:
    """The same study with and without calcified plaques: added attenuation only in front of the bodies."""
    attenuation = {}
    for probability in (1.0, 0.0):
        cfg = load_preset("default", aortic_calcification_probability=probability)
        _, _, model, film, proj, extras = render_study(cfg, 2, 3)
        attenuation[probability] = proj.attenuation["LAT"]
        if probability:
            assert extras.realism.calcified_plaques >= 4
    added = attenuation[1.0] - attenuation[0.0]
    rows, cols = np.nonzero(added > 0.01)
    assert rows.size > 0
    fronts = (
        np.array(
            [film.to_detector("LAT", v.to_world(np.array([0.0, -v.half_depth_anterior, 0.0]))) for v in model.vertebrae]
        )
        / film.upsample
    )  # (row, col) of each body's anterior wall, top to bottom
    front_at_row = np.interp(rows, fronts[:, 0], fronts[:, 1])
    assert np.mean(cols < front_at_row) > 0.95  # in front of the column (smaller LAT column = anterior)
