"""The dataset commands (synth, import, check, monailabel prepare) refuse bad input in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import lying_png, write_png_study


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spine_app.cli", *args], capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused command (no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--n", "-3"), "error: n must be a whole number >= 1, got -3"),
        (("--n", "0"), "error: n must be a whole number >= 1, got 0"),
        (("--n", "1", "--seed", "-1"), "error: seed must be a whole number >= 0, got -1"),
    ],
)
def test_synth_refuses_nonsense_counts(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run("synth", "--out", str(tmp_path / "ds"), *args)
    assert result.returncode == 2 and one_line_error(result) == message
    assert not (tmp_path / "ds").exists()


def test_synth_and_prepare_refuse_a_used_folder(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    result = run("synth", "--out", str(tmp_path / "ds"), "--n", "1")
    assert result.returncode == 2
    assert one_line_error(result).startswith(f"error: {tmp_path / 'ds'}: synth output folder is not empty")
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["notes.txt"]
    write_png_study(tmp_path / "data" / "Normal" / "a", masks=False)
    result = run("monailabel", "prepare", str(tmp_path / "data"), "--out", str(tmp_path / "ds"))
    assert result.returncode == 2
    assert one_line_error(result).startswith(f"error: {tmp_path / 'ds'}: studies folder is not empty")
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["notes.txt"]


def test_import_refuses_duplicates_and_check_reports_them_and_bombs(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_png_study(root / "Normal" / "case1", masks=False)
    write_png_study(root / "Damaged" / "case1", masks=False, seed=2)
    write_png_study(root / "Normal" / "ok", masks=False, seed=4)
    lying_png(write_png_study(root / "Damaged" / "bomb", masks=False) / "AP.png", 20000, 20000)
    result = run("import", str(root), "--out", str(tmp_path / "dl.json"))
    assert result.returncode == 1 and not (tmp_path / "dl.json").exists()
    line = one_line_error(result)
    assert "'case1'" in line and str(root / "Normal" / "case1") in line and str(root / "Damaged" / "case1") in line
    checked = run("check", str(root))
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert "skipped studies (3): unreadable image 1, duplicate study id 2" in checked.stdout
    assert (
        f"ERROR {root / 'Normal' / 'case1'}: study id 'case1' is also in {root / 'Damaged' / 'case1'}" in checked.stdout
    )
    assert f"ERROR {root / 'Damaged' / 'bomb' / 'AP.png'}: refused before decoding" in checked.stdout
