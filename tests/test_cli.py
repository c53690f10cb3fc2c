"""The spine-app command line, run as a user would (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import write_png_study


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spine_app.cli", *args], capture_output=True, text=True, timeout=300)


def test_synth_import_check_and_contact_sheet(tmp_path: Path) -> None:
    synth = run("synth", "--out", str(tmp_path / "ds"), "--n", "4", "--seed", "2", "--preset", "easy", "--workers", "2")
    assert synth.returncode == 0, synth.stderr
    assert "wrote 4 studies (Normal 2, Damaged 2)" in synth.stdout
    imported = run("import", str(tmp_path / "ds"), "--out", str(tmp_path / "dl.json"), "--seed", "1")
    assert imported.returncode == 0, imported.stderr
    assert "imported: 4   skipped: 0" in imported.stdout and "Lat_Disk_Height" in imported.stdout
    datalist = json.loads((tmp_path / "dl.json").read_text())
    assert sum(len(datalist[s]) for s in ("training", "validation", "test")) == 4
    checked = run("check", str(tmp_path / "ds"))
    assert checked.returncode == 0 and "AP+LAT 4" in checked.stdout
    sheet = run("contact-sheet", str(tmp_path / "dl.json"), "--out", str(tmp_path / "sheet.png"), "--per_class", "1")
    assert sheet.returncode == 0, sheet.stderr
    assert (tmp_path / "sheet.png").stat().st_size > 10_000


def test_check_fails_on_a_broken_study(tmp_path: Path) -> None:
    write_png_study(tmp_path / "Normal" / "ok")
    (write_png_study(tmp_path / "Damaged" / "broken") / "LAT.png").write_bytes(b"")
    checked = run("check", str(tmp_path))
    assert checked.returncode == 1
    assert "broken/LAT.png: empty file (0 bytes)" in checked.stdout


def test_bad_preset_is_a_one_line_error(tmp_path: Path) -> None:
    result = run("synth", "--out", str(tmp_path / "x"), "--n", "1", "--preset", "nope")
    assert result.returncode == 2  # a bad command line, refused before anything is written
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown preset 'nope'")
    assert not (tmp_path / "x").exists()
    result = run("synth", "--out", str(tmp_path / "x"), "--n", "1", "--gamma", "[2, 1]")
    assert result.returncode == 2 and "gamma" in result.stderr.strip().splitlines()[-1]


def test_bench_synth_prints_studies_per_second() -> None:
    result = run("bench", "synth", "--n", "2", "--workers", "1", "--preset", "easy")
    assert result.returncode == 0, result.stderr
    assert "studies/s:" in result.stdout


def test_export_with_weights_of_another_network_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import torch

    from spine_app.networks import SpineMultiTaskNet

    model = tmp_path / "effnet.pt"
    torch.save({k: v.half() for k, v in SpineMultiTaskNet(backbone="efficientnet-b0").state_dict().items()}, model)
    result = run("export", "--out", str(tmp_path / "export"), "--model", str(model))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {model}: weights of another network than the bundle's resnet18 (")
    assert not (tmp_path / "export").exists()


def test_misspelled_flag_exits_2_before_anything_runs(tmp_path: Path) -> None:
    write_png_study(tmp_path / "studies" / "Normal" / "s1")
    out = tmp_path / "predictions"
    result = run("infer", str(tmp_path / "studies"), "--out", str(out), "--outdir", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: spine-app infer: unknown flag --outdir; did you mean --out?"
    assert not out.exists() and not (tmp_path / "x").exists()  # nothing ran
    synth = run("synth", "--out", str(tmp_path / "ds"), "--n", "1", "--scoliosis_dg", "3")
    assert synth.returncode == 2 and "did you mean --scoliosis_deg?" in synth.stderr
    assert not (tmp_path / "ds").exists()


def test_single_letter_flags_and_unknown_commands_are_refused() -> None:
    short = run("infer", "somewhere", "-n")
    assert short.returncode == 2 and "short flag -n is not supported" in short.stderr
    unknown = run("bnech", "all")
    assert unknown.returncode == 2 and "did you mean 'bench'?" in unknown.stderr


def test_version_and_device_are_checked_up_front(tmp_path: Path) -> None:
    from spine_app import __version__

    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"spine-app {__version__}"
    import torch

    if not torch.cuda.is_available():
        gpu = run("infer", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "gpu")
        assert gpu.returncode == 2 and len(gpu.stderr.strip().splitlines()) == 1
        assert "CUDA is not available" in gpu.stderr and not (tmp_path / "o").exists()
    bad = run("bench", "speed", "--device", "tpu")
    assert bad.returncode == 2 and "unknown device" in bad.stderr


def test_help_describes_groups_and_generator_settings() -> None:
    top = run("--help")
    assert "Benchmarks:" in top.stdout + top.stderr and "MONAI Label:" in top.stdout + top.stderr
    synth = run("synth", "--help")
    text = synth.stdout + synth.stderr
    assert "--scoliosis_deg = (0.0, 12.0)" in text and "-n, --n" not in text
