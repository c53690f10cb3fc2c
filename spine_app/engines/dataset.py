"""Datasets for the bundle: find (or create) the study datalist, and pick a split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist

from spine_app.channels import MASK_NAMES, VIEW_KEYS, avail_key, seg_key
from spine_app.data.importer import import_dataset, load_datalist
from spine_app.data.layout import find_studies

logger = logging.getLogger(__name__)


def ensure_datalist(
    dataset_dir: str, synthetic_studies: int = 300, seed: int = 0, preset: str = "default", split_seed: int = 0
) -> str:
    """Path of ``dataset_dir/datalist.json``, importing the studies there first if needed.

    If ``dataset_dir`` holds no study, the embedded default is generated there first:
    ``synthetic_studies`` synthetic studies of ``preset`` with ``seed`` (this is logged). An existing
    datalist is reused as it is: after adding studies, delete it or run ``spine-app import`` again.
    """
    root = Path(dataset_dir)
    datalist = root / "datalist.json"
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # under DDP, rank 0 generates/imports while the other ranks wait at the barrier
        if dist.get_rank() == 0:
            _prepare(root, datalist, synthetic_studies, seed, preset, split_seed)
        dist.barrier()
    else:
        _prepare(root, datalist, synthetic_studies, seed, preset, split_seed)
    return str(datalist)


def _prepare(root: Path, datalist: Path, synthetic_studies: int, seed: int, preset: str, split_seed: int) -> None:
    """Generate the synthetic default if ``root`` holds no study, then import it, unless a datalist exists."""
    if datalist.is_file():
        return
    has_studies = root.is_dir() and any(study.images for study in find_studies(root))
    if not has_studies:
        from spine_app.synthetic.generator import generate_dataset

        logger.warning(
            "no studies in %s: generating the default synthetic dataset (%d studies, preset %s, seed %d)",
            root,
            synthetic_studies,
            preset,
            seed,
        )
        # no study here: overwrite only lets it write beside other files (it replaces generated ones only)
        generate_dataset(root, synthetic_studies, seed=seed, preset=preset, overwrite=True)
    summary = import_dataset(root, datalist, seed=split_seed)["summary"]
    logger.warning(
        "imported %d studies from %s (%d skipped) -> %s", summary["imported"], root, summary["skipped"], datalist
    )


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


def study_entry(study_id: str, images: dict[str, Any], label: int | None = None) -> dict[str, Any]:
    """A datalist-style entry without masks for ``images`` ("AP"/"LAT" -> path): what inference reads."""
    return {
        "study_id": study_id,
        "label": label,
        "image_ap": str(images["AP"]) if "AP" in images else None,
        "image_lat": str(images["LAT"]) if "LAT" in images else None,
        "masks": [None] * len(MASK_NAMES),
        "mask_present": [0] * len(MASK_NAMES),
    }


def inference_entries(dataset_dir: str) -> list[dict[str, Any]]:
    """Datalist-style entries (no masks) for every study under ``dataset_dir``, labelled or not."""
    entries = []
    for study in find_studies(dataset_dir):
        if not study.images:
            logger.warning("%s: no AP or LAT image found; skipped", study.folder)
            continue
        entries.append(study_entry(study.study_id, study.images, study.label))
    if not entries:
        raise ValueError(f"{dataset_dir}: no study with an AP or LAT image")
    return entries
