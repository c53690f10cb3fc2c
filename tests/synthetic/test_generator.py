"""Synthetic generator: deterministic, AP and LAT from one spine, truthful labels, plausible images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spine_app.channels import MASK_NAMES
from spine_app.data.io import read_image
from spine_app.synthetic.anatomy import GENANT_LOSS
from spine_app.synthetic.config import available_presets, load_preset
from spine_app.synthetic.generator import generate_dataset, generate_study, label_for_index, write_study


@pytest.fixture(scope="module")
def studies() -> dict[int, object]:
    cfg = load_preset("default")
    return {i: generate_study(cfg, 11, i) for i in (0, 1, 3)}


def test_deterministic_per_seed_and_index(studies) -> None:
    again = generate_study(load_preset("default"), 11, 1)
    for view in ("AP", "LAT"):
        np.testing.assert_array_equal(again.images[view], studies[1].images[view])
    assert again.truth == studies[1].truth
    a, b = studies[0].images["AP"], studies[1].images["AP"]
    rows, cols = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    assert not np.array_equal(a[:rows, :cols], b[:rows, :cols])  # another index: another film, compared pixelwise
    assert studies[0].truth["levels"] != studies[1].truth["levels"]


def test_labels_interleave_to_the_requested_fraction() -> None:
    assert [label_for_index(i, 0.5) for i in range(6)] == [0, 1, 0, 1, 0, 1]
    assert sum(label_for_index(i, 0.3) for i in range(100)) == 30
    assert sum(label_for_index(i, 0.0) for i in range(10)) == 0


def test_images_are_16bit_films_of_realistic_size(studies) -> None:
    for study in studies.values():
        for image in study.images.values():
            assert image.dtype == np.uint16
            assert 1000 <= max(image.shape) <= 2000 and image.shape[0] > image.shape[1]  # portrait film
            assert np.percentile(image, 99) - np.percentile(image, 1) > 20000  # uses the 16-bit range
        assert study.images["AP"].shape[0] == study.images["LAT"].shape[0]


def test_ap_and_lat_show_the_same_spine(studies) -> None:
    """Both views project one 3-D model: every vertebra sits at the same film row in AP and LAT."""
    for study in studies.values():
        for level in study.truth["levels"]:
            assert level["center_ap_px"][0] == pytest.approx(level["center_lat_px"][0], abs=0.01)
        rows_ap = np.nonzero(study.masks["Ap_Vertebra"].any(axis=1))[0]
        rows_lat = np.nonzero(study.masks["Lat_Vertebra"].any(axis=1))[0]
        assert abs(rows_ap.min() - rows_lat.min()) < 15 and abs(rows_ap.max() - rows_lat.max()) < 15


def test_bone_is_brighter_than_its_surroundings(studies) -> None:
    for study in studies.values():
        for view, name in (("AP", "Ap_Vertebra"), ("LAT", "Lat_Vertebra")):
            image, mask = study.images[view].astype(float), study.masks[name]
            rows = np.nonzero(mask.any(axis=1))[0]
            band = np.zeros_like(mask)
            band[rows.min() : rows.max()] = True
            assert image[mask].mean() > image[band & ~mask].mean()


def test_masks_are_plausible(studies) -> None:
    for study in studies.values():
        m = study.masks
        assert set(m) == set(MASK_NAMES)
        area = {name: mask.mean() for name, mask in m.items()}
        assert all(a > 0 for a in area.values())
        assert area["Ap_Vertebra"] > area["Ap_Pedicle"] > 0 and area["Lat_Vertebra"] > area["Lat_Disk_Height"]
        assert area["Lat_Anterior_Vertebral_Line"] < 0.01 and area["Lat_Posterior_Vertebral_Line"] < 0.01
        assert not (m["Lat_Disk_Height"] & m["Lat_Vertebra"]).any()
        assert (m["Ap_Pedicle"] & m["Ap_Vertebra"]).sum() > 0.5 * m["Ap_Pedicle"].sum()  # pedicles overlie the bodies
        # facing left: the anterior line lies in front of (left of) the posterior line
        cols = {k: np.nonzero(m[k])[1].mean() for k in ("Lat_Anterior_Vertebral_Line", "Lat_Posterior_Vertebral_Line")}
        assert cols["Lat_Anterior_Vertebral_Line"] < cols["Lat_Posterior_Vertebral_Line"]


def test_truth_matches_the_label(studies) -> None:
    for study in studies.values():
        truth = study.truth
        assert truth["class_name"] == study.class_name and truth["label"] == study.label
        if study.label == 0:
            assert truth["fractures"] == []
            for level in truth["levels"]:
                heights = level["heights_mm"]
                assert min(heights.values()) / level["expected_height_mm"] > 0.85  # natural variation < 15 %
        else:
            assert 1 <= len(truth["fractures"]) <= 3
            for fracture in truth["fractures"]:
                lo, hi = GENANT_LOSS[fracture["grade"]]
                assert lo <= fracture["height_loss"] <= hi
                level = next(lv for lv in truth["levels"] if lv["name"] == fracture["level"])
                shortest = min(level["heights_mm"].values())
                assert shortest / level["expected_height_mm"] == pytest.approx(1 - fracture["height_loss"], abs=0.06)
                assert level["in_roi"]


def test_facing_right_mirrors_the_lateral_view() -> None:
    left = generate_study(load_preset("default"), 11, 0)
    right = generate_study(load_preset("default", lat_facing="right"), 11, 0)
    np.testing.assert_array_equal(right.masks["Lat_Vertebra"], left.masks["Lat_Vertebra"][:, ::-1])
    assert right.truth["lat_facing"] == "right"


def test_presets_and_bad_settings() -> None:
    assert {"easy", "default", "hard"} <= set(available_presets())
    assert load_preset("hard").image_format == "mixed"
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        load_preset("nope")
    with pytest.raises(ValueError, match="unknown setting"):
        load_preset("default", colour="blue")
    with pytest.raises(ValueError, match="levels: unknown level 'X1'"):
        load_preset("default", levels=["X1", "L5"])
    with pytest.raises(ValueError, match="bit_depth must be 8 or 16"):
        load_preset("default", bit_depth=12)


def test_dataset_is_identical_for_any_worker_count(tmp_path: Path) -> None:
    one = generate_dataset(tmp_path / "one", 2, seed=5, workers=1, image_format="mixed")
    two = generate_dataset(tmp_path / "two", 2, seed=5, workers=2, image_format="mixed")
    assert one["class_counts"] == two["class_counts"] == {"Normal": 1, "Damaged": 1}
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert Path("Damaged/syn5_00001/AP.dcm") in files and Path("Normal/syn5_00000/AP.png") in files
    for rel in files:
        if rel.suffix in (".png", ".dcm"):
            a, meta = read_image(tmp_path / "one" / rel, min_side=1)
            b, _ = read_image(tmp_path / "two" / rel, min_side=1)
            np.testing.assert_array_equal(a, b)
    dicom = read_image(tmp_path / "one" / "Damaged/syn5_00001/LAT.dcm")[1]
    assert dicom.view == "LAT" and dicom.spacing is not None and dicom.bit_depth == 16


def test_write_study_leaves_no_partial_folder(tmp_path: Path, studies) -> None:
    final = write_study(studies[0], tmp_path)
    assert sorted(p.name for p in final.iterdir()) == sorted(
        ["AP.png", "LAT.png", "truth.json"] + [f"{n}.png" for n in MASK_NAMES]
    )
    assert not [p for p in (tmp_path / "Normal").iterdir() if p.name.startswith(".")]
    assert json.loads((final / "truth.json").read_text())["label"] == 0


def test_synth_into_a_used_folder_is_refused_and_overwrite_keeps_user_files(tmp_path: Path) -> None:
    """A user's notes and extra files in a study folder survive; without --overwrite nothing is touched."""
    out = tmp_path / "ds"
    generate_dataset(out, 1, seed=4, preset="easy", workers=1)
    study = out / "Normal" / "syn4_00000"
    generated_mask = (study / "Ap_Vertebra.png").read_bytes()
    (study / "notes.txt").write_text("fracture at L1?")
    (study / "Ap_Vertebra_edited.png").write_bytes(generated_mask)
    (study / "Ap_Vertebra.png").write_bytes(b"edited by hand")
    (out / "README.txt").write_text("my dataset")
    inode = study.stat().st_ino
    with pytest.raises(FileExistsError, match=f"^{out}: synth output folder is not empty"):
        generate_dataset(out, 1, seed=4, preset="easy", workers=1)
    assert (study / "Ap_Vertebra.png").read_bytes() == b"edited by hand"
    with pytest.raises(FileExistsError, match="study folder exists"):
        write_study(generate_study(load_preset("easy"), 4, 0), out)
    manifest = generate_dataset(out, 1, seed=4, preset="easy", workers=1, overwrite=True)
    assert manifest["warnings"] == []
    assert (study / "notes.txt").read_text() == "fracture at L1?"
    assert (study / "Ap_Vertebra_edited.png").read_bytes() == generated_mask
    assert (out / "README.txt").read_text() == "my dataset"
    assert (study / "Ap_Vertebra.png").read_bytes() == generated_mask  # a generated file is regenerated
    assert study.stat().st_ino == inode  # replaced file by file, never deleted as a whole
    assert not [p for p in out.rglob(".*")]  # no staging folder left
    manifest = generate_dataset(out, 1, seed=4, preset="easy", workers=1, overwrite=True, image_format="dcm")
    assert (study / "AP.dcm").is_file() and (study / "AP.png").is_file()  # the older film is kept, with a warning
    assert any(w.startswith(f"{study / 'AP.png'}: kept") for w in manifest["warnings"])


@pytest.mark.parametrize(("n", "seed"), [(-3, 0), (0, 0), (2.5, 0), (1, -1)])
def test_nonsense_counts_and_seeds_are_refused(tmp_path: Path, n, seed) -> None:
    with pytest.raises(ValueError, match="must be a whole number"):
        generate_dataset(tmp_path / "x", n, seed=seed)
    assert not (tmp_path / "x").exists()
