"""scripts/level_boxes.py: the scored bodies of ``spine-app infer`` against the generator's truth levels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import load_script


def write_study(
    dataset: Path, predictions: Path, study: str, truth_rows: list[float], scored: list[tuple[float, bool]]
):
    """A study whose truth levels lie at ``truth_rows`` (column 100) and whose result.json scored bodies
    at the given (row, flagged)."""
    folder = dataset / "Normal" / study
    folder.mkdir(parents=True)
    levels = [{"name": f"T{i + 1}", "in_view_lat": True, "center_lat_px": [r, 100.0]} for i, r in enumerate(truth_rows)]
    levels.append({"name": "out", "in_view_lat": False, "center_lat_px": [999.0, 100.0]})
    (folder / "truth.json").write_text(json.dumps({"levels": levels}))
    out = predictions / study
    out.mkdir(parents=True)
    result = {
        "study_id": study,
        "label": "Normal",
        "levels": {"levels": [{"centre_px": [r, 102.0], "flagged": f} for r, f in scored]},
    }
    (out / "result.json").write_text(json.dumps(result))


def test_missed_split_and_spurious_bodies_are_counted(tmp_path: Path) -> None:
    script = load_script("level_boxes")
    dataset, predictions = tmp_path / "data", tmp_path / "out"
    rows = [100.0, 140.0, 180.0, 220.0, 260.0]  # spacing 40: a body counts within 20 px of its level
    # T1 found, T2 cut in two (both halves within reach), T3 missed, T4 and T5 found, one blob far below
    write_study(
        dataset,
        predictions,
        "a",
        rows,
        [(101, False), (132, False), (148, True), (221, False), (259, False), (400, True)],
    )
    write_study(dataset, predictions, "b", rows, [(r, False) for r in rows])  # every level once
    totals, lines = script.audit(dataset, predictions)
    assert totals == {
        "studies": 2,
        "truth_levels": 10,
        "scored": 11,
        "missed": 1,
        "split": 1,
        "spurious": 1,
        "spurious_flagged": 1,
    }
    assert len(lines) == 1 and "missed ['T3']" in lines[0] and "split ['T2']" in lines[0]


@pytest.mark.parametrize("argv", [["only-one"], ["a", "b", "--unknown"]])
def test_a_bad_command_line_exits_2(tmp_path: Path, argv: list[str], capsys) -> None:
    assert load_script("level_boxes").main(argv) == 2
    assert "usage" in capsys.readouterr().err


def test_a_missing_folder_is_named(tmp_path: Path, capsys) -> None:
    assert load_script("level_boxes").main([str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "nope: not a folder" in capsys.readouterr().err
