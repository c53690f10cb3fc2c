"""``spine-app robustness evaluate``: the model on the test split under every corruption of a suite
at five severities, scored with the bundle's own metric (:class:`spine_app.engines.StudyMetrics`).

Each condition (clean, or one corruption at one severity) runs the whole test split: both views are
corrupted in their own grey levels right after reading (masks follow geometric corruptions), then
preprocessed exactly as in evaluation (``LoadStudyd``) and passed through the bundle's inferer
(:class:`spine_app.engines.StudyInferer`: the same windows, the same mirroring of a LAT film that
faces the other way, the same level decision as evaluation and inference), all by the project's
split loop (:class:`spine_app.evaluation.SplitRunner`). Decoded files are cached, so only the
corruption and the model run per condition.

AUROC is reported for the *decision* head (the level head's pooled probability where the network
has one, as inference decides; else the fused head) and for the fused head.

Summary score, in the style of ImageNet-C / MedMNIST-C but normalised to our own clean model:
``relative_error`` of a corruption = mean over severities of its error / the clean error, with
error = 1 - mean Dice (segmentation) or 1 - AUROC (classification); the suite's score is the mean
over corruptions (1.0 = no degradation, 2.0 = twice the clean error).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from spine_app.bundle import weights_path
from spine_app.data.importer import load_datalist
from spine_app.evaluation.runner import SplitRunner, ViewHook, split_scores
from spine_app.robustness.corruptions import CorruptionSpec, full_scale, load_suite

logger = logging.getLogger(__name__)


def corruption_hook(spec: CorruptionSpec | None, severity: int = 0, seed: int = 0) -> ViewHook | None:
    """The :class:`SplitRunner` view hook that applies ``spec`` at ``severity`` to each view in its own
    grey levels (masks follow geometric corruptions); None (clean) for no ``spec``."""
    if spec is None:
        return None

    def hook(view: str, image: np.ndarray, masks: np.ndarray, meta: Any) -> tuple[np.ndarray, np.ndarray]:
        out, out_masks = spec.apply(image, masks > 0.5, severity, seed, view, full_scale(image, meta))
        return out, out_masks.astype(np.float32)

    return hook


def relative_error(clean: float, corrupted: list[float]) -> float:
    """Mean error over severities relative to the clean error (errors = 1 - score)."""
    clean_error = max(1.0 - clean, 1e-6)
    return float(np.mean([(1.0 - s) / clean_error for s in corrupted]))


def evaluate_robustness(
    datalist: str | Path,
    suite: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    bundle: str | Path | None = None,
    split: str = "test",
    device: str = "cpu",
    seed: int = 0,
    limit: int | None = None,
    corruptions: list[str] | None = None,
    canvas: list[int] | None = None,
) -> dict[str, Any]:
    """Evaluate clean and every (corruption, severity) of ``suite``; write results into ``out``.

    ``canvas`` is the working size (H, W) the model was trained at (default the inference config's)."""
    from spine_app.bundle import BUNDLE_DIR, bundle_disk_exclusion, load_bundle_network
    from spine_app.engines.inferer import StudyInferer

    specs = load_suite(suite)
    if corruptions:
        unknown = set(corruptions) - {s.name for s in specs}
        if unknown:
            raise ValueError(f"{suite}: no corruption named {', '.join(sorted(unknown))} in the suite")
        specs = [s for s in specs if s.name in corruptions]
    entries = load_datalist(datalist)[split][:limit] if limit else load_datalist(datalist)[split]
    if not entries:
        raise ValueError(f"{datalist}: the {split!r} split is empty")
    network, default_canvas = load_bundle_network(bundle or BUNDLE_DIR, model)
    size = [int(c) for c in canvas or default_canvas]
    exclusion = bundle_disk_exclusion(bundle or BUNDLE_DIR, model)
    runner = SplitRunner(network, entries, size, device, inferer=StudyInferer(roi_size=size, disk_exclusion=exclusion))
    from tqdm import tqdm

    distinct = sum(len(set(s.values)) for s in specs)  # a severity with the value of an earlier one is not rerun
    runner.progress = tqdm(
        total=len(entries) * (1 + distinct), desc="studies x conditions", unit="study", disable=not sys.stderr.isatty()
    )
    began = time.perf_counter()
    clean = split_scores(runner.run())
    results: dict[str, Any] = {"clean": clean, "corruptions": {}}
    for spec in specs:
        per_severity: list[dict[str, Any]] = []
        for severity in range(1, 6):
            same = next((r for r, v in zip(per_severity, spec.values) if v == spec.values[severity - 1]), None)
            per_severity.append(
                same or split_scores(runner.run(corruption_hook(spec, severity, seed)))
            )  # binary: run once
        results["corruptions"][spec.name] = {"values": list(spec.values), "severities": per_severity}
        logger.warning("%s: mean Dice %s", spec.name, " ".join(f"{s['mean_dice']:.3f}" for s in per_severity))
    runner.progress.close()
    results["summary"] = summarize(results)
    results.update(
        studies=len(entries),
        split=str(split),
        suite=str(suite),
        seconds=time.perf_counter() - began,
        model=str(weights_path(bundle or BUNDLE_DIR, model)),
    )
    from spine_app.robustness.report import write_robustness_report

    write_robustness_report(results, out, entries[0], specs, seed)
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Relative errors per corruption (segmentation, decision and fused AUROC) and their means."""
    clean = results["clean"]
    per: dict[str, dict[str, float]] = {}
    for name, entry in results["corruptions"].items():
        sev = entry["severities"]
        per[name] = {
            "relative_error_dice": relative_error(clean["mean_dice"], [s["mean_dice"] for s in sev]),
            "relative_error_auroc": relative_error(clean["auroc"]["decision"], [s["auroc"]["decision"] for s in sev]),
            "relative_error_auroc_fused": relative_error(clean["auroc"]["fused"], [s["auroc"]["fused"] for s in sev]),
            "worst_mean_dice": float(min(s["mean_dice"] for s in sev)),
        }
    mean = {k: float(np.nanmean([p[k] for p in per.values()])) for k in next(iter(per.values()), {})}
    return {"per_corruption": per, "mean": mean}
