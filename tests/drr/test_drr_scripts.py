"""scripts/drr_training_set.py and scripts/drr_zero_shot.py: DRR studies rendered from generator CTs,
imported for training, and the shipped model scored on them (small CTs: 4 mm voxels, 2 mm pixels)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import SCRIPTS


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_training_set_is_a_training_only_datalist_of_drr_studies(tmp_path: Path):
    done = run(
        "drr_training_set.py", str(tmp_path / "set"), "--thoracic", "0", "--thoracolumbar", "0",
        "--whole_spine", "0", "--lumbar", "2", "--voxel_mm", "4.0", "--pixel_mm", "2.0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    datalist = json.loads((tmp_path / "set" / "studies" / "datalist.json").read_text())
    assert len(datalist["training"]) == 2 and not datalist["validation"] and not datalist["test"]
    for entry in datalist["training"]:
        folder = tmp_path / "set" / "studies" / entry["class_name"] / entry["study_id"]
        truth = json.loads((folder / "truth.json").read_text())
        assert truth["generator"] == "spine_app.drr"  # rendered by the ray caster, not the generator
        assert truth["geometry"]["beam"] == "divergent"
        assert entry["meta_lat"]["spacing"] == [2.0, 2.0]  # framed on the bodies at --pixel_mm
        assert truth["source"]["generator_ct"]["generator"] == "spine_app.synthetic.ct"  # of a generator scene
        assert any(level["in_view_lat"] for level in truth["levels"])
        assert truth["field_of_view"]["name"] in {"lumbar", "thoracolumbar"}  # filed with the generator's framings


def test_zero_shot_scores_every_mask_and_the_decision(tmp_path: Path):
    out = tmp_path / "zs"
    done = run(
        "drr_zero_shot.py", "--out", str(out), "--presets", "['lumbar']", "--n", "2", "--seed", "3",
        "--voxel_mm", "4.0", "--pixel_mm", "2.0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "drr_zero_shot.json").read_text())["lumbar"]
    assert result["studies"] == 2
    rendered = {key: value for key, value in result["rendered"].items() if key != "seconds_per_study"}
    assert rendered == {"n": 2, "seed": 3, "voxel_mm": 4.0, "pixel_mm": 2.0, "beam": "divergent", "ct_film": False}
    assert set(result["dice"]) >= {"Ap_Vertebra", "Lat_Vertebra"}
    assert result["dice"]["Ap_Vertebra"] > 0.3  # the shipped model finds the column on a DRR film
    table = (out / "drr_zero_shot.md").read_text()
    assert table.splitlines()[2].startswith("| lumbar | 2 |")
    # a second run scores the same studies again without rendering them
    again = run("drr_zero_shot.py", "--out", str(out), "--presets", "['lumbar']", "--n", "2", "--seed", "3")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "rendered" not in again.stdout
    second = json.loads((out / "drr_zero_shot.json").read_text())["lumbar"]
    assert second["dice"] == result["dice"] and second["rendered"] == result["rendered"]  # as rendered, not as asked
