"""Fine-tuning from annotators' labels: datastore labels -> a datalist -> the bundle's own training
config (``bundle/configs/train.yaml``, started from the served weights) -> the new weights replace
the served ones only if the bundle's validation score (``StudyMetrics``: mean Dice, and AUROC when the
validation studies hold both classes) did not get worse on the same held-out studies.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spine_app import __version__
from spine_app.channels import MASK_NAMES, channels_of_view
from spine_app.data.importer import DATALIST_FORMAT, load_datalist
from spine_app.data.io import read_image, write_atomic, write_png
from spine_app.data.layout import CLASS_NAMES
from spine_app.engines.writer import sha256_of, write_json
from spine_app.monailabel.encoding import decode_masks

logger = logging.getLogger(__name__)


@dataclass
class LabelledImage:
    """One film with a saved label: its id, files, view, study and class (None = unknown)."""

    image_id: str
    image: Path
    label: Path
    view: str
    study: str
    study_class: int | None = None


def build_datalist(
    items: list[LabelledImage], workdir: Path, val_fraction: float = 0.2, seed: int = 0
) -> tuple[Path, list[dict[str, str]]]:
    """Write ``workdir/datalist.json`` (training / validation studies, seeded split) with each label
    decoded into the eight per-channel mask files; returns (path, skipped [{"image", "error"}]).

    Raises:
        ValueError: fewer than two usable studies (one to train on, one to validate on).
    """
    studies: dict[str, dict[str, LabelledImage]] = defaultdict(dict)
    skipped: list[dict[str, str]] = []
    for item in items:
        try:
            shape = read_image(item.image)[0].shape
            label = np.asarray(Image.open(item.label))
            if label.shape != shape:
                raise ValueError(f"label is {label.shape[0]}x{label.shape[1]} but the film is {shape[0]}x{shape[1]}")
            for channel, mask in decode_masks(label, item.view).items():
                write_png(workdir / "masks" / item.study / f"{MASK_NAMES[channel]}.png", mask)
        except Exception as err:  # noqa: BLE001 - a bad label skips its film, the others still train
            skipped.append({"image": item.image_id, "error": f"{item.label}: {err}".splitlines()[0]})
            continue
        studies[item.study][item.view] = item
    entries = [_entry(study, views, workdir) for study, views in sorted(studies.items())]
    if len(entries) < 2:
        raise ValueError(f"need labels on at least 2 studies (one to train, one to validate), have {len(entries)}")
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    n_val = min(len(entries) - 1, max(1, round(val_fraction * len(entries))))
    datalist = {
        "format": DATALIST_FORMAT,
        "root": str(workdir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spine_app_version": __version__,
        "split_settings": {"seed": seed, "validation_fraction": val_fraction},
        "training": [entries[i] for i in order[n_val:]],
        "validation": [entries[i] for i in order[:n_val]],
        "test": [],
        "unlabelled": [],
        "skipped": skipped,
    }
    return write_json(workdir / "datalist.json", datalist), skipped


def _entry(study: str, views: dict[str, LabelledImage], workdir: Path) -> dict[str, Any]:
    """A datalist entry: the labelled views' films and masks; the other view's channels unknown."""
    labels = [v.study_class for v in views.values() if v.study_class is not None]
    label = labels[0] if labels else None
    masks: list[str | None] = [None] * len(MASK_NAMES)
    for view in views:
        for c in channels_of_view(view):
            masks[c] = str(workdir / "masks" / study / f"{MASK_NAMES[c]}.png")
    return {
        "study_id": study,
        "label": label,
        "class_name": None if label is None else CLASS_NAMES[label],
        "image_ap": str(views["AP"].image) if "AP" in views else None,
        "image_lat": str(views["LAT"].image) if "LAT" in views else None,
        "views": sorted(views),
        "masks": masks,
        "mask_present": [int(m is not None) for m in masks],
        "truth": None,
    }


def validation_score(model: Path, datalist: Path, bundle: Path, canvas: list[int]) -> dict[str, float]:
    """The bundle's key metric (``StudyMetrics`` score) and mean Dice of ``model`` on the validation split."""
    from spine_app.bundle import load_bundle_network
    from spine_app.engines.metrics import StudyMetrics
    from spine_app.evaluation.runner import SplitRunner

    network, _ = load_bundle_network(bundle, model)
    metric = StudyMetrics()
    metric.records = SplitRunner(network, load_datalist(datalist)["validation"], canvas, workers=0).run()
    score = metric.compute()
    return {
        "score": round(float(score), 5),
        "mean_dice": round(float(metric.summary["mean_dice"]), 5),
        "auroc": None if np.isnan(metric.summary["auroc"]) else round(float(metric.summary["auroc"]), 5),
    }


def finetune(
    items: list[LabelledImage],
    served_model: Path,
    bundle: Path,
    workdir: Path,
    epochs: int = 5,
    val_fraction: float = 0.2,
    seed: int = 0,
    skipped: list[dict[str, str]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Fine-tune the served weights on the labelled films; replace them only if validation did not get
    worse. ``overrides`` are train.yaml ids (learning_rate, patch_size, batch_size ...); ``skipped``
    lists films left out before this call ({"image", "error"}), reported with the ones left out here.
    Writes and returns ``workdir/finetune.json``."""
    from monai.bundle import ConfigParser

    from spine_app.robustness.experiments import train_bundle

    workdir.mkdir(parents=True, exist_ok=True)
    datalist, bad_labels = build_datalist(items, workdir, val_fraction, seed)
    skipped = list(skipped or []) + bad_labels
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.yaml"))
    canvas = [int(v) for v in (overrides.get("patch_size") or parser["patch_size"])]
    start = time.perf_counter()
    before = validation_score(served_model, datalist, bundle, canvas)
    served_sha = sha256_of(served_model)
    trained = train_bundle(
        datalist,
        workdir / "run",
        bundle,
        init_weights=str(served_model),
        epochs=int(epochs),
        val_interval=1,
        seed=seed,
        num_workers=0,
        **overrides,
    )
    after = validation_score(trained, datalist, bundle, canvas)
    replaced = after["score"] >= before["score"]
    if replaced:
        write_atomic(served_model, lambda tmp: shutil.copyfile(trained, tmp))
    split = json.loads(datalist.read_text())
    report = {
        "replaced": replaced,
        "reason": "validation score did not get worse" if replaced else "validation score got worse: weights kept",
        "before": before,
        "after": after,
        "served_model": str(served_model),
        "served_sha256_before": served_sha,
        "served_sha256": sha256_of(served_model),
        "trained_model": str(trained),
        "epochs": int(epochs),
        "overrides": overrides,
        "training_studies": [e["study_id"] for e in split["training"]],
        "validation_studies": [e["study_id"] for e in split["validation"]],
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 1),
        "spine_app_version": __version__,
    }
    write_json(workdir / "finetune.json", report)
    logger.warning(
        "fine-tune: score %.4f -> %.4f; served weights %s",
        before["score"],
        after["score"],
        "replaced" if replaced else "kept",
    )
    return report


__all__ = ["LabelledImage", "build_datalist", "finetune", "validation_score"]
