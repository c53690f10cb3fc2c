"""Datasets for the bundle: find (or create) the study datalist, and pick a split."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch.distributed as dist
from monai.data import CacheDataset, Dataset
from torch.utils.data import Dataset as TorchDataset

from spine_app.channels import MASK_NAMES, VIEW_KEYS, avail_key, seg_key
from spine_app.data.importer import import_dataset, load_datalist, truth_spacing
from spine_app.data.layout import find_studies
from spine_app.data.levels import check_label_source

logger = logging.getLogger(__name__)


#: the split of an extra training dataset: every study trains (its films are never the benchmark)
TRAINING_ONLY = (1.0, 0.0, 0.0)
#: generator settings of the extra training studies: LAT films facing the canonical way, whose
#: vertebral lines are supervised (the augmentation mirrors films and hides their lines itself)
EXTRA_OVERRIDES: dict[str, Any] = {"lat_facing": "left"}


#: the ``preset`` of an extra training dataset that renders DRR studies of the generator's CT volumes
#: (``spine-app drr``'s ray caster, :func:`spine_app.drr.scenes.render_scene_studies`) instead of drawing films
DRR_PRESET = "drr"


#: the embedded default's folder (train.yaml ``dataset_dir``), relative to the working directory
EMBEDDED_DEFAULT_DIR = "data/synthetic"


def is_embedded_default(dataset_dir: str, datalist: str) -> bool:
    """True when the run trains on the embedded default: ``dataset_dir`` is its folder and ``datalist``
    that folder's own ``datalist.json``. Only then do the main job's extras apply (the extra framed
    and default studies, the second cycle); a run given its own ``--dataset_dir`` or ``--datalist``
    (a robustness experiment, a MONAI Label fine-tune, a user's data) trains on that alone."""
    if Path(dataset_dir) != Path(EMBEDDED_DEFAULT_DIR):
        return False
    return Path(datalist).resolve() == (Path(dataset_dir) / "datalist.json").resolve()


def ensure_datalist(
    dataset_dir: str,
    synthetic_studies: int = 300,
    seed: int = 0,
    preset: str = "default",
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    overrides: dict[str, Any] | None = None,
    drr_fields_of_view: Sequence[str] | None = None,
) -> str:
    """Path of ``dataset_dir/datalist.json``, importing the studies there first if needed.

    If ``dataset_dir`` holds no study, the embedded default is generated there first:
    ``synthetic_studies`` synthetic studies of ``preset`` with ``seed`` and generator ``overrides``
    (this is logged), split by ``fractions``; preset :data:`DRR_PRESET` renders DRR studies of the
    framings ``drr_fields_of_view`` (None: all) instead. An existing datalist is reused as it is:
    after adding studies, delete it or run ``spine-app import`` again.
    """
    root = Path(dataset_dir)
    datalist = root / "datalist.json"
    prepare = partial(
        _prepare,
        root,
        datalist,
        synthetic_studies=synthetic_studies,
        seed=seed,
        preset=preset,
        split_seed=split_seed,
        fractions=tuple(fractions),
        overrides=overrides or {},
        drr_fields_of_view=drr_fields_of_view,
    )
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # under DDP, rank 0 generates/imports while the other ranks wait at the barrier
        if dist.get_rank() == 0:
            prepare()
        dist.barrier()
    else:
        prepare()
    return str(datalist)


def extra_training_datalist(
    dataset_dir: str, studies: int, seed: int, preset: str, fields_of_view: Sequence[str] | None = None
) -> str | None:
    """The datalist of the extra training studies (all in its ``training`` split), generating
    ``studies`` synthetic studies of ``preset`` there first if the folder holds none; None when
    ``studies`` is 0 (train on the main dataset alone). ``fields_of_view`` (preset :data:`DRR_PRESET`
    only): render only these framings of the DRR plan, in its proportions (None: every framing).

    This is how the main job widens the generator (other fields of view, the thorax, implants:
    preset ``mixed_fov``) without touching the benchmark split of the main dataset.
    """
    if not studies:
        return None
    if fields_of_view is not None and preset != DRR_PRESET:
        raise ValueError(
            f"{dataset_dir}: fields of view are chosen before rendering for the drr preset only, not {preset}"
        )
    return ensure_datalist(
        dataset_dir, studies, seed, preset, 0, TRAINING_ONLY, EXTRA_OVERRIDES, drr_fields_of_view=fields_of_view
    )


@dataclass(frozen=True)
class ExtraStudies:
    """An extra training datalist (None: none) and the framings kept of it (truth.json
    ``field_of_view``; None: all), on top of the run's ``extra_fields_of_view``."""

    datalist: str | None
    fields_of_view: Sequence[str] | None = None
    setting: str = "fields_of_view"  # the setting that chose them, named in errors


def training_entries(
    datalist: str,
    limit: int | None = None,
    extra: str | ExtraStudies | Sequence[str | ExtraStudies | None] | None = None,
    extra_level_labels: str | None = None,
    extra_fields_of_view: Sequence[str] | None = None,
    extra_default: str | None = None,
) -> list[dict[str, Any]]:
    """The training split of ``datalist`` (optionally its first ``limit``) followed by the whole
    training split of the ``extra`` datalist, if any, or of each of several (None ones skipped: the
    main job's framed studies and its DRR studies, ``extra_drr_studies``; an :class:`ExtraStudies`
    keeps only its own framings of its datalist). ``extra_level_labels`` (a
    :data:`spine_app.data.levels.LEVEL_LABEL_SOURCES` value) sets where the extra studies' per-level
    labels come from, overriding the run's ``level_labels`` for them alone (``study``: their levels
    learn from the study label only, through the multiple-instance pooling). ``extra_fields_of_view``
    keeps only the extra studies of those framings (their truth.json ``field_of_view``; None: all):
    a leave-one-field-of-view-out run. The whole training split of the ``extra_default`` datalist, if
    any (more studies of the main dataset's framing), comes last with its own per-level labels: none
    of the ``extra_*`` settings apply to it."""
    entries = datalist_split(datalist, "training", limit)
    own = len(entries)
    sources = [extra] if isinstance(extra, (str, ExtraStudies)) else list(extra or ())
    for item in sources:
        item = item if isinstance(item, ExtraStudies) else ExtraStudies(item)
        if not item.datalist:
            continue
        source = item.datalist
        kept = keep_fields_of_view(datalist_split(source, "training"), extra_fields_of_view, source)
        kept = keep_fields_of_view(kept, item.fields_of_view, source, item.setting)
        added = with_extra_level_labels(kept, extra_level_labels)
        if len(entries) == own:
            logger.warning("training on %d studies of %s and %d extra studies of %s", own, datalist, len(added), source)
        else:
            logger.warning("and %d extra studies of %s", len(added), source)
        entries = entries + added
    if extra_default:
        more = datalist_split(extra_default, "training")
        logger.warning("and %d extra studies with per-level labels of %s", len(more), extra_default)
        entries = entries + more
    return entries


def with_extra_level_labels(entries: list[dict[str, Any]], extra_level_labels: str | None) -> list[dict[str, Any]]:
    """``entries`` whose per-level labels come from ``extra_level_labels`` (a
    :data:`spine_app.data.levels.LEVEL_LABEL_SOURCES` value; None: the run's ``level_labels``)."""
    if check_label_source(extra_level_labels, "extra_level_labels") is None:
        return entries
    return [{**entry, "level_labels": extra_level_labels} for entry in entries]


class RelabelledStudies(TorchDataset):
    """``dataset`` (the run's training set, a MONAI ``Dataset``/``CacheDataset``) with the per-level
    labels of the studies that name their own source (an entry's ``level_labels``: the main job's
    extra studies, which train through their study label) read from ``source`` instead, e.g.
    ``truth``; with ``fields_of_view``, only those of these framings (their truth.json
    ``field_of_view``). Every other study is ``dataset``'s own item. The relabelled studies go through
    the same ``transform`` (cached like ``dataset``'s when it caches), so the level refit can read
    their per-level grades while training never sees them (``RefitSettings.extra_labels``). Seeding a
    loader worker seeds that one transform, as it would for ``dataset``."""

    def __init__(
        self, dataset: Any, source: str, fields_of_view: Sequence[str] | None = None, cache_workers: int | None = None
    ) -> None:
        check_label_source(source, "level_refit_extra_labels")
        self.base, self.transform = dataset, dataset.transform
        entries = list(dataset.data)
        names = relabelled_fields_of_view(fields_of_view)
        changed = [
            i
            for i, entry in enumerate(entries)
            if entry.get("level_labels") not in (None, source) and (names is None or field_of_view_name(entry) in names)
        ]
        self.position = {index: k for k, index in enumerate(changed)}
        self.data = [
            {**entry, "level_labels": source} if i in self.position else entry for i, entry in enumerate(entries)
        ]
        picked = [self.data[i] for i in changed]
        if isinstance(dataset, CacheDataset):
            self.relabelled: Any = CacheDataset(
                picked, dataset.transform, cache_rate=1.0, num_workers=cache_workers, progress=False
            )
        else:
            self.relabelled = Dataset(picked, dataset.transform)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        k = self.position.get(int(index))
        return self.base[index] if k is None else self.relabelled[k]

    def set_random_state(self, seed: int | None = None, state: Any = None) -> RelabelledStudies:
        """Seed the one shared transform (MONAI's worker seeding calls this instead of walking the attributes)."""
        self.transform.set_random_state(seed=seed, state=state)
        return self


def relabelled_fields_of_view(names: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """``level_refit_extra_fields_of_view`` as a tuple of framing names (None: every framing)."""
    return fields_of_view_setting(names, "level_refit_extra_fields_of_view")


def fields_of_view_setting(names: Sequence[str] | str | None, setting: str) -> tuple[str, ...] | None:
    """A setting that names framings (one, a list, or null) as a tuple of framing names (None: every
    framing); ValueError naming ``setting`` for an unknown framing or an empty list."""
    if names is None or (isinstance(names, str) and names.strip().lower() in ("null", "none")):
        return None
    wanted = framing_names(names, setting)
    if not wanted:
        raise ValueError(f"{setting}: an empty list names no framing (null: all of them)")
    return wanted


def framing_names(names: Sequence[str] | str, setting: str) -> tuple[str, ...]:
    """``names`` (one framing or several) as a tuple, each one of the generator's fields of view;
    ValueError naming ``setting`` for an unknown one."""
    from spine_app.synthetic.config import FIELDS_OF_VIEW

    wanted = (names,) if isinstance(names, str) else tuple(names)
    unknown = [name for name in wanted if name not in FIELDS_OF_VIEW]
    if unknown:
        raise ValueError(f"{setting}: unknown {unknown}; choose from {', '.join(FIELDS_OF_VIEW)}")
    return wanted


def refit_studies(
    dataset: Any, source: str | None, fields_of_view: Sequence[str] | None = None, cache_workers: int | None = None
) -> Any:
    """The level refit's studies: ``dataset`` itself, or a :class:`RelabelledStudies` view of it whose
    studies that name their own per-level label source (of ``fields_of_view``, None: any) read
    ``source`` instead (None: as trained)."""
    if check_label_source(source, "level_refit_extra_labels") is None:
        return dataset
    view = RelabelledStudies(dataset, source, fields_of_view, cache_workers)
    if not view.position:
        return dataset
    logger.warning("level refit: the per-level labels of %d extra studies read from %s", len(view.position), source)
    return view


def second_cycle_entries(datalist: str | None, extra_level_labels: str | None = None) -> list[dict[str, Any]]:
    """The training split of ``datalist`` (studies only a run's second cycle draws; none when None),
    their per-level labels from ``extra_level_labels`` as for the first cycle's extra studies."""
    if not datalist:
        return []
    added = with_extra_level_labels(datalist_split(datalist, "training"), extra_level_labels)
    logger.warning("and %d studies of %s in the second cycle only", len(added), datalist)
    return added


def field_of_view_name(entry: dict[str, Any]) -> str | None:
    """The framing a synthetic study was drawn with (its truth.json ``field_of_view.name``), or None."""
    truth = entry.get("truth")
    if not truth or not Path(truth).is_file():
        return None
    framing = json.loads(Path(truth).read_text()).get("field_of_view") or {}
    return framing.get("name")


def keep_fields_of_view(
    entries: list[dict[str, Any]],
    names: Sequence[str] | None,
    source: str = "the extra datalist",
    setting: str = "extra_fields_of_view",
) -> list[dict[str, Any]]:
    """The ``entries`` whose field of view is one of ``names`` (all of them when ``names`` is None);
    ValueError naming ``setting`` for an unknown framing, or ``source`` when none is left."""
    if names is None:
        return entries
    wanted = list(framing_names(names, setting))
    kept = [entry for entry in entries if field_of_view_name(entry) in wanted]
    if not kept:
        raise ValueError(f"{source}: no training study of the fields of view {wanted}")
    logger.warning("kept %d of %d studies of %s (fields of view %s)", len(kept), len(entries), source, wanted)
    return kept


def _prepare(
    root: Path,
    datalist: Path,
    synthetic_studies: int,
    seed: int,
    preset: str,
    split_seed: int,
    fractions: tuple[float, float, float],
    overrides: dict[str, Any],
    drr_fields_of_view: Sequence[str] | None = None,
) -> None:
    """Generate the synthetic default if ``root`` holds no study, then import it, unless a datalist exists."""
    if datalist.is_file():
        return
    has_studies = root.is_dir() and any(study.images for study in find_studies(root))
    if not has_studies and preset == DRR_PRESET:
        _render_drr_studies(root, synthetic_studies, seed, drr_fields_of_view)
    elif not has_studies:
        from spine_app.synthetic.generator import generate_dataset

        logger.warning(
            "no studies in %s: generating synthetic studies there (%d studies, preset %s, seed %d)",
            root,
            synthetic_studies,
            preset,
            seed,
        )
        # no study here: overwrite only lets it write beside other files (it replaces generated ones only)
        generate_dataset(root, synthetic_studies, seed=seed, preset=preset, overwrite=True, **overrides)
    summary = import_dataset(root, datalist, seed=split_seed, fractions=fractions)["summary"]
    logger.warning(
        "imported %d studies from %s (%d skipped) -> %s", summary["imported"], root, summary["skipped"], datalist
    )


def _render_drr_studies(root: Path, studies: int, seed: int, fields_of_view: Sequence[str] | None = None) -> None:
    """``studies`` DRR studies of the generator's scenes in ``root`` (the framings ``fields_of_view``,
    None: all, in the proportions of :data:`spine_app.drr.scenes.TRAINING_PLAN`, 2 mm voxels, 1 mm
    pixels, divergent beam); the CT volumes and each framing's renders stay in ``root/.scenes``
    (hidden from the import)."""
    from spine_app.drr.scenes import SceneRender, framing_plan, render_scene_studies, scaled_plan

    plan = scaled_plan(studies, framing_plan(fields_of_view))
    logger.warning(
        "no studies in %s: rendering DRR studies of the generator's scenes there (%s, seed %d; about 5 s a study)",
        root,
        ", ".join(f"{n} {name}" for name, n in plan.items()),
        seed,
    )
    render_scene_studies(root / ".scenes", plan, seed, SceneRender(voxel_mm=2.0, pixel_mm=1.0), root)


def datalist_split(datalist: str, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The entries of one split (absolute paths), optionally only the first ``limit``."""
    entries = load_datalist(datalist)[split]
    if not entries:
        raise ValueError(f"{datalist}: the {split!r} split is empty")
    return entries[:limit] if limit else entries


def mask_priors(datalist: str, canvas: tuple[int, int], limit: int = 40) -> list[float]:
    """Mean foreground fraction of each of the eight masks on the working canvas, over the first
    ``limit`` training studies where the mask is annotated (for :func:`init_output_bias`)."""
    import numpy as np

    from spine_app.data.study_transforms import LoadStudyd

    load = LoadStudyd(tuple(canvas))
    sums, counts = np.zeros(len(MASK_NAMES)), np.zeros(len(MASK_NAMES))
    for entry in load_datalist(datalist)["training"][:limit]:
        data = load(entry)
        for view in VIEW_KEYS:
            avail = np.asarray(data[avail_key(view)]) > 0
            fraction = np.asarray(data[seg_key(view)]).reshape(len(MASK_NAMES), -1).mean(axis=1)
            sums[avail] += fraction[avail]
            counts[avail] += 1
    return [float(s / c) if c else 0.01 for s, c in zip(sums, counts)]


def study_entry(
    study_id: str, images: dict[str, Any], label: int | None = None, spacing: list[float] | None = None
) -> dict[str, Any]:
    """A datalist-style entry without masks for ``images`` ("AP"/"LAT" -> path): what inference reads.
    ``spacing`` (mm, e.g. a synthetic study's truth.json) serves films whose files carry none."""
    entry: dict[str, Any] = {
        "study_id": study_id,
        "label": label,
        "image_ap": str(images["AP"]) if "AP" in images else None,
        "image_lat": str(images["LAT"]) if "LAT" in images else None,
        "masks": [None] * len(MASK_NAMES),
        "mask_present": [0] * len(MASK_NAMES),
    }
    if spacing:
        entry.update(meta_ap={"spacing": list(spacing)}, meta_lat={"spacing": list(spacing)})
    return entry


def tall_film_spacing(working_spacing_mm: float | None, batch_size: int) -> float | None:
    """``LoadStudyd``'s ``working_spacing_mm`` of inference.yaml: the setting itself, refused (ValueError)
    with a batch of more than one study, whose canvases could differ and not stack."""
    if working_spacing_mm is None:
        return None
    if int(batch_size) != 1:
        raise ValueError(
            f"working_spacing_mm ({working_spacing_mm}) gives tall films their own canvas and needs batch_size 1, "
            f"got batch_size {batch_size} (set working_spacing_mm null to batch studies)"
        )
    return float(working_spacing_mm)


def inference_entries(dataset_dir: str) -> list[dict[str, Any]]:
    """Datalist-style entries (no masks) for every study under ``dataset_dir``, labelled or not."""
    entries = []
    for study in find_studies(dataset_dir):
        if not study.images:
            logger.warning("%s: no AP or LAT image found; skipped", study.folder)
            continue
        entries.append(study_entry(study.study_id, study.images, study.label, truth_spacing(study.truth)))
    if not entries:
        raise ValueError(f"{dataset_dir}: no study with an AP or LAT image")
    return entries
