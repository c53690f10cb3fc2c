"""Small builders of study folders for tests (real files written with PIL / pydicom / nibabel), and the
project's scripts loaded as modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

from spine_app.channels import MASK_NAMES
from spine_app.data.io import write_png
from spine_app.networks import SpineMultiTaskNet

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the project's scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def radiograph(shape: tuple[int, int] = (96, 80), seed: int = 0) -> np.ndarray:
    """A 16-bit test image with a gradient and noise (not constant)."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 40000, shape[0])[:, None]
    return (rows + rng.integers(0, 2000, size=shape)).astype(np.uint16)


def write_png_study(folder: Path, shape: tuple[int, int] = (96, 80), masks: bool = True, seed: int = 0) -> Path:
    """Canonical study folder: AP.png, LAT.png (16-bit) and eight 8-bit masks with a square each."""
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "AP.png", radiograph(shape, seed))
    write_png(folder / "LAT.png", radiograph(shape, seed + 1))
    if masks:
        for i, name in enumerate(MASK_NAMES):
            mask = np.zeros(shape, bool)
            mask[10 + i : 30 + i, 10:40] = True
            write_png(folder / f"{name}.png", mask)
    return folder


def lying_png(path: Path, width: int, height: int) -> Path:
    """A real 64x64 PNG whose IHDR header (CRC fixed) claims ``width`` x ``height`` px."""
    import struct
    import zlib

    write_png(path, radiograph((64, 64)))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def twin_networks(decoder_channels: tuple[int, ...], **changed: float) -> tuple[SpineMultiTaskNet, SpineMultiTaskNet]:
    """Two SpineMultiTaskNets with the same weights, in eval mode (no dropout), the second built with
    ``changed`` settings (e.g. a gradient scale): what differs between them is only that setting."""
    plain = SpineMultiTaskNet(decoder_channels=decoder_channels)
    other = SpineMultiTaskNet(decoder_channels=decoder_channels, **changed)
    other.load_state_dict(plain.state_dict())
    return plain.eval(), other.eval()
