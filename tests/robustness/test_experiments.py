"""train-size and noise-train run end to end with the bundle's training (tiny schedule)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from monai.data import MetaTensor

from spine_app.data.augment import RandCorruptiond
from spine_app.data.importer import import_dataset, load_datalist
from spine_app.robustness.experiments import epochs_for_steps

TINY = ["--epochs", "1", "--val_interval", "1", "--patch_size", "[128, 96]", "--num_workers", "0", "--batch_size", "2"]


def run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "spine_app.cli", "robustness", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_train_size_and_noise_train(synth_root: Path, tmp_path: Path) -> None:
    datalist = tmp_path / "datalist.json"
    import_dataset(synth_root, datalist, seed=0, fractions=(0.5, 0.17, 0.33), workers=1)
    available = len(load_datalist(datalist)["training"])
    assert available >= 2
    sizes = run("train-size", str(datalist), "--out", str(tmp_path / "ts"), "--sizes", "1,99", "--steps", "2", *TINY)
    assert sizes.returncode == 0, sizes.stderr[-3000:]
    result = json.loads((tmp_path / "ts" / "train_size.json").read_text())
    assert result["sizes"] == [1, available]  # 99 is capped at all training studies
    assert [r["train_studies"] for r in result["runs"]] == [1, available]
    assert [r["epochs"] for r in result["runs"]] == [epochs_for_steps(2, n, 2) for n in (1, available)]
    assert (tmp_path / "ts" / "train_size.png").stat().st_size > 0
    assert (tmp_path / "ts" / f"n{available:04d}" / "models" / "model.pt").is_file()
    again = run("train-size", str(datalist), "--out", str(tmp_path / "ts"), "--sizes", "1", "--steps", "2", *TINY)
    assert again.returncode == 0 and "finished run reused" in again.stderr  # an interrupted curve continues
    noise = run("noise-train", str(datalist), "--out", str(tmp_path / "nt"), *TINY)
    assert noise.returncode == 0, noise.stderr[-3000:]
    table = (tmp_path / "nt" / "noise_train.md").read_text()
    assert "noise in training" in table and "gaussian_noise s5" in table


def test_training_corruption_changes_only_the_images() -> None:
    transform = RandCorruptiond(["gaussian_noise", "jpeg"], prob=1.0)
    transform.set_random_state(0)
    data = {"ap": MetaTensor(torch.rand(1, 64, 48)), "lat": torch.rand(1, 64, 48), "seg_ap": torch.ones(8, 64, 48)}
    out = transform(data)
    assert isinstance(out["ap"], MetaTensor) and type(out["lat"]) is torch.Tensor  # types kept: batches collate
    assert not torch.equal(out["ap"], data["ap"]) and out["seg_ap"] is data["seg_ap"]
    assert out["ap"].shape == (1, 64, 48) and float(out["ap"].min()) >= 0 and float(out["ap"].max()) <= 1
    assert RandCorruptiond(None)(data) is data


def test_equal_step_budget_scales_epochs_to_the_training_set() -> None:
    assert epochs_for_steps(500, 5, 4) == 250  # 2 batches per epoch
    assert epochs_for_steps(500, 210, 4) == 9  # 53 batches per epoch
    assert epochs_for_steps(10, 1000, 4) == 1  # never zero epochs
