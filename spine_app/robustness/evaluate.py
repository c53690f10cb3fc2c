"""``spine-app robustness evaluate``: the model on the test split under every corruption of a suite
at five severities, scored with the bundle's own metric (:class:`spine_app.engines.StudyMetrics`).

Each condition (clean, or one corruption at one severity) runs the whole test split: both views are
corrupted in their own grey levels right after reading (masks follow geometric corruptions), then
preprocessed exactly as in evaluation (``LoadStudyd``) and passed through the bundle's inferer
(:class:`spine_app.engines.StudyInferer`: the same windows, the same mirroring of a LAT film that
faces the other way, the same level decision as evaluation and inference). Decoded files are cached,
so only the corruption and the model run per condition.

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
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spine_app.bundle import weights_path
from spine_app.channels import MASK_NAMES
from spine_app.data.importer import load_datalist
from spine_app.data.io import read_image, read_mask
from spine_app.data.study_transforms import LoadStudyd
from spine_app.engines.batch import prepare_study_batch
from spine_app.engines.inferer import StudyInferer, add_level_outputs
from spine_app.engines.metrics import HEADS, StudyMetrics, head_rows, segmentation_table
from spine_app.metrics.classification import auroc
from spine_app.robustness.corruptions import CorruptionSpec, full_scale, load_suite

logger = logging.getLogger(__name__)


def _cached_reader() -> tuple:
    """(read_image, read_mask) that decode each file once per evaluation."""
    image = lru_cache(maxsize=None)(lambda path: read_image(path))
    mask = lru_cache(maxsize=None)(lambda path, shape: read_mask(path, shape))
    return (lambda path: image(str(path))), (lambda path, shape=None: mask(str(path), tuple(shape) if shape else None))


def condition_scores(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-mask Dice/HD95 and per-head AUROC of one condition's study records."""
    seg = segmentation_table(records)
    out: dict[str, Any] = {
        "dice": {name: seg[name]["dice"] for name in MASK_NAMES if name in seg},
        "hd95_px": {name: seg[name]["hd95_px"] for name in MASK_NAMES if name in seg},
    }
    out["mean_dice"] = float(np.mean(list(out["dice"].values()))) if out["dice"] else float("nan")
    out["auroc"] = {}
    for head, (key, view, _) in HEADS.items():
        rows = head_rows(records, view, key)
        out["auroc"][head] = auroc([int(r["label"]) for r in rows], [r[key] for r in rows]) if rows else float("nan")
    levels = out["auroc"].get("levels", float("nan"))
    out["auroc"]["decision"] = levels if not np.isnan(levels) else out["auroc"]["fused"]
    return out


StudyForward = Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]


def plain_forward(inputs: dict[str, torch.Tensor], network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One whole-film pass of ``forward_study`` (plus the level decision where the network has a level
    head): the path every variant of ``bench compare`` shares, seed-style networks included."""
    pred = network.forward_study(inputs["ap"], inputs["lat"], inputs["present"])
    add_level_outputs(network, inputs["lat"], inputs["present"][:, 1], pred)
    return pred


class RobustnessRunner:
    """Runs the network over one split under any corruption condition.

    Args:
        network: SpineMultiTaskNet (eval mode).
        entries: datalist entries of the split.
        canvas: working size (H, W) of the bundle.
        device: torch device.
        batch_size: studies per forward pass.
        workers: loader processes that corrupt and preprocess while the network runs.
        inferer: ``(inputs, network) -> predictions``; default the bundle's :class:`StudyInferer` with
            one window of the canvas (as evaluation runs it).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        entries: list[dict[str, Any]],
        canvas: list[int],
        device: str = "cpu",
        batch_size: int = 4,
        workers: int = 1,
        inferer: StudyForward | None = None,
    ) -> None:
        self.network, self.entries, self.canvas = network.to(device).eval(), entries, canvas
        self.inferer = inferer or StudyInferer(roi_size=canvas)
        self.device, self.batch_size = torch.device(device), batch_size
        self.reader, self.workers, self.cache_warm = _cached_reader(), workers, False
        self.forward_seconds: list[float] = []  # network time per batch of the last run
        self.progress: Any = None  # a tqdm bar advanced by one per study (set by evaluate_robustness)

    def run(self, spec: CorruptionSpec | None = None, severity: int = 0, seed: int = 0) -> list[dict[str, Any]]:
        """Study records (StudyMetrics format) of the split under ``spec`` at ``severity`` (None: clean)."""

        def hook(view: str, image: np.ndarray, masks: np.ndarray, meta: Any) -> tuple[np.ndarray, np.ndarray]:
            if spec is None:
                return image, masks
            out, out_masks = spec.apply(image, masks > 0.5, severity, seed, view, full_scale(image, meta))
            return out, out_masks.astype(np.float32)

        from monai.data import DataLoader, Dataset

        dataset = Dataset(self.entries, transform=LoadStudyd(self.canvas, view_hook=hook, reader=self.reader))
        # the first run decodes every file in this process; later runs fork workers that inherit the
        # decoded files and corrupt/preprocess the next batch while the network runs
        workers = self.workers if self.cache_warm else 0
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=workers)
        metric = StudyMetrics()
        self.forward_seconds = []
        for batch in loader:
            inputs, targets = prepare_study_batch(batch, self.device)
            start = time.perf_counter()
            with torch.no_grad():
                pred = self.inferer(inputs, self.network)
            self.forward_seconds.append(time.perf_counter() - start)
            metric.update((pred, targets))
            if self.progress is not None:
                self.progress.update(len(targets["study_id"]))
        self.cache_warm = True
        return metric.records


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
    from spine_app.bundle import BUNDLE_DIR, load_bundle_network

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
    runner = RobustnessRunner(network, entries, [int(c) for c in canvas or default_canvas], device)
    from tqdm import tqdm

    distinct = sum(len(set(s.values)) for s in specs)  # a severity with the value of an earlier one is not rerun
    runner.progress = tqdm(
        total=len(entries) * (1 + distinct), desc="studies x conditions", unit="study", disable=not sys.stderr.isatty()
    )
    began = time.perf_counter()
    clean = condition_scores(runner.run())
    results: dict[str, Any] = {"clean": clean, "corruptions": {}}
    for spec in specs:
        per_severity: list[dict[str, Any]] = []
        for severity in range(1, 6):
            same = next((r for r, v in zip(per_severity, spec.values) if v == spec.values[severity - 1]), None)
            per_severity.append(same or condition_scores(runner.run(spec, severity, seed)))  # binary: run once
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
