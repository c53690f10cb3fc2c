"""Shared fixtures: a small synthetic dataset generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from spine_app.synthetic.generator import generate_dataset

SYNTH_SEED = 7
SYNTH_N = 6


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six default-preset studies (3 Normal, 3 Damaged) written by the real generator."""
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, SYNTH_N, seed=SYNTH_SEED, workers=2)
    return root
