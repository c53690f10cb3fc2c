"""Vertebral morphometry on a lateral radiograph: body heights, height ratios and Genant grades.

Input is the binary ``Lat_Vertebra`` mask of one LAT image (rows x cols, at any resolution) with its
pixel spacing in mm, plus an optional mask of posterior structures (``Lat_Spinous_Process`` or the
posterior vertebral line) that tells which side of the column is posterior.

The steps:

1. a smooth centre line through the column (a cubic of column position against row);
2. every mask pixel is projected onto that line; the cross-section profile along the line drops at
   each disk, and bodies that touch on the film (oblique endplates in scoliosis) are split at the
   deepest dip where a segment is longer than the typical body;
3. each body is measured in its own rigid frame (axis = the centre line's tangent at the body): the
   anterior, middle and posterior heights are the body's extent along the axis in narrow bands at
   4 %, 50 % and 96 % of its depth from the anterior wall;
4. quantitative morphometry in the sense of Genant (1993): the reduction is the largest of
   1 - Ha/Hp (wedge), 1 - Hm/Hp (biconcave) and 1 - Hp/Hp_expected (crush; Hp_expected from a
   robust line through the neighbours' posterior heights); grade 0 below 20 %, 1 for 20-25 %,
   2 for 25-40 %, 3 from 40 %.

Bodies that touch the image border (``truncated``), or that were split from a neighbour where the
mask shows no dip (``unseparated``: a segmentation that merged the column), are measured but not
graded. Quality control (:func:`plausibility_problem`): a body whose measurement fails a
plausibility check (a height that is not a positive finite number, a height ratio outside
:data:`RATIO_RANGE`, a body far smaller or larger than the film's median body, a height/depth
shape no vertebral body has) is reported ``not measurable`` with the reason and never graded; an
expected posterior height that is not positive is dropped (no crush component); a reduction is
always within [0, 1].

Level names: only with ``lowest_level`` (the name of the lowest body, when the user knows what
the field shows, e.g. L5 on films framed down to the sacrum); otherwise ``level`` is None and the
bodies are numbered from the top of the field (``index``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage, stats

from spine_app.metrics.matching import nearest_matches

#: a body whose mask comes this close (film pixels) to the exposed field's first or last row is cut by it
FIELD_EDGE_PX = 2

#: Genant semiquantitative thresholds on the height reduction: grade = number of thresholds reached
GENANT_THRESHOLDS: tuple[float, float, float] = (0.20, 0.25, 0.40)
#: a split inside a run of the mask is trusted where the cross-section dips below this fraction of
#: the run's median (touching bodies leave a notch; a mask that merges the column leaves none)
MIN_DIP = 0.9
#: widening of the predicted disk spaces cut out of a predicted vertebra mask (chosen on the
#: validation split: docs/results.md "Morphometry")
DISK_GAP_MM = 1.5
#: physiological range of a body's height ratios (Ha/Hp, Hm/Hp, Hp/Hp_expected): a Genant grade 3
#: fracture loses up to about 60 % of a height; a ratio beyond these bounds is a measurement error
RATIO_RANGE: tuple[float, float] = (0.3, 1.5)
#: a body's area against the film's median body: outside this range it is a fragment or a merger
AREA_RANGE: tuple[float, float] = (0.35, 2.5)
#: body height (posterior) over depth (anterior-posterior extent): outside, not a vertebral body
SHAPE_RANGE: tuple[float, float] = (0.25, 2.0)
#: positions of the anterior, middle and posterior height measurements, as fractions of body depth
HEIGHT_POSITIONS: dict[str, float] = {"anterior": 0.04, "middle": 0.5, "posterior": 0.96}
_LEVELS: tuple[str, ...] = tuple(
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
)


@dataclass
class VertebralBody:
    """Measurements of one vertebral body (heights in mm, positions in image pixels, row then col)."""

    index: int  # 0 = top-most body on the film
    level: str | None
    centroid_px: tuple[float, float]
    area_px: int
    heights_mm: dict[str, float]
    ratios: dict[str, float]
    expected_posterior_mm: float | None
    reduction: float  # largest relative height loss (0 when not graded)
    grade: int  # Genant 0-3; -1 when not graded (truncated body)
    deformity: str  # "none", "wedge", "biconcave" or "crush"
    truncated: bool = False
    unseparated: bool = False  # split from a neighbour without a visible disk: not graded
    flags: list[str] = field(default_factory=list)
    depth_mm: float = float("nan")  # anterior-posterior extent of the body
    not_measurable: str | None = None  # why the measurement failed quality control (then not graded)

    @property
    def label(self) -> str:
        """The body's name for people: its level name, else ``#k`` (k = 1 for the top-most body on the film)."""
        return self.level or f"#{self.index + 1}"

    def to_json(self, units: str = "mm") -> dict:
        """JSON-ready dict (rounded). ``units`` "px" (a film without pixel spacing, measured with
        spacing 1): the length keys are named ``heights_px``, ``depth_px``, ``expected_posterior_px``."""
        out = asdict(self)
        out["centroid_px"] = [round(float(v), 1) for v in self.centroid_px]
        out["heights_mm"] = {k: round(float(v), 2) for k, v in self.heights_mm.items()}
        out["ratios"] = {k: round(float(v), 3) for k, v in self.ratios.items()}
        out["reduction"] = round(float(self.reduction), 3)
        out["depth_mm"] = round(float(self.depth_mm), 2)
        if self.expected_posterior_mm is not None:
            out["expected_posterior_mm"] = round(float(self.expected_posterior_mm), 2)
        if units == "px":
            out = {(k[: -len("_mm")] + "_px" if k.endswith("_mm") else k): v for k, v in out.items()}
        return out


def _positive_heights(body: VertebralBody) -> list[float] | None:
    """``body``'s anterior, middle and posterior heights, or None where one is missing or not positive."""
    heights = [body.heights_mm.get(k, float("nan")) for k in ("anterior", "middle", "posterior")]
    return heights if all(np.isfinite(h) and h > 0 for h in heights) else None


def plausibility_problem(body: VertebralBody, median_area: float) -> str | None:
    """Why ``body``'s measurement is not plausible (quality control), or None when it passes.

    Heights must be positive finite numbers; Ha/Hp and Hm/Hp within :data:`RATIO_RANGE`; the area
    within :data:`AREA_RANGE` of the film's median body; posterior height over depth within
    :data:`SHAPE_RANGE`.
    """
    heights = _positive_heights(body)
    if heights is None:
        return "not measurable: a height is missing or not positive"
    ha, hm, hp = heights
    low, high = RATIO_RANGE
    for name, ratio in (("anterior/posterior", ha / hp), ("middle/posterior", hm / hp)):
        if not low <= ratio <= high:
            return f"not measurable: {name} height ratio {ratio:.2f} is outside {low}-{high}"
    if median_area > 0 and not AREA_RANGE[0] <= body.area_px / median_area <= AREA_RANGE[1]:
        return f"not measurable: body area {body.area_px / median_area:.2f} x the film's median body"
    if np.isfinite(body.depth_mm) and body.depth_mm > 0:
        shape = hp / body.depth_mm
        if not SHAPE_RANGE[0] <= shape <= SHAPE_RANGE[1]:
            return f"not measurable: height/depth {shape:.2f} is not a vertebral body's"
    return None


def shape_implausible(body: VertebralBody) -> bool:
    """True where ``body``'s mask cannot be a vertebral body's, fractured or not: a height missing or
    not positive, or the front (Ha) more than :data:`RATIO_RANGE`'s upper bound (1.5) times the back
    (Hp): a fragment left of a body split across, or a blob that took in something in front of or
    behind the column. A compression fracture lowers the front (wedge), the middle (biconcave) or the
    whole body (crush), so the other out-of-range ratios (Ha/Hp under 0.3, Hm/Hp over 1.5) can be a
    fractured body on a poor mask and are not counted (on thoracic DRR films 4 of 19 fractured bodies
    measured so; docs/results.md). Nor is a body cut by the film's edge or not separated from a
    neighbour (its shape is cut, not wrong), or one only far smaller or larger than the film's median
    body (a whole-spine film's T1 beside its L5)."""
    if body.truncated or body.unseparated:
        return False
    heights = _positive_heights(body)
    return heights is None or heights[0] / heights[2] > RATIO_RANGE[1]


def genant_grade(reduction: float) -> int:
    """Genant grade (0-3) of a relative height reduction (0.23 -> 1)."""
    return int(sum(reduction >= t for t in GENANT_THRESHOLDS))


def _centre_line(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) points (row, col), one per image row, along a cubic col(row) through the column."""
    degree = 3 if np.ptp(rows) > 50 else 1
    with warnings.catch_warnings():  # a short or ragged mask fits a cubic poorly; the line is still usable
        warnings.simplefilter("ignore", np.exceptions.RankWarning)
        poly = np.polynomial.Polynomial.fit(rows, cols, degree)
    grid = np.arange(rows.min() - 2, rows.max() + 3, 1.0)
    return np.stack([grid, poly(grid)], axis=1)


def _split_segments(profile: np.ndarray, typical: float, min_len: float) -> list[tuple[int, int]]:
    """Runs of ``profile`` above a fraction of its high level, long runs split at their deepest dip.

    profile: cross-section (px) per centre-line step; typical: expected body length in steps.
    Returns [start, stop) index pairs, top to bottom.
    """
    smooth = ndimage.gaussian_filter1d(profile.astype(float), 2.0)
    high = np.percentile(smooth[smooth > 0], 90) if np.any(smooth > 0) else 0.0
    above = smooth > 0.3 * high
    runs: list[tuple[int, int]] = []
    start = None
    for i, flag in enumerate(np.append(above, False)):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start >= min_len:
                runs.append((start, i))
            start = None
    if typical <= 0:
        return runs
    out: list[tuple[int, int]] = []
    pending = list(runs)
    while pending:
        a, b = pending.pop(0)
        if b - a <= 1.45 * typical:
            out.append((a, b))
            continue
        margin = int(0.35 * typical)
        inner = smooth[a + margin : b - margin]
        if inner.size < 3:
            out.append((a, b))
            continue
        minima = [i for i in range(1, inner.size - 1) if inner[i] <= inner[i - 1] and inner[i] <= inner[i + 1]]
        cut = a + margin + (min(minima, key=lambda i: inner[i]) if minima else inner.size // 2)
        pending[:0] = [(a, cut), (cut, b)]
    return sorted(out)


def _heights(u: np.ndarray, v: np.ndarray, pixel_mm: float) -> dict[str, float]:
    """Anterior/middle/posterior extent along u (mm) of body points; v grows towards anterior."""
    v_ant, v_post = np.percentile(v, 99.0), np.percentile(v, 1.0)
    depth = v_ant - v_post
    band = max(0.04 * depth, pixel_mm)
    out = {}
    for name, position in HEIGHT_POSITIONS.items():
        centre = v_ant - position * depth
        sel = np.abs(v - centre) <= band
        if sel.sum() < 3:
            out[name] = float("nan")
            continue
        bins = np.round((v[sel] - centre) / pixel_mm).astype(int)
        extents = []
        for b in np.unique(bins):
            ub = u[sel][bins == b]
            extents.append(ub.max() - ub.min() + pixel_mm)
        out[name] = float(np.median(extents))
    out["depth"] = float(depth)
    return out


def _expected_posterior(posterior: np.ndarray, index: int, reach: int = 3) -> float | None:
    """Theil-Sen line through the neighbours' posterior heights (within ``reach`` levels), at ``index``."""
    idx = [j for j in range(max(0, index - reach), min(len(posterior), index + reach + 1)) if j != index]
    idx = [j for j in idx if np.isfinite(posterior[j])]
    if len(idx) < 2:
        return None
    # the median of the pairwise slopes, and the median of y - slope * x as the intercept ("joint")
    slope, intercept, _, _ = stats.theilslopes(posterior[idx], np.asarray(idx, float), method="joint")
    return float(intercept) + float(slope) * index


def measure_lat_film(
    masks: Mapping[str, np.ndarray],
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    lowest_level: str | None = None,
    gap_mm: float = DISK_GAP_MM,
    field_rows: tuple[int, int] | None = None,
) -> list[VertebralBody]:
    """Morphometry of one LAT film from its channel masks (name -> bool (H, W); any LAT channel may be
    missing except ``Lat_Vertebra``), the same way for inference, evaluation and the benchmark.

    The bodies are ``Lat_Vertebra`` minus ``Lat_Disk_Height`` widened by ``gap_mm``: a predicted
    vertebra mask bridges the thin disk spaces and overshoots the endplates, and the cut separates
    and trims it. Reference masks, which neither bridge nor overshoot, are measured with
    ``gap_mm=0``. The posterior hint is the spinous processes and the posterior line.
    ``field_rows``: the (first, last) row of the film's exposed field, where a collimator band
    cuts it (see :func:`measure_vertebrae`).
    """
    vertebra = np.asarray(masks["Lat_Vertebra"]) > 0
    disk = masks.get("Lat_Disk_Height")
    if disk is not None and np.any(disk):
        reach = round(gap_mm / float(np.sqrt(spacing_mm[0] * spacing_mm[1])))
        disk = np.asarray(disk) > 0
        vertebra = vertebra & ~(ndimage.binary_dilation(disk, iterations=reach) if reach >= 1 else disk)
    hints = [np.asarray(masks[n]) > 0 for n in ("Lat_Spinous_Process", "Lat_Posterior_Vertebral_Line") if n in masks]
    posterior = np.logical_or.reduce(hints) if hints else None
    return measure_vertebrae(vertebra, spacing_mm, posterior, lowest_level, field_rows)


@dataclass
class _Column:
    """A LAT vertebra mask seen along its centre line: every foreground pixel (``rows``, ``cols``;
    ``points_mm``) with the centre-line sample nearest to it (``nearest``), and the line's samples
    (``line_mm``), unit tangents and normals (``normal``: the tangent turned by 90 degrees)."""

    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    points_mm: np.ndarray
    line_mm: np.ndarray
    tangent: np.ndarray
    normal: np.ndarray
    nearest: np.ndarray
    step_mm: float  # spacing of the centre-line samples
    profile: np.ndarray  # pixels per centre-line sample (the column's cross-section)
    smooth: np.ndarray  # the profile, Gaussian-smoothed (sigma 2 samples)


def _column(mask: np.ndarray, sr: float, sc: float) -> _Column:
    """Project every pixel of ``mask`` to the nearest centre-line sample."""
    rows, cols = np.nonzero(mask)
    line = _centre_line(rows, cols, mask.shape)
    line_mm = line * [sr, sc]
    tangent = np.gradient(line_mm, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    points_mm = np.stack([rows * sr, cols * sc], axis=1)
    # rows are monotone along the line: a nearest-neighbour search on a KD-tree
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(line_mm).query(points_mm)
    step_mm = float(np.median(np.linalg.norm(np.diff(line_mm, axis=0), axis=1)))
    profile = np.bincount(nearest, minlength=len(line)).astype(float)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    smooth = ndimage.gaussian_filter1d(profile, 2.0)
    return _Column(mask.shape, rows, cols, points_mm, line_mm, tangent, normal, nearest, step_mm, profile, smooth)


def _body_segments(column: _Column, sr: float, sc: float) -> list[tuple[int, int]]:
    """Runs of the profile, one per body: split first at the gaps, then at the typical body length
    (the median run where there are three or more, else 0.72 x the column's depth: bodies are wider
    than tall)."""
    profile, smooth, step_mm = column.profile, column.smooth, column.step_mm
    depth_mm = np.percentile(smooth[smooth > 0], 75) * sr * sc / step_mm if profile.any() else 0.0
    first = _split_segments(profile, 0.0, min_len=3.0 / step_mm)
    lengths = np.array([b - a for a, b in first], float)
    if lengths.size >= 3:
        typical = float(np.median(lengths))
    else:
        typical = 0.72 * depth_mm / step_mm
    return _split_segments(profile, typical, min_len=3.0 / step_mm)


def _anterior_sign(column: _Column, posterior_mask: np.ndarray | None, sr: float, sc: float) -> float:
    """+1 where the normals point anterior (away from the posterior structures), else -1; without
    posterior structures the side with more mask mass beyond the centre line is posterior."""
    normal = column.normal
    centre_mm = column.points_mm.mean(axis=0)
    if posterior_mask is not None and np.any(np.asarray(posterior_mask) > 0):
        pr, pc = np.nonzero(np.asarray(posterior_mask) > 0)
        posterior_dir = np.array([pr.mean() * sr, pc.mean() * sc]) - centre_mm
    else:
        nearest = column.nearest
        offsets = np.einsum("ij,ij->i", column.points_mm - column.line_mm[nearest], normal[nearest])
        posterior_dir = normal.mean(axis=0) * (1.0 if np.mean(offsets > 0) < 0.5 else -1.0)
    return -1.0 if float(np.mean(normal @ posterior_dir)) > 0 else 1.0


def _body_pixels(column: _Column, segments: list[tuple[int, int]]) -> tuple[list[np.ndarray], list[bool]]:
    """Each kept body's pixel selection (over ``column``'s pixels) and whether it is unseparated.

    A body owns the pixels up to the middle of the gaps around it (the runs stop short of a wedge's
    sloping endplate, whose thin tip falls below the run threshold). A split inside a run (no gap) is
    trusted only at a real dip of the cross-section; the bodies beside an untrusted split are
    ``unseparated``. Pieces under 20 px or a quarter of the median piece are dropped."""
    smooth, nearest = column.smooth, column.nearest
    cuts = [0] + [(segments[i][1] + segments[i + 1][0]) // 2 for i in range(len(segments) - 1)] + [len(column.line_mm)]
    unsure = [
        segments[i][1] == segments[i + 1][0]
        and smooth[segments[i][1]] > MIN_DIP * np.median(smooth[segments[i][0] : segments[i + 1][1]])
        for i in range(len(segments) - 1)
    ]
    pieces = [(nearest >= cuts[i]) & (nearest < cuts[i + 1]) for i in range(len(segments))]
    kept = [i for i, sel in enumerate(pieces) if sel.sum() >= 20]
    if kept:
        areas = {i: int(pieces[i].sum()) for i in kept}
        kept = [i for i in kept if areas[i] >= 0.25 * float(np.median(list(areas.values())))]
    unseparated = [(i > 0 and unsure[i - 1]) or (i < len(unsure) and unsure[i]) for i in kept]
    return [pieces[i] for i in kept], unseparated


def _measure_body(
    column: _Column,
    selections: list[np.ndarray],
    centres: np.ndarray,
    i: int,
    anterior_sign: float,
    pixel_mm: float,
    unseparated: bool,
) -> VertebralBody:
    """Heights of body ``i`` (ungraded) along its axis: the chord between the neighbouring bodies'
    centres (exact on a straight column, unaffected by the body's own shape; one-sided at the ends
    of the column)."""
    sel = selections[i]
    chord = centres[min(i + 1, len(centres) - 1)] - centres[max(i - 1, 0)]
    k = int(np.median(column.nearest[sel]))
    t = chord / np.linalg.norm(chord) if np.linalg.norm(chord) > 0 else column.tangent[k]
    n = np.array([-t[1], t[0]])
    n *= anterior_sign * np.sign(np.dot(n, column.normal[k]))
    rel = column.points_mm[sel] - centres[i]
    heights = _heights(rel @ t, rel @ n, pixel_mm)
    r, c = column.rows[sel], column.cols[sel]
    height, width = column.shape
    truncated = bool(r.min() == 0 or c.min() == 0 or r.max() == height - 1 or c.max() == width - 1)
    return VertebralBody(
        index=i,
        level=None,
        centroid_px=(float(r.mean()), float(c.mean())),
        area_px=int(sel.sum()),
        heights_mm={key: heights[key] for key in HEIGHT_POSITIONS},
        ratios={},
        expected_posterior_mm=None,
        reduction=0.0,
        grade=0,
        deformity="none",
        truncated=truncated,
        unseparated=bool(unseparated),
        depth_mm=float(heights["depth"]),
    )


def _name_levels(bodies: list[VertebralBody], lowest_level: str | None) -> None:
    """Level names counted up from ``lowest_level`` (the lowest body); none without it."""
    if lowest_level is not None and lowest_level in _LEVELS:
        last = _LEVELS.index(lowest_level)
        for body in bodies:
            position = last - (len(bodies) - 1 - body.index)
            body.level = _LEVELS[position] if position >= 0 else None


def measure_vertebrae(
    vertebra_mask: np.ndarray,
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    posterior_mask: np.ndarray | None = None,
    lowest_level: str | None = None,
    field_rows: tuple[int, int] | None = None,
) -> list[VertebralBody]:
    """Separate, order and measure the vertebral bodies of one LAT vertebra mask.

    Args:
        vertebra_mask: (H, W) binary ``Lat_Vertebra`` mask.
        spacing_mm: pixel spacing (row, col) in mm; (1, 1) gives heights in pixels.
        posterior_mask: (H, W) mask of posterior structures (spinous processes or the posterior
            vertebral line); without it the side with more mask mass beyond the bodies' mid-depth
            is taken as posterior.
        lowest_level: name of the lowest body for level labels (None: no names).
        field_rows: (first, last) row of the film's exposed field: a body that reaches within
            :data:`FIELD_EDGE_PX` of either is cut by the collimator and not measured, as one that
            touches the image border (the network draws a body on into a white collimator band).

    Returns:
        bodies top to bottom; an empty list when the mask holds no body.
    """
    mask = np.asarray(vertebra_mask) > 0
    if mask.ndim != 2:
        raise ValueError(f"vertebra mask must be 2-D, got shape {mask.shape}")
    if np.count_nonzero(mask) < 50:
        return []
    sr, sc = float(spacing_mm[0]), float(spacing_mm[1])
    column = _column(mask, sr, sc)
    segments = _body_segments(column, sr, sc)
    anterior_sign = _anterior_sign(column, posterior_mask, sr, sc)
    selections, unseparated = _body_pixels(column, segments)
    centres = np.array([column.points_mm[sel].mean(axis=0) for sel in selections]).reshape(-1, 2)
    pixel_mm = float(np.sqrt(sr * sc))
    bodies = [
        _measure_body(column, selections, centres, i, anterior_sign, pixel_mm, unseparated[i])
        for i in range(len(selections))
    ]
    if field_rows is not None:
        first, last = field_rows
        for body, sel in zip(bodies, selections):
            rows = column.rows[sel]
            body.truncated |= bool(rows.min() <= first + FIELD_EDGE_PX or rows.max() >= last - FIELD_EDGE_PX)
    _grade(bodies)
    _name_levels(bodies, lowest_level)
    return bodies


def _grade(bodies: list[VertebralBody]) -> None:
    """Quality control, then ratios, expected posterior height, reduction, Genant grade and
    deformity type, in place (see :func:`plausibility_problem`)."""
    median_area = float(np.median([b.area_px for b in bodies])) if bodies else 0.0
    for body in bodies:
        if body.truncated:
            body.not_measurable = "not measurable: the body runs off the film or its exposed field"
        elif body.unseparated:
            body.not_measurable = "not measurable: not separated from a neighbour on the mask"
        else:
            body.not_measurable = plausibility_problem(body, median_area)
    usable = [b.not_measurable is None for b in bodies]
    posterior = np.array([b.heights_mm["posterior"] if ok else np.nan for b, ok in zip(bodies, usable)])
    for i, body in enumerate(bodies):
        ha, hm, hp = (body.heights_mm[k] for k in ("anterior", "middle", "posterior"))
        with np.errstate(divide="ignore", invalid="ignore"):
            body.ratios = {"anterior_posterior": ha / hp, "middle_posterior": hm / hp}
        expected = _expected_posterior(posterior, i)
        if expected is not None and not (np.isfinite(expected) and expected > 0):
            body.flags.append("expected posterior height not computable (neighbours inconsistent)")
            expected = None
        body.expected_posterior_mm = expected
        if expected:
            body.ratios["posterior_expected"] = hp / expected
        if not usable[i]:
            body.grade, body.reduction = -1, 0.0
            body.flags.append(
                "truncated"
                if body.truncated
                else "not separated from a neighbour on the mask"
                if body.unseparated
                else body.not_measurable or "unmeasurable"
            )
            continue
        losses = {
            "wedge": 1.0 - ha / hp,
            "biconcave": 1.0 - hm / hp,
            "crush": 1.0 - hp / expected if expected else 0.0,
        }
        if expected and not RATIO_RANGE[0] <= hp / expected <= RATIO_RANGE[1]:
            body.flags.append(f"posterior/expected height ratio {hp / expected:.2f} not used (outside {RATIO_RANGE})")
            losses["crush"] = 0.0
        kind = max(losses, key=losses.get)
        body.reduction = float(np.clip(losses[kind], 0.0, 1.0))
        body.grade = genant_grade(body.reduction)
        body.deformity = kind if body.grade > 0 else "none"
        if losses["crush"] >= GENANT_THRESHOLDS[0]:
            body.flags.append("lower than neighbours")


def study_fracture_score(bodies: list[VertebralBody]) -> float:
    """Largest graded height reduction of a study (0 when nothing is graded): a Damaged score."""
    graded = [b.reduction for b in bodies if b.grade >= 0]
    return float(max(graded)) if graded else 0.0


def match_truth(bodies: list[VertebralBody], truth: dict) -> list[tuple[VertebralBody, dict]]:
    """Pairs (measured body, truth level) matched by the nearest LAT centre (synthetic ``truth.json``).

    A truth level is matched at most once and only within half a body height of the centroid.
    """
    spacing = float(np.mean(truth["pixel_spacing_mm"]))
    levels = [lv for lv in truth["levels"] if lv.get("in_view_lat")]
    matches = nearest_matches(
        [b.centroid_px for b in bodies],
        [lv["center_lat_px"] for lv in levels],
        lambda _i, j: 0.5 * levels[j]["heights_mm"]["posterior"] / spacing,
    )
    return [(body, levels[j]) for body, j in zip(bodies, matches) if j is not None]


def morphometry_probability(reduction: float, scale: float = 0.03) -> float:
    """A Damaged probability from the largest height reduction: 0.5 at the Genant grade-1 threshold
    (20 %), rising over about ``scale`` (fixed a priori, not fitted)."""
    return float(1.0 / (1.0 + np.exp(-(reduction - GENANT_THRESHOLDS[0]) / scale)))


def combine_probabilities(network: float, morphometry: float | None) -> float:
    """Noisy-OR of the network's fused probability and the morphometry probability (either finding
    makes the study Damaged); the network's alone when there is no LAT morphometry."""
    return network if morphometry is None else 1.0 - (1.0 - network) * (1.0 - morphometry)
