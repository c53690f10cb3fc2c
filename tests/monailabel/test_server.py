"""A real MONAI Label server on 127.0.0.1 serving the spine app (the ``server`` fixture of conftest.py):
/info, segmentation and classification of PNG (8/16-bit) and DICOM films compared with direct runs of
the bundle's inference, a corrupt film, saved labels, and fine-tuning that swaps the served weights."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from spine_app.channels import MASK_NAMES, channels_of_view
from spine_app.data.io import read_image, read_mask
from spine_app.engines.dataset import study_entry
from spine_app.engines.writer import sha256_of
from spine_app.inference.run import run_inference
from spine_app.monailabel.appdir import SERVED_MODEL
from spine_app.monailabel.encoding import LABEL_VALUES, decode_masks, encode_masks

if os.environ.get("SPINE_APP_REQUIRE_EXTRAS") != "1":  # CI sets it: a missing extra fails, not skips
    pytest.importorskip("monailabel", reason="MONAI Label not installed: bash scripts/setup.sh --monailabel")
import httpx  # noqa: E402 - a dependency of the MONAI Label extra

pytestmark = pytest.mark.slow
STUDIES = ("syn7_00000", "syn7_00001", "syn7_00002")  # labelled by the "annotators"


def direct_masks(film: Path, view: str, out: Path, model: Path) -> tuple[np.ndarray, dict]:
    """The bundle's inference run directly (what `spine-app infer` does): label image and result.json."""
    run_inference([study_entry("direct", {view: film})], out, model=model)
    masks = {c: read_mask(out / "direct" / f"{MASK_NAMES[c]}.png") for c in channels_of_view(view)}
    return encode_masks(masks), json.loads((out / "direct" / "result.json").read_text())


def infer_label(client: httpx.Client, image_id: str) -> np.ndarray:
    response = client.post(f"/infer/spine_seg?image={image_id}&output=image")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_info_lists_models_labels_and_trainer(server: dict) -> None:
    info = server["client"].get("/info/").json()
    assert {"spine_seg", "spine_cls"} <= set(info["models"]) and "spine_bundle" in info["trainers"]
    assert info["models"]["spine_seg"]["labels"] == LABEL_VALUES and set(LABEL_VALUES) == set(MASK_NAMES)
    assert info["models"]["spine_cls"]["labels"] == {"Normal": 0, "Damaged": 1}
    assert server["client"].get("/datastore/?output=stats").json()["total"] == 11  # 8 films + 8-bit, unnamed, broken


@pytest.mark.parametrize("image_id", ["syn7_00000_LAT", "syn7_00001_AP", "eightbit_AP"])  # 16-bit PNG, DICOM, 8-bit
def test_segmentation_matches_the_bundle_pixel_for_pixel(server: dict, image_id: str, tmp_path: Path) -> None:
    film = next(server["studies"].glob(f"{image_id}.*"))
    view = image_id.rsplit("_", 1)[1]
    label = infer_label(server["client"], image_id)
    assert label.shape == read_image(film)[0].shape  # exact size, rows x cols (not transposed)
    expected, _ = direct_masks(film, view, tmp_path, server["app"] / SERVED_MODEL)
    assert np.array_equal(label, expected)
    assert decode_masks(label, view)[channels_of_view(view)[0]].sum() > 1000  # the vertebrae are found


def test_a_film_named_without_view_is_guessed_and_says_so(server: dict) -> None:
    answer = server["client"].post("/infer/spine_seg?image=film&output=json").json()
    assert answer["view"] == "AP" and answer["view_source"].startswith("guessed from the image")
    assert set(answer["mask_area_px"]) == {"Ap_Vertebra", "Ap_Pedicle", "Ap_Spinous_Process"}


def test_classification_uses_both_films_of_the_study(server: dict, tmp_path: Path) -> None:
    answer = server["client"].post("/infer/spine_cls?image=syn7_00001_AP&output=json").json()
    scores = {p["label"]: p["score"] for p in answer["prediction"]}
    assert set(scores) == {"Normal", "Damaged"} and abs(sum(scores.values()) - 1) < 1e-3
    assert answer["views"] == ["AP", "LAT"] and answer["label"] in scores
    films = {v: next(server["studies"].glob(f"syn7_00001_{v}.*")) for v in ("AP", "LAT")}
    run_inference([study_entry("direct", films)], tmp_path, model=server["app"] / SERVED_MODEL)
    direct = json.loads((tmp_path / "direct" / "result.json").read_text())
    assert scores["Damaged"] == pytest.approx(direct["damaged_probability"], abs=1e-4)


def test_corrupt_film_is_one_error_and_the_server_goes_on(server: dict) -> None:
    response = server["client"].post("/infer/spine_seg?image=broken_AP&output=image")
    assert response.status_code == 422
    assert "broken_AP.png" in response.json()["detail"] and "decode" in response.json()["detail"]
    assert (
        infer_label(server["client"], "syn7_00002_AP").shape
        == read_image(server["studies"] / "syn7_00002_AP.png")[0].shape
    )


def test_saved_labels_fine_tune_and_replace_the_served_model(server: dict) -> None:
    client = server["client"]
    served = server["app"] / SERVED_MODEL
    before_sha, before_label = sha256_of(served), infer_label(client, "syn7_00003_LAT")
    # syn7_00000 is Normal in study_classes.json; the annotator's label info says Damaged and wins
    info = {s: {"annotator": "test"} for s in STUDIES} | {"syn7_00000": {"annotator": "test", "study_class": "Damaged"}}
    for study in STUDIES:  # the annotators' convention: outlines 8 px wider than the model draws them
        folder = next((server["root"] / "dataset").glob(f"*/{study}"))
        for view in ("AP", "LAT"):
            masks = {
                c: ndimage.binary_dilation(read_mask(folder / f"{MASK_NAMES[c]}.png"), iterations=8)
                for c in channels_of_view(view)
            }
            buffer = io.BytesIO()
            Image.fromarray(encode_masks(masks)).save(buffer, format="PNG")
            response = client.put(
                "/datastore/label",
                params={"image": f"{study}_{view}", "tag": "final"},
                files={"label": ("label.png", buffer.getvalue(), "image/png")},
                data={"params": json.dumps(info[study])},
            )
            assert response.status_code == 200, response.text
    assert client.get("/datastore/?output=stats").json()["completed"] == 2 * len(STUDIES)
    started = client.post("/train/spine_bundle", json={"max_epochs": 4, "learning_rate": 0.001})
    assert started.status_code == 200, started.text
    deadline = time.monotonic() + 300
    while (status := client.get("/train/?check_if_running=false").json())["status"] in ("SUBMITTED", "RUNNING"):
        assert time.monotonic() < deadline, "training did not finish within 300 s"
        time.sleep(2)
    assert status["status"] == "DONE", json.dumps(status)[-3000:]
    report = json.loads(next((server["app"] / "train").glob("*/finetune.json")).read_text())
    # the guard: the new weights are served exactly when the validation score did not get worse
    assert report["replaced"] == (report["after"]["score"] >= report["before"]["score"])
    assert sorted(report["training_studies"] + report["validation_studies"]) == sorted(STUDIES)
    datalist = json.loads(next((server["app"] / "train").glob("*/datalist.json")).read_text())
    classes = {e["study_id"]: e["label"] for e in datalist["training"] + datalist["validation"]}
    assert classes == {"syn7_00000": 1, "syn7_00001": 1, "syn7_00002": 0}  # label info, else study_classes.json
    assert sha256_of(served) == report["served_sha256"]
    if report["replaced"]:  # the new weights answer
        assert report["served_sha256"] != before_sha
        assert not np.array_equal(infer_label(client, "syn7_00003_LAT"), before_label)
    else:  # the served weights are untouched
        assert report["served_sha256"] == before_sha
