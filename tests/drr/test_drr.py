"""spine-app drr: DRR studies of a generator-written CT against the generator's own masks, the beam
geometry on a phantom, 3-D fractures, label conventions and bad input.

Small on purpose: a lumbar film of 0.8 mm pixels and 2 mm CT voxels (a few seconds per study).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from spine_app.cli import main
from spine_app.drr.labels import CONVENTIONS, convention
from spine_app.drr.project import Beam, Geometry, cast
from spine_app.drr.run import BadInput, generate
from spine_app.drr.study import DrrSettings
from spine_app.synthetic.config import load_preset
from spine_app.synthetic.ct import VERSE_VALUE, nifti, write_ct, write_nifti
from spine_app.synthetic.generator import generate_study
from spine_app.synthetic.render import Film

SEED = 5
CFG = dict(
    levels=("L1", "L4"),
    pixel_spacing_mm=(0.8, 0.8),
    render_voxel_mm=0.8,
    film_height_mm=(220.0, 220.0),
    ap_width_mm=(160.0, 160.0),
    lat_width_mm=(170.0, 170.0),
)
VOXEL_MM = 2.0
#: the generator's own pose and a parallel beam: the DRR lands on the generator's pixel grid
SAME_GRID = dict(beam="parallel", max_rotation_deg=0.0, max_shift_mm=0.0)
#: lower Dice bounds (2 mm voxels, 0.8 mm pixels); measured values are in docs/drr.md
DICE_BOUND = {
    "Ap_Vertebra": 0.9,
    "Lat_Vertebra": 0.9,
    "Ap_Pedicle": 0.85,  # the parts split from labels near the canal: transverse-process roots join them
    "Ap_Spinous_Process": 0.8,  # the laminae's junction behind the canal joins the process
    "Lat_Spinous_Process": 0.9,
    "Lat_Disk_Height": 0.8,  # polygons between measured corners: a pixel's shift is a large share
}


def _mask(folder: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(folder / f"{name}.png")) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def _line_distance_px(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean distance (pixels) between two line masks."""
    da, db = ndimage.distance_transform_edt(~a), ndimage.distance_transform_edt(~b)
    return float(0.5 * (db[a].mean() + da[b].mean()))


@pytest.fixture(scope="module")
def cts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Generator CTs of study 0 (Normal) and study 1 (Damaged) of the small lumbar setting."""
    root = tmp_path_factory.mktemp("ct")
    cfg = load_preset("default", **CFG)
    for index in (0, 1):
        write_ct(cfg, SEED, index, root / str(index), VOXEL_MM)
    return {index: root / str(index) for index in (0, 1)}


def _drr(ct_folder: Path, out: Path, **settings) -> Path:
    summary = generate(ct_folder / "ct.nii.gz", ct_folder / "ct_labels.nii.gz", out, DrrSettings(**settings))
    return Path(summary["studies"][0])


@pytest.mark.parametrize("index", [0, 1])
def test_drr_masks_match_the_generators_masks(cts: dict[int, Path], tmp_path: Path, index: int) -> None:
    cfg = load_preset("default", **CFG)
    study = generate_study(cfg, SEED, index)
    folder = _drr(cts[index], tmp_path, **SAME_GRID)
    assert folder.parent.name == study.class_name
    dice = {name: _dice(study.masks[name], _mask(folder, name)) for name in DICE_BOUND}
    assert all(dice[name] >= bound for name, bound in DICE_BOUND.items()), dice
    ps = study.pixel_spacing
    for name in ("Lat_Anterior_Vertebral_Line", "Lat_Posterior_Vertebral_Line"):
        # thin lines (1.2 mm): Dice says little, their distance says how far apart they run
        assert _line_distance_px(study.masks[name], _mask(folder, name)) * ps < 1.5, name
    truth = json.loads((folder / "truth.json").read_text())
    expected = {lv["name"]: lv for lv in study.truth["levels"]}
    errors = [
        np.linalg.norm(np.subtract(p, expected[lv["name"]]["lat_points_px"][k])) * ps
        for lv in truth["levels"]
        for k, p in lv["lat_points_px"].items()
        if lv["in_view_lat"]
    ]
    assert np.median(errors) < 1.5, errors  # mm, body corners measured on 2 mm voxels
    assert truth["label"] == study.label and truth["image_shapes"] == study.truth["image_shapes"]
    assert {f["level"] for f in truth["fractures"]} == {f["level"] for f in study.truth["fractures"]}
    # filed with the generator's framings (a lumbar scene), so --extra_fields_of_view and the refit read it
    assert truth["field_of_view"]["name"] in {"lumbar", "thoracolumbar"}
    assert truth["field_of_view"]["levels"] == truth["levels_in_view"]


def test_divergent_beam_magnifies_as_sid_over_sid_minus_d() -> None:
    """A sphere's projected radius on the detector is r * SID / (SID - d), d its distance to the detector."""
    step, radius, sid, sod = 0.5, 15.0, 1000.0, 700.0
    film = Film(step=step, upsample=1, z_top=40.0, rows=160, ap_x0=-40.0, ap_cols=160, lat_y0=-40.0, lat_cols=160)
    geometry = Geometry(film=film, isocenter=np.zeros(3), beam=Beam("divergent", sid, sod))
    m = geometry.beam.magnification
    x = np.arange(-25.0, 26.0)[:, None, None]
    y = np.arange(-150.0, 151.0)[None, :, None]
    z = np.arange(-25.0, 26.0)[None, None, :]
    w2i = np.eye(4)
    w2i[:3, 3] = [25.0, 150.0, 25.0]  # patient point (x, y, z) is voxel (x + 25, y + 150, z + 25)
    source_y = -sod  # AP: the source is anterior (negative y) of the isocentre plane y = 0
    for centre in (-120.0, 0.0, 120.0):  # sphere centre along the central ray
        dist = np.sqrt(x**2 + (y - centre) ** 2 + z**2)
        sphere = np.clip(radius + 0.5 - dist, 0.0, 1.0).astype(np.float32)  # anti-aliased edge
        chord = cast(sphere, w2i, geometry, "AP", 0.5)[0]
        # the edge is 1 mm soft: rays grazing it through less than 2 mm of sphere are outside
        measured = np.sqrt((chord > 2.0).sum() / np.pi) * step * m  # radius on the detector plane (mm)
        d = (source_y + sid) - centre  # sphere centre to detector
        expected = radius * sid / (sid - d)
        assert abs(measured - expected) < step * m, (centre, measured, expected)  # within a detector pixel
    parallel = Geometry(film=film, isocenter=np.zeros(3), beam=Beam("parallel"))  # no magnification
    chord = cast(sphere, w2i, parallel, "AP", 0.5)[0]
    assert abs(np.sqrt((chord > 2.0).sum() / np.pi) * step - radius) < step


def _run_height(mask: np.ndarray, center: list[float]) -> int:
    """Height (pixels) of the mask's run through ``center`` along its column."""
    r, c = int(round(center[0])), int(round(center[1]))
    column = mask[:, c]
    labels, _ = ndimage.label(column)
    return int((labels == labels[r]).sum()) if labels[r] else 0


@pytest.mark.parametrize(("grade", "kind"), [(2, "crush"), (3, "wedge")])
def test_fracture_lowers_the_body_by_the_grades_range(cts: dict[int, Path], tmp_path: Path, grade, kind) -> None:
    from spine_app.synthetic.anatomy import GENANT_LOSS

    base = _drr(cts[0], tmp_path / "base", **SAME_GRID)
    broken = _drr(
        cts[0],
        tmp_path / "broken",
        fracture=True,
        fracture_level="L2",
        fracture_grade=grade,
        fracture_type=kind,
        **SAME_GRID,
    )
    assert base.parent.name == "Normal" and broken.parent.name == "Damaged"
    truth = json.loads((broken / "truth.json").read_text())
    assert truth["label"] == 1 and truth["class_name"] == "Damaged"
    assert truth["fractures"] == [
        {
            "level": "L2",
            "grade": grade,
            "kind": kind,
            "height_loss": pytest.approx(truth["simulated_fracture"]["height_loss"], abs=1e-4),
        }
    ]
    lo, hi = GENANT_LOSS[grade]
    assert lo <= truth["simulated_fracture"]["height_loss"] <= hi
    measured = truth["simulated_fracture"]["measured_height_loss"]
    assert lo - 0.05 <= measured <= hi + 0.05, measured  # on the squashed labels (2 mm voxels)
    before = {lv["name"]: lv for lv in json.loads((base / "truth.json").read_text())["levels"]}["L2"]
    after = {lv["name"]: lv for lv in truth["levels"]}["L2"]
    wall = "anterior" if kind == "wedge" else "middle"
    ratio = after["heights_mm"][wall] / before["heights_mm"][wall]  # measured on the squashed 3-D labels
    assert 1 - hi - 0.05 <= ratio <= 1 - lo + 0.05, ratio
    if kind == "crush":  # the projected LAT body is lower by the same share (within two pixels)
        h0 = _run_height(_mask(base, "Lat_Vertebra"), before["center_lat_px"])
        h1 = _run_height(_mask(broken, "Lat_Vertebra"), before["center_lat_px"])
        tol = 2.0 / h0
        assert 1 - hi - tol <= h1 / h0 <= 1 - lo + tol, (h0, h1)


def test_label_conventions_give_the_same_study(cts: dict[int, Path], tmp_path: Path) -> None:
    """The VerSe map rewritten in TotalSegmentator values projects to the same masks."""
    import nibabel as nib

    image = nib.load(str(cts[0] / "ct_labels.nii.gz"))
    verse = np.asarray(image.dataobj)
    total = convention("totalsegmentator")
    to_total = {VERSE_VALUE[name]: value for value, name in sorted(total.values.items(), reverse=True)}
    remapped = np.zeros_like(verse)
    for value in np.unique(verse[verse > 0]):
        remapped[verse == value] = to_total[int(value)]
    write_nifti(tmp_path / "total.nii.gz", nifti(remapped, image.affine))
    a = _drr(cts[0], tmp_path / "verse", **SAME_GRID)
    b = Path(
        generate(
            cts[0] / "ct.nii.gz",
            tmp_path / "total.nii.gz",
            tmp_path / "total",
            DrrSettings(labels="totalsegmentator", **SAME_GRID),
        )["studies"][0]
    )
    for name in ("Ap_Vertebra", "Lat_Vertebra", "Lat_Disk_Height"):
        assert np.array_equal(_mask(a, name), _mask(b, name)), name
    assert convention("verse").level(20) == "L1" and total.level(31) == "L1" and total.level(50) == "C1"
    assert set(CONVENTIONS) == {"verse", "ctspine1k", "totalsegmentator"}


def _refused(args: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_inputs_are_one_line_and_exit_2(cts: dict[int, Path], tmp_path: Path, capsys) -> None:
    import nibabel as nib

    ct, labels = str(cts[0] / "ct.nii.gz"), str(cts[0] / "ct_labels.nii.gz")
    out = str(tmp_path / "out")
    assert "nope.nii.gz: CT not found" in _refused(["drr", str(tmp_path / "nope.nii.gz"), labels, "--out", out], capsys)
    small = np.zeros((4, 5, 6), np.uint8)
    write_nifti(tmp_path / "small.nii.gz", nifti(small, np.eye(4)))
    line = _refused(["drr", ct, str(tmp_path / "small.nii.gz"), "--out", out], capsys)
    assert "small.nii.gz: label map shape (4, 5, 6) differs" in line
    assert "unknown label convention 'foo'" in _refused(["drr", ct, labels, "--out", out, "--labels", "foo"], capsys)
    (tmp_path / "text.nii.gz").write_text("not a volume")
    assert "text.nii.gz: not a readable NIfTI" in _refused(
        ["drr", ct, str(tmp_path / "text.nii.gz"), "--out", out], capsys
    )
    empty = np.zeros(nib.load(labels).shape, np.uint8)
    write_nifti(tmp_path / "empty.nii.gz", nifti(empty, nib.load(labels).affine))
    assert "no vertebra label" in _refused(["drr", ct, str(tmp_path / "empty.nii.gz"), "--out", out], capsys)
    assert "--out" in _refused(["drr", ct, labels], capsys)
    # a study folder this command did not write is never replaced
    foreign = tmp_path / "out" / "Normal" / "syn5_00000_drr0_00"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    assert "not written by spine-app drr" in _refused(["drr", ct, labels, "--out", out], capsys)
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


def test_synth_ct_then_drr_poses_on_the_command_line(tmp_path: Path, capsys) -> None:
    """synth --ct leaves the study files as they were; drr --poses 2 writes two posed studies, then reruns.

    In-process (``spine_app.cli.main``): the command line as a user types it, without the interpreter's
    start-up per command; ``test_cli.py`` covers the subprocess entry point.
    """
    small = ["--pixel_spacing_mm", "[0.8, 0.8]", "--render_voxel_mm", "0.8", "--film_height_mm", "[200, 200]"]
    small += ["--ap_width_mm", "[150, 150]", "--lat_width_mm", "[150, 150]"]
    flags = ["--n", "1", "--seed", "4", "--workers", "1", "--levels", "[L2, L4]", *small]
    main(["synth", str(tmp_path / "plain"), *flags])
    main(["synth", str(tmp_path / "ct"), *flags, "--ct", "--ct_voxel_mm", "3"])
    assert "wrote 1 CT volumes" in capsys.readouterr().out
    plain = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*") if p.is_file())
    study = tmp_path / "ct" / "Normal" / "syn4_00000"
    assert {p.name for p in study.iterdir()} - {p.name for p in (tmp_path / "plain/Normal/syn4_00000").iterdir()} == {
        "ct.nii.gz",
        "ct_labels.nii.gz",
    }
    for rel in plain:
        if rel.name != "synth_manifest.json":
            assert (tmp_path / "ct" / rel).read_bytes() == (tmp_path / "plain" / rel).read_bytes(), rel
    drr = ["drr", str(study / "ct.nii.gz"), str(study / "ct_labels.nii.gz"), "--out", str(tmp_path / "drr")]
    main([*drr, "--poses", "2"])
    assert "wrote 2 DRR studies" in capsys.readouterr().out
    studies = sorted((tmp_path / "drr" / "Normal").iterdir())
    assert [p.name for p in studies] == ["syn4_00000_drr0_00", "syn4_00000_drr0_01"]
    poses = [json.loads((p / "truth.json").read_text())["geometry"]["pose"]["rotation_deg"] for p in studies]
    assert poses[0] != poses[1] and max(abs(a) for pose in poses for a in pose) <= 3.0
    main([*drr, "--poses", "1"])  # its own studies are rewritten, not refused
    main(["import", str(tmp_path / "drr"), "--out", str(tmp_path / "dl.json")])
    assert "imported: 2   skipped: 0" in capsys.readouterr().out
    main(["check", str(tmp_path / "ct")])  # the CT beside a study is no unknown file to the importer
    report = capsys.readouterr().out
    assert "imported: 1   skipped: 0" in report and "ct.nii.gz" not in report


def test_a_ct_without_a_film_frame_is_framed_on_its_labelled_bodies(cts: dict[int, Path], tmp_path: Path) -> None:
    """A plain NIfTI pair (no spine_app extension, e.g. VerSe): the film is centred on the bodies."""
    import nibabel as nib

    for name in ("ct", "ct_labels"):
        image = nib.load(str(cts[0] / f"{name}.nii.gz"))
        write_nifti(tmp_path / f"plain_{name}.nii.gz", nifti(np.asarray(image.dataobj), image.affine))
    summary = generate(
        tmp_path / "plain_ct.nii.gz",
        tmp_path / "plain_ct_labels.nii.gz",
        tmp_path / "out",
        DrrSettings(pixel_mm=0.8, poses=1),
    )
    folder = Path(summary["studies"][0])
    assert folder.name == "plain_ct_drr0_00"
    truth = json.loads((folder / "truth.json").read_text())
    assert truth["source"]["generator_ct"] is None and truth["geometry"]["beam"] == "divergent"
    lumbar = [lv for lv in truth["levels"] if lv["name"].startswith("L")]
    assert lumbar and all(lv["in_view_ap"] and lv["in_view_lat"] for lv in lumbar)
    for name, least in (("Ap_Vertebra", 5000), ("Lat_Vertebra", 5000), ("Lat_Disk_Height", 300)):
        assert _mask(folder, name).sum() > least, name
    assert _mask(folder, "Lat_Anterior_Vertebral_Line").sum() > 150  # 2 px wide along the lumbar bodies
    ap = _mask(folder, "Ap_Vertebra")
    for lv in lumbar:  # each body's centre lies on its mask
        r, c = (int(round(v)) for v in lv["center_ap_px"])
        assert ap[r, c], lv["name"]


def test_a_scan_that_ends_in_a_body_frames_no_film_beyond_it(cts: dict[int, Path], tmp_path: Path) -> None:
    """A CT cut through its lowest labelled body (a chest CT ending mid-lumbar): the film stops inside
    the scan, so no row shows the blank band past its last slice (framed on the bodies alone, the film
    would reach 30 mm past it), and its edge cuts through the column as a collimator would."""
    import nibabel as nib

    ct, labels = (nib.load(str(cts[0] / f"{name}.nii.gz")) for name in ("ct", "ct_labels"))
    values = np.asarray(labels.dataobj)
    axis = int(np.argmax(np.abs(labels.affine[2, :3])))  # the slice axis (world z)
    lowest = np.flatnonzero(np.moveaxis(values == VERSE_VALUE["L4"], axis, 0).any(axis=(1, 2)))
    cut = int(lowest.mean())  # through the middle of L4's body
    keep = slice(cut, None) if labels.affine[2, axis] > 0 else slice(None, cut + 1)
    first = np.zeros(3)
    first[axis] = keep.start or 0
    affine = labels.affine.copy()
    affine[:3, 3] = labels.affine[:3, :3] @ first + labels.affine[:3, 3]
    kept = np.arange(values.shape[axis])[keep]
    for name, image in (("ct", ct), ("ct_labels", labels)):
        write_nifti(tmp_path / f"cut_{name}.nii.gz", nifti(np.take(np.asarray(image.dataobj), kept, axis=axis), affine))
    ends = affine[2, axis] * np.array([0, kept.size - 1]) + affine[2, 3]  # world z of the first and last slice

    summary = generate(
        tmp_path / "cut_ct.nii.gz", tmp_path / "cut_ct_labels.nii.gz", tmp_path / "out", DrrSettings(pixel_mm=0.8)
    )
    folder = Path(summary["studies"][0])
    truth = json.loads((folder / "truth.json").read_text())
    film = truth["geometry"]["film"]
    bottom, top = film["z_top"] - film["rows"] * film["step"], film["z_top"]
    assert ends.min() <= bottom and top <= ends.max()  # every row inside the scan
    assert bottom - ends.min() < 25.0  # ... and reaching down to it, less the shift's and the fan's margins
    lat = _mask(folder, "Lat_Vertebra")
    assert lat[-3:].any()  # the film's lower edge cuts through the column, as a collimator would
    assert truth["levels_in_view"][-1] in ("L3", "L4")  # L4, half in the scan, may fall in the margins

    thin = np.take(np.asarray(ct.dataobj), np.arange(values.shape[axis])[cut : cut + 4], axis=axis)
    write_nifti(tmp_path / "thin_ct.nii.gz", nifti(thin, affine))  # 4 slices: no room for a film
    write_nifti(tmp_path / "thin_ct_labels.nii.gz", nifti(np.take(values, range(cut, cut + 4), axis=axis), affine))
    with pytest.raises(BadInput, match="thin_ct.nii.gz: the scan leaves no film inside it"):
        generate(tmp_path / "thin_ct.nii.gz", tmp_path / "thin_ct_labels.nii.gz", tmp_path / "thin", DrrSettings())
