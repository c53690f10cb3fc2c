"""DRR studies of the generator's own scenes: each scene voxelised into a CT and its vertebra label
map (``spine-app synth --ct``) and rendered by ``spine-app drr``'s ray caster.

What ``scripts/drr_zero_shot.py`` (test sets: the shipped model on DRR films) and
``scripts/drr_training_set.py`` (a training-only set of every framing) render; see docs/drr.md and
docs/results.md "DRR films of CT volumes".
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spine_app.data.importer import import_dataset
from spine_app.drr.run import generate
from spine_app.drr.study import DrrSettings
from spine_app.synthetic.config import load_preset
from spine_app.synthetic.ct import write_ct

#: the framings of a DRR training set and how many scenes of each (``scripts/drr_training_set.py``)
TRAINING_PLAN: Mapping[str, int] = {"thoracic": 40, "thoracolumbar": 24, "whole_spine": 16, "lumbar": 16}


@dataclass(frozen=True)
class SceneRender:
    """How scenes become films: CT voxel size, film pixel size (both mm), the beam (``divergent`` |
    ``parallel``) and ``ct_film`` (the generator's own film frame instead of one framed on the
    labelled bodies, as a real CT without a generator film is framed)."""

    voxel_mm: float = 1.0
    pixel_mm: float = 1.0
    beam: str = "divergent"
    ct_film: bool = False


def render_scenes(folder: Path, preset: str, n: int, seed: int, render: SceneRender) -> float:
    """Voxelise ``n`` scenes of ``preset`` (seed ``seed``) into ``folder/ct/<index>`` and render one DRR
    study of each into ``folder/studies`` (a pose drawn per study); a CT already written is reused.
    Returns the seconds spent per study (CT and DRR)."""
    cfg = load_preset(preset)
    began = time.perf_counter()
    for index in range(n):
        ct = folder / "ct" / f"{index:03d}"
        if not (ct / "ct_labels.nii.gz").is_file():
            write_ct(cfg, seed, index, ct, render.voxel_mm)
        settings = DrrSettings(
            seed=seed * 1000 + index,
            beam=render.beam,
            pixel_mm=render.pixel_mm,
            use_ct_film=render.ct_film,
            preset=preset,
        )
        generate(ct / "ct.nii.gz", ct / "ct_labels.nii.gz", folder / "studies", settings)
        print(f"{preset} {index + 1}/{n} rendered ({time.perf_counter() - began:.0f} s)", flush=True)
    return (time.perf_counter() - began) / max(1, n)


def scaled_plan(studies: int, plan: Mapping[str, int] = TRAINING_PLAN) -> dict[str, int]:
    """``plan`` scaled to ``studies`` scenes in all, in its proportions (largest remainders; the first
    framings first on a tie): 96 gives :data:`TRAINING_PLAN` itself, 10 gives 4 / 2 / 2 / 2."""
    total = sum(plan.values())
    if studies < 0 or total <= 0:
        raise ValueError(f"scaled_plan: {studies} studies of a plan of {total}")
    exact = {name: studies * n / total for name, n in plan.items()}
    counts = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(plan, key=lambda name: counts[name] - exact[name])  # stable: plan order on ties
    for name in by_remainder[: studies - sum(counts.values())]:
        counts[name] += 1
    return counts


#: the framing named on the DRR films of each scene preset (truth.json ``field_of_view``: a film is
#: framed on its labelled bodies, so the lumbar scenes' films, T11-L5, are thoracolumbar ones)
FILM_FRAMING: Mapping[str, str] = {
    "thoracic": "thoracic",
    "thoracolumbar": "thoracolumbar",
    "whole_spine": "whole_spine",
    "lumbar": "thoracolumbar",
}


def framing_plan(fields_of_view: Sequence[str] | str | None, plan: Mapping[str, int] = TRAINING_PLAN) -> dict[str, int]:
    """``plan`` with every scene preset whose films are not of ``fields_of_view`` (:data:`FILM_FRAMING`)
    set to 0 scenes (None: ``plan`` as it is). The presets keep their places, so each one's scenes
    (their seeds) are those of the whole plan; ValueError for a framing no preset of the plan draws."""
    if fields_of_view is None:
        return dict(plan)
    wanted = [fields_of_view] if isinstance(fields_of_view, str) else list(fields_of_view)
    drawn = {FILM_FRAMING.get(preset, preset) for preset, n in plan.items() if n > 0}
    unknown = [name for name in wanted if name not in drawn]
    if unknown or not wanted:
        raise ValueError(
            f"DRR fields of view: no scene of the plan draws {unknown or 'nothing'}; choose from {', '.join(sorted(drawn))}"
        )
    return {preset: n if FILM_FRAMING.get(preset, preset) in wanted else 0 for preset, n in plan.items()}


def render_scene_studies(root: Path, plan: Mapping[str, int], seed: int, render: SceneRender, gathered: Path) -> None:
    """``plan[preset]`` scenes of each preset (seed ``seed`` + the preset's position in ``plan``)
    rendered into ``root/<preset>`` (:func:`render_scenes`), then, once all are rendered, their study
    folders copied into ``gathered`` (class folders), a study already there kept: an interrupted
    rendering leaves ``gathered`` as it was (the CT volumes written so far are reused next time)."""
    seeds = {preset: seed + k for k, (preset, n) in enumerate(plan.items()) if n > 0}
    for preset, preset_seed in seeds.items():
        render_scenes(root / preset, preset, plan[preset], preset_seed, render)
    for preset in seeds:
        for study in sorted((root / preset / "studies").glob("*/*")):
            target = gathered / study.parent.name / study.name
            if study.is_dir() and not target.exists():
                shutil.copytree(study, target)


def render_training_set(root: Path, plan: Mapping[str, int], seed: int, render: SceneRender) -> Path:
    """A training-only set of DRR studies: :func:`render_scene_studies` gathered in ``root/studies``
    and imported there as one datalist whose every study is in the ``training`` split; returns its path."""
    gathered = root / "studies"
    render_scene_studies(root, plan, seed, render, gathered)
    datalist = gathered / "datalist.json"
    import_dataset(gathered, datalist, seed=0, fractions=(1.0, 0.0, 0.0), workers=1)
    return datalist
