"""Build hook: copy the bundle (configs, docs, shipped weights) and the generator presets and
corruption suites into the wheel as ``spine_app/resources/`` (found by ``spine_app.resources``).
Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLE_FILES = ("configs", "docs", "LICENSE", "large_files.yml", "models/model.pt", "models/model_provenance.json")
CONFIG_KINDS = ("synthetic", "robustness")


class BuildWithResources(build_py):
    """build_py, then the resources into build_lib/spine_app/resources."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "spine_app" / "resources"
        copies = [(ROOT / "bundle" / name, target / "bundle" / name) for name in BUNDLE_FILES]
        copies += [(ROOT / "configs" / kind, target / "configs" / kind) for kind in CONFIG_KINDS]
        for source, dest in copies:
            if not source.exists():
                continue  # e.g. no shipped weights in a fresh fork: the wheel then needs --model
            dest.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(source, dest)


setup(cmdclass={"build_py": BuildWithResources})
