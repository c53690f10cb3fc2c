"""``spine-app infer`` and the bundle's inference config on new studies, good and bad.

One batch folder holds two good synthetic studies (16-bit PNG and DICOM) beside one study per bad
input of the issue; the batch runs once (a real bundle run with a seeded untrained model at a small
working size) and each test checks one study's outcome.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from spine_app.channels import MASK_NAMES
from spine_app.data.io import read_image, write_dicom, write_png
from spine_app.infer import resolve_inputs, run_inference
from spine_app.networks import SpineMultiTaskNet
from tests.helpers import radiograph

SMALL = {"patch_size": [128, 96]}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded untrained weights in the bundle's architecture, stored in fp16 like the shipped model."""
    torch.manual_seed(0)
    net = SpineMultiTaskNet()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save({k: v.half() for k, v in net.state_dict().items()}, path)
    return path


def _copy_study(src: Path, dst: Path, dicom: bool = False) -> Path:
    dst.mkdir(parents=True)
    for view in ("AP", "LAT"):
        image = np.array(Image.open(src / f"{view}.png"))
        if dicom:
            write_dicom(dst / f"{view}.dcm", image, spacing=(0.3, 0.3), view=view)
        else:
            shutil.copy(src / f"{view}.png", dst / f"{view}.png")
    return dst


def _bad_batch(root: Path, synth_root: Path) -> dict[str, Path]:
    """Study folders: two good ones and one per bad input (name -> folder)."""
    good = sorted(p for p in (synth_root / "Damaged").iterdir())[:2]
    studies = {
        "good_png": _copy_study(good[0], root / "good_png"),
        "good_dicom": _copy_study(good[1], root / "good_dicom", dicom=True),
    }

    def study(name: str, ap_writer) -> Path:
        folder = root / name
        folder.mkdir()
        ap_writer(folder / "AP.png")
        write_png(folder / "LAT.png", radiograph((160, 120), seed=3))
        studies[name] = folder
        return folder

    study("corrupt", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40))
    study("zero_bytes", lambda p: p.write_bytes(b""))
    study(
        "rgba",
        lambda p: Image.fromarray(
            np.dstack([radiograph((160, 120)) // 256] * 3 + [np.full((160, 120), 255)]).astype(np.uint8)
        ).save(p),
    )
    study("tiny", lambda p: write_png(p, radiograph((40, 30))))
    study("huge", lambda p: write_png(p, np.tile(radiograph((64, 64)), (1, 126))))  # 64 x 8064 px
    study("constant", lambda p: write_png(p, np.full((160, 120), 1234, np.uint16)))
    nan = root / "nan"
    nan.mkdir()
    data = radiograph((160, 120)).astype(np.float32).T
    data[5, 5] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan / "AP.nii.gz"))
    write_png(nan / "LAT.png", radiograph((160, 120), seed=3))
    studies["nan"] = nan
    nopix = root / "no_pixels"
    nopix.mkdir()
    write_dicom(nopix / "AP.dcm", radiograph((160, 120)), view="AP")
    ds = pydicom.dcmread(nopix / "AP.dcm")
    del ds.PixelData
    ds.save_as(nopix / "AP.dcm")
    write_png(nopix / "LAT.png", radiograph((160, 120), seed=3))
    studies["no_pixels"] = nopix
    one = root / "only_ap"
    one.mkdir()
    shutil.copy(good[0] / "AP.png", one / "AP.png")
    studies["only_ap"] = one
    return studies


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, model_file: Path) -> dict:
    root = tmp_path_factory.mktemp("batch")
    studies = _bad_batch(root / "in", synth_root)
    unknown = root / "scan.png"  # a single image whose view nothing tells, not even its pixels (no spine in it)
    write_png(unknown, radiograph((1200, 900)))
    entries, errors = resolve_inputs([str(root / "in"), str(unknown)])
    out = root / "out"
    result = run_inference(entries, out, model_file, "cpu", errors=errors, **SMALL)
    errors_by_id = {e["study_id"]: e["error"] for e in json.loads((out / "errors.json").read_text())}
    return {"out": out, "studies": studies, "result": result, "errors": errors_by_id}


@pytest.mark.parametrize(
    ("study", "reason"),
    [
        ("corrupt", "cannot"),
        ("zero_bytes", "empty file (0 bytes)"),
        ("tiny", "smaller than the 64 px minimum"),
        ("huge", "larger than the 8000 px limit"),
        ("constant", "constant image"),
        ("nan", "NaN or infinite"),
        ("no_pixels", "no pixel data"),
        ("scan", "cannot tell the view"),
    ],
)
def test_bad_input_is_one_clear_error_naming_the_file(batch: dict, study: str, reason: str) -> None:
    error = batch["errors"][study]
    assert reason.lower() in error.lower(), error
    assert "AP" in error or "scan.png" in error  # names the file
    assert "\n" not in error
    assert not (batch["out"] / study).exists() or not any((batch["out"] / study).glob("*.png"))


def test_good_studies_complete_beside_the_failures(batch: dict, synth_root: Path) -> None:
    out = batch["out"]
    for name in ("good_png", "good_dicom", "rgba", "only_ap"):
        result = json.loads((out / name / "result.json").read_text())
        assert 0.0 <= result["damaged_probability"] <= 1.0 and result["label"] in ("Normal", "Damaged")
        assert result["inputs"]["AP"]["sha256"] and result["model"]["sha256"]
    for view, name in (("AP", "Ap_Vertebra"), ("LAT", "Lat_Vertebra")):
        source, _ = read_image(batch["studies"]["good_dicom"] / f"{view}.dcm")
        assert np.array(Image.open(out / "good_dicom" / f"{name}.png")).shape == source.shape
        assert (out / "good_dicom" / f"overlay_{view}.png").is_file()
    dicom = json.loads((out / "good_dicom" / "result.json").read_text())
    assert dicom["morphometry"]["units"] == "mm" and dicom["mask_area_mm2"]["Lat_Vertebra"] is not None
    png = json.loads((out / "good_png" / "result.json").read_text())
    assert png["morphometry"]["units"] == "px" and any("spacing unknown" in w for w in png["warnings"])


def test_rgba_is_converted_and_one_view_study_is_partial(batch: dict) -> None:
    out = batch["out"]
    assert (out / "rgba" / "Ap_Vertebra.png").is_file()
    only = json.loads((out / "only_ap" / "result.json").read_text())
    assert set(only["view_probabilities"]) == {"AP"} and only["morphometry"] is None
    assert any("no LAT view" in w for w in only["warnings"])
    assert not (out / "only_ap" / "Lat_Vertebra.png").exists()


def test_summary_lists_every_study_and_nothing_is_half_written(batch: dict) -> None:
    out = batch["out"]
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("study_id,status,damaged_probability")
    statuses = dict(line.split(",")[:2] for line in summary[1:])
    assert statuses["good_png"] == "ok" and statuses["corrupt"] == "failed" and statuses["scan"] == "failed"
    assert len(statuses) == len(batch["studies"]) + 1
    assert not list(out.rglob("*.tmp"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spine_app.cli", "infer", *args], capture_output=True, text=True, timeout=600
    )


def test_cli_exit_codes_and_unwritable_output(tmp_path: Path, synth_root: Path, model_file: Path) -> None:
    study = sorted((synth_root / "Normal").iterdir())[0]
    image = tmp_path / "lateral_film.png"
    shutil.copy(study / "LAT.png", image)
    ok = run_cli(str(image), "--view", "LAT", "--out", str(tmp_path / "out"), "--model", str(model_file), "--nifti")
    assert ok.returncode == 0, ok.stderr
    assert "1 studies written, 0 failed" in ok.stdout
    nifti, meta = read_image(tmp_path / "out" / "lateral_film" / "Lat_Vertebra.nii.gz")
    assert nifti.shape == np.array(Image.open(image)).shape
    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    denied = run_cli(str(image), "--view", "LAT", "--out", str(blocked / "out"), "--model", str(model_file))
    assert denied.returncode == 2 and "not writable" in denied.stderr and str(blocked) in denied.stderr
    missing = run_cli(str(tmp_path / "nope"), "--out", str(tmp_path / "out2"), "--model", str(model_file))
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
    assert json.loads((tmp_path / "out2" / "errors.json").read_text())[0]["study_id"] == "nope"


def test_bundle_config_and_cli_write_the_same_masks(tmp_path: Path, synth_root: Path, model_file: Path) -> None:
    from monai.bundle import ConfigWorkflow

    data = tmp_path / "new"
    _copy_study(sorted((synth_root / "Normal").iterdir())[0], data / "s1")
    bundle = Path(__file__).resolve().parents[1] / "bundle" / "configs"
    workflow = ConfigWorkflow(str(bundle / "inference.yaml"), str(bundle / "metadata.json"), str(bundle / "logging.conf"),
                              workflow_type="infer", dataset_dir=str(data), output_dir=str(tmp_path / "b"),
                              ckpt_path=str(model_file), **SMALL)  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    entries, _ = resolve_inputs([str(data)])
    run_inference(entries, tmp_path / "c", model_file, "cpu", **SMALL)
    for name in MASK_NAMES:
        a, b = (np.array(Image.open(tmp_path / d / "s1" / f"{name}.png")) for d in ("b", "c"))
        assert np.array_equal(a, b), name
    assert json.loads((tmp_path / "b" / "errors.json").read_text()) == []


def test_loose_dicom_folder_is_grouped_by_study_and_view_tags(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    for study, uid in (("A", "1.2.3.1"), ("B", "1.2.3.2")):
        for n, view in enumerate(("AP", "LAT")):
            path = folder / f"IM{study}{n}.dcm"
            write_dicom(path, radiograph((160, 120), seed=n), view=view, patient_id=f"P{study}")
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID = uid
            ds.save_as(path)
    untagged = folder / "IMX.dcm"  # no view tag and no spine to guess it from
    write_dicom(untagged, radiograph((1200, 900)))
    entries, errors = resolve_inputs([str(folder)])
    assert sorted(e["study_id"] for e in entries) == ["PA_1.2.3.1", "PB_1.2.3.2"]
    for entry in entries:
        assert Path(entry["image_ap"]).name.endswith("0.dcm") and Path(entry["image_lat"]).name.endswith("1.dcm")
    assert len(errors) == 1 and "IMX.dcm" in errors[0]["error"] and "--view" in errors[0]["error"]


def test_views_no_name_or_tag_gives_are_guessed_from_the_image_and_noted(tmp_path: Path, synth_root: Path) -> None:
    study = next(synth_root.glob("*/*/AP.png")).parent
    film = tmp_path / "film.png"  # an AP film under a name that says nothing
    shutil.copyfile(study / "AP.png", film)
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_dicom(folder / "IM1.dcm", read_image(study / "LAT.png")[0].astype(np.uint16))  # LAT, no ViewPosition
    entries, errors = resolve_inputs([str(film), str(folder)])
    assert errors == []
    by_view = {("AP" if e["image_ap"] else "LAT"): e for e in entries}
    assert set(by_view) == {"AP", "LAT"} and by_view["AP"]["image_ap"] == str(film)
    assert "view AP guessed from the image" in by_view["AP"]["notes"]
    run_inference(entries, tmp_path / "out", **SMALL)  # the shipped model
    result = json.loads((tmp_path / "out" / by_view["LAT"]["study_id"] / "result.json").read_text())
    assert any("view LAT guessed from the image" in w and "IM1.dcm" in w for w in result["warnings"])


def test_datalist_input_with_a_split(tmp_path: Path, synth_root: Path) -> None:
    from spine_app.data.importer import import_dataset

    datalist = tmp_path / "datalist.json"
    split = import_dataset(synth_root, datalist, seed=0, fractions=(0.5, 0.0, 0.5), workers=1)
    everything, _ = resolve_inputs([str(datalist)])
    test_only, _ = resolve_inputs([str(datalist)], split="test")
    assert len(everything) == 6 and len(test_only) == len(split["test"]) < 6
    assert {e["study_id"] for e in test_only} == {e["study_id"] for e in split["test"]}


def test_shipped_model_runs_without_training(tmp_path: Path, synth_root: Path) -> None:
    from spine_app.engines.writer import sha256_of
    from spine_app.infer import BUNDLE_DIR

    shipped = BUNDLE_DIR / "models" / "model.pt"
    assert shipped.stat().st_size <= 25 * 1024 * 1024  # the limit for committed weights
    study = sorted((synth_root / "Damaged").iterdir())[0]
    result = run_cli(str(study), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((tmp_path / "out" / study.name / "result.json").read_text())
    version = json.loads((BUNDLE_DIR / "configs" / "metadata.json").read_text())["version"]
    assert saved["model"]["sha256"] == sha256_of(shipped) and saved["bundle_version"] == version
    assert saved["decision"] == "network" and saved["threshold"] == pytest.approx(0.513)
