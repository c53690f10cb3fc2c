"""``spine-app robustness evaluate`` end to end on two tiny studies with two corruptions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from spine_app.data.importer import import_dataset
from spine_app.networks import SpineMultiTaskNet

SUITE = Path(__file__).resolve().parents[2] / "configs" / "robustness" / "default.yaml"


def run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "spine_app.cli", "robustness", "evaluate", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_evaluate_writes_every_output(synth_root: Path, tmp_path: Path) -> None:
    datalist = tmp_path / "datalist.json"
    import_dataset(synth_root, datalist, seed=0, fractions=(0.0, 0.0, 1.0), workers=1)
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.save(SpineMultiTaskNet().state_dict(), model)
    out = tmp_path / "rob"
    result = run(
        str(datalist), "--out", str(out), "--model", str(model), "--limit", "2", "--only", "gaussian_noise,flip_lat"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in (
        "results.json",
        "results.csv",
        "results.md",
        "dice_vs_severity.png",
        "auroc_vs_severity.png",
        "dice_drop_heatmap.png",
        "examples.png",
    ):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert set(results["corruptions"]) == {"gaussian_noise", "flip_lat"} and results["studies"] == 2
    noise = results["corruptions"]["gaussian_noise"]
    assert noise["values"] == [500, 1000, 2000, 3500, 5000] and len(noise["severities"]) == 5
    assert set(noise["severities"][0]["dice"]) == {
        "Ap_Vertebra",
        "Ap_Pedicle",
        "Ap_Spinous_Process",
        "Lat_Vertebra",
        "Lat_Spinous_Process",
        "Lat_Disk_Height",
        "Lat_Anterior_Vertebral_Line",
        "Lat_Posterior_Vertebral_Line",
    }
    assert "relative_error_dice" in results["summary"]["mean"]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 1 + 2 * 5  # header, clean, two corruptions x five severities


def test_bad_suite_is_a_clear_error(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("corruptions: {gaussian_noise: [500, 1000, 2000, 3500, 99999]}")
    result = run(str(tmp_path / "missing.json"), "--suite", str(suite), "--out", str(tmp_path / "o"))
    assert result.returncode != 0
    assert "outside the valid range" in result.stderr and str(suite) in result.stderr


def test_suite_with_a_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(
        "corruptions:\n  gaussian_noise: [500, 1000, 2000, 3500, 5000]\n  gaussian_blur: [1, 2\n"
        "  flip_lat: [1, 1, 1, 1, 1]\n"
    )
    result = run(str(tmp_path / "missing.json"), "--suite", str(suite), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: {suite}: line 4, column 11: YAML syntax error (expected ',' or ']', but got ':'; "
        "while parsing a flow sequence from line 3)"
    ]


def test_bad_device_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run(str(tmp_path / "missing.json"), "--device", "tpu", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --device tpu: unknown device; use auto, cpu, cuda, cuda:N or gpu"
    ]


def test_mirrored_lateral_films_keep_their_lines(synth_root: Path, tmp_path: Path) -> None:
    """The runner scores the product's path: a LAT film of a patient facing the other way is mirrored
    before the lines are drawn (StudyInferer), so flip_lat keeps the anterior/posterior lines on their
    walls. A plain whole-film pass puts them on the wrong walls (line Dice near 0)."""
    from spine_app.bundle import BUNDLE_DIR, load_bundle_network
    from spine_app.evaluation.runner import SplitRunner, plain_forward, split_scores
    from spine_app.robustness.corruptions import load_suite
    from spine_app.robustness.evaluate import corruption_hook

    datalist = tmp_path / "datalist.json"
    import_dataset(synth_root, datalist, seed=0, fractions=(0.0, 0.0, 1.0), workers=1)
    from spine_app.data.importer import load_datalist

    entries = load_datalist(datalist)["test"][:3]
    network, canvas = load_bundle_network(BUNDLE_DIR)
    flip = next(spec for spec in load_suite(SUITE) if spec.name == "flip_lat")
    lines = ("Lat_Anterior_Vertebral_Line", "Lat_Posterior_Vertebral_Line")

    product = SplitRunner(network, entries, list(canvas), workers=0)
    clean, flipped = split_scores(product.run()), split_scores(product.run(corruption_hook(flip, 1)))
    plain = split_scores(
        SplitRunner(network, entries, list(canvas), workers=0, inferer=plain_forward).run(corruption_hook(flip, 1))
    )
    for name in lines:
        assert clean["dice"][name] > 0.5, (name, clean["dice"][name])
        assert flipped["dice"][name] > clean["dice"][name] - 0.15, (name, flipped["dice"][name], clean["dice"][name])
        assert plain["dice"][name] < flipped["dice"][name] - 0.3, (name, plain["dice"][name])
