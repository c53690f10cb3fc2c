"""``spine-app infer`` and the bundle's inference config on new studies, good and bad.

One batch folder holds two good synthetic studies (16-bit PNG and DICOM) beside one study per bad
input of the issue; the batch runs once (a real bundle run with a seeded untrained model at a small
working size) and each test checks one study's outcome.
"""

from __future__ import annotations

import json
import os
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

from spine_app.bundle import BUNDLE_DIR
from spine_app.channels import MASK_NAMES
from spine_app.data.io import read_image, write_dicom, write_png
from spine_app.inference.run import resolve_inputs, run_inference
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
    bad_file = {"nan": "AP.nii.gz", "no_pixels": "AP.dcm", "scan": None}.get(study, "AP.png")
    named = str(batch["studies"][study] / bad_file) if bad_file else "scan.png"
    assert named in error, error  # names the bad file itself
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


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy (Debian dicom3tools) prints for ``path`` (it exits 0 even with errors)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("SPINE_APP_REQUIRE_EXTRAS") == "1":  # CI installs dicom3tools: there it must run
            pytest.fail("dciodvfy not found (apt-get install dicom3tools)")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def test_dicom_films_get_a_dicom_segmentation_per_view(batch: dict) -> None:
    """seg_<VIEW>.dcm of a DICOM study: a valid DICOM SEG (dciodvfy), one coded segment per structure
    of the view, the same pixels as the PNG masks, referencing its film; none for PNG films."""
    folder, study = batch["out"] / "good_dicom", batch["studies"]["good_dicom"]
    result = json.loads((folder / "result.json").read_text())
    assert result["dicom_outputs"] == ["seg_AP.dcm", "seg_LAT.dcm", "report.dcm"]
    for view in ("AP", "LAT"):
        seg, film = pydicom.dcmread(folder / f"seg_{view}.dcm"), pydicom.dcmread(study / f"{view}.dcm")
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
        names = [n for n in MASK_NAMES if n.startswith(view.capitalize()[:3])]
        assert [s.SegmentLabel for s in seg.SegmentSequence] == names
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "3572006"  # vertebral body
        assert (
            seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            == film.SOPInstanceUID
        )
        assert seg.StudyInstanceUID == film.StudyInstanceUID and seg.PatientID == film.PatientID
        frames = seg.pixel_array.reshape(len(names), int(seg.Rows), int(seg.Columns)) > 0
        for k, name in enumerate(names):
            assert np.array_equal(frames[k], np.array(Image.open(folder / f"{name}.png")) > 0), name
        assert dciodvfy_errors(folder / f"seg_{view}.dcm") == []
    report = pydicom.dcmread(folder / "report.dcm")
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and dciodvfy_errors(folder / "report.dcm") == []
    graded = [b for b in result["morphometry"]["vertebrae"] if b["grade"] >= 0]
    groups = report.ContentSequence[-1].ContentSequence  # Imaging Measurements: one group per graded body + the study
    assert len(groups) == len(graded) + 1
    # each body's Genant grade is the one result.json's levels report for it (what the overlay shows)
    levels = (result.get("levels") or {}).get("levels", [])
    reported = {lv["morphometry"]["body"]: lv["grade"] for lv in levels if lv["morphometry"]}
    expected = [
        reported.get(k + 1, b["grade"]) for k, b in enumerate(result["morphometry"]["vertebrae"]) if b["grade"] >= 0
    ]
    sr_grades = [
        int(item.ConceptCodeSequence[0].CodeValue[1:])
        for group in groups[:-1]
        for item in group.ContentSequence
        if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == "GENANT"
    ]
    assert sr_grades == expected
    sequences = [
        report.get(k, []) for k in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")
    ]
    evidence = {
        i.ReferencedSOPInstanceUID
        for seq in sequences
        for s in seq
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    assert pydicom.dcmread(folder / "seg_LAT.dcm").SOPInstanceUID in evidence and film.SOPInstanceUID in evidence
    finding = [
        i.ConceptCodeSequence[0].CodeMeaning
        for i in groups[-1].ContentSequence
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"
    ][-1]
    assert finding == ("Abnormal" if result["label"] == "Damaged" else "Normal")
    lines = [s for s in seg.SegmentSequence if s.SegmentLabel == "Lat_Anterior_Vertebral_Line"][0]
    modifier = lines.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert modifier.CodeMeaning == "Anterior"
    assert not list((batch["out"] / "good_png").glob("*.dcm"))


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
    workflow = ConfigWorkflow(
        str(bundle / "inference.yaml"),
        str(bundle / "metadata.json"),
        str(bundle / "logging.conf"),
        workflow_type="infer",
        dataset_dir=str(data),
        output_dir=str(tmp_path / "b"),
        ckpt_path=str(model_file),
        **SMALL,
    )
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
    from spine_app.bundle import BUNDLE_DIR
    from spine_app.engines.writer import sha256_of

    shipped = BUNDLE_DIR / "models" / "model.pt"
    assert shipped.stat().st_size <= 25 * 1024 * 1024  # the limit for committed weights
    study = sorted((synth_root / "Damaged").iterdir())[0]
    result = run_cli(str(study), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((tmp_path / "out" / study.name / "result.json").read_text())
    version = json.loads((BUNDLE_DIR / "configs" / "metadata.json").read_text())["version"]
    assert saved["model"]["sha256"] == sha256_of(shipped) and saved["bundle_version"] == version
    import yaml

    configured = yaml.safe_load((BUNDLE_DIR / "configs" / "inference.yaml").read_text())["damaged_threshold"]
    assert saved["decision"] == "levels" and saved["threshold"] == pytest.approx(configured)
    # per vertebra: the level head's bodies, top to bottom, each with a probability and a grade
    levels = saved["levels"]
    assert 5 <= len(levels["levels"]) <= 16
    assert [lv["number"] for lv in levels["levels"]] == list(range(1, len(levels["levels"]) + 1))
    rows = [lv["centre_px"][0] for lv in levels["levels"]]
    assert rows == sorted(rows)
    for lv in levels["levels"]:
        assert 0.0 <= lv["fracture_probability"] <= 1.0 and lv["grade"] in (0, 1, 2, 3)
        body = lv["morphometry"]["body"] if lv["morphometry"] else None  # the overlay's name of the body
        assert lv["label"] == (lv["name"] or (f"#{body}" if body else f"level {lv['number']}"))
        assert sum(lv["grade_probabilities"]) == pytest.approx(1.0, abs=1e-3)
        assert lv["grade_probabilities"][0] == pytest.approx(1.0 - lv["fracture_probability"], abs=2e-4)
        assert sum(lv["severity_probabilities"]) == pytest.approx(1.0, abs=1e-3)
        above = lv["fracture_probability"] >= levels["level_threshold"]  # a study called Normal holds it back
        assert lv["flagged"] == (above and saved["label"] == "Damaged") and levels["follows_decision"] is True
        assert lv["held_back"] == (above and saved["label"] == "Normal")
        assert (lv["grade"] > 0) == lv["flagged"] and (lv["grade_head"] > 0) == lv["flagged"]
        if lv["flagged"]:  # the network's grade is its severity's median
            severity = lv["severity_probabilities"]
            assert severity[0] < 0.5 + 1e-3 if lv["grade_head"] > 1 else severity[0] >= 0.5 - 1e-3
        if lv["grade_source"] == "morphometry":  # a flagged body graded on the film's own pixels
            assert lv["flagged"] and lv["grade"] == lv["morphometry"]["genant_grade"] >= max(1, lv["grade_head"])
        elif lv["held_back"]:
            assert lv["grade_source"].startswith("held back") and lv["grade"] == 0
        else:
            assert lv["grade_source"] == "level head" and lv["grade"] == max(lv["grade_head"], int(lv["flagged"]))
            measured = lv["morphometry"] and lv["morphometry"]["not_measurable"] is None
            assert not (lv["flagged"] and measured and lv["morphometry"]["genant_grade"] >= lv["grade"])
    assert levels["drives_decision"] and set(levels["drives_decision"]) <= {lv["number"] for lv in levels["levels"]}
    assert saved["damaged_probability"] == pytest.approx(levels["study_probability"], abs=1e-4)


# --- output folders, study ids and one-line errors (each test runs the real command line) -----------------


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> Path:
    """The repository's bundle at a 128 x 96 working size with the seeded weights (fast CLI runs)."""
    bundle = tmp_path_factory.mktemp("bundle")
    shutil.copytree(BUNDLE_DIR / "configs", bundle / "configs")
    config = bundle / "configs" / "inference.yaml"
    config.write_text(config.read_text().replace("patch_size: [384, 288]", "patch_size: [128, 96]"))
    (bundle / "models").mkdir()
    shutil.copy(model_file, bundle / "models" / "model.pt")
    return bundle


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``spine-app ARGS`` run by the console entry point in-process."""
    from spine_app import cli as command_line

    monkeypatch.setattr(sys, "argv", ["spine-app", *args])
    try:
        command_line.main()
        status = 0
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def summary_rows(out: Path) -> list[dict[str, str]]:
    import csv

    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_whole(folder: Path) -> dict:
    """``folder``'s result.json, after checking every mask beside it is the one it describes (no mix)."""
    result = json.loads((folder / "result.json").read_text())
    masks = {p.stem for p in folder.glob("*.png") if not p.name.startswith("overlay_")}
    assert masks == set(result["mask_area_px"]), folder
    for name, area in result["mask_area_px"].items():
        assert int((np.array(Image.open(folder / f"{name}.png")) > 0).sum()) == area, f"{folder}/{name}.png"
    assert {p.stem.split("_")[1] for p in folder.glob("overlay_*.png")} == set(result["inputs"])
    return result


def test_repeated_study_ids_never_take_another_studys_id(
    tmp_path: Path, small_bundle: Path, monkeypatch, capsys
) -> None:
    from tests.helpers import write_png_study

    studies = [
        write_png_study(tmp_path / "a" / "X", masks=False, seed=1),
        write_png_study(tmp_path / "b" / "X", masks=False, seed=2),
        write_png_study(tmp_path / "b" / "X_2", masks=False, seed=3),
    ]
    out = tmp_path / "out"
    status, stdout, stderr = cli(
        monkeypatch, capsys, "infer", *map(str, studies), "--out", str(out), "--bundle", str(small_bundle)
    )
    assert status == 0, stderr
    rows = summary_rows(out)
    assert len({r["study_id"] for r in rows}) == 3 and {r["status"] for r in rows} == {"ok"}
    owners = []
    for row in rows:  # each folder holds one study's masks and result, and each study has its folder
        result = assert_whole(out / row["study_id"])
        folders = {Path(result["inputs"][v]["path"]).parent for v in ("AP", "LAT")}
        assert len(folders) == 1, folders
        owners += folders
    assert sorted(owners) == sorted(studies)


def test_study_ids_become_safe_unique_folder_names() -> None:
    from spine_app.inference.run import unique_ids

    ids = ["../up", "summary.csv", "A", "a", "a_2", "", "x/y", ".hidden"]
    made = [e["study_id"] for e in unique_ids([{"study_id": i} for i in ids])]
    assert len({m.casefold() for m in made} | {"summary.csv", "errors.json"}) == len(made) + 2
    assert all("/" not in m and not m.startswith(".") and m for m in made)
    assert made[2] == "A" and made[4] == "a_2"


def test_rerun_replaces_a_study_output_whole_and_summarizes_only_this_run(
    tmp_path: Path, small_bundle: Path, monkeypatch, capsys
) -> None:
    from tests.helpers import write_png_study

    both = write_png_study(tmp_path / "first" / "S", masks=False, seed=1)
    other = write_png_study(tmp_path / "first" / "T", masks=False, seed=2)
    out = tmp_path / "out"
    assert (
        cli(
            monkeypatch,
            capsys,
            "infer",
            str(both),
            str(other),
            "--out",
            str(out),
            "--nifti",
            "--bundle",
            str(small_bundle),
        )[0]
        == 0
    )
    assert (out / "S" / "Ap_Vertebra.nii.gz").is_file() and (out / "S" / "overlay_AP.png").is_file()
    lat_only = tmp_path / "second" / "S"  # another patient's study with the same id: LAT only
    lat_only.mkdir(parents=True)
    write_png(lat_only / "LAT.png", radiograph((100, 90), seed=5))
    status, _, stderr = cli(
        monkeypatch, capsys, "infer", str(lat_only), "--out", str(out), "--bundle", str(small_bundle)
    )
    assert status == 0, stderr
    result = assert_whole(out / "S")
    assert set(result["inputs"]) == {"LAT"} and result["inputs"]["LAT"]["path"] == str(lat_only / "LAT.png")
    assert sorted(p.name for p in (out / "S").iterdir()) == sorted(
        ["result.json", "overlay_LAT.png"] + [f"{n}.png" for n in MASK_NAMES if n.startswith("Lat_")]
    )  # no AP mask, AP overlay or NIfTI of the first patient is left beside it
    assert [r["study_id"] for r in summary_rows(out)] == ["S"] and json.loads((out / "errors.json").read_text()) == []
    assert_whole(out / "T")  # an earlier study this run did not touch is kept as it was
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_folder_infer_did_not_write_is_never_replaced(
    tmp_path: Path, small_bundle: Path, monkeypatch, capsys
) -> None:
    from tests.helpers import write_png_study

    studies = tmp_path / "studies"
    write_png_study(studies / "S", masks=False)
    out = tmp_path / "out"
    (out / "S").mkdir(parents=True)
    (out / "S" / "notes.txt").write_text("mine")
    status, _, stderr = cli(
        monkeypatch, capsys, "infer", str(studies), "--out", str(out), "--bundle", str(small_bundle)
    )
    assert status == 1 and "Traceback" not in stderr
    assert f"{out / 'S'}: the folder exists and holds files spine-app did not write" in stderr
    assert [p.name for p in (out / "S").iterdir()] == ["notes.txt"] and (out / "S" / "notes.txt").read_text() == "mine"
    # the dataset itself as the output folder: nothing is written into the user's study folders
    status, _, stderr = cli(
        monkeypatch, capsys, "infer", str(studies), "--out", str(studies), "--bundle", str(small_bundle)
    )
    assert status == 1 and "inside the output folder" in stderr
    assert sorted(p.name for p in (studies / "S").iterdir()) == ["AP.png", "LAT.png"]


def test_output_folder_inside_the_input_is_not_an_input(
    tmp_path: Path, small_bundle: Path, monkeypatch, capsys
) -> None:
    from tests.helpers import write_png_study

    studies = tmp_path / "studies"
    write_png_study(studies / "Normal" / "s1", masks=False)
    out = studies / "predictions"
    for expected in ("1 studies written, 0 failed", "0 studies written, 1 already done"):
        # the second run finds the first run's output folder among the studies (and s1 done already)
        status, stdout, stderr = cli(
            monkeypatch, capsys, "infer", str(studies), "--out", str(out), "--bundle", str(small_bundle)
        )
        assert status == 0, stderr
        assert expected in stdout
    assert [r["study_id"] for r in summary_rows(out)] == ["s1"]


def test_rerun_skips_finished_studies_and_redoes_changed_or_incomplete_ones(
    tmp_path: Path, small_bundle: Path, monkeypatch, capsys
) -> None:
    from tests.helpers import write_png_study

    studies, out = tmp_path / "studies", tmp_path / "out"
    for n, name in enumerate("ab"):
        write_png_study(studies / name, masks=False, seed=n)

    def infer(*extra: str) -> str:
        status, stdout, stderr = cli(
            monkeypatch, capsys, "infer", str(studies), "--out", str(out), "--bundle", str(small_bundle), *extra
        )
        assert status == 0, stderr
        return stdout

    assert "2 studies written, 0 failed" in infer()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*")}
    assert "0 studies written, 2 already done" in infer()
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*")} == stamps  # nothing rewritten
    assert [(r["study_id"], r["status"]) for r in summary_rows(out)] == [("a", "skipped"), ("b", "skipped")]
    assert all(r["damaged_probability"] for r in summary_rows(out))  # the earlier results, listed
    (out / "a" / "overlay_AP.png").unlink()  # an incomplete output
    write_png(studies / "b" / "LAT.png", radiograph((128, 112), seed=7))  # a film that changed
    assert "2 studies written, 0 failed" in infer()
    assert "2 studies written, 0 failed" in infer("--damaged_threshold", "0.9")  # other settings: redone
    assert "0 studies written, 2 already done" in infer("--damaged_threshold", "0.9")
    assert "2 studies written, 0 failed" in infer("--damaged_threshold", "0.9", "--force")
    # a setting before the writer (the canvas of tall films) also changes the output: redone, recorded
    assert "2 studies written, 0 failed" in infer("--damaged_threshold", "0.9", "--fixed_canvas")
    result = json.loads((out / "a" / "result.json").read_text())
    assert result["settings"]["pipeline"]["working_spacing_mm"] is None
    assert result["settings"]["pipeline"]["patch_size"] == [128, 96]  # the small bundle's canvas
    # the level threshold and suppression of a model of one's own, from the command line: redone, recorded
    assert "2 studies written, 0 failed" in infer(
        "--damaged_threshold", "0.9", "--fixed_canvas", "--level_threshold", "0.2"
    )
    own = (
        "--damaged_threshold",
        "0.9",
        "--fixed_canvas",
        "--level_threshold",
        "0.2",
        "--level_neighbour_suppression",
        "0.4",
    )
    assert "2 studies written, 0 failed" in infer(*own)
    result = json.loads((out / "a" / "result.json").read_text())
    assert (result["settings"]["level_threshold"], result["settings"]["level_neighbour_suppression"]) == (0.2, 0.4)
    # the disk exclusion is a setting before the writer too: redone, recorded in the pipeline
    from spine_app.bundle import config_value

    assert result["settings"]["pipeline"]["disk_exclusion"] == config_value(
        "inference.yaml", "disk_exclusion", None, small_bundle
    )
    assert "2 studies written, 0 failed" in infer(*own, "--disk_exclusion", "0.3")
    result = json.loads((out / "a" / "result.json").read_text())
    assert result["settings"]["pipeline"]["disk_exclusion"] == 0.3
    # levels graded whatever the label: another setting of the writer, so the studies are redone
    assert result["settings"]["levels_follow_decision"] is True
    assert "2 studies written, 0 failed" in infer(*own, "--disk_exclusion", "0.3", "--levels_follow_decision", "false")
    result = json.loads((out / "a" / "result.json").read_text())
    assert result["settings"]["levels_follow_decision"] is False and result["levels"]["follows_decision"] is False
    # the shape check of the levels: on by default, off on request, a writer setting too
    assert result["settings"]["level_shape_check"] is True and result["levels"]["shape_check"] is True
    assert "2 studies written, 0 failed" in infer(*own, "--disk_exclusion", "0.3", "--level_shape_check", "false")
    result = json.loads((out / "a" / "result.json").read_text())
    assert result["settings"]["level_shape_check"] is False and result["levels"]["shape_check"] is False
    assert not any(level["left_out"] for level in result["levels"]["levels"])


def test_interrupted_run_leaves_whole_studies_and_a_summary_of_them(
    tmp_path: Path, small_bundle: Path, monkeypatch, capsys
) -> None:
    """A real run killed with SIGKILL while a study is being written (held there by the writer's test
    switch) leaves the earlier output of that study untouched and a summary of what finished."""
    from tests.helpers import write_png_study

    hold = "SPINE_APP_TEST_HOLD_STUDY"  # spine_app.engines.writer.HOLD_ENV

    new = tmp_path / "new"
    for n, name in enumerate("abc"):
        write_png_study(new / name, shape=(96 + 8 * n, 80), masks=False, seed=n)
    old = write_png_study(tmp_path / "old" / "b", shape=(120, 100), masks=False, seed=9)
    out = tmp_path / "out"
    assert cli(monkeypatch, capsys, "infer", str(old), "--out", str(out), "--bundle", str(small_bundle))[0] == 0
    before = {p.name: p.read_bytes() for p in (out / "b").iterdir()}

    env = {**os.environ, hold: "b"}
    cmd = [sys.executable, "-m", "spine_app.cli", "infer", str(new), "--out", str(out), "--bundle", str(small_bundle)]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    held = any(f"{hold}: holding b" in line for line in process.stdout)  # read until the hold (or the end)
    process.kill()  # SIGKILL: no clean-up code runs
    process.wait(timeout=60)
    process.stdout.close()
    assert held, "the run never reached study b"
    assert assert_whole(out / "a")["inputs"]["AP"]["path"] == str(new / "a" / "AP.png")
    assert {p.name: p.read_bytes() for p in (out / "b").iterdir()} == before  # the earlier b, whole
    assert not (out / "c").exists()
    assert [(r["study_id"], r["status"]) for r in summary_rows(out)] == [("a", "ok")]  # this run, finished part
    assert json.loads((out / "errors.json").read_text()) == []
    assert [p.name.endswith(".partial") for p in out.iterdir() if p.name.startswith(".")] == [True]

    status, _, stderr = cli(monkeypatch, capsys, "infer", str(new), "--out", str(out), "--bundle", str(small_bundle))
    assert status == 0, stderr
    assert assert_whole(out / "b")["inputs"]["AP"]["path"] == str(new / "b" / "AP.png")
    assert [(r["study_id"], r["status"]) for r in summary_rows(out)] == [("a", "skipped"), ("b", "ok"), ("c", "ok")]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the killed run's temporary folder is gone


def _hollow_column(shape: tuple[int, int]) -> np.ndarray:
    """A Lat_Vertebra mask whose bodies are two walls with nothing between: no middle height to measure."""
    mask = np.zeros(shape, bool)
    for i in range(5):
        top = 20 + i * 45
        mask[top : top + 35, 30:40] = mask[top : top + 35, 56:66] = True
    return mask


def test_result_json_is_strict_json_with_a_reason_for_each_null(tmp_path: Path) -> None:
    from monai.data import list_data_collate

    from spine_app.channels import MASK_NAMES as NAMES
    from spine_app.data.study_transforms import LoadStudyd
    from spine_app.engines import StudyPredictionWriter, prepare_study_batch
    from spine_app.engines.dataset import study_entry

    shape = (300, 128)
    film = write_png(tmp_path / "LAT.png", radiograph(shape, seed=4))
    loaded = LoadStudyd(canvas=shape, on_error="raise")(study_entry("s", {"LAT": film}))
    _, target = prepare_study_batch(list_data_collate([loaded]))
    seg = torch.full((1, len(NAMES), *shape), -20.0)
    seg[0, NAMES.index("Lat_Vertebra")][torch.from_numpy(_hollow_column(shape))] = 20.0
    pred = {"seg_ap": seg, "seg_lat": seg, "cls": torch.zeros(1), "cls_ap": torch.zeros(1), "cls_lat": torch.zeros(1)}
    writer = StudyPredictionWriter(str(tmp_path / "out"))
    writer.reset()
    writer(type("Engine", (), {"state": type("State", (), {"output": {"pred": pred, "label": target}})})())
    assert writer.errors == [], writer.errors

    def refuse(constant: str) -> None:
        raise AssertionError(f"result.json holds {constant}")

    result = json.loads((tmp_path / "out" / "s" / "result.json").read_text(), parse_constant=refuse)
    bodies = result["morphometry"]["vertebrae"]
    assert bodies and all(b["heights_px"]["middle"] is None and b["ratios"]["middle_posterior"] is None for b in bodies)
    assert all("heights_mm" not in b and b["not_measurable"] for b in bodies)  # a PNG has no spacing: px
    assert result["null_values"]["morphometry.vertebrae[0].heights_px.middle"].startswith("not measurable")
    assert result["null_values"]["morphometry.vertebrae[0].ratios.middle_posterior"].startswith("not computable")


def test_finite_json_gives_strict_json_for_the_monailabel_answers() -> None:
    from spine_app.engines.writer import finite_json

    answer = finite_json({"p": np.float32("nan"), "m": {"v": [{"h": float("inf")}, 1.5]}, "n": None, "s": "x"})
    assert json.loads(json.dumps(answer, allow_nan=False)) == {
        "p": None,
        "m": {"v": [{"h": None}, 1.5]},
        "n": None,
        "s": "x",
        "null_values": {"p": "not a finite number (nan)", "m.v[0].h": "not a finite number (inf)"},
    }


def _weights(path: Path, kind: str) -> Path:
    """A --model file that is not the bundle's weights."""
    shipped = BUNDLE_DIR / "models" / "model.pt"
    if kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(shipped.read_bytes()[:100_000])
    elif kind == "other_backbone":
        torch.save({k: v.half() for k, v in SpineMultiTaskNet(backbone="efficientnet-b0").state_dict().items()}, path)
    elif kind == "nan":
        state = torch.load(shipped, weights_only=True)
        state[next(iter(state))] = state[next(iter(state))] * float("nan")
        torch.save(state, path)
    elif kind == "whole_model":
        torch.save(SpineMultiTaskNet(), path)
    return path


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--device", "tpu"], "--device tpu: unknown device"),
        (["--device", "cuda"], "--device cuda: CUDA is not available on this machine"),
        (["--model", "text"], "not a PyTorch weights file"),
        (["--model", "empty"], "empty file (0 bytes)"),
        (["--model", "truncated"], "truncated or damaged weights file"),
        (["--model", "other_backbone"], "weights of another network than the bundle's resnet18"),
        (["--model", "nan"], "hold NaN or infinite values"),
        (["--model", "whole_model"], "not a plain state dict"),
        (["--model", "missing"], "no model weights"),
        (["--level_threshold", "1.5"], "--level_threshold 1.5: must be a number from 0 to 1"),
        (["--damaged_threshold", "high"], "--damaged_threshold 'high': must be a number from 0 to 1"),
        (["--level_neighbour_suppression=-1"], "--level_neighbour_suppression -1: must be a number of 0 or more"),
        (["--disk_exclusion", "1.5"], "--disk_exclusion 1.5: must be a number between 0 and 1 (exclusive) or none"),
        (["--disk_exclusion", "some"], "--disk_exclusion 'some': must be a number between 0 and 1"),
        (["--levels_follow_decision", "maybe"], "--levels_follow_decision 'maybe': must be true or false"),
        (["--level_shape_check", "perhaps"], "--level_shape_check 'perhaps': must be true or false"),
    ],
)
def test_bad_device_or_model_is_one_line_and_exit_2(
    tmp_path: Path, synth_root: Path, monkeypatch, capsys, args: list[str], reason: str
) -> None:
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if args[0] == "--model":
        args = ["--model", str(_weights(tmp_path / f"{args[1]}.pt", args[1]))]
    study = sorted((synth_root / "Normal").iterdir())[0]
    status, _, stderr = cli(monkeypatch, capsys, "infer", str(study), "--out", str(tmp_path / "out"), *args)
    assert status == 2 and "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and reason in line, stderr
    if args[0] == "--model":
        assert args[1] in line  # names the file
    assert not (tmp_path / "out").exists()  # nothing was written


def test_summary_on_a_full_disk_is_one_line_and_exit_1(tmp_path: Path, small_bundle: Path) -> None:
    """A real full disk: the output folder on a full 64 KiB tmpfs (mounted in a user namespace)."""
    from tests.helpers import write_png_study

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare with user namespaces to mount a small tmpfs")
    study = write_png_study(tmp_path / "S", masks=False)
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        f'mount -t tmpfs -o size=64k tmpfs "{disk}" && mkdir "{disk}/out" && '
        f'(head -c 200000 /dev/zero > "{disk}/out/filler" 2>/dev/null; true) && '
        f'"{sys.executable}" -m spine_app.cli infer "{study}" --out "{disk}/out" --bundle "{small_bundle}"; '
        f'echo "status $?"; ls -A "{disk}/out"'
    )
    result = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: {disk}/out/summary.csv: cannot write (No space left on device)"
    )
    assert "status 1" in result.stdout and result.stdout.strip().splitlines()[-1] == "filler"  # nothing half-written


def test_summary_that_cannot_be_written_is_one_line_and_exit_1(
    tmp_path: Path, small_bundle: Path, monkeypatch, capsys
) -> None:
    from tests.helpers import write_png_study

    study = write_png_study(tmp_path / "S", masks=False)
    out = tmp_path / "out"
    (out / "summary.csv").mkdir(parents=True)  # a user's folder where the summary goes: never replaced
    (out / "summary.csv" / "keep.txt").write_text("mine")
    status, _, stderr = cli(monkeypatch, capsys, "infer", str(study), "--out", str(out), "--bundle", str(small_bundle))
    assert status == 1 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"error: {out / 'summary.csv'}: cannot write (Is a directory)"
    assert (out / "summary.csv" / "keep.txt").read_text() == "mine"
    assert_whole(out / "S")  # the study itself was written


def test_no_dicom_out_writes_no_dicom_files(tmp_path: Path, small_bundle: Path, monkeypatch, capsys) -> None:
    study = tmp_path / "studies" / "d1"
    study.mkdir(parents=True)
    write_dicom(study / "AP.dcm", radiograph((160, 120), seed=1), view="AP")
    write_dicom(study / "LAT.dcm", radiograph((160, 120), seed=2), view="LAT")
    out = tmp_path / "out"
    status, _, stderr = cli(
        monkeypatch, capsys, "infer", str(study), "--out", str(out), "--bundle", str(small_bundle), "--no-dicom-out"
    )
    assert status == 0, stderr
    assert (out / "d1" / "result.json").is_file() and not list((out / "d1").glob("*.dcm"))
    status, _, stderr = cli(monkeypatch, capsys, "infer", str(study), "--out", str(out), "--bundle", str(small_bundle))
    assert status == 0, stderr  # another setting: the study is redone, now with its SEGs
    assert sorted(p.name for p in (out / "d1").glob("*.dcm")) == ["report.dcm", "seg_AP.dcm", "seg_LAT.dcm"]


def test_the_morphometry_parts_the_bodies_with_the_disk_the_network_drew(tmp_path: Path) -> None:
    """With a disk exclusion the written disk mask is the excluded one, while the morphometry parts
    the bodies with the disk the network drew (StudyInferer's PARTING_DISK_KEY)."""
    from monai.data import list_data_collate

    from spine_app.channels import MASK_NAMES as NAMES
    from spine_app.data.study_transforms import LoadStudyd
    from spine_app.engines import StudyPredictionWriter, prepare_study_batch
    from spine_app.engines.dataset import study_entry
    from spine_app.engines.inferer import PARTING_DISK_KEY

    shape = (300, 128)
    film = write_png(tmp_path / "LAT.png", radiograph(shape, seed=4))
    loaded = LoadStudyd(canvas=shape, on_error="raise")(study_entry("s", {"LAT": film}))
    _, target = prepare_study_batch(list_data_collate([loaded]))
    seg = torch.full((1, len(NAMES), *shape), -20.0)
    seg[0, NAMES.index("Lat_Vertebra"), 60:220, 40:90] = 20.0  # two bodies drawn as one column
    drawn = torch.full((1, 1, *shape), -20.0)
    drawn[0, 0, 136:144, 40:90] = 20.0  # the disk space between them, excluded from the written mask
    bodies = {}
    for name, extra in (("parted", {PARTING_DISK_KEY: drawn}), ("plain", {})):
        pred = {
            "seg_ap": seg,
            "seg_lat": seg,
            "cls": torch.zeros(1),
            "cls_ap": torch.zeros(1),
            "cls_lat": torch.zeros(1),
        }
        writer = StudyPredictionWriter(str(tmp_path / name))
        writer.reset()
        writer(
            type("Engine", (), {"state": type("State", (), {"output": {"pred": {**pred, **extra}, "label": target}})})()
        )
        assert writer.errors == [], writer.errors
        result = json.loads((tmp_path / name / "s" / "result.json").read_text())
        bodies[name] = result["morphometry"]["vertebrae"]
        assert result["mask_area_px"]["Lat_Disk_Height"] == 0  # the written disk: the excluded one

    def across_the_disk(found: list) -> bool:
        return any(136 <= body["centroid_px"][0] <= 144 for body in found)

    assert not across_the_disk(bodies["parted"])  # a body ends above the drawn disk, the next starts below
    assert across_the_disk(bodies["plain"])  # without it the column is cut wherever the heights fall
