"""Radiograph corruptions at graded severity, for robustness evaluation (and training-time
augmentation).

Every corruption is ``fn(image, masks, value, rng) -> (image, masks)``:

- ``image``: (H, W) float32 in the radiograph's grey-level range ``[0, full_scale]`` (65535 for
  16-bit films; the suite's noise sigmas are given on that scale);
- ``masks``: (C, H, W) bool or None; geometric corruptions (rotation, flip, collimation crop,
  pixelation keeps the grid) move them with the image, intensity corruptions leave them;
- ``value``: the severity's parameter from the suite file (configs/robustness/default.yaml);
- ``rng``: a seeded ``numpy.random.Generator``.

The output keeps the input's shape (except the collimation crop, which shrinks both image and masks)
and is clipped to ``[0, full_scale]``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage, signal

Masks = np.ndarray | None
Corruption = Callable[[np.ndarray, Masks, float, np.random.Generator, float], tuple[np.ndarray, Masks]]


def full_scale(image: np.ndarray, meta: Any = None) -> float:
    """Grey-level range of a decoded film: 2**bit_depth - 1 for integer files (at least the image's
    maximum, for rescaled DICOM), else the image's maximum."""
    bits = getattr(meta, "bit_depth", None)
    top = float(image.max())
    return max(float(2**bits - 1), top) if bits and "float" not in str(getattr(meta, "dtype", "")) else top


def _clip(image: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(image, 0.0, full_scale).astype(np.float32)


def gaussian_noise(image, masks, sigma, rng, full_scale):
    """Electronic noise: additive Gaussian, ``sigma`` in grey levels of the full scale."""
    return _clip(image + rng.normal(0.0, sigma * full_scale / 65535.0, image.shape), full_scale), masks


def poisson_noise(image, masks, quanta, rng, full_scale):
    """Quantum noise at a lower dose: Poisson counts with ``quanta`` photons at full scale."""
    counts = rng.poisson(np.clip(image, 0, None) / full_scale * quanta)
    return _clip(counts / quanta * full_scale, full_scale), masks


def speckle_noise(image, masks, sigma, rng, full_scale):
    """Multiplicative noise: image * (1 + N(0, sigma))."""
    return _clip(image * (1.0 + rng.normal(0.0, sigma, image.shape)), full_scale), masks


def salt_pepper(image, masks, amount, rng, full_scale):
    """A fraction ``amount`` of pixels set to black or white (dead / hot detector elements)."""
    out = image.copy()
    hit = rng.random(image.shape)
    out[hit < amount / 2] = 0.0
    out[(hit >= amount / 2) & (hit < amount)] = full_scale
    return _clip(out, full_scale), masks


def gaussian_blur(image, masks, sigma, rng, full_scale):
    """Unsharp detector or focal spot: Gaussian blur, ``sigma`` in pixels."""
    return _clip(ndimage.gaussian_filter(image, sigma), full_scale), masks


def motion_blur(image, masks, length, rng, full_scale):
    """Patient motion: a line kernel of ``length`` pixels at a random angle."""
    size = int(max(1, round(length)))
    kernel = np.zeros((size, size), np.float32)
    kernel[size // 2, :] = 1.0
    kernel = ndimage.rotate(kernel, rng.uniform(0, 180), reshape=False, order=1)
    kernel /= max(kernel.sum(), 1e-6)
    half = size // 2
    padded = np.pad(image, ((half, size - 1 - half), (half, size - 1 - half)), mode="edge")
    return _clip(signal.fftconvolve(padded, kernel[::-1, ::-1], mode="valid"), full_scale), masks


def contrast(image, masks, factor, rng, full_scale):
    """Scale the deviations from the mean by ``factor`` (< 1 flatter, > 1 harsher)."""
    mean = float(image.mean())
    return _clip(mean + (image - mean) * factor, full_scale), masks


def brightness(image, masks, shift, rng, full_scale):
    """Add ``shift`` x full scale (negative: darker)."""
    return _clip(image + shift * full_scale, full_scale), masks


def gamma(image, masks, value, rng, full_scale):
    """Film gamma: (image / full scale) ** value."""
    return _clip((np.clip(image, 0, None) / full_scale) ** value * full_scale, full_scale), masks


def jpeg(image, masks, quality, rng, full_scale):
    """8-bit JPEG round trip at ``quality`` (also loses the 16-bit depth)."""
    grey = np.round(np.clip(image / full_scale, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32)
    return _clip(decoded / 255.0 * full_scale, full_scale), masks


def pixelate(image, masks, factor, rng, full_scale):
    """Down-sample by ``factor`` (area) and back up (nearest): a low-resolution detector."""
    h, w = image.shape
    small = Image.fromarray(image).resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BOX)
    return _clip(np.asarray(small.resize((w, h), Image.Resampling.NEAREST)), full_scale), masks


def rotate(image, masks, degrees, rng, full_scale):
    """Rotate by +/- ``degrees`` (random sign); masks follow (nearest), corners filled with black."""
    angle = float(degrees) * rng.choice([-1.0, 1.0])
    out = ndimage.rotate(image, angle, reshape=False, order=1, mode="constant", cval=0.0)
    if masks is not None:
        masks = np.stack([ndimage.rotate(m.astype(np.uint8), angle, reshape=False, order=0) > 0 for m in masks])
    return _clip(out, full_scale), masks


def flip(image, masks, value, rng, full_scale):
    """Mirror left-right (a LAT film of a patient facing the other way); masks follow."""
    return image[:, ::-1].copy(), None if masks is None else masks[:, :, ::-1].copy()


def collimation(image, masks, fraction, rng, full_scale):
    """Tighter collimation: crop ``fraction`` of the rows and columns, split at random between the sides."""
    h, w = image.shape
    dr, dc = int(round(h * fraction)), int(round(w * fraction))
    top, left = int(rng.integers(0, dr + 1)), int(rng.integers(0, dc + 1))
    box = (slice(top, h - (dr - top)), slice(left, w - (dc - left)))
    return image[box].copy(), None if masks is None else masks[(slice(None), *box)].copy()


def invert(image, masks, value, rng, full_scale):
    """Grey levels inverted (a MONOCHROME1 image read as MONOCHROME2)."""
    return _clip(full_scale - image, full_scale), masks


#: name -> (function, view it applies to (None: both), valid parameter range (inclusive))
CORRUPTIONS: dict[str, tuple[Callable, str | None, tuple[float, float]]] = {
    "gaussian_noise": (gaussian_noise, None, (0.0, 65535.0)),
    "poisson_noise": (poisson_noise, None, (1.0, 1e7)),
    "speckle_noise": (speckle_noise, None, (0.0, 2.0)),
    "salt_pepper": (salt_pepper, None, (0.0, 1.0)),
    "gaussian_blur": (gaussian_blur, None, (0.0, 50.0)),
    "motion_blur": (motion_blur, None, (1.0, 200.0)),
    "contrast_down": (contrast, None, (0.0, 1.0)),
    "contrast_up": (contrast, None, (1.0, 10.0)),
    "brightness_down": (brightness, None, (-1.0, 0.0)),
    "brightness_up": (brightness, None, (0.0, 1.0)),
    "gamma_down": (gamma, None, (0.05, 1.0)),
    "gamma_up": (gamma, None, (1.0, 20.0)),
    "jpeg": (jpeg, None, (1.0, 100.0)),
    "pixelate": (pixelate, None, (1.0, 64.0)),
    "rotate": (rotate, None, (0.0, 90.0)),
    "flip_lat": (flip, "LAT", (0.0, 1.0)),
    "collimation": (collimation, None, (0.0, 0.8)),
    "invert": (invert, None, (0.0, 1.0)),
}


@dataclass(frozen=True)
class CorruptionSpec:
    """One corruption of a suite: its name and one parameter value per severity (1..5)."""

    name: str
    values: tuple[float, ...]

    def apply(
        self, image: np.ndarray, masks: Masks, severity: int, seed: int, view: str, full_scale: float = 65535.0
    ) -> tuple[np.ndarray, Masks]:
        """Corrupt one view at ``severity`` (1-based); views the corruption does not touch pass through."""
        if not 1 <= severity <= len(self.values):
            raise ValueError(f"{self.name}: severity {severity} outside 1..{len(self.values)}")
        fn, only_view, _ = CORRUPTIONS[self.name]
        if only_view is not None and view != only_view:
            return image, masks
        rng = np.random.default_rng([seed, severity, sum(map(ord, self.name)), sum(map(ord, view))])
        return fn(np.asarray(image, np.float32), masks, self.values[severity - 1], rng, full_scale)


def load_suite(path: str | Path) -> list[CorruptionSpec]:
    """Read a suite YAML (``corruptions: {name: [v1, ..., v5]}``) and check it; ``path`` is a file
    or the name of a suite shipped with the project (:func:`spine_app.resources.suite_path`).

    Raises:
        ValueError: "<path>: <reason>" for an unreadable file, a YAML syntax error (with its line), an
            unknown corruption, a wrong number of severities or a value outside the corruption's valid range.
    """
    from spine_app.resources import suite_path

    path = suite_path(path)
    try:
        data: Any = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"{path}: cannot read the suite ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (YAML) file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, opened = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and opened is not None:  # e.g. "while parsing a flow sequence" that began earlier
            problem += f"; {context} from line {opened.line + 1}"
        raise ValueError(f"{path}: {where}YAML syntax error ({problem})") from None
    if not isinstance(data, dict) or not isinstance(data.get("corruptions"), dict) or not data["corruptions"]:
        raise ValueError(f"{path}: expected a mapping 'corruptions: {{name: [five values]}}'")
    specs = []
    for name, values in data["corruptions"].items():
        if name not in CORRUPTIONS:
            raise ValueError(f"{path}: unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
        if not isinstance(values, list) or len(values) != 5 or not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f"{path}: {name} needs a list of five numbers (severities 1-5), got {values!r}")
        low, high = CORRUPTIONS[name][2]
        bad = [v for v in values if not low <= v <= high]
        if bad:
            raise ValueError(f"{path}: {name} value(s) {bad} outside the valid range [{low}, {high}]")
        specs.append(CorruptionSpec(name, tuple(float(v) for v in values)))
    return specs
