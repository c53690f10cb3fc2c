"""Vertebral levels of a lateral film for the level head: body instances, their boxes and labels.

A *level* is one vertebral body on the LAT film. Its instance is a connected component of the
``Lat_Vertebra`` mask with the ``Lat_Disk_Height`` mask (widened by ``gap_px``) cut out, the same
separation morphometry uses. Training takes the reference masks, inference the predicted ones.

Per-level labels come from what a dataset has (``level_labels``):

- ``truth``: the generator's ``truth.json`` (Genant grade and fracture type of every level);
- ``morphometry``: pseudo-labels, the Genant grade measured on the reference masks
  (:func:`spine_app.morphometry.measure_lat_film`; any dataset with the LAT masks has them);
- ``study``: none; the level head then learns from the study label alone (multiple-instance
  pooling, :func:`spine_app.networks.levels.mil_pool`);
- ``auto``: ``truth`` where the study has a truth.json, else ``morphometry``.

The labels travel through augmentation as a *level map*: an image whose body pixels hold
:func:`encode_level` (grade and type), 0 elsewhere or where unknown; flips, rotations and elastic
deformations move it with the masks (nearest-neighbour interpolation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage

from spine_app.channels import MASK_NAMES, avail_key, seg_key
from spine_app.data.compose import transforms_changed, transforms_of

#: fracture types, in level-map code order (0 = no fracture)
FRACTURE_KINDS: tuple[str, ...] = ("none", "wedge", "biconcave", "crush")
#: how per-level labels are obtained (see the module docstring)
LEVEL_LABEL_SOURCES: tuple[str, ...] = ("auto", "truth", "morphometry", "study")
#: most levels handled per film in training, top to bottom; bodies beyond it are dropped. A lumbar
#: film shows 5-6 bodies, a whole-spine one 18 (C7-L5): its lowest two are not trained on. Batches
#: carry the padding only to collate: :func:`trim_levels` cuts it to the longest film before the level head.
MAX_LEVELS = 16
#: most levels scored per film at inference: every body of a whole-spine film (C1-S1 is 25), with room
#: to spare (docs/results.md, "Bodies measured against their neighbours")
INFERENCE_MAX_LEVELS = 32
#: the per-level keys of a padded batch ((B, L, ...) tensors; :func:`pad_boxes`)
LEVEL_KEYS: tuple[str, ...] = ("level_centre", "level_axis", "level_size", "level_valid", "level_grade", "level_kind")
#: grade code of a level whose grade is unknown
UNKNOWN = -1
#: blobs below this many pixels, or below this share of the median blob's area, are fragments, not bodies
MIN_BODY_PX = 20
MIN_BODY_FRACTION = 0.25
#: a blob's typical body length is the median of this many real bodies on each side of it along the column
TYPICAL_NEIGHBOURS = 2

_VB, _DISK = MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Disk_Height")


def check_label_source(value: str | None, setting: str) -> str | None:
    """``value`` when it is None or one of :data:`LEVEL_LABEL_SOURCES`; else a ValueError naming ``setting``.
    ``"null"`` and ``"none"`` (any case: YAML's spelling, as a command line passes it) are None."""
    if isinstance(value, str) and value.strip().lower() in ("null", "none"):
        return None
    if value is not None and value not in LEVEL_LABEL_SOURCES:
        raise ValueError(f"{setting} must be one of {', '.join(LEVEL_LABEL_SOURCES)} or None, got {value!r}")
    return value


def encode_level(grade: int, kind: str = "none") -> int:
    """Level-map value of a body: 1 + grade (0-3) + 4 x fracture type index (1..16; 0 = no label)."""
    return 1 + int(grade) + 4 * FRACTURE_KINDS.index(kind if grade > 0 else "none")


def decode_level(value: int) -> tuple[int, str]:
    """(grade, type) of a level-map value; (UNKNOWN, "none") for 0."""
    value = int(value)
    if value <= 0:
        return UNKNOWN, "none"
    return (value - 1) % 4, FRACTURE_KINDS[min((value - 1) // 4, len(FRACTURE_KINDS) - 1)]


def body_instances(
    vertebra: np.ndarray,
    disk: np.ndarray | None = None,
    gap_px: int = 0,
    min_fraction: float = MIN_BODY_FRACTION,
    local: bool = False,
) -> tuple[np.ndarray, int]:
    """Labelled bodies (H, W) int (0 background, 1..n) and n: ``vertebra`` minus ``disk`` widened by
    ``gap_px``, connected components, merged bodies split (:func:`split_merged`), fragments below
    ``min_fraction`` of the median blob dropped (:func:`fragments`). ``local``: each blob's typical
    body length is its neighbours' and fragments count in no median (the rule for predicted masks);
    False: the film-wide rule the shipped weights were trained with (docs/results.md, "Bodies
    measured against their neighbours")."""
    body = np.asarray(vertebra) > 0
    if disk is not None and np.any(disk):
        cut = np.asarray(disk) > 0
        if gap_px > 0:
            cut = ndimage.binary_dilation(cut, iterations=int(gap_px))
        body = body & ~cut
    labels, n = ndimage.label(body)
    if n == 0:
        return labels, 0
    labels, n = split_merged(labels, n, local)
    areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(~fragments(areas, min_fraction, local)) + 1
    return keep_labels(labels, n, keep)


def keep_labels(instances: np.ndarray, n: int, keep: np.ndarray | list[int]) -> tuple[np.ndarray, int]:
    """``instances`` (labels 1..n) with only the labels ``keep`` (ascending), renumbered 1..len(keep)."""
    keep = np.asarray(keep, dtype=np.int64)
    remap = np.zeros(n + 1, dtype=instances.dtype)
    remap[keep] = np.arange(1, keep.size + 1)
    return remap[instances], int(keep.size)


def _column_axis(labels: np.ndarray) -> np.ndarray:
    """Unit vector (row, col) along the column: the principal axis of every labelled pixel."""
    rows, cols = np.nonzero(labels)
    if rows.size < 3:
        return np.array([1.0, 0.0])
    _, vectors = np.linalg.eigh(np.cov(np.stack([rows, cols]).astype(float)))
    axis = vectors[:, -1]
    return axis if axis[0] >= 0 else -axis


def _axis_extent(rows: np.ndarray, cols: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(position of every pixel of a blob along ``axis``, its length along it, median width across)."""
    points = np.stack([rows, cols], axis=1).astype(float)
    u = points @ axis
    v = points @ np.array([-axis[1], axis[0]])
    bins = np.round(u - u.min()).astype(int)
    widths = [np.ptp(v[bins == k]) + 1 for k in np.unique(bins)]
    return u, float(np.ptp(u) + 1), float(np.median(widths))


def fragments(areas: np.ndarray, min_fraction: float = MIN_BODY_FRACTION, robust: bool = True) -> np.ndarray:
    """True for the blobs too small to be a body: under :data:`MIN_BODY_PX` pixels or ``min_fraction``
    of the median blob's area. ``robust``: the median of the blobs of at least :data:`MIN_BODY_PX`
    pixels (a predicted mask's specks do not pull it down); False: of every blob."""
    large = areas >= MIN_BODY_PX
    pool = areas[large] if robust and large.any() else areas
    return ~large | (areas < min_fraction * float(np.median(pool)))


def single_body_sized(areas: np.ndarray) -> np.ndarray:
    """True for the blobs sized like one body: not :func:`fragments`, and at most
    :data:`MAX_BODY_AREA_RATIO` x the median of those (the heart of a chest film, or a chain of merged
    bodies, is no body to measure a neighbour against)."""
    real = ~fragments(areas)
    if real.any():
        real &= areas <= MAX_BODY_AREA_RATIO * float(np.median(areas[real]))
    return real


def _neighbours(order: np.ndarray, position: np.ndarray, i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (up to) ``k`` blobs of ``order`` (indices sorted by ``position``) nearest above blob ``i``
    and below it, ``i`` itself left out."""
    others = order[order != i]
    return others[position[others] < position[i]][-k:], others[position[others] >= position[i]][:k]


def typical_sizes(
    position: np.ndarray, lengths: np.ndarray, widths: np.ndarray, real: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(length, width) a single body would have where each blob lies (``position`` along the column).

    With ``real`` (the blobs :func:`single_body_sized`): the median length and width of the
    :data:`TYPICAL_NEIGHBOURS` nearest real blobs above and below it (itself left out), the length
    capped at 1.28 x that width (a body is never much taller than wide). Bodies grow down the column, a
    whole-spine film's L5 about twice as tall as its T1, so a film-wide median takes lumbar bodies for
    two merged ones; with fewer than two real neighbours: 0.8 x and 1 x the real blobs' median width.
    Without ``real``, the film-wide rule: the median length of every blob (0.8 x the median width
    with fewer than three), capped at 1.28 x the median width."""
    if real is None:
        width = float(np.median(widths))
        typical = float(np.median(lengths)) if len(lengths) >= 3 else 0.8 * width
        return np.full(len(lengths), min(typical, 0.8 * width * 1.6)), np.full(len(lengths), width)
    order = np.flatnonzero(real)[np.argsort(position[real])]
    width = float(np.median(widths[real] if real.any() else widths))
    length_out, width_out = np.full(len(lengths), 0.8 * width), np.full(len(lengths), width)
    for i in range(len(lengths)):
        near = np.concatenate(_neighbours(order, position, i, TYPICAL_NEIGHBOURS))
        if near.size >= 2:
            width_out[i] = float(np.median(widths[near]))
            length_out[i] = min(float(np.median(lengths[near])), 0.8 * width_out[i] * 1.6)
    return length_out, width_out


def _local_axes(centres: np.ndarray, position: np.ndarray, real: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Unit vector (row, col) along the column at each blob: from the nearest real blob above it to the
    nearest below (itself left out; itself where one side has none), ``axis`` where that is undefined."""
    order = np.flatnonzero(real)[np.argsort(position[real])]
    out = np.tile(axis, (len(centres), 1)).astype(float)
    for i in range(len(centres)):
        above, below = _neighbours(order, position, i, 1)
        chord = (centres[below[0]] if below.size else centres[i]) - (centres[above[0]] if above.size else centres[i])
        norm = float(np.linalg.norm(chord))
        if norm > 0:
            out[i] = chord / norm if chord @ axis >= 0 else -chord / norm
    return out


#: with the rule for predicted masks a blob more than this many times as wide as its neighbours is not
#: split: merged bodies are a body wide, the heart of a chest film read as bone is far wider
MAX_SPLIT_WIDTH_RATIO = 1.5


def split_merged(labels: np.ndarray, n: int, local: bool = False) -> tuple[np.ndarray, int]:
    """Split blobs that hold several bodies (no disk between them on the mask, e.g. levels whose
    disk is not annotated, or a predicted mask that bridges a disk) at the narrowest cross-sections
    near where a typical body would end, measured along the column's principal axis: a blob at least
    1.5 typical bodies long becomes round(length / typical) pieces. :func:`typical_sizes` gives the
    typical length, with ``local`` from each blob's neighbours sized like one body (and measured
    along the column where each blob lies, :func:`_local_axes`), else film-wide; with ``local`` a
    blob over :data:`MAX_SPLIT_WIDTH_RATIO` x its neighbours' width stays whole."""
    if n == 0:
        return labels, 0
    axis = _column_axis(labels)
    pixels = [np.nonzero(labels == label) for label in range(1, n + 1)]
    axes = np.tile(axis, (n, 1))
    position = np.zeros(n)
    real = None
    if local:  # measure along the column where each blob lies: a curved column bends off the film-wide axis
        position = np.array([float((np.stack(p, axis=1).astype(float) @ axis).mean()) for p in pixels])
        real = single_body_sized(np.array([p[0].size for p in pixels], dtype=float))
        centres = np.array([(rows.mean(), cols.mean()) for rows, cols in pixels])
        axes = _local_axes(centres, position, real, axis)
    blobs = [(rows, cols, *_axis_extent(rows, cols, a)) for (rows, cols), a in zip(pixels, axes)]
    lengths = np.array([b[3] for b in blobs])
    widths = np.array([b[4] for b in blobs])
    typical, typical_width = typical_sizes(position, lengths, widths, real)
    too_wide = widths > MAX_SPLIT_WIDTH_RATIO * typical_width if local else np.zeros(n, bool)
    out = np.zeros_like(labels)
    count = 0
    for (rows, cols, u, length, _), expected, wide in zip(blobs, typical, too_wide):
        pieces = int(round(length / expected)) if expected > 0 else 1
        if pieces <= 1 or length < 1.5 * expected or wide:
            count += 1
            out[rows, cols] = count
            continue
        start = u.min()
        profile = np.bincount(np.round(u - start).astype(int)).astype(float)
        profile = ndimage.gaussian_filter1d(profile, 1.5)
        cuts = []
        for k in range(1, pieces):
            centre = k * len(profile) / pieces
            lo, hi = int(max(1, centre - 0.25 * expected)), int(min(len(profile) - 1, centre + 0.25 * expected))
            cuts.append(lo + int(np.argmin(profile[lo:hi])) if hi > lo else int(centre))
        piece = np.searchsorted(np.asarray(cuts) + start, u, side="right")
        for k in range(pieces):
            sel = piece == k
            if sel.any():
                count += 1
                out[rows[sel], cols[sel]] = count
    return out, count


@dataclass
class LevelBoxes:
    """The bodies of one film as oriented square boxes (canvas pixels, row then col), top to bottom.

    ``centre`` (L, 2); ``axis`` (L, 2) unit vector along the column (top to bottom); ``size`` (L,)
    box side (twice the distance to the neighbouring bodies, so the box shows the body and half of
    each neighbour); ``grade`` (L,) Genant grade from the level map (UNKNOWN without label);
    ``kind`` (L,) fracture type index; ``instance`` (L,) the body's label in the instance image.
    """

    centre: np.ndarray
    axis: np.ndarray
    size: np.ndarray
    grade: np.ndarray
    kind: np.ndarray
    instance: np.ndarray

    def __len__(self) -> int:
        return int(self.centre.shape[0])


def level_boxes(instances: np.ndarray, n: int, level_map: np.ndarray | None = None) -> LevelBoxes:
    """Boxes of the ``n`` labelled bodies of ``instances`` (see :class:`LevelBoxes`), sorted top to
    bottom; a body's label is the most frequent non-zero level-map value under it."""
    if n == 0:
        empty = np.zeros((0, 2), np.float32)
        return LevelBoxes(
            empty,
            empty.copy(),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    index = np.arange(1, n + 1)
    centres = np.asarray(ndimage.center_of_mass(np.ones_like(instances), instances, index), dtype=np.float64)
    order = np.argsort(centres[:, 0])
    centres, index = centres[order], index[order]
    areas = ndimage.sum_labels(np.ones_like(instances), instances, index=index)
    axes = np.zeros_like(centres)
    sizes = np.zeros(len(index))
    for i in range(len(index)):
        lo, hi = max(i - 1, 0), min(i + 1, len(index) - 1)
        chord = centres[hi] - centres[lo]
        norm = float(np.linalg.norm(chord))
        axes[i] = chord / norm if norm > 0 else (1.0, 0.0)
        steps = [np.linalg.norm(centres[j] - centres[i]) for j in (i - 1, i + 1) if 0 <= j < len(index)]
        # a lone body: its own extent (square root of its area as the spacing)
        sizes[i] = 2.0 * (float(np.mean(steps)) if steps else 1.3 * float(np.sqrt(areas[i])))
    grades = np.full(len(index), UNKNOWN, np.int64)
    kinds = np.zeros(len(index), np.int64)
    if level_map is not None:
        values = np.asarray(level_map).astype(np.int64)
        for i, label in enumerate(index):
            under = values[(instances == label) & (values > 0)]
            if under.size:
                grades[i], kind = decode_level(int(np.bincount(under).argmax()))
                kinds[i] = FRACTURE_KINDS.index(kind)
    return LevelBoxes(
        centres.astype(np.float32),
        axes.astype(np.float32),
        sizes.astype(np.float32),
        grades,
        kinds,
        index.astype(np.int64),
    )


def film_level_boxes(
    vertebra: np.ndarray,
    disk: np.ndarray | None,
    gap_px: int = 0,
    level_map: np.ndarray | None = None,
    field_rows: tuple[int, int] | None = None,
    plausible_only: bool = False,
    local: bool = False,
) -> LevelBoxes:
    """:func:`body_instances` (``local`` passed on) then :func:`level_boxes`: the levels of one LAT
    film's masks; with ``field_rows`` the bodies cut by the exposed field's top or bottom edge are
    left out (:func:`drop_cut_bodies`); with ``plausible_only`` the blobs no vertebral body could be
    (far too large, or off the column) too (:func:`drop_implausible_bodies`)."""
    instances, n = body_instances(vertebra, disk, gap_px, local=local)
    if field_rows is not None:
        instances, n = drop_cut_bodies(instances, n, field_rows)
    if plausible_only:
        instances, n = drop_implausible_bodies(instances, n)
    return level_boxes(instances, n, level_map)


#: a blob more than this many times the median body's area is not one vertebral body (the heart or
#: mediastinum read as bone, several bodies merged); lumbar bodies are about twice a mid-thoracic one
MAX_BODY_AREA_RATIO = 3.5
#: a blob whose centre lies farther than this many body sides (square root of the median body area)
#: from the line through its neighbours' centres is off the column; a kyphotic curve moves a body
#: about a tenth of a side off that line
MAX_COLUMN_OFFSET = 0.75
#: a step between neighbouring blobs more than this many times the steps around it breaks the column:
#: two bodies missing in a row make a step of 3, the blobs predicted in the pelvis lie 4 or more below
#: L5 (the largest step inside the column over 346 films of every framing: 2.06; docs/results.md,
#: "Bodies measured against their neighbours")
MAX_COLUMN_GAP = 3.5


def _offsets_from_column(centres: np.ndarray) -> np.ndarray:
    """Distance of each centre (sorted top to bottom) from the line through its two neighbours' centres
    (the first and last body: through the next two inward)."""
    offsets = np.zeros(len(centres))
    for i in range(len(centres)):
        a, b = (i - 1, i + 1) if 0 < i < len(centres) - 1 else ((1, 2) if i == 0 else (i - 2, i - 1))
        chord = centres[b] - centres[a]
        norm = float(np.linalg.norm(chord))
        diff = centres[i] - centres[a]
        offsets[i] = abs(chord[0] * diff[1] - chord[1] * diff[0]) / norm if norm > 0 else float(np.linalg.norm(diff))
    return offsets


def _column_run(centres: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Indices (into ``centres``, sorted top to bottom) of the column's main stretch: the blobs are cut
    into runs wherever the step to the next centre exceeds :data:`MAX_COLUMN_GAP` times the median of
    the (up to three) steps on either side of it, and the run with the most area is kept."""
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    breaks = []
    for i, step in enumerate(steps):
        around = np.concatenate([steps[max(0, i - 3) : i], steps[i + 1 : i + 4]])
        if around.size and step > MAX_COLUMN_GAP * float(np.median(around)):
            breaks.append(i + 1)
    runs = np.split(np.arange(len(centres)), breaks)
    return max(runs, key=lambda run: float(areas[run].sum()))


def drop_implausible_bodies(instances: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """``instances`` without the blobs no vertebral body could be: an area above
    :data:`MAX_BODY_AREA_RATIO` x the median blob's, a centre more than :data:`MAX_COLUMN_OFFSET` body
    sides off the column (the farthest removed first, then the rest measured again), or a place beyond
    a gap of more than :data:`MAX_COLUMN_GAP` spacings from the column's main stretch (the blobs some
    predicted masks draw in the pelvis below L5; :func:`_column_run`). With fewer than four blobs
    nothing is removed: there is no column to measure against. Labels renumbered 1..n'."""
    if n < 4:
        return instances, n
    index = np.arange(1, n + 1)
    ones = np.ones_like(instances)
    areas = ndimage.sum_labels(ones, instances, index=index)
    centres = np.asarray(ndimage.center_of_mass(ones, instances, index), dtype=np.float64)
    keep = areas <= MAX_BODY_AREA_RATIO * float(np.median(areas))
    while keep.sum() >= 4:
        kept = np.flatnonzero(keep)
        kept = kept[np.argsort(centres[kept, 0])]
        side = float(np.sqrt(np.median(areas[kept])))
        offsets = _offsets_from_column(centres[kept])
        worst = int(np.argmax(offsets))
        if offsets[worst] <= MAX_COLUMN_OFFSET * side:
            break
        keep[kept[worst]] = False
    if keep.sum() >= 4:
        kept = np.flatnonzero(keep)
        kept = kept[np.argsort(centres[kept, 0])]
        keep[:] = False
        keep[kept[_column_run(centres[kept], areas[kept])]] = True
    return (instances, n) if keep.all() else keep_labels(instances, n, index[keep])


#: a body whose mask comes this close (pixels) to the exposed field's top or bottom row is cut by it
FIELD_EDGE_PX = 2


#: grey levels of a working-canvas film (0-1) within this of 0 or 1 are padding or collimator, not exposed film
EXPOSED_GREY_MARGIN = 0.02
#: a canvas row belongs to the exposed field when at least this share of its pixels is mid-grey
EXPOSED_ROW_MIN_FRACTION = 0.05


def exposed_rows(image: np.ndarray) -> tuple[int, int] | None:
    """(first, last) row of a working-canvas film (H, W, grey levels 0-1) that shows the patient: at
    least :data:`EXPOSED_ROW_MIN_FRACTION` of its pixels mid-grey. The canvas padding is 0, and a band
    under the collimator blades is uniform: white on a radiograph (no dose reached the detector there;
    the normalisation takes it to 1) or black where a processing step blanked it. A body drawn into
    such a band runs off the exposed field. None when no row shows anything."""
    grey = np.asarray(image, dtype=np.float32).reshape(image.shape[0], -1)
    mid = (grey > EXPOSED_GREY_MARGIN) & (grey < 1.0 - EXPOSED_GREY_MARGIN)
    rows = np.flatnonzero(mid.mean(axis=1) >= EXPOSED_ROW_MIN_FRACTION)
    return (int(rows[0]), int(rows[-1])) if rows.size else None


def drop_cut_bodies(instances: np.ndarray, n: int, field_rows: tuple[int, int]) -> tuple[np.ndarray, int]:
    """``instances`` without the bodies that reach within :data:`FIELD_EDGE_PX` of the field's first
    or last row (``field_rows``): a body the film's edge or the collimator cuts shows only part of its
    height and would look compressed. Labels renumbered 1..n'."""
    if n == 0:
        return instances, 0
    top, bottom = field_rows
    keep = []
    for label, found in enumerate(ndimage.find_objects(instances, max_label=n), start=1):
        if found is not None and found[0].start > top + FIELD_EDGE_PX and found[0].stop - 1 < bottom - FIELD_EDGE_PX:
            keep.append(label)
    return keep_labels(instances, n, keep)


def pad_boxes(boxes: LevelBoxes, max_levels: int = MAX_LEVELS) -> dict[str, torch.Tensor]:
    """Batch-ready fixed-size tensors: ``level_centre`` (L, 2), ``level_axis`` (L, 2), ``level_size``
    (L,), ``level_valid`` (L,) 1 for a real body, ``level_grade`` (L,) (UNKNOWN for padding),
    ``level_kind`` (L,). Bodies beyond ``max_levels`` (top to bottom) are dropped."""
    k = min(len(boxes), max_levels)
    out = {
        "level_centre": torch.zeros(max_levels, 2),
        "level_axis": torch.zeros(max_levels, 2),
        "level_size": torch.ones(max_levels),
        "level_valid": torch.zeros(max_levels),
        "level_grade": torch.full((max_levels,), UNKNOWN, dtype=torch.long),
        "level_kind": torch.zeros(max_levels, dtype=torch.long),
    }
    out["level_axis"][:, 0] = 1.0
    if k:
        out["level_centre"][:k] = torch.from_numpy(boxes.centre[:k])
        out["level_axis"][:k] = torch.from_numpy(boxes.axis[:k])
        out["level_size"][:k] = torch.from_numpy(boxes.size[:k])
        out["level_valid"][:k] = 1.0
        out["level_grade"][:k] = torch.from_numpy(boxes.grade[:k])
        out["level_kind"][:k] = torch.from_numpy(boxes.kind[:k])
    return out


def trim_levels(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with its per-level tensors (:data:`LEVEL_KEYS`, (B, L, ...)) cut after the last real
    level of any film (``level_valid``; at least one level is kept): the padding to
    :data:`MAX_LEVELS` only lets films collate, and the level head's cost grows with L. Every other
    value is passed on as it is; a batch without ``level_valid`` is returned unchanged."""
    valid = batch.get("level_valid")
    if not isinstance(valid, torch.Tensor) or valid.ndim != 2:
        return batch
    position = torch.arange(1, valid.shape[1] + 1, device=valid.device)
    keep = max(1, int(((valid > 0) * position).amax())) if valid.numel() else 1
    if keep == valid.shape[1]:
        return batch
    return {key: value[:, :keep] if key in LEVEL_KEYS else value for key, value in batch.items()}


def level_map_from_truth(vertebra: np.ndarray, disk: np.ndarray | None, truth: Mapping[str, Any]) -> np.ndarray:
    """Level map (H, W) uint8 of one LAT film at its own resolution from the reference masks and the
    generator's ``truth.json``: each truth level in view paints the body under its centre (or the
    nearest body within half its posterior height) with its grade and type."""
    instances, n = body_instances(vertebra, disk)
    out = np.zeros(instances.shape, np.uint8)
    if n == 0:
        return out
    spacing = float(np.mean(truth.get("pixel_spacing_mm") or (1.0, 1.0)))
    distance, (near_r, near_c) = ndimage.distance_transform_edt(instances == 0, return_indices=True)
    for level in truth.get("levels", []):
        if not level.get("in_view_lat"):
            continue
        r, c = (int(round(v)) for v in level["center_lat_px"])
        if not (0 <= r < out.shape[0] and 0 <= c < out.shape[1]):
            continue
        reach = 0.5 * level["heights_mm"]["posterior"] / spacing
        if distance[r, c] > reach:
            continue
        label = instances[near_r[r, c], near_c[r, c]]
        fracture = level.get("fracture") or {}
        out[instances == label] = encode_level(int(fracture.get("grade", 0)), str(fracture.get("kind", "none")))
    return out


def level_map_from_morphometry(
    vertebra: np.ndarray, disk: np.ndarray | None, posterior: np.ndarray | None, spacing_mm: tuple[float, float]
) -> np.ndarray:
    """Level map (H, W) uint8 of pseudo-labels: the Genant grade and deformity type that
    morphometry measures on the reference masks; bodies it cannot grade stay 0 (unknown)."""
    from spine_app.morphometry.measure import measure_vertebrae

    instances, n = body_instances(vertebra, disk)
    out = np.zeros(instances.shape, np.uint8)
    if n == 0:
        return out
    bodies = measure_vertebrae(instances > 0, spacing_mm, posterior)
    for body in bodies:
        if body.grade < 0:
            continue
        r, c = (int(round(v)) for v in body.centroid_px)
        label = instances[min(max(r, 0), out.shape[0] - 1), min(max(c, 0), out.shape[1] - 1)]
        if label > 0:
            out[instances == label] = encode_level(body.grade, body.deformity)
    return out


def jitter_boxes(
    boxes: LevelBoxes, rng: np.random.RandomState, shift: float, scale: float, turn_deg: float
) -> LevelBoxes:
    """Boxes moved by up to ``shift`` x their side, resized by up to +-``scale`` and turned by up to
    ``turn_deg``: the reference boxes of training made as uncertain as those found on predicted masks."""
    k = len(boxes)
    if k == 0:
        return boxes
    centre = boxes.centre + rng.uniform(-shift, shift, (k, 2)).astype(np.float32) * boxes.size[:, None]
    size = boxes.size * rng.uniform(1.0 - scale, 1.0 + scale, k).astype(np.float32)
    angle = np.radians(rng.uniform(-turn_deg, turn_deg, k))
    cos, sin = np.cos(angle), np.sin(angle)
    axis = np.stack(
        [cos * boxes.axis[:, 0] - sin * boxes.axis[:, 1], sin * boxes.axis[:, 0] + cos * boxes.axis[:, 1]], 1
    )
    return LevelBoxes(centre, axis.astype(np.float32), size, boxes.grade, boxes.kind, boxes.instance)


#: the keys of the unjittered boxes :class:`LevelBoxesd` adds with ``keep_reference`` (box key -> its key)
REFERENCE_BOX_KEYS = {key: f"reference_{key}" for key in ("level_centre", "level_axis", "level_size")}


class LevelBoxesd(MapTransform, Randomizable):
    """Adds the padded level boxes of the LAT film (see :func:`pad_boxes`) from the reference masks
    ``seg_lat`` and the level map ``levels_lat`` (after augmentation, so the boxes follow the film).
    A study without a LAT vertebra mask gets no valid level. ``shift``, ``scale``, ``turn_deg``:
    random jitter of every box (:func:`jitter_boxes`; 0 = exact boxes). With ``keep_reference``
    (:func:`reference_boxes_kept`) the boxes before the jitter are added too, under
    :data:`REFERENCE_BOX_KEYS` (the same bodies in the same order, the same random draws)."""

    keep_reference: bool = False

    def __init__(
        self,
        max_levels: int = MAX_LEVELS,
        shift: float = 0.06,
        scale: float = 0.12,
        turn_deg: float = 6.0,
        keys: tuple[Hashable, ...] = (seg_key("lat"),),
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.max_levels = max_levels
        self.shift, self.scale, self.turn_deg = shift, scale, turn_deg

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        seg = np.asarray(torch.as_tensor(data[seg_key("lat")]).detach().cpu())
        avail = np.asarray(torch.as_tensor(data[avail_key("lat")]).detach().cpu())
        level_map = data.get("levels_lat")
        level_map = None if level_map is None else np.asarray(torch.as_tensor(level_map).detach().cpu())[0]
        if avail[_VB] > 0:
            disk = seg[_DISK] > 0.5 if avail[_DISK] > 0 else None
            boxes = reference = film_level_boxes(seg[_VB] > 0.5, disk, 0, level_map)
            if self.shift or self.scale or self.turn_deg:
                boxes = jitter_boxes(boxes, self.R, self.shift, self.scale, self.turn_deg)
        else:
            boxes = reference = film_level_boxes(np.zeros(seg.shape[1:], bool), None)
        out.update(pad_boxes(boxes, self.max_levels))
        if self.keep_reference:
            padded = pad_boxes(reference, self.max_levels)
            out.update({REFERENCE_BOX_KEYS[key]: padded[key] for key in REFERENCE_BOX_KEYS})
        return out


def reference_boxes_kept(transform: Any) -> contextlib.AbstractContextManager[int]:
    """Within the block every :class:`LevelBoxesd` of ``transform`` also adds its boxes before the
    jitter (:data:`REFERENCE_BOX_KEYS`); yields how many it found, refuses a transform without one.
    Restored on leaving, also after an error."""
    found = list(transforms_of(transform, LevelBoxesd))
    if not found:
        raise ValueError("reference boxes: the transform has no LevelBoxesd")
    return transforms_changed(found, [{"keep_reference": True} for _ in found])


def scaled_box_jitter(transform: Any, factor: float) -> contextlib.AbstractContextManager[int]:
    """Within the block every :class:`LevelBoxesd` of ``transform`` jitters its boxes ``factor``
    times as much as it was built to (0: the reference boxes, 1: unchanged); yields how many it
    found. A factor other than 1 on a transform without one is refused (it would change nothing).
    The settings are restored on leaving, also after an error."""
    if factor < 0:
        raise ValueError(f"box jitter factor must be >= 0, got {factor}")
    found = list(transforms_of(transform, LevelBoxesd))
    if factor != 1.0 and not found:
        raise ValueError(f"box jitter factor {factor}: the transform has no LevelBoxesd to scale")
    scaled = [{"shift": t.shift * factor, "scale": t.scale * factor, "turn_deg": t.turn_deg * factor} for t in found]
    return transforms_changed(found, scaled)
