"""Settings of the synthetic spine radiograph generator and its presets.

The dataclass defaults *are* the ``default`` preset; ``configs/synthetic/<name>.yaml`` files override
some of them (``easy``, ``hard``, ...). A range ``[lo, hi]`` is sampled uniformly per study.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from spine_app.resources import config_dir

Range = tuple[float, float]

#: vertebrae the generator can model, top to bottom (the sacrum, "S1", is modelled below L5)
ALL_LEVELS: tuple[str, ...] = ("C7",) + tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))
#: names a film may be framed on: the vertebrae and the sacrum
FRAME_LEVELS: tuple[str, ...] = ALL_LEVELS + ("S1",)


@dataclass(frozen=True)
class FieldOfView:
    """A radiographic framing: the levels the film is centred on and the detector size used for it."""

    name: str
    levels: tuple[str, str]  # top and bottom level framed ("S1" = the sacrum)
    film_height_mm: Range
    ap_width_mm: Range
    lat_width_mm: Range

    def level_names(self) -> list[str]:
        """The framed levels top to bottom (vertebrae, then "S1" when the sacrum is framed)."""
        top, bottom = (FRAME_LEVELS.index(name) for name in self.levels)
        return list(FRAME_LEVELS[top : bottom + 1])


#: the framings ``field_of_view`` can draw from, on the cassette/detector sizes used for them
FIELDS_OF_VIEW: dict[str, FieldOfView] = {
    "lumbar": FieldOfView("lumbar", ("L1", "S1"), (350.0, 430.0), (280.0, 350.0), (280.0, 350.0)),
    "thoracolumbar": FieldOfView("thoracolumbar", ("T10", "L5"), (380.0, 430.0), (230.0, 300.0), (230.0, 300.0)),
    "thoracic": FieldOfView("thoracic", ("T1", "T12"), (400.0, 430.0), (330.0, 400.0), (300.0, 350.0)),
    "whole_spine": FieldOfView("whole_spine", ("C7", "S1"), (800.0, 900.0), (300.0, 350.0), (300.0, 350.0)),
}


def closest_field_of_view(levels: list[str] | tuple[str, ...]) -> FieldOfView | None:
    """The framing of :data:`FIELDS_OF_VIEW` whose levels overlap ``levels`` (names of
    :data:`FRAME_LEVELS`, e.g. a film's levels in view) the most (intersection over union; the
    narrower framing on a tie), or None when no framing shares a level with them: how a film that
    was not drawn from a framing (a DRR of a CT volume) is filed with the generator's framings."""
    shown = {name for name in levels if name in FRAME_LEVELS}
    best, best_score = None, 0.0
    for fov in sorted(FIELDS_OF_VIEW.values(), key=lambda f: len(f.level_names())):
        framed = set(fov.level_names())
        score = len(shown & framed) / len(shown | framed) if shown else 0.0
        if score > best_score:
            best, best_score = fov, score
    return best


PRESET_DIR = config_dir("synthetic")  # the checkout's configs/synthetic or the wheel's copy


@dataclass
class SynthConfig:
    """Every knob of the generator (see docs/data.md for what each does to the images)."""

    # anatomy
    levels: tuple[str, str] = ("T10", "L5")  # region of interest: the film is framed on these levels
    context_levels: int = 2  # extra vertebrae modelled above the top level (annotated when in view)
    patient_scale: Range = (0.9, 1.1)  # vertebra size factor
    torso_scale: Range = (0.85, 1.25)  # body habitus (soft-tissue thickness) factor
    lordosis_deg: Range = (30.0, 60.0)
    kyphosis_deg: Range = (20.0, 45.0)  # over the thoracic levels, scaled to those modelled
    scoliosis_deg: Range = (0.0, 12.0)  # peak coronal tilt of the curve
    axial_rotation_deg: Range = (0.0, 6.0)
    normal_height_variation: float = 0.06  # natural per-level height jitter (Normal studies stay < 15 %)
    bowel_gas_pockets: tuple[int, int] = (2, 8)

    # field of view (empty: the film is framed on ``levels`` with the film sizes below, as before)
    field_of_view: dict[str, float] = field(default_factory=dict)  # framing -> weight, drawn per study
    long_side_px: tuple[int, int] | None = None  # film's long side in pixels (sets the spacing; None: pixel_spacing_mm)

    # what real patients have (each drawn per study from its own random stream; 0 / False: off)
    thorax: bool = False  # heart, aorta, mediastinum, diaphragm, rib cage, scapulae, shoulders, breasts
    breast_probability: float = 0.35  # with ``thorax``: breast shadows
    osteoporosis_probability: float = 0.0  # thin cortex, low bone density
    degeneration_probability: float = 0.0  # narrowed disks, osteophytes and endplate sclerosis
    cement_probability: float = 0.0  # per fractured body: vertebroplasty cement
    instrumentation_probability: float = 0.0  # pedicle screws and rods over 2-4 levels
    grid_line_probability: float = 0.0  # anti-scatter grid lines on the film
    ecg_probability: float = 0.0  # ECG electrodes and leads on the chest
    aortic_calcification_probability: float = 0.0  # calcified plaques in the aorta's wall in front of the column
    lat_mask_concavity: bool = False  # LAT vertebra mask follows concave (biconcave) endplates, not the rims

    # labels
    damaged_fraction: float = 0.5
    fractures_per_study: tuple[int, int] = (1, 3)
    grade_weights: tuple[float, float, float] = (0.3, 0.4, 0.3)  # Genant grade 1, 2, 3
    type_weights: dict[str, float] = field(default_factory=lambda: {"wedge": 0.5, "biconcave": 0.3, "crush": 0.2})
    listhesis_probability: float = 0.15  # per Damaged study
    disk_collapse_probability: float = 0.15  # per Damaged study

    # film and detector
    pixel_spacing_mm: Range = (0.30, 0.36)
    film_height_mm: Range = (380.0, 430.0)
    ap_width_mm: Range = (230.0, 300.0)
    lat_width_mm: Range = (230.0, 300.0)
    render_voxel_mm: float = 0.6  # 3-D model sampling; projections are upsampled to the pixel grid
    lat_facing: str = "left"  # "left", "right" or "random": side the patient faces on the LAT film
    projection: str = "parallel"  # "parallel" or "divergent" (point source: magnification, oblique endplates)
    source_isocentre_mm: Range = (850.0, 1650.0)  # divergent: source to the patient's mid-plane (SID 1-1.8 m)

    # imaging chain
    detector_quanta: Range = (150.0, 2000.0)  # quanta per pixel behind the spine (dose set by AEC)
    electronic_noise: Range = (2.0, 8.0)  # detector read noise, in quanta
    scatter_to_primary: Range = (0.3, 1.2)  # scatter fraction relative to the blurred primary
    detector_blur_px: Range = (0.5, 1.1)
    heel_effect: Range = (0.0, 0.25)  # relative exposure drop from top to bottom
    gamma: Range = (0.8, 1.25)
    edge_enhancement: Range = (0.0, 1.0)  # unsharp-mask strength of the film processing
    equalization: Range = (0.8, 0.95)  # share of the large-scale density removed (dynamic-range compression)
    window_percentiles: Range = (0.5, 99.5)
    collimation_probability: float = 0.7
    marker_probability: float = 0.7  # burned-in "L"/"R" and text markers

    # lines and output
    line_width_mm: float = 1.2
    bit_depth: int = 16  # 8 or 16
    image_format: str = "png"  # "png", "dcm" or "mixed" (alternates PNG and DICOM per study)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        self._validate_realism()
        top, bottom = self.levels
        for level in (top, bottom):
            if level not in ALL_LEVELS:
                raise ValueError(f"levels: unknown level {level!r}; choose from {', '.join(ALL_LEVELS)}")
        if ALL_LEVELS.index(top) >= ALL_LEVELS.index(bottom):
            raise ValueError(f"levels: {top} must be above {bottom}")
        if not 0.0 <= self.damaged_fraction <= 1.0:
            raise ValueError("damaged_fraction must be within [0, 1]")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth}")
        if self.image_format not in ("png", "dcm", "mixed"):
            raise ValueError(f"image_format must be png, dcm or mixed, got {self.image_format!r}")
        if self.projection not in ("parallel", "divergent"):
            raise ValueError(f"projection must be parallel or divergent, got {self.projection!r}")
        if self.source_isocentre_mm[0] < 300.0:
            raise ValueError(f"source_isocentre_mm must be at least 300 mm, got {list(self.source_isocentre_mm)}")
        if self.lat_facing not in ("left", "right", "random"):
            raise ValueError(f"lat_facing must be left, right or random, got {self.lat_facing!r}")
        if set(self.type_weights) - {"wedge", "biconcave", "crush"}:
            raise ValueError(f"type_weights: unknown fracture type in {sorted(self.type_weights)}")
        if not 0 < self.normal_height_variation < 0.15:
            raise ValueError("normal_height_variation must be within (0, 0.15)")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "Range" and (len(value) != 2 or value[0] > value[1]):
                raise ValueError(f"{f.name}: expected [low, high] with low <= high, got {value}")

    def _validate_realism(self) -> None:
        """Raise ValueError naming the first invalid field-of-view or realism setting."""
        for name, weight in self.field_of_view.items():
            if name not in FIELDS_OF_VIEW:
                raise ValueError(f"field_of_view: unknown framing {name!r}; choose from {', '.join(FIELDS_OF_VIEW)}")
            if not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"field_of_view: weight of {name} must be a number >= 0, got {weight!r}")
        if self.field_of_view and sum(self.field_of_view.values()) <= 0:
            raise ValueError("field_of_view: at least one weight must be > 0")
        if self.long_side_px is not None:
            lo, hi = self.long_side_px
            if not 64 <= lo <= hi <= 8000:
                raise ValueError(f"long_side_px: expected [low, high] within 64..8000, got {list(self.long_side_px)}")
        for name in ("thorax", "lat_mask_concavity"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")

    def fields_of_view(self) -> list[FieldOfView]:
        """The framings this config draws from (empty when the film is framed on ``levels``)."""
        return [FIELDS_OF_VIEW[name] for name, weight in self.field_of_view.items() if weight > 0]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (recorded in every truth.json)."""
        return json_ready(dataclasses.asdict(self))


#: the per-study probabilities of the realism features
PROBABILITIES = (
    "breast_probability",
    "osteoporosis_probability",
    "degeneration_probability",
    "cement_probability",
    "instrumentation_probability",
    "grid_line_probability",
    "ecg_probability",
    "aortic_calcification_probability",
)


def json_ready(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return round(value, 4)
    return value


def available_presets() -> list[str]:
    """Names of the preset files shipped in configs/synthetic/."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(preset: str | Path = "default", **overrides: Any) -> SynthConfig:
    """A SynthConfig from a preset name or YAML path, with keyword overrides on top.

    Raises:
        ValueError: unknown preset, unknown setting or invalid value (the message names it).
    """
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file() and str(preset) != "default":
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(available_presets())}")
    values: dict[str, Any] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a preset must be a mapping of settings")
        values.update(loaded)
    elif Path(preset).suffix in (".yaml", ".yml"):
        raise ValueError(f"{path}: preset file not found")
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path.name}: unknown setting(s) {', '.join(unknown)}")
    return SynthConfig(**values)
