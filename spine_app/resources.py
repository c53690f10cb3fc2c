"""Where the project's files that are not code live: the bundle (configs, docs, shipped weights),
the generator presets and the corruption suites.

In a repository checkout (``scripts/setup.sh``, an editable install) they are the repository's own
``bundle/`` and ``configs/`` folders. An installed wheel carries copies of them inside the package
(``spine_app/resources/``, put there by ``setup.py`` at build time) and finds them with
``importlib.resources``, so ``spine-app infer`` works from any folder with nothing else installed.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the bundle's files a wheel carries (runs/, eval/ and predictions/ are a checkout's work folders)
BUNDLE_FILES = ("configs", "docs", "LICENSE", "large_files.yml", "models/model.pt", "models/model_provenance.json")
#: the folders of configs/ a wheel carries
CONFIG_KINDS = ("synthetic", "robustness")


def packaged_root() -> Path:
    """``spine_app/resources`` of an installed wheel (absent in a checkout)."""
    return Path(str(importlib.resources.files("spine_app"))) / "resources"


def bundle_dir() -> Path:
    """The bundle folder: the checkout's ``bundle/`` when there is one, else the wheel's copy."""
    repo = REPO_ROOT / "bundle"
    if (repo / "configs" / "metadata.json").is_file():
        return repo
    return packaged_root() / "bundle"


def config_dir(kind: str) -> Path:
    """``configs/<kind>`` (``synthetic`` presets, ``robustness`` suites) of the checkout or the wheel."""
    if kind not in CONFIG_KINDS:
        raise ValueError(f"unknown config kind {kind!r}; choose from {', '.join(CONFIG_KINDS)}")
    repo = REPO_ROOT / "configs" / kind
    return repo if repo.is_dir() else packaged_root() / "configs" / kind


def suite_path(suite: str | Path) -> Path:
    """A corruption suite: an existing file as given, else a suite shipped with the project, named
    ``default``, ``default.yaml`` or ``configs/robustness/default.yaml`` (the documented default)."""
    path = Path(suite)
    if path.is_file():
        return path
    shipped = config_dir("robustness") / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    return shipped if shipped.is_file() else path
