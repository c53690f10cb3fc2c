"""LoadStudyd on generated studies (what a batch holds per study) and the training augmentation
(each view's image and masks move together)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spine_app.channels import MASK_NAMES, channels_of_view
from spine_app.data.augment import study_augmentation
from spine_app.data.importer import load_datalist
from spine_app.data.io import read_image
from spine_app.data.study_transforms import FilmGeometry, LoadStudyd, study_canvas
from spine_app.engines.dataset import ensure_datalist, tall_film_spacing

CANVAS = (128, 96)


@pytest.fixture(scope="module")
def entries(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("studies")
    datalist = load_datalist(ensure_datalist(str(folder), synthetic_studies=4, seed=3, preset="easy"))
    return [e for split in ("training", "validation", "test") for e in datalist.get(split, [])]


def test_a_study_loads_both_views_with_masks_geometry_and_level_map(entries: list[dict]) -> None:
    entry = next(e for e in entries if e["label"] == 1)
    out = LoadStudyd(CANVAS, level_labels="truth")(entry)
    assert out["ap"].shape == out["lat"].shape == (1, *CANVAS)
    assert out["seg_ap"].shape == out["seg_lat"].shape == (len(MASK_NAMES), *CANVAS)
    assert out["present"].tolist() == [1.0, 1.0] and float(out["label"]) == 1.0 and out["error"] == ""
    for view in ("AP", "LAT"):
        key = view.lower()
        own = channels_of_view(view)
        other = [c for c in range(len(MASK_NAMES)) if c not in own]
        assert out[f"avail_{key}"][own].tolist() == [1.0] * len(own)  # the view's masks are known ...
        assert out[f"avail_{key}"][other].sum() == 0 and out[f"seg_{key}"][other].sum() == 0  # ... the other view's not
        assert out[f"seg_{key}"][own[0]].sum() > 100  # the vertebrae are on the canvas
        film = FilmGeometry.from_tensor(out[f"geom_{key}"])
        assert (film.rows, film.cols) == read_image(entry[f"image_{key}"])[0].shape
        assert 0 < film.scale < 1 and film.spacing is not None
    assert out["levels_lat"].max() > 0  # the reference levels of a Damaged study's LAT film
    # an entry naming its own source (the main job's extra studies): study labels only, no level map
    assert LoadStudyd(CANVAS, level_labels="truth")({**entry, "level_labels": "study"})["levels_lat"].max() == 0


def test_a_missing_view_is_blank_and_a_broken_film_is_recorded(entries: list[dict], tmp_path: Path) -> None:
    entry = dict(entries[0], image_lat=None, masks=[m if c in channels_of_view("AP") else None
                                                    for c, m in enumerate(entries[0]["masks"])])  # fmt: skip
    out = LoadStudyd(CANVAS)(entry)
    assert out["present"].tolist() == [1.0, 0.0]
    assert out["lat"].abs().sum() == 0 and out["avail_lat"].sum() == 0
    assert FilmGeometry.from_tensor(out["geom_lat"]).spacing is None
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = dict(entries[0], image_ap=str(broken))
    with pytest.raises(Exception, match="broken.png"):
        LoadStudyd(CANVAS, on_error="raise")(bad)
    recorded = LoadStudyd(CANVAS, on_error="record")(bad)
    assert "broken.png" in recorded["error"]  # one line naming the file; the study comes out blank
    assert "\n" not in recorded["error"] and recorded["ap"].abs().sum() == 0


def test_study_canvas_grows_only_for_films_squeezed_coarser_than_the_working_spacing() -> None:
    canvas = (384, 288)
    # a default film (1214 x 724 px at 0.33 mm) fits at 1.04 mm per canvas pixel: canvas unchanged
    assert study_canvas([((1214, 724), (0.3256, 0.3256))], canvas, 1.25, 1024) == canvas
    # a whole-spine film (1300 x 468 px at 0.646 mm, 840 mm tall) would be squeezed to 2.2 mm per pixel:
    # the rows grow until 1.25 mm per pixel (672 px = 21 x 32)
    rows, cols = study_canvas([((1300, 468), (0.646, 0.646)), ((1200, 900), (0.3, 0.3))], canvas, 1.25, 1024)
    assert (rows, cols) == (672, 288) and rows * 1.25 >= 1300 * 0.646
    assert study_canvas([((1300, 468), (0.646, 0.646))], canvas, 1.25, 512) == (512, 288)  # capped
    assert study_canvas([((1300, 468), (0.0, 0.0))], canvas, 1.25, 1024) == canvas  # spacing unknown
    # a square film: the width caps the growth (it already fills the canvas across), so no taller canvas
    assert study_canvas([((1300, 1300), (0.646, 0.646))], canvas, 1.25, 1024) == canvas
    assert study_canvas([((2600, 1300), (0.646, 0.646))], canvas, 1.25, 1024) == (576, 288)  # 2:1: 576 rows


def test_a_tall_film_gets_a_taller_canvas_and_its_geometry_maps_back(entries: list[dict]) -> None:
    entry = dict(entries[0])
    entry["meta_ap"] = {**entry["meta_ap"], "spacing": [1.0, 1.0]}  # pretend 1 mm pixels: a metre-tall film
    entry["meta_lat"] = {**entry["meta_lat"], "spacing": [1.0, 1.0]}
    out = LoadStudyd(CANVAS, working_spacing_mm=1.25, max_rows=4 * CANVAS[0])(entry)
    rows = out["ap"].shape[-2]
    assert rows > CANVAS[0] and rows % 32 == 0 and out["ap"].shape[-1] == CANVAS[1]
    assert out["lat"].shape == out["ap"].shape and out["seg_lat"].shape[-2:] == out["ap"].shape[-2:]
    film = FilmGeometry.from_tensor(out["geom_ap"])
    plain = FilmGeometry.from_tensor(LoadStudyd(CANVAS)(entries[0])["geom_ap"])
    assert film.scale > plain.scale  # finer than the fixed canvas gives ...
    assert abs(film.to_film(film.top, film.left)[0]) < 1e-6  # ... and the canvas still maps onto the film
    assert out["seg_ap"][MASK_NAMES.index("Ap_Vertebra")].sum() > 0
    assert torch.equal(LoadStudyd(CANVAS, working_spacing_mm=None)(entry)["ap"], LoadStudyd(CANVAS)(entry)["ap"])
    with pytest.raises(ValueError, match="working_spacing_mm"):
        LoadStudyd(CANVAS, working_spacing_mm=0.0)


def test_tall_films_need_one_study_per_batch() -> None:
    assert tall_film_spacing(1.25, 1) == 1.25 and tall_film_spacing(None, 8) is None
    with pytest.raises(ValueError, match="batch_size 1"):
        tall_film_spacing(1.25, 4)


def test_augmentation_moves_each_views_image_and_masks_together(entries: list[dict]) -> None:
    sample = LoadStudyd(CANVAS, level_labels="truth")(next(e for e in entries if e["label"] == 1))
    vertebra = {"ap": MASK_NAMES.index("Ap_Vertebra"), "lat": MASK_NAMES.index("Lat_Vertebra")}
    for key in ("ap", "lat"):  # the image *is* the vertebra mask: after the transform they must still coincide
        sample[key] = sample[f"seg_{key}"][vertebra[key]][None].clone()
    before = {key: sample[f"seg_{key}"][vertebra[key]].clone() for key in ("ap", "lat")}
    augment = study_augmentation(
        prob=1.0, rotate_deg=10, scale=0.1, translate=0.08, elastic_prob=1.0, flip_prob=1.0, gamma=(1.0, 1.0),
        contrast=0.0, shift=0.0, blur_sigma=(0.1, 0.1), noise_std=0.0, histogram_prob=0.0, canvas=CANVAS,
    )  # fmt: skip
    augment.set_random_state(seed=5)
    out = augment(sample)
    for key in ("ap", "lat"):
        image = torch.as_tensor(out[key])[0] > 0.5
        mask = torch.as_tensor(out[f"seg_{key}"])[vertebra[key]] > 0.5
        moved = (mask ^ (before[key] > 0.5)).sum() / max(int(mask.sum()), 1)
        assert moved > 0.2, f"{key}: the transform did not move the mask"
        overlap = (image & mask).sum() / (image | mask).sum()
        assert overlap > 0.9, f"{key}: image and mask no longer coincide (IoU {overlap:.2f})"
    levels = torch.as_tensor(out["levels_lat"])
    assert set(np.unique(levels.numpy())) <= set(np.unique(sample["levels_lat"].numpy()))  # nearest: codes kept
    lat_vertebra = torch.as_tensor(out["seg_lat"])[vertebra["lat"]] > 0.5
    assert ((levels[0] > 0) & lat_vertebra).sum() / max(int((levels[0] > 0).sum()), 1) > 0.8  # levels follow the bodies
