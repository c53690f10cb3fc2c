"""The project as a user installs it: a wheel that carries the bundle, the shipped weights, the
presets and the suites, used from a folder that is not the checkout; the bundle configs run from
any working directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spine_app.resources import REPO_ROOT

CLI = "import sys; from spine_app.cli import main; sys.argv[0] = 'spine-app'; main()"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel built from the checkout, installed (without its dependencies, which this venv has)
    into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    if not (REPO_ROOT / "bundle" / "models" / "model.pt").is_file():
        pytest.skip("no shipped weights in this checkout")
    source = tmp / "source"  # a clean copy: no stale build/ of the checkout, nothing written into it
    top = {".git", "data", "build", "dist"}  # the checkout's own data and build folders (top level only)
    work = {"runs", "eval", "predictions"}  # bundle/ work folders

    def skip(folder: str, names: list[str]) -> set[str]:
        here = Path(folder).resolve()
        drop = {
            n
            for n in names
            if n.startswith(".venv") or n.endswith(".egg-info") or n in ("__pycache__", ".pytest_cache", ".ruff_cache")
        }
        drop |= top & set(names) if here == REPO_ROOT else set()
        drop |= work & set(names) if here == REPO_ROOT / "bundle" else set()
        return drop

    shutil.copytree(REPO_ROOT, source, ignore=skip)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp / "dist").glob("spine_app-*.whl"))
    site = tmp / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel), "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    return {"site": site, "work": tmp / "work", "wheel": wheel}


def run_installed(installed: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    """``spine-app ARGS`` with the installed copy first on the path, from a folder outside the checkout."""
    installed["work"].mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(installed["site"]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], cwd=installed["work"], env=env, capture_output=True, text=True, timeout=900
    )


def test_wheel_carries_the_bundle_and_infers_from_any_folder(installed: dict[str, Path]) -> None:
    site = installed["site"]
    where = run_installed(installed, "version")
    assert where.returncode == 0, where.stderr
    packaged = site / "spine_app" / "resources"
    for name in (
        "bundle/configs/inference.yaml",
        "bundle/configs/metadata.json",
        "bundle/models/model.pt",
        "bundle/large_files.yml",
        "configs/synthetic/easy.yaml",
        "configs/robustness/default.yaml",
    ):
        assert (packaged / name).is_file(), name
    assert not (packaged / "bundle" / "runs").exists()  # a checkout's work folders stay out
    synth = run_installed(installed, "synth", "--out", "studies", "--n", "2", "--preset", "easy", "--workers", "1")
    assert synth.returncode == 0, synth.stderr
    infer = run_installed(installed, "infer", "studies", "--out", "predictions")
    assert infer.returncode == 0, infer.stderr
    assert "2 studies written, 0 failed" in infer.stdout
    result = json.loads(next((installed["work"] / "predictions").glob("*/result.json")).read_text())
    assert result["model"]["path"].startswith(str(packaged))  # the wheel's own weights, not the checkout's


def test_damaged_shipped_weights_are_refused_by_their_listed_hash(installed: dict[str, Path]) -> None:
    weights = installed["site"] / "spine_app" / "resources" / "bundle" / "models" / "model.pt"
    original = weights.read_bytes()
    try:
        import torch

        state = torch.load(weights, map_location="cpu", weights_only=True)
        first = next(k for k, v in state.items() if v.is_floating_point())
        state[first] = state[first] + 1  # same keys and shapes, other values: only the hash tells
        torch.save(state, weights)
        infer = run_installed(installed, "infer", "studies", "--out", "predictions2")
        assert infer.returncode == 2
        assert "SHA-256 does not match" in infer.stderr and "large_files.yml" in infer.stderr
    finally:
        weights.write_bytes(original)


def test_bundle_config_runs_from_another_working_directory(tmp_path: Path) -> None:
    from spine_app.synthetic.generator import generate_dataset

    generate_dataset(tmp_path / "studies", 1, seed=5, preset="easy", workers=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(REPO_ROOT / "bundle" / "configs" / "inference.yaml"),
            "--dataset_dir",
            str(tmp_path / "studies"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*/result.json"))) == 1
