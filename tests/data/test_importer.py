"""Importer: synth -> import round trip, stratified saved split, and the issue's bad-input cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from spine_app.channels import MASK_NAMES
from spine_app.data.importer import check_dataset, import_dataset, load_datalist
from spine_app.data.io import read_image, read_mask, write_dicom, write_png
from spine_app.data.split import stratified_split
from spine_app.synthetic.config import load_preset
from spine_app.synthetic.generator import generate_study
from tests.conftest import SYNTH_N, SYNTH_SEED
from tests.helpers import lying_png, write_png_study


def test_synth_import_roundtrip(synth_root: Path, tmp_path: Path) -> None:
    datalist = import_dataset(synth_root, tmp_path / "datalist.json", seed=3)
    saved = load_datalist(tmp_path / "datalist.json")
    entries = saved["training"] + saved["validation"] + saved["test"]
    assert len(entries) == SYNTH_N and datalist["summary"]["skipped"] == 0
    assert all(e["mask_present"] == [1] * 8 for e in entries)
    for split in ("training", "validation", "test"):  # 3 studies per class -> one of each class per split
        assert sorted(e["label"] for e in saved[split]) == [0, 1]
    assert saved["split_settings"] == {
        "seed": 3,
        "fractions": {"training": 0.7, "validation": 0.15, "test": 0.15},
        "stratified_by": "label",
    }
    # the written files give back the generator's arrays (16-bit preserved)
    entry = next(e for e in entries if e["class_name"] == "Damaged")
    index = int(entry["study_id"].split("_")[1])
    study = generate_study(load_preset("default"), SYNTH_SEED, index)
    for view in ("AP", "LAT"):
        array, meta = read_image(entry[f"image_{view.lower()}"])
        assert meta.bit_depth == 16
        np.testing.assert_array_equal(array, study.images[view])
        assert entry[f"meta_{view.lower()}"]["spacing"] == pytest.approx([study.pixel_spacing] * 2, abs=1e-4)
    for name, path in zip(MASK_NAMES, entry["masks"]):
        np.testing.assert_array_equal(read_mask(path), study.masks[name])


def test_split_is_seeded_stratified_and_saved() -> None:
    ids = [f"s{i:03d}" for i in range(40)]
    labels = [i % 4 == 0 for i in range(40)]  # 10 Damaged, 30 Normal
    a = stratified_split(ids, labels, (0.7, 0.15, 0.15), seed=1)
    assert a == stratified_split(list(reversed(ids)), list(reversed(labels)), (0.7, 0.15, 0.15), seed=1)
    assert a != stratified_split(ids, labels, (0.7, 0.15, 0.15), seed=2)
    assert sorted(a["training"] + a["validation"] + a["test"]) == ids
    damaged = {i for i, lab in zip(ids, labels) if lab}
    assert [len(damaged & set(a[s])) for s in ("training", "validation", "test")] == [7, 2, 1]
    assert [len(set(a[s]) - damaged) for s in ("training", "validation", "test")] == [21, 5, 4]
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_split(ids, labels, (0.5, 0.2, 0.2))


@pytest.fixture()
def messy_root(tmp_path: Path) -> Path:
    """A dataset with one good study per class plus every bad-input case of the issue."""
    root = tmp_path / "data"
    write_png_study(root / "Normal" / "good_n")
    write_png_study(root / "Damaged" / "good_d", seed=5)
    (write_png_study(root / "Normal" / "zero_byte") / "AP.png").write_bytes(b"")
    cut = write_png_study(root / "Normal" / "truncated", shape=(300, 300)) / "LAT.png"
    cut.write_bytes(cut.read_bytes()[:2000])
    nopix = write_png_study(root / "Damaged" / "dicom_nopix")
    (nopix / "AP.png").unlink()
    write_dicom(nopix / "AP.dcm", np.zeros((96, 80), np.uint16), view="AP")
    ds = pydicom.dcmread(nopix / "AP.dcm")
    del ds.PixelData
    ds.save_as(nopix / "AP.dcm")
    rgb = write_png_study(root / "Damaged" / "rgb")
    Image.fromarray(np.zeros((96, 80, 3), np.uint8) + 40).save(rgb / "AP.png")
    nan = write_png_study(root / "Normal" / "nan_nifti")
    (nan / "LAT.png").unlink()
    nib.save(nib.Nifti1Image(np.full((80, 96, 1), np.nan, np.float32), np.eye(4)), nan / "LAT.nii.gz")
    size = write_png_study(root / "Damaged" / "mask_size")
    write_png(size / "Lat_Vertebra.png", np.zeros((50, 50), bool))
    (root / "Normal" / "no_image").mkdir()
    (root / "Normal" / "no_image" / "readme.txt").write_text("x")
    unknown = write_png_study(root / "Damaged" / "unknown_file", seed=9)
    (unknown / "scanner.log").write_text("junk")
    missing = write_png_study(root / "Normal" / "missing_mask_and_view", seed=11)
    (missing / "Lat_Anterior_Vertebral_Line.png").unlink()
    (missing / "AP.png").unlink()
    return root


def test_bad_inputs_are_reported_and_import_continues(messy_root: Path, tmp_path: Path) -> None:
    datalist = import_dataset(messy_root, tmp_path / "dl.json", workers=1)
    errors = {e["study_id"]: e["error"] for e in datalist["errors"]}
    assert set(errors) == {"zero_byte", "truncated", "dicom_nopix", "nan_nifti", "mask_size", "no_image"}
    assert errors["zero_byte"].endswith("zero_byte/AP.png: empty file (0 bytes)")
    assert "truncated/LAT.png: cannot decode PNG" in errors["truncated"]
    assert errors["dicom_nopix"].endswith("AP.dcm: DICOM has no pixel data (no PixelData element)")
    assert "LAT.nii.gz:" in errors["nan_nifti"] and "NaN" in errors["nan_nifti"]
    assert "Lat_Vertebra.png: mask is 50x50 px but its image is 80x96 px" in errors["mask_size"]
    assert errors["no_image"].endswith("no_image: no AP or LAT image found")
    summary = datalist["summary"]
    assert summary["skipped"] == 6 and summary["imported"] == 5
    assert summary["skipped_reasons"] == {"unreadable image": 4, "mask size mismatch": 1, "no view image": 1}
    warnings = "\n".join(datalist["warnings"])
    assert "rgb/AP.png: colour image converted to grey" in warnings
    assert "scanner.log: unknown file ignored" in warnings
    assert "missing_mask_and_view/Ap_Vertebra.png: mask ignored, the study has no AP image" in warnings
    entry = next(
        e for s in ("training", "validation", "test") for e in datalist[s] if e["study_id"] == "missing_mask_and_view"
    )
    assert entry["views"] == ["LAT"] and entry["image_ap"] is None
    assert entry["mask_present"] == [0, 0, 0, 1, 1, 1, 0, 1]  # missing is not empty: AP masks and the line are absent
    assert summary["views"] == {"AP+LAT": 4, "LAT only": 1}
    assert summary["masks_missing"]["Lat_Anterior_Vertebral_Line"] == 1
    assert json.loads((tmp_path / "dl.json").read_text())["summary"]["skipped"] == 6


def test_check_matches_import(messy_root: Path) -> None:
    checks = check_dataset(messy_root, workers=2)
    assert sum(c.entry is None for c in checks) == 6 and len(checks) == 11


def test_same_study_id_in_two_class_folders_is_refused(tmp_path: Path) -> None:
    """A study under both Normal/ and Damaged/ would land in two classes and two splits: import refuses."""
    root = tmp_path / "data"
    for i in range(3):
        write_png_study(root / "Normal" / f"n{i}", masks=False, seed=i)
        write_png_study(root / "Damaged" / f"d{i}", masks=False, seed=10 + i)
    write_png_study(root / "Normal" / "case1", masks=False)
    write_png_study(root / "Damaged" / "case1", masks=False, seed=3)
    out = tmp_path / "dl.json"
    with pytest.raises(ValueError) as err:
        import_dataset(root, out, workers=1)
    message = str(err.value)
    assert "'case1'" in message and str(root / "Normal" / "case1") in message
    assert str(root / "Damaged" / "case1") in message and "\n" not in message
    assert not out.exists()
    checks = {c.folder: c for c in check_dataset(root, workers=1)}
    for mine, other in (("Normal", "Damaged"), ("Damaged", "Normal")):
        check = checks[str(root / mine / "case1")]
        assert check.entry is None and check.error_kind == "duplicate study id"
        assert check.error == f"{root / mine / 'case1'}: study id 'case1' is also in {root / other / 'case1'}"
    assert sum(c.entry is not None for c in checks.values()) == 6


def test_datalist_paths_follow_a_copied_dataset(tmp_path: Path) -> None:
    """Paths are stored relative to the datalist: a copied folder trains on the copy, not the original."""
    root = tmp_path / "original"
    write_png_study(root / "Normal" / "a")
    write_png_study(root / "Damaged" / "b", seed=3)
    write_png_study(root / "c", masks=False, seed=5)  # unlabelled
    import_dataset(root, root / "datalist.json", workers=1)
    raw = json.loads((root / "datalist.json").read_text())
    stored = [e["image_ap"] for s in ("training", "validation", "test", "unlabelled") for e in raw[s]]
    assert stored and not any(Path(p).is_absolute() for p in stored) and raw["root"] == "."
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    shutil.rmtree(root)
    loaded = load_datalist(copy / "datalist.json")
    assert loaded["root"] == str(copy)
    entries = [e for s in ("training", "validation", "test", "unlabelled") for e in loaded[s]]
    paths = [p for e in entries for p in (e["image_ap"], e["image_lat"], *e["masks"], e["truth"]) if p]
    assert len(entries) == 3 and len(paths) == 3 * 2 + 2 * 8
    for path in paths:
        assert Path(path).is_absolute() and Path(path).is_relative_to(copy) and Path(path).is_file()


def test_datalist_outside_the_dataset_and_old_datalists_load(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_png_study(root / "Normal" / "a", masks=False)
    write_png_study(root / "Damaged" / "b", masks=False, seed=3)
    (tmp_path / "lists").mkdir()
    import_dataset(root, tmp_path / "lists" / "dl.json", workers=1)
    raw = json.loads((tmp_path / "lists" / "dl.json").read_text())
    entry = (raw["training"] + raw["validation"] + raw["test"])[0]
    assert entry["image_ap"].startswith(f"../data/{entry['class_name']}/")
    new = load_datalist(tmp_path / "lists" / "dl.json")
    # an older datalist: absolute root, paths relative to it, no "paths" key; or absolute paths
    old = {k: v for k, v in raw.items() if k != "paths"} | {"root": str(root)}
    for split in ("training", "validation", "test"):
        old[split] = [
            e
            | {
                "image_ap": f"{e['class_name']}/{e['study_id']}/AP.png",
                "image_lat": str(root / e["class_name"] / e["study_id"] / "LAT.png"),
            }
            for e in raw[split]
        ]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = load_datalist(tmp_path / "old.json")
    for split in ("training", "validation", "test"):
        assert [(e["image_ap"], e["image_lat"]) for e in loaded[split]] == [
            (e["image_ap"], e["image_lat"]) for e in new[split]
        ]
        assert all(Path(e["image_ap"]).is_file() for e in loaded[split])


@pytest.fixture()
def bomb_root(tmp_path: Path) -> Path:
    """Good studies plus films and masks with lying huge headers, a truncated film and a corrupt mask."""
    root = tmp_path / "data"
    write_png_study(root / "Normal" / "good_n")
    write_png_study(root / "Damaged" / "good_d", seed=5)
    lying_png(write_png_study(root / "Normal" / "bomb_ap") / "AP.png", 10000, 10000)  # PIL warning
    lying_png(write_png_study(root / "Damaged" / "bomb_lat") / "LAT.png", 20000, 20000)  # PIL error
    cut = write_png_study(root / "Normal" / "truncated", shape=(300, 300)) / "AP.png"
    cut.write_bytes(cut.read_bytes()[:1500])
    lying_png(write_png_study(root / "Damaged" / "bomb_mask") / "Lat_Vertebra.png", 10000, 10000)
    lying_png(write_png_study(root / "Normal" / "huge_mask") / "Ap_Pedicle.png", 30000, 30000)
    (write_png_study(root / "Damaged" / "corrupt_mask") / "Ap_Vertebra.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_bomb_and_corrupt_files_skip_only_their_study(bomb_root: Path, tmp_path: Path, workers: int) -> None:
    datalist = import_dataset(bomb_root, tmp_path / "dl.json", workers=workers)
    errors = {e["study_id"]: e for e in datalist["errors"]}
    assert set(errors) == {"bomb_ap", "bomb_lat", "truncated", "bomb_mask", "huge_mask", "corrupt_mask"}
    assert datalist["summary"]["imported"] == 2
    assert {k: v["kind"] for k, v in errors.items()} == {
        "bomb_ap": "unreadable image",
        "bomb_lat": "unreadable image",
        "truncated": "unreadable image",
        "bomb_mask": "unreadable mask",
        "huge_mask": "unreadable mask",
        "corrupt_mask": "unreadable mask",
    }
    for study, name in (
        ("bomb_ap", "AP.png"),
        ("bomb_lat", "LAT.png"),
        ("bomb_mask", "Lat_Vertebra.png"),
        ("huge_mask", "Ap_Pedicle.png"),
    ):
        assert errors[study]["error"].startswith(f"{errors[study]['folder']}/{name}: refused before decoding")
    assert "truncated/AP.png: cannot decode PNG" in errors["truncated"]["error"]
    assert "corrupt_mask/Ap_Vertebra.png: cannot decode PNG" in errors["corrupt_mask"]["error"]
