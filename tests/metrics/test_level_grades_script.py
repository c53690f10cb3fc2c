"""scripts/level_grades.py: the study decisions of ``spine-app infer`` against the studies' class folders."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import load_script


def write(dataset: Path, predictions: Path, cls: str | None, study: str, label: str, levels: list[dict]) -> None:
    if cls is not None:
        (dataset / cls / study).mkdir(parents=True)
    (predictions / study).mkdir(parents=True)
    result = {"study_id": study, "label": label, "levels": {"levels": levels}}
    (predictions / study / "result.json").write_text(json.dumps(result))


def test_study_decisions_count_found_kept_and_graded_normal_studies(tmp_path: Path):
    dataset, predictions = tmp_path / "studies", tmp_path / "out"
    flagged = {"flagged": True, "grade": 2}
    held_back = {"flagged": False, "held_back": True, "grade": 0}
    write(dataset, predictions, "Damaged", "a", "Damaged", [flagged])
    write(dataset, predictions, "Damaged", "b", "Normal", [held_back])
    write(dataset, predictions, "Normal", "c", "Normal", [held_back])  # held back: kept, no graded vertebra
    write(dataset, predictions, "Normal", "d", "Damaged", [flagged])  # called Damaged and graded
    write(dataset, predictions, "Normal", "e", "Damaged", [{"flagged": True, "grade": 0}])  # flagged, not graded
    write(dataset, predictions, None, "f", "Damaged", [flagged])  # no study folder: not counted
    counts = load_script("level_grades").study_decisions(dataset, predictions)
    assert counts == {"damaged": 2, "damaged_found": 1, "normal": 3, "normal_kept": 1, "normal_graded": 1}


def test_bad_command_lines_exit_2_with_one_line(tmp_path: Path, capsys):
    script = load_script("level_grades")
    assert script.main([]) == 2
    assert script.main([str(tmp_path), str(tmp_path), "--studies"]) == 2
    assert script.main([str(tmp_path / "missing"), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"{tmp_path / 'missing'}: not a folder"
    assert script.main([str(tmp_path), str(tmp_path)]) == 1  # nothing to score: an error, not a usage one
