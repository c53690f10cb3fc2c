"""MONAI Label on CR/DX films of a real Orthanc (DICOMweb) on 127.0.0.1: films pulled into the studies
folder by study, a user's file kept, one line per failing study, pre-segmentation equal to the bundle
run on the same film, and a final label that arrives in the PACS as a DICOM SEG of its film."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from spine_app.channels import MASK_NAMES, channels_of_view
from spine_app.data.io import read_mask
from spine_app.engines.dataset import study_entry
from spine_app.inference.run import run_inference
from spine_app.monailabel.appdir import SERVED_MODEL, free_port
from spine_app.monailabel.encoding import encode_masks
from spine_app.monailabel.pacs import SOURCES_FILE, pull_studies, push_quietly, read_sources
from spine_app.pacs.dicomweb import connect


def seg_series(pacs: dict, uid: str) -> list[dict]:
    client = connect(pacs["server"].dicomweb_url)
    return client.search_for_series(
        study_instance_uid=uid, search_filters={"Modality": "SEG"}, fields=["SeriesDescription"]
    )


def test_pull_writes_studies_keeps_user_files_and_reports_each_failure(pacs: dict, tmp_path: Path) -> None:
    first, second = pacs["uids"]
    studies = tmp_path / "studies"
    studies.mkdir()
    users = studies / f"{second}_AP.dcm"
    users.write_bytes(b"the user's own file")  # same name as a film the pull would write
    missing = "1.2.3.4.5"
    summary = pull_studies(pacs["server"].dicomweb_url, studies, [first, second, missing, "../etc"])
    assert sorted(summary.images) == sorted([f"{first}_AP", f"{first}_LAT", f"{second}_LAT"])
    assert users.read_bytes() == b"the user's own file"
    assert any(str(users) in w and "did not write" in w for w in summary.warnings), summary.warnings
    assert summary.errors == [
        f"study {missing}: not found on the server or no film in it",
        "study '../etc': not a DICOM UID (digits and dots)",
    ]
    sources = read_sources(studies)
    assert set(sources) == set(summary.images)
    for image_id, source in sources.items():
        film = pydicom.dcmread(studies / f"{image_id}.dcm", stop_before_pixels=True)
        assert (source["study"], source["sop"]) == (film.StudyInstanceUID, film.SOPInstanceUID)
        assert source["url"] == pacs["server"].dicomweb_url and "password" not in json.dumps(source).lower()
    again = pull_studies(pacs["server"].dicomweb_url, studies, [first])  # a film pulled again is refreshed
    assert sorted(again.images) == [f"{first}_AP", f"{first}_LAT"] and not again.errors
    assert read_sources(studies) == sources


def test_a_refused_store_keeps_the_label_and_says_why(tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    label = tmp_path / "label.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(label)
    assert push_quietly(studies, "local_LAT", label) == {}  # not pulled from a PACS: nothing to store
    (studies / SOURCES_FILE).write_text(
        json.dumps(
            {
                "images": {
                    "1.2_LAT": {
                        "url": f"http://127.0.0.1:{free_port()}/dicom-web",
                        "study": "1.2",
                        "series": "1.2.1",
                        "sop": "1.2.1.1",
                    }
                }
            }
        )
    )
    outcome = push_quietly(studies, "1.2_LAT", label)
    assert "pulled film 1.2_LAT.dcm is missing" in outcome["error"] and "\n" not in outcome["error"]


@pytest.mark.slow
def test_monailabel_serves_pacs_films_and_stores_final_labels_as_seg(pacs: dict, tmp_path: Path) -> None:
    if os.environ.get("SPINE_APP_REQUIRE_EXTRAS") != "1":
        pytest.importorskip("monailabel", reason="MONAI Label not installed: bash scripts/setup.sh --monailabel")
    from tests.monailabel.conftest import running_server

    uid = pacs["uids"][0]
    studies = tmp_path / "studies"
    flags = ("--dicomweb", pacs["server"].dicomweb_url, "--study", uid)
    with running_server(tmp_path, studies, tmp_path / "app", flags) as server:
        client = server["client"]
        listed = client.get("/datastore/?output=all").json()["objects"]
        assert sorted(listed) == [f"{uid}_AP", f"{uid}_LAT"]
        image_id, film = f"{uid}_LAT", studies / f"{uid}_LAT.dcm"
        answer = client.post(f"/infer/spine_seg?image={image_id}&output=image")
        assert answer.status_code == 200, answer.text
        label = np.asarray(Image.open(io.BytesIO(answer.content)))
        run_inference(
            [study_entry("direct", {"LAT": film})], tmp_path / "direct", model=tmp_path / "app" / SERVED_MODEL
        )
        direct = {
            c: read_mask(tmp_path / "direct" / "direct" / f"{MASK_NAMES[c]}.png") for c in channels_of_view("LAT")
        }
        assert np.array_equal(label, encode_masks(direct))  # the same masks as the bundle run on the film
        assert seg_series(pacs, uid) == []
        corrected = {c: ndimage.binary_dilation(m, iterations=3) for c, m in direct.items()}  # the annotator's edit
        buffer = io.BytesIO()
        Image.fromarray(encode_masks(corrected)).save(buffer, format="PNG")
        saved = client.put(
            "/datastore/label",
            params={"image": image_id, "tag": "final"},
            files={"label": ("label.png", buffer.getvalue(), "image/png")},
        )
        assert saved.status_code == 200, saved.text
    assert (studies / "labels" / "final").is_dir()  # kept locally as for any studies folder
    stored = seg_series(pacs, uid)
    assert [s["0008103E"]["Value"][0] for s in stored] == ["spine-app LAT annotation (MONAI Label, final)"]
    pacs_client = connect(pacs["server"].dicomweb_url)
    series_uid = stored[0]["0020000E"]["Value"][0]
    instance = pacs_client.search_for_instances(study_instance_uid=uid, series_instance_uid=series_uid)[0]
    seg = pacs_client.retrieve_instance(uid, series_uid, instance["00080018"]["Value"][0])
    source = pydicom.dcmread(film, stop_before_pixels=True)
    assert (
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    )
    assert all(s.SegmentAlgorithmType == "SEMIAUTOMATIC" for s in seg.SegmentSequence)
    frames = seg.pixel_array.reshape(len(seg.SegmentSequence), int(seg.Rows), int(seg.Columns)) > 0
    for k, segment in enumerate(seg.SegmentSequence):  # the PACS holds the annotator's masks
        assert np.array_equal(frames[k], corrected[MASK_NAMES.index(segment.SegmentLabel)]), segment.SegmentLabel
