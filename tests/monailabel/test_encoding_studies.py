"""The label encoding and the studies-folder helpers (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spine_app.channels import CHANNEL_VIEW, MASK_NAMES, channels_of_view
from spine_app.data.io import write_png
from spine_app.monailabel.encoding import LABEL_VALUES, decode_masks, encode_masks
from spine_app.monailabel.studies import (
    CLASSES_FILE,
    class_index,
    known_classes,
    prepare_studies,
    resolve_view,
    split_image_id,
)
from tests.helpers import write_png_study
from tests.monailabel.conftest import _require_monailabel


def test_bitmask_keeps_overlapping_structures() -> None:
    rng = np.random.default_rng(0)
    masks = {c: rng.random((40, 30)) > 0.5 for c in channels_of_view("LAT")}  # heavy overlap
    label = encode_masks(masks)
    assert label.dtype == np.uint8 and label.shape == (40, 30)
    decoded = decode_masks(label, "LAT")
    assert set(decoded) == set(masks) and all(np.array_equal(decoded[c], masks[c]) for c in masks)
    both = masks[3] & masks[4]
    assert np.all(label[both] & (LABEL_VALUES["Lat_Vertebra"] | LABEL_VALUES["Lat_Spinous_Process"]) == 24)


def test_decoding_refuses_a_label_of_the_other_view() -> None:
    label = encode_masks({0: np.ones((8, 8), bool)})  # an AP structure
    with pytest.raises(ValueError, match="Ap_Vertebra"):
        decode_masks(label, "LAT")
    with pytest.raises(ValueError, match="different sizes"):
        encode_masks({0: np.ones((8, 8), bool), 1: np.ones((8, 9), bool)})


def test_image_ids_name_study_and_view() -> None:
    assert split_image_id("case7_LAT") == ("case7", "LAT")
    assert split_image_id("p-01.ap") == ("p-01", "AP")
    assert split_image_id("syn7_00003_Lateral") == ("syn7_00003", "LAT")
    assert split_image_id("chest") == ("chest", None)
    assert resolve_view("x/chest.png", "chest", "lat") == ("LAT", "request")
    assert resolve_view("x/case7_LAT.png", "case7_LAT") == ("LAT", "file name")
    assert [class_index(v) for v in ("Damaged", "normal", 1, "", None, "broken")] == [1, 0, 1, None, None, None]


def test_prepare_flattens_a_dataset_with_its_classes(tmp_path: Path) -> None:
    write_png_study(tmp_path / "ds" / "Damaged" / "s1", masks=False)
    write_png_study(tmp_path / "ds" / "Normal" / "s2", masks=False)
    write_png(tmp_path / "ds" / "Normal" / "s3" / "LAT.png", np.full((96, 80), 7, np.uint16))
    done = prepare_studies(tmp_path / "ds", tmp_path / "studies")
    names = sorted(p.name for p in (tmp_path / "studies").iterdir())
    assert names == sorted([CLASSES_FILE, "s1_AP.png", "s1_LAT.png", "s2_AP.png", "s2_LAT.png", "s3_LAT.png"])
    assert done == {"images": 5, "studies": 3, "classes": 3, "warnings": []}
    assert known_classes(tmp_path / "studies") == {"s1": 1, "s2": 0, "s3": 0}
    assert json.loads((tmp_path / "studies" / CLASSES_FILE).read_text())["s1"] == "Damaged"


def test_label_values_are_what_the_encoder_writes_for_one_structure() -> None:
    """The values /info lists (LABEL_VALUES): a film painted with one of them decodes to that
    structure alone, and the encoder writes exactly that value for a lone structure."""
    single = np.zeros((4, 4), bool)
    single[1:3, 1:3] = True
    for c, (name, view) in enumerate(zip(MASK_NAMES, CHANNEL_VIEW)):
        assert set(np.unique(encode_masks({c: single}))) == {0, LABEL_VALUES[name]}, name
        decoded = decode_masks(np.where(single, LABEL_VALUES[name], 0), view)
        assert [k for k, mask in decoded.items() if mask.any()] == [c], name
        assert np.array_equal(decoded[c], single), name
    assert len(set(LABEL_VALUES.values())) == len(MASK_NAMES) and max(LABEL_VALUES.values()) <= 255


def test_prepare_into_a_used_studies_folder(tmp_path: Path) -> None:
    """Refused without --overwrite; with it only the films and study_classes.json are replaced."""
    write_png_study(tmp_path / "ds" / "Damaged" / "s1", masks=False)
    studies = tmp_path / "studies"
    prepare_studies(tmp_path / "ds", studies)
    (studies / "labels" / "final").mkdir(parents=True)
    (studies / "labels" / "final" / "s1_AP.png").write_bytes(b"a saved label")
    (studies / "notes.txt").write_text("s1: check L2")
    film = (studies / "s1_AP.png").read_bytes()
    write_png_study(tmp_path / "other" / "Normal" / "s1", masks=False, seed=9)  # same id, other films and class
    with pytest.raises(FileExistsError, match=f"^{studies}: studies folder is not empty"):
        prepare_studies(tmp_path / "other", studies)
    assert (studies / "s1_AP.png").read_bytes() == film and known_classes(studies) == {"s1": 1}
    done = prepare_studies(tmp_path / "other", studies, overwrite=True)
    assert done["images"] == 2 and done["warnings"] == []
    assert (studies / "labels" / "final" / "s1_AP.png").read_bytes() == b"a saved label"
    assert (studies / "notes.txt").read_text() == "s1: check L2"
    assert (studies / "s1_AP.png").read_bytes() == (tmp_path / "other" / "Normal" / "s1" / "AP.png").read_bytes()
    assert known_classes(studies) == {"s1": 0}
    linked = prepare_studies(tmp_path / "ds", studies, copy=False, overwrite=True)
    assert linked["images"] == 2 and (studies / "s1_AP.png").resolve() == (
        tmp_path / "ds" / "Damaged" / "s1" / "AP.png"
    )
    assert not [p for p in studies.iterdir() if p.name.startswith(".")]


def test_prepare_refuses_a_study_id_in_two_class_folders(tmp_path: Path) -> None:
    write_png_study(tmp_path / "ds" / "Normal" / "s1", masks=False)
    write_png_study(tmp_path / "ds" / "Damaged" / "s1", masks=False, seed=4)
    with pytest.raises(ValueError, match="duplicate study id 's1'"):
        prepare_studies(tmp_path / "ds", tmp_path / "studies")
    assert not (tmp_path / "studies").exists()


def test_image_ids_are_file_stems_with_nii_gz_as_one_extension() -> None:
    """The MONAI Label image id of a film is its file stem as spine_app.data.io counts it."""
    _require_monailabel()  # the tasks module imports the server's own packages (fastapi)
    from spine_app.data.io import file_stem
    from spine_app.monailabel.tasks import image_id_of

    names = ["AP.nii.gz", "s1_LAT.NII.GZ", "case.7_AP.png", "LAT.DCM", "AP", "x/y/Lat_Vertebra.nii"]
    assert [image_id_of(n) for n in names] == ["AP", "s1_LAT", "case.7_AP", "LAT", "AP", "Lat_Vertebra"]
    assert [image_id_of(n) for n in names] == [file_stem(n) for n in names]
