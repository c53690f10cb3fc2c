"""Deterministic study preprocessing: datalist entry -> tensors at the working resolution.

``LoadStudyd`` reads both views and their masks with :mod:`spine_app.data.io`, normalises each
radiograph to [0, 1] by its own 0.5-99.5 percentiles (so PNG, 16-bit and DICOM inputs look alike),
and fits it into a fixed canvas (aspect kept, area-downsampled, centred, zero-padded). Output keys:

- ``ap``, ``lat``: (1, H, W) float32 images (zeros for a missing view)
- ``seg_ap``, ``seg_lat``: (8, H, W) float32 targets in [0, 1] (only that view's channels): area
  fractions after downsampling, except the thin lines, which keep every touched pixel (value 1)
- ``avail_ap``, ``avail_lat``: (8,) 1 where the channel is annotated on that view
- ``present``: (2,) views present (AP, LAT); ``label``: () float (-1 when unlabelled)
- ``geom_ap``, ``geom_lat``: (7,) :class:`FilmGeometry` of each film (original size, resize, padding, spacing)
  (spacing 0 when unknown), to map predictions back to the original image
- ``study_id``: str; ``path_ap``, ``path_lat``: the image files ("" when absent)
- ``error``: "" or, with ``on_error="record"``, the one-line reason the study could not be read
  (then both views are blank and ``present`` is zero: the writer reports the study as failed)
- ``notes``: the entry's ``notes`` (e.g. how a view was told), " | "-separated; the writer copies
  them into result.json's warnings
- ``levels_lat``: (1, H, W) float level map of the LAT film (:mod:`spine_app.data.levels`: each
  body's grade and fracture type, 0 where unknown), nearest-neighbour resized; zeros with
  ``level_labels="study"``, without a LAT vertebra mask, or for inference
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from torch.nn import functional as F

from spine_app.channels import CHANNEL_VIEW, LINE_CHANNELS, MASK_NAMES, VIEWS, avail_key, geom_key, seg_key
from spine_app.data.io import ImageReadError, read_image, read_mask
from spine_app.data.levels import check_label_source, level_map_from_morphometry, level_map_from_truth

LINE_INDICES = [MASK_NAMES.index(name) for name in LINE_CHANNELS]


def normalize_intensity(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale to [0, 1] by the image's own percentiles (robust to bit depth and markers)."""
    sample = image[:: max(1, image.shape[0] // 256), :: max(1, image.shape[1] // 256)]
    lo, hi = np.percentile(sample, [low, high])
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def fit_geometry(shape: tuple[int, int], canvas: Sequence[int]) -> tuple[float, int, int, int, int]:
    """(scale, resized rows, resized cols, pad top, pad left) to fit ``shape`` inside ``canvas``."""
    scale = min(canvas[0] / shape[0], canvas[1] / shape[1])
    rows, cols = max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
    return scale, rows, cols, (canvas[0] - rows) // 2, (canvas[1] - cols) // 2


@dataclass(frozen=True)
class FilmGeometry:
    """How a film was placed on the working canvas: its original ``rows`` x ``cols``, the resize
    ``scale``, the padding ``top`` / ``left`` (canvas pixels) and its pixel spacing in mm (0, 0 when
    unknown). It travels in a batch as the (7,) float tensor ``geom_<view>`` (a tensor collates and
    moves to the device; :meth:`to_tensor` / :meth:`from_tensor` are the only places that know the
    order)."""

    rows: int
    cols: int
    scale: float
    top: float
    left: float
    spacing_mm: tuple[float, float] = (0.0, 0.0)

    FIELDS = 7

    @classmethod
    def from_tensor(cls, geom: torch.Tensor) -> FilmGeometry:
        """From a ``geom_<view>`` vector (one study's; all zeros for a missing view)."""
        v = [float(x) for x in geom.flatten()[: cls.FIELDS]]
        return cls(int(v[0]), int(v[1]), v[2], v[3], v[4], (v[5], v[6]))

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(
            [self.rows, self.cols, self.scale, self.top, self.left, *self.spacing_mm], dtype=torch.float32
        )

    @property
    def spacing(self) -> tuple[float, float] | None:
        """Pixel spacing (mm) of the original film, or None when unknown."""
        return self.spacing_mm if self.spacing_mm[0] > 0 else None

    @property
    def working_spacing(self) -> tuple[float, float] | None:
        """Pixel spacing (mm) at the working resolution, or None when unknown."""
        if self.spacing is None or self.scale <= 0:
            return None
        return (self.spacing_mm[0] / self.scale, self.spacing_mm[1] / self.scale)

    def to_film(self, row: float, col: float) -> tuple[float, float]:
        """A canvas position (row, col) on the original film."""
        return ((row - self.top) / self.scale, (col - self.left) / self.scale)

    def rows_on_film(self, first: int, last: int) -> tuple[int, int]:
        """The original film's rows that canvas rows ``first`` to ``last`` cover, within the film."""
        top = math.floor((first - self.top) / self.scale)
        bottom = math.ceil((last + 1 - self.top) / self.scale) - 1
        return max(0, top), min(self.rows - 1, bottom)


def fit_to_canvas(stack: np.ndarray, canvas: Sequence[int]) -> torch.Tensor:
    """(C, h, w) -> (C, H, W): area-resize with the aspect kept, then centre zero-padding."""
    _, rows, cols, top, left = fit_geometry(stack.shape[1:], canvas)
    tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[None]
    mode = "area" if rows <= stack.shape[1] else "bilinear"
    resized = F.interpolate(tensor, size=(rows, cols), mode=mode)[0]
    out = torch.zeros((stack.shape[0], canvas[0], canvas[1]), dtype=torch.float32)
    out[:, top : top + rows, left : left + cols] = resized
    return out


def fit_nearest(image: np.ndarray, canvas: Sequence[int]) -> torch.Tensor:
    """(h, w) label image -> (1, H, W) float: nearest-neighbour resize with the aspect kept, centre zero-padding."""
    _, rows, cols, top, left = fit_geometry(image.shape, canvas)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    out = torch.zeros((1, canvas[0], canvas[1]), dtype=torch.float32)
    out[:, top : top + rows, left : left + cols] = F.interpolate(tensor, size=(rows, cols), mode="nearest")[0]
    return out


def film_level_map(
    masks: np.ndarray, truth_path: Any, spacing: Sequence[float] | None, source: str
) -> np.ndarray | None:
    """Level map of a LAT film from its reference masks (the LAT channels in channel order) and,
    per ``source`` (:data:`spine_app.data.levels.LEVEL_LABEL_SOURCES`), its truth.json or
    morphometry; None when there is nothing to label."""
    import json

    vertebra, spinous, disk, _, posterior = (masks[i] > 0.5 for i in range(5))
    if source == "study" or not vertebra.any():
        return None
    disk = disk if disk.any() else None
    if source in ("truth", "auto") and truth_path:
        with open(truth_path) as handle:
            return level_map_from_truth(vertebra, disk, json.load(handle))
    if source == "truth":
        return None
    hint = spinous | posterior
    return level_map_from_morphometry(vertebra, disk, hint if hint.any() else None, tuple(spacing or (1.0, 1.0)))


class LoadStudyd(MapTransform):
    """Load one study (a datalist entry with absolute paths) into working-resolution tensors.

    Args:
        canvas: (H, W) working size; both views are fitted into it.
        keys: unused placeholder for MapTransform compatibility (the entry is read as a whole).
        on_error: "raise" (training: a broken file stops the run) or "record" (inference: the study
            comes out blank with its ``error``, so the rest of a batch still runs).
        view_hook: ``hook(view, image, masks, meta) -> (image, masks)`` applied to each view right
            after reading (image (H, W) in its grey levels, masks (n, H, W) float of the view's
            channels); robustness evaluation corrupts images here.
        reader: ``(read_image, read_mask)`` replacements (e.g. caching ones).
        level_labels: where per-level labels come from (:data:`spine_app.data.levels.LEVEL_LABEL_SOURCES`)
            or None (no level map: inference). A study entry's own ``level_labels`` key overrides it.
        working_spacing_mm: tall films (inference): when a film's pixel spacing is known and fitting it
            into ``canvas`` would make its working pixels coarser than this (mm), the study's canvas
            grows in rows (a multiple of 32, at most ``max_rows``) so the anatomy keeps about the size
            the network was trained at (:func:`study_canvas`); None (training): always ``canvas``.
            Studies of different canvases cannot share a batch: use batch size 1.
        max_rows: the tallest canvas ``working_spacing_mm`` may ask for.
    """

    def __init__(
        self,
        canvas: Sequence[int] = (512, 384),
        keys: Sequence[Hashable] = ("image_ap",),
        on_error: str = "raise",
        view_hook: Callable[[str, np.ndarray, np.ndarray, Any], tuple[np.ndarray, np.ndarray]] | None = None,
        reader: tuple[Callable, Callable] | None = None,
        level_labels: str | None = None,
        working_spacing_mm: float | None = None,
        max_rows: int = 1024,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        if working_spacing_mm is not None and working_spacing_mm <= 0:
            raise ValueError(f"working_spacing_mm must be positive or None, got {working_spacing_mm!r}")
        self.working_spacing_mm, self.max_rows = working_spacing_mm, int(max_rows)
        self.level_labels = check_label_source(level_labels, "level_labels")
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
        self.canvas = tuple(int(c) for c in canvas)
        self.on_error = on_error
        self.view_hook = view_hook
        self.read_image, self.read_mask = reader or (read_image, read_mask)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[str, Any]:
        try:
            return self._load(data)
        except Exception as err:  # noqa: BLE001 - any unreadable input becomes that study's error
            if self.on_error == "raise":
                raise
            blank = self._load(
                {"study_id": data["study_id"], "label": data.get("label"), "masks": [None] * len(MASK_NAMES)}
            )
            blank.update(path_ap=str(data.get("image_ap") or ""), path_lat=str(data.get("image_lat") or ""))
            blank["error"] = str(err).splitlines()[0] if str(err) else type(err).__name__
            return blank

    def _load(self, data: Mapping[Hashable, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"study_id": str(data["study_id"]), "error": "", "notes": str(data.get("notes") or "")}
        label = data.get("label")
        out["label"] = torch.tensor(-1.0 if label is None else float(label))
        films = {view: self._read_view(data, view) for view in VIEWS}
        canvas = self.canvas
        if self.working_spacing_mm is not None:
            shapes = [(f.image.shape, f.spacing) for f in films.values() if f is not None]
            canvas = study_canvas(shapes, self.canvas, self.working_spacing_mm, self.max_rows)
        present = []
        out["levels_lat"] = torch.zeros((1, *canvas))
        for view in VIEWS:
            key = view.lower()
            channels = [c for c, v in enumerate(CHANNEL_VIEW) if v == view]
            out[f"path_{key}"] = str(data.get(f"image_{key}") or "")
            seg = torch.zeros((len(MASK_NAMES), *canvas))
            avail = torch.zeros(len(MASK_NAMES))
            film = films[view]
            if film is None:
                out[key] = torch.zeros((1, *canvas))
                out[geom_key(view)] = torch.zeros(FilmGeometry.FIELDS)
                present.append(0.0)
            else:
                image, masks, spacing = film.image, film.masks, film.spacing
                fitted = fit_to_canvas(np.concatenate([normalize_intensity(image)[None], masks]), canvas)
                out[key] = fitted[:1]
                seg[channels] = fitted[1:]
                for c in LINE_INDICES:  # a thin line must survive downsampling: any coverage is foreground
                    seg[c] = (seg[c] > 0.01).float()
                present_flags = data.get("mask_present", [1 if m else 0 for m in data["masks"]])
                avail[channels] = torch.tensor(
                    [float(present_flags[c] and data["masks"][c] is not None) for c in channels]
                )
                scale, _, _, top, left = fit_geometry(image.shape, canvas)
                out[geom_key(view)] = FilmGeometry(*image.shape, scale, top, left, tuple(spacing)).to_tensor()
                if view == "LAT" and self.level_labels is not None and data["masks"][channels[0]]:
                    # an entry may name its own source (the main job's extra studies: study labels only)
                    source = data.get("level_labels") or self.level_labels
                    level_map = film_level_map(masks, data.get("truth"), spacing if spacing[0] else None, source)
                    if level_map is not None:
                        out["levels_lat"] = fit_nearest(level_map, canvas)
                present.append(1.0)
            out[seg_key(view)] = seg
            out[avail_key(view)] = avail
        out["present"] = torch.tensor(present)
        return out

    def _read_view(self, data: Mapping[Hashable, Any], view: str) -> _Film | None:
        """One view's film and reference masks (the view's channels) as read and hooked; None when absent."""
        key = view.lower()
        path = data.get(f"image_{key}")
        if path is None:
            return None
        image, meta = self.read_image(path)
        if float(image.max()) <= float(image.min()):
            raise ImageReadError(path, "constant image (every pixel is the same value)")
        channels = [c for c, v in enumerate(CHANNEL_VIEW) if v == view]
        masks = np.stack(
            [
                self.read_mask(m, image.shape).astype(np.float32) if m else np.zeros(image.shape, np.float32)
                for m in (data["masks"][c] for c in channels)
            ]
        )
        if self.view_hook is not None:
            image, masks = self.view_hook(view, image, masks, meta)
        spacing = (data.get(f"meta_{key}") or {}).get("spacing") or meta.spacing or (0.0, 0.0)
        return _Film(image, masks, (float(spacing[0]), float(spacing[1])))


@dataclass(frozen=True)
class _Film:
    """One view as read: the image (its grey levels), the view's reference masks (n, H, W) and the
    pixel spacing in mm ((0, 0) when unknown)."""

    image: np.ndarray
    masks: np.ndarray
    spacing: tuple[float, float]


def study_canvas(
    films: Sequence[tuple[tuple[int, int], Sequence[float]]],
    canvas: Sequence[int],
    working_spacing_mm: float,
    max_rows: int,
    multiple: int = 32,
) -> tuple[int, int]:
    """The canvas (rows, cols) of one study whose films ((rows, cols), spacing mm) are given: ``canvas``
    unless fitting a film into it would make its working pixels coarser than ``working_spacing_mm``
    (a whole-spine film squeezed into a lumbar film's canvas); then the rows grow (a multiple of
    ``multiple``, at most ``max_rows``) until the film's height reaches that spacing or its width
    fills the canvas. Films of unknown spacing (0) leave the canvas as it is."""
    rows, cols = int(canvas[0]), int(canvas[1])
    need = rows
    for (film_rows, film_cols), spacing in films:
        if not spacing or float(spacing[0]) <= 0:
            continue
        scale = min(float(spacing[0]) / working_spacing_mm, cols / film_cols)  # width caps the scale
        need = max(need, math.ceil(film_rows * scale / multiple) * multiple)
    return min(max(need, rows), max(int(max_rows), rows)), cols
