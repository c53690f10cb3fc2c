"""Study discovery: canonical layout, AP/LAT sub-folders, aliases, DICOM views, unknown files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spine_app.channels import MASK_NAMES, mask_name_for, view_for_image_stem
from spine_app.data.io import write_dicom, write_png
from spine_app.data.layout import find_studies, scan_study
from tests.helpers import radiograph, write_png_study


def test_aliases_and_case() -> None:
    assert mask_name_for("lat_anterior_line") == "Lat_Anterior_Vertebral_Line"
    assert mask_name_for("LAT-Posterior-Line") == "Lat_Posterior_Vertebral_Line"
    assert mask_name_for("Lat_Disc_Height") == "Lat_Disk_Height"
    assert mask_name_for("AP_SPINOUS_PROCESS") == "Ap_Spinous_Process"
    assert mask_name_for("Vertebra", view_hint="LAT") == "Lat_Vertebra"
    assert mask_name_for("Pedicle", view_hint="AP") == "Ap_Pedicle"
    assert mask_name_for("Pedicle", view_hint="LAT") is None  # no LAT pedicle channel
    assert mask_name_for("AP") is None
    assert (view_for_image_stem("Lateral"), view_for_image_stem("ap")) == ("LAT", "AP")


def test_canonical_layout_with_classes_and_unlabelled(tmp_path: Path) -> None:
    write_png_study(tmp_path / "Normal" / "n1")
    write_png_study(tmp_path / "damaged" / "d1")  # class folder names are case-insensitive
    write_png_study(tmp_path / "u1", masks=False)
    studies = {s.study_id: s for s in find_studies(tmp_path)}
    assert set(studies) == {"n1", "d1", "u1"}
    assert (studies["n1"].label, studies["d1"].label, studies["u1"].label) == (0, 1, None)
    assert set(studies["n1"].masks) == set(MASK_NAMES)
    assert set(studies["u1"].images) == {"AP", "LAT"} and not studies["u1"].masks


def test_view_subfolders_with_unprefixed_names(tmp_path: Path) -> None:
    study = tmp_path / "s"
    for view, names in (("AP", ["Vertebra", "Pedicle"]), ("Lateral", ["Vertebra", "Anterior_Line", "disk height"])):
        (study / view).mkdir(parents=True)
        write_png(study / view / "image.png", radiograph())
        for name in names:
            write_png(study / view / f"{name}.png", np.ones((96, 80), bool))
    files = scan_study(study)
    assert set(files.images) == {"AP", "LAT"}
    assert set(files.masks) == {
        "Ap_Vertebra",
        "Ap_Pedicle",
        "Lat_Vertebra",
        "Lat_Anterior_Vertebral_Line",
        "Lat_Disk_Height",
    }


def test_dicom_view_from_tags_and_unknown_files(tmp_path: Path) -> None:
    study = tmp_path / "s"
    study.mkdir()
    write_dicom(study / "IM0001.dcm", radiograph(), view="LAT")
    write_dicom(study / "IM0002.dcm", radiograph(), view="AP")
    (study / "notes.txt").write_text("scanner log")
    files = scan_study(study)
    assert files.images["LAT"].name == "IM0001.dcm" and files.images["AP"].name == "IM0002.dcm"
    assert [p.name for p in files.unknown] == ["notes.txt"]
    assert any("notes.txt: unknown file ignored" in note for note in files.notes)
    assert any("ViewPosition" in note for note in files.notes)
