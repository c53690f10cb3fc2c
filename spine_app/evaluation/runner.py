"""The project's "evaluate a network on a split's entries" loop.

:class:`SplitRunner` reads and preprocesses the studies exactly as evaluation does (``LoadStudyd``),
runs them through an inferer (default the bundle's :class:`spine_app.engines.StudyInferer`) and
returns :class:`spine_app.engines.StudyMetrics` records. An optional ``view_hook`` changes each
view right after reading (``spine-app robustness`` corrupts the films there). Decoded files are
cached, so repeated runs over the same split pay only for the hook and the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from spine_app.channels import MASK_NAMES, VIEW_KEYS
from spine_app.data.importer import DatalistEntry
from spine_app.data.io import read_image, read_mask
from spine_app.data.study_transforms import LoadStudyd
from spine_app.engines.batch import prepare_study_batch
from spine_app.engines.inferer import StudyInferer, add_level_outputs, whole_film_outputs
from spine_app.engines.metrics import HEADS, StudyMetrics, head_rows, segmentation_table
from spine_app.metrics.classification import auroc

StudyForward = Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]
ViewHook = Callable[[str, np.ndarray, np.ndarray, Any], tuple[np.ndarray, np.ndarray]]


def cached_reader() -> tuple:
    """(read_image, read_mask) that decode each file once per runner."""
    image = lru_cache(maxsize=None)(lambda path: read_image(path))
    mask = lru_cache(maxsize=None)(lambda path, shape: read_mask(path, shape))
    return (lambda path: image(str(path))), (lambda path, shape=None: mask(str(path), tuple(shape) if shape else None))


def split_scores(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-mask Dice/HD95 and per-head AUROC of one run's study records (plus the decision AUROC:
    the level head's where the network has one, else the fused head's)."""
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


def plain_forward(inputs: dict[str, torch.Tensor], network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One whole-film pass of each view (plus the level decision where the network has a level head):
    the path every variant of ``bench compare`` shares, seed-style networks included. A network with
    ``view_pass`` runs each film once for its masks, study logits and level head, as
    ``spine-app infer`` does; others run their own ``forward_study``."""
    if not hasattr(network, "view_pass"):
        pred = network.forward_study(inputs["ap"], inputs["lat"], inputs["present"])
        add_level_outputs(network, inputs["lat"], inputs["present"][:, 1], pred)
        return pred
    passes = {view: network.view_pass(inputs[view]) for view in VIEW_KEYS}
    pred = whole_film_outputs(network, passes, inputs["present"])
    add_level_outputs(network, inputs["lat"], inputs["present"][:, 1], pred, passes["lat"])
    return pred


class SplitRunner:
    """Runs the network over one split's entries, as often as asked (e.g. once per condition).

    Args:
        network: SpineMultiTaskNet (eval mode).
        entries: datalist entries of the split.
        canvas: working size (H, W) of the bundle.
        device: torch device.
        batch_size: studies per forward pass.
        workers: loader processes that read and preprocess while the network runs.
        inferer: ``(inputs, network) -> predictions``; default the bundle's :class:`StudyInferer` with
            one window of the canvas (as evaluation runs it).
        working_spacing_mm: tall films get a taller canvas (``LoadStudyd``'s setting of that name, as
            inference runs it); studies then run one at a time. None: every study on ``canvas``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        entries: list[DatalistEntry],
        canvas: list[int],
        device: str = "cpu",
        batch_size: int = 4,
        workers: int = 1,
        inferer: StudyForward | None = None,
        working_spacing_mm: float | None = None,
    ) -> None:
        self.network, self.entries, self.canvas = network.to(device).eval(), entries, canvas
        self.working_spacing_mm = working_spacing_mm
        batch_size = 1 if working_spacing_mm is not None else batch_size
        self.inferer = inferer or StudyInferer(roi_size=canvas)
        self.device, self.batch_size = torch.device(device), batch_size
        self.reader, self.workers, self.cache_warm = cached_reader(), workers, False
        self.forward_seconds: list[float] = []  # network time per batch of the last run
        self.progress: Any = None  # a tqdm bar advanced by one per study

    def run(self, view_hook: ViewHook | None = None) -> list[dict[str, Any]]:
        """Study records (StudyMetrics format) of the split, each view passed through ``view_hook``
        (``hook(view, image, masks, meta) -> (image, masks)``) right after reading (None: as read)."""
        from monai.data import DataLoader, Dataset

        dataset = Dataset(
            self.entries,
            transform=LoadStudyd(
                self.canvas, view_hook=view_hook, reader=self.reader, working_spacing_mm=self.working_spacing_mm
            ),
        )
        # the first run decodes every file in this process; later runs fork workers that inherit the
        # decoded files and read/preprocess the next batch while the network runs
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
