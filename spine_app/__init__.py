"""Spine X-ray multi-task analysis: data IO, synthetic studies, MONAI bundle glue and tools."""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.12.6"

_SUBPACKAGES = {
    "bench",
    "bundle",
    "channels",
    "cli",
    "data",
    "engines",
    "explain",
    "inference",
    "losses",
    "metrics",
    "morphometry",
    "networks",
    "resources",
    "robustness",
    "synthetic",
    "viz",
}


def __getattr__(name: str) -> ModuleType:
    """Import sub-packages on first use (``spine_app.engines`` in bundle configs, a light CLI start)."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f"spine_app.{name}")
    raise AttributeError(f"module 'spine_app' has no attribute {name!r}")
