"""Imaging chain of the synthetic radiographs: from line integrals to a processed 16-bit film.

Order of operations (per view): trabecular texture -> upsampling to the detector grid ->
Beer-Lambert primary with heel effect and collimation -> scatter (blurred primary) -> quantum noise
(Gaussian approximation of Poisson, variance = signal) -> detector blur -> electronic noise ->
log transform -> percentile window, gamma and edge enhancement -> burned-in markers -> quantisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from spine_app.synthetic.config import SynthConfig


@dataclass
class ExposureParams:
    """Per-view imaging parameters sampled from the config (recorded in truth.json)."""

    detector_quanta: float
    electronic_noise: float
    scatter_to_primary: float
    detector_blur_px: float
    heel_effect: float
    gamma: float
    edge_enhancement: float
    equalization: float
    window_low: float
    window_high: float
    texture: float
    collimation: tuple[float, float, float, float] | None  # top, bottom, left, right margins (fraction)
    marker: str | None

    @classmethod
    def sample(cls, rng: np.random.Generator, cfg: SynthConfig, view: str) -> ExposureParams:
        def u(bounds):
            return float(rng.uniform(bounds[0], bounds[1]))

        collimation = None
        if rng.random() < cfg.collimation_probability:
            collimation = tuple(float(x) for x in rng.uniform(0.0, 0.08, size=4))
        marker = None
        if rng.random() < cfg.marker_probability:
            marker = str(rng.choice(["L", "R"])) if view == "AP" else str(rng.choice(["L", "R", "LAT"]))
        spread = rng.uniform(0.0, 1.0)
        return cls(
            detector_quanta=float(np.exp(rng.uniform(*np.log(cfg.detector_quanta)))),
            electronic_noise=u(cfg.electronic_noise),
            scatter_to_primary=u(cfg.scatter_to_primary),
            detector_blur_px=u(cfg.detector_blur_px),
            heel_effect=u(cfg.heel_effect),
            gamma=u(cfg.gamma),
            edge_enhancement=u(cfg.edge_enhancement),
            equalization=u(cfg.equalization),
            window_low=cfg.window_percentiles[0] * spread + 0.1 * (1 - spread),
            window_high=cfg.window_percentiles[1] * spread + 99.9 * (1 - spread),
            texture=float(rng.uniform(0.04, 0.12)),
            collimation=collimation,
            marker=marker,
        )


def _upsample_axis(image: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Linear upsampling along one axis, pixel centres aligned, edges replicated."""
    x = np.moveaxis(image, axis, 0)
    prev = np.concatenate([x[:1], x[:-1]], axis=0)
    nxt = np.concatenate([x[1:], x[-1:]], axis=0)
    out = np.empty((x.shape[0] * factor,) + x.shape[1:], dtype=np.float32)
    for phase in range(factor):
        t = (phase + 0.5) / factor - 0.5  # offset of the output centre in input pixels
        out[phase::factor] = (1 - abs(t)) * x + abs(t) * (prev if t < 0 else nxt)
    return np.moveaxis(out, 0, axis)


def upsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling by an integer factor with pixel-centre alignment (shape * factor)."""
    image = image.astype(np.float32, copy=False)
    if factor == 1:
        return image
    return _upsample_axis(_upsample_axis(image, factor, 0), factor, 1)


def _blur_large(image: np.ndarray, sigma_px: float, reduce: int = 8) -> np.ndarray:
    """Wide Gaussian blur computed on a reduced grid (scatter kernels are tens of millimetres)."""
    h, w = image.shape
    hh, ww = -(-h // reduce), -(-w // reduce)
    padded = np.pad(image, ((0, hh * reduce - h), (0, ww * reduce - w)), mode="edge")
    small = padded.reshape(hh, reduce, ww, reduce).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_px / reduce, mode="nearest")
    return upsample(small, reduce)[:h, :w]


def collimation_mask(shape: tuple[int, int], margins: tuple[float, float, float, float] | None) -> np.ndarray:
    """1 inside the collimated field, 0 under the collimator blades (float32)."""
    mask = np.ones(shape, np.float32)
    if margins is None:
        return mask
    h, w = shape
    top, bottom, left, right = (int(m * n) for m, n in zip(margins, (h, h, w, w)))
    mask[:top] = 0
    mask[h - bottom :] = 0
    mask[:, :left] = 0
    mask[:, w - right :] = 0
    return ndimage.gaussian_filter(mask, 1.5) if any((top, bottom, left, right)) else mask


def draw_marker(image: np.ndarray, text: str, rng: np.random.Generator, pixel_spacing: float) -> None:
    """Burn a radiopaque lead marker (white text) into a corner of ``image`` (values in 0..1) in place."""
    h, w = image.shape
    size = max(12, int(14.0 / pixel_spacing))
    font = ImageFont.load_default(size=size)
    canvas = Image.new("L", (size * (len(text) + 1), int(size * 1.5)), 0)
    ImageDraw.Draw(canvas).text((size // 4, 0), text, fill=255, font=font)
    glyph = np.asarray(canvas, dtype=np.float32) / 255.0
    gh, gw = glyph.shape
    if gh >= h // 2 or gw >= w // 2:
        return
    top = int(rng.uniform(0.03, 0.15) * h)
    left = int(rng.uniform(0.03, 0.1) * w) if rng.random() < 0.5 else w - gw - int(rng.uniform(0.03, 0.1) * w)
    region = image[top : top + gh, left : left + gw]
    np.maximum(region, glyph, out=region)


def expose(
    attenuation: np.ndarray,
    bone: np.ndarray,
    upsample_factor: int,
    params: ExposureParams,
    pixel_spacing: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Turn a render-grid line-integral map into a processed film in [0, 1] (float32, detector grid).

    Smooth quantities (primary, scatter, local means) are computed on the render grid and upsampled;
    noise, detector blur and film processing run at the detector resolution.
    """
    f = upsample_factor
    render_spacing = pixel_spacing * f
    grain = ndimage.gaussian_filter(rng.standard_normal(attenuation.shape, dtype=np.float32), 0.8)
    grain /= grain.std() + 1e-6
    line_integral = attenuation + params.texture * bone * grain
    h, w = line_integral.shape
    heel = (1.0 - params.heel_effect * np.linspace(0.0, 1.0, h, dtype=np.float32))[:, None]
    field = collimation_mask((h, w), params.collimation)
    # automatic exposure control: the dose is set so the detector behind the spine (film centre)
    # receives ``detector_quanta`` per pixel, as an AEC chamber would
    aec_box = (slice(h // 2 - h // 8, h // 2 + h // 8), slice(w // 2 - w // 10, w // 2 + w // 10))
    n0 = params.detector_quanta * float(np.exp(np.median(line_integral[aec_box])))
    primary = (n0 * heel) * np.exp(-line_integral) * field
    # scatter is born in tissue (single-scatter weight L*exp(-L)), spread over tens of millimetres and
    # scaled to the sampled scatter-to-primary ratio behind the spine
    scatter = _blur_large(primary * line_integral, 40.0 / render_spacing, reduce=4)
    ratio = float(np.median(scatter[aec_box])) / max(float(np.median(primary[aec_box])), 1e-6)
    scatter *= params.scatter_to_primary / max(ratio, 1e-6)
    body = (field > 0.99) & (line_integral > 0.5)  # the patient, not air or collimator

    noiseless = primary + scatter
    signal = upsample(noiseless, f)
    # quantum (variance = signal) and electronic noise drawn together, then blurred by the detector
    noise_sd = np.sqrt(signal + params.electronic_noise**2)
    signal += noise_sd * rng.standard_normal(signal.shape, dtype=np.float32)
    signal = ndimage.gaussian_filter(signal, params.detector_blur_px)
    density = -np.log(np.maximum(signal, 0.5) / n0)

    # film processing: compress the large-scale range (torso thickness) to show local bone contrast;
    # the local mean is taken over the patient only (normalised convolution) so skin edges get no halo
    smooth_density = -np.log(np.maximum(noiseless, 0.5) / n0)
    weight = body.astype(np.float32)
    sigma = 40.0 / render_spacing
    coverage = _blur_large(weight, sigma, reduce=4)
    local_mean = _blur_large(smooth_density * weight, sigma, reduce=4) / np.maximum(coverage, 1e-3)
    if body.any():
        local_mean = np.where(coverage > 0.02, local_mean, float(smooth_density[body].mean()))
    # edge enhancement (unsharp mask, ~3 mm) of the anatomy, added with the equalisation in one pass
    detail = smooth_density - ndimage.gaussian_filter(smooth_density, 3.0 / render_spacing, mode="nearest")
    density += upsample(params.edge_enhancement * detail - params.equalization * local_mean, f)

    body_density = density[::f, ::f][body] if body.any() else density.ravel()
    sample = body_density[:: max(1, body_density.size // 200_000)]
    lo, hi = np.percentile(sample, [params.window_low, params.window_high])
    film = np.clip(0.05 + 0.85 * (density - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    film **= params.gamma
    if params.marker:
        draw_marker(film, params.marker, rng, pixel_spacing)
    return film.astype(np.float32, copy=False)


def quantize(film: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0, 1] float film to uint16 (16-bit) or uint8 (8-bit) grey levels."""
    top = (1 << bit_depth) - 1
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    return np.round(film * top).astype(dtype)


def chord_mask(chord: np.ndarray, upsample_factor: int, threshold_mm: float = 0.3) -> np.ndarray:
    """Binary detector-grid mask of a structure from its render-grid chord map (bbox-cropped upsampling)."""
    out = np.zeros((chord.shape[0] * upsample_factor, chord.shape[1] * upsample_factor), dtype=bool)
    rows, cols = np.nonzero(chord > 0)
    if rows.size == 0:
        return out
    r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, chord.shape[0])
    c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, chord.shape[1])
    crop = upsample(chord[r0:r1, c0:c1], upsample_factor)
    f = upsample_factor
    out[r0 * f : r1 * f, c0 * f : c1 * f] = crop > threshold_mm
    return out


def polyline_mask(shape: tuple[int, int], rows_cols: np.ndarray, width_px: float) -> np.ndarray:
    """Binary mask of a thick polyline through (row, col) points."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    points = [(float(c), float(r)) for r, c in rows_cols]
    if len(points) >= 2:
        ImageDraw.Draw(canvas).line(points, fill=255, width=max(1, int(round(width_px))), joint="curve")
    return np.asarray(canvas) > 0


def polygons_mask(shape: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    """Binary mask of filled polygons, each an (N, 2) array of (row, col) vertices."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon([(float(c), float(r)) for r, c in polygon], fill=255)
    return np.asarray(canvas) > 0


def lat_column_masks(
    shape: tuple[int, int],
    corners: dict[str, dict[str, np.ndarray]],
    column: list[str],
    vertebrae: list[str],
    vertebra_mask: np.ndarray,
    line_width_px: float,
) -> dict[str, np.ndarray]:
    """A LAT film's ``Lat_Disk_Height`` mask and its two vertebral lines, from the bodies' corners.

    ``corners``: body name -> corner name (``anterior_superior``, ``posterior_inferior``, ...) ->
    (row, col) on the film; ``column``: the bodies top to bottom (the sacrum last) whose facing
    endplates bound a disk space; ``vertebrae``: the bodies the lines run through. The disk mask
    leaves out ``vertebra_mask``. Shared by the generator and the DRR (:mod:`spine_app.drr.study`).
    """
    disks = [
        np.array(
            [
                corners[up]["anterior_inferior"],
                corners[up]["posterior_inferior"],
                corners[lo]["posterior_superior"],
                corners[lo]["anterior_superior"],
            ]
        )
        for up, lo in zip(column[:-1], column[1:])
    ]
    masks = {"Lat_Disk_Height": polygons_mask(shape, disks) & ~vertebra_mask}
    for name, side in (("Lat_Anterior_Vertebral_Line", "anterior"), ("Lat_Posterior_Vertebral_Line", "posterior")):
        points = np.array([corners[v][f"{side}_{end}"] for v in vertebrae for end in ("superior", "inferior")])
        masks[name] = polyline_mask(shape, points, line_width_px)
    return masks
