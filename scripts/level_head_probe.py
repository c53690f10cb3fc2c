"""What limits the level head's Genant grade: its training length or the film's resolution? (issue 15,
docs/results.md "What limits the level head's grade")

The trunk of ``--model`` is fixed. Every variant refits a fresh level head on the same inputs, as
the main job's refit does (:mod:`spine_app.engines.level_refit`: the run's level loss, AdamW with a
one-cycle learning rate, 16 films per step), here on one pass of the training films without
augmentation, so that all variants read exactly the same bodies:

- ``A``: the shipped head's inputs (a 40 x 40 patch of the full-resolution stack over a box of two
  body spacings, about 1.5 mm per sample, and the deep context);
- ``D``: A plus a 96 x 96 patch of the film sampled from the 384 x 288 canvas (an extra branch that
  sees no new pixels: the control for B);
- ``B``: A plus a 96 x 96 patch of the film fitted into ``--film_scale`` times the canvas (new pixels:
  about 0.6 mm per sample at 3x).

Bodies are the reference masks' (truth boxes, truth grades), scored on the benchmark's test split
and the test split of ``--fresh`` (a datalist of studies from an unused seed): fracture AUROC,
fractured levels found with 3 % of normal levels flagged (the set's own operating point: a ranking
figure), linearly weighted kappa and exact grade of the head's own grade (cumulative probabilities
at 0.5). The collected inputs are cached in ``--out``.

    python scripts/level_head_probe.py --out /tmp/probe --fresh /tmp/fresh4242/datalist.json \
        [--epochs "[15, 60]"] [--variants "['A', 'B']"] [--seeds "[0]"]
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch
from monai.data import DataLoader, Dataset
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score
from torch import nn

from spine_app.data.facing import CanonicalLatFacingd
from spine_app.data.importer import load_datalist
from spine_app.data.io import write_torch
from spine_app.data.levels import LevelBoxesd
from spine_app.data.study_transforms import LoadStudyd
from spine_app.engines.batch import prepare_study_batch
from spine_app.engines.level_refit import LevelRoiSet
from spine_app.engines.writer import write_json
from spine_app.losses import MultiTaskLoss
from spine_app.networks import SpineMultiTaskNet
from spine_app.networks.levels import (
    GRADE_LOGITS,
    LevelBatch,
    LevelHead,
    LevelRois,
    mil_pool,
    predicted_grade,
    sample_rois,
)
from spine_app.networks.precision import Precision, resolve_precision

CANVAS = (384, 288)
FILM_ROI = 96
#: variant -> the film patch it reads (None: the shipped head's inputs only)
VARIANTS = {"A": None, "D": "canvas_film", "B": "scaled_film"}


class ProbeItem:
    """One study as the refit reads it (no augmentation), plus its LAT film fitted into a larger canvas."""

    def __init__(self, film_scale: int) -> None:
        self.load = LoadStudyd(CANVAS, level_labels="auto")
        self.load_scaled = LoadStudyd((CANVAS[0] * film_scale, CANVAS[1] * film_scale))
        self.facing = CanonicalLatFacingd(keys=("lat", "seg_lat", "levels_lat", "lat_scaled"))
        self.boxes = LevelBoxesd(shift=0.0, scale=0.0, turn_deg=0.0)  # the reference boxes, not the training jitter

    def __call__(self, entry: dict[str, Any]) -> dict[str, Any]:
        data = self.load(entry)
        unmasked = [None] * len(entry["masks"])  # the larger canvas needs the LAT film only
        film_only = {**entry, "image_ap": None, "masks": unmasked, "mask_present": [0] * len(unmasked)}
        data["lat_scaled"] = torch.as_tensor(self.load_scaled(film_only)["lat"])
        return self.boxes(self.facing(data))


@torch.no_grad()
def collect(
    net: SpineMultiTaskNet, precision: Precision, entries: list[dict], film_scale: int
) -> dict[str, torch.Tensor]:
    """Every real body's head inputs, both film patches, grade, and each film's body count and label."""
    loader = DataLoader(Dataset(entries, ProbeItem(film_scale)), batch_size=8, shuffle=False, num_workers=1)
    bodies: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("patches", "context", "canvas_film", "scaled_film", "grade")
    }
    films: dict[str, list[float]] = {"count": [], "label": [], "has_lat": []}
    for batch in loader:
        inputs, targets = prepare_study_batch(batch, "cpu")
        boxes = LevelBatch.from_batch(inputs)
        with precision.autocast():
            fine, deep = net.level_features(net.view_pass(precision.to_input(inputs["lat"])))
            rois = net.level_head.rois(fine, deep, boxes)
        valid = (boxes.valid > 0).reshape(-1)
        scaled = sample_rois(torch.as_tensor(batch["lat_scaled"]).float(), boxes, FILM_ROI, CANVAS)
        canvas_film = sample_rois(inputs["lat"].float(), boxes, FILM_ROI, CANVAS)
        bodies["patches"].append(rois.patches[valid].to(torch.bfloat16))
        bodies["context"].append(rois.context[valid].float())
        bodies["scaled_film"].append(scaled[valid].to(torch.bfloat16))
        bodies["canvas_film"].append(canvas_film[valid].to(torch.bfloat16))
        bodies["grade"].append(targets["level_grade"].reshape(-1)[valid].long())
        films["count"] += (boxes.valid > 0).sum(dim=1).tolist()
        films["label"] += targets["label"].float().tolist()
        films["has_lat"] += inputs["present"][:, 1].float().tolist()
    out = {k: torch.cat(v) for k, v in bodies.items()}
    out["count"] = torch.tensor(films["count"], dtype=torch.long)
    out["start"] = torch.cumsum(out["count"], 0) - out["count"]
    out["label"] = torch.tensor(films["label"])
    out["has_lat"] = torch.tensor(films["has_lat"])
    return out


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.GroupNorm(8, cout), nn.GELU())


class ProbeHead(nn.Module):
    """A fresh head of the shipped :class:`LevelHead`'s shape, optionally with a film branch."""

    def __init__(self, like: LevelHead, film_branch: bool, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        width = like.deep[0].out_features
        self.head = LevelHead(like.fine[0].in_channels, like.deep[0].in_features, roi=like.roi, width=width)
        self.film = (
            nn.Sequential(_block(1, 16), _block(16, 32), _block(32, 48), _block(48, 64)) if film_branch else None
        )
        if self.film is not None:
            self.head.out[0] = nn.Linear(3 * width + 128, width)

    def forward(self, patches: torch.Tensor, context: torch.Tensor, film: torch.Tensor | None) -> torch.Tensor:
        fine = self.head.fine(patches)
        parts = [fine.mean(dim=(2, 3)), fine.amax(dim=(2, 3)), self.head.deep(context)]
        if self.film is not None:
            seen = self.film(film)
            parts += [seen.mean(dim=(2, 3)), seen.amax(dim=(2, 3))]
        return self.head.out(torch.cat(parts, dim=1))


def _films_batch(data: dict[str, torch.Tensor], films: torch.Tensor, film_key: str | None):
    """The bodies of ``films``: inputs, padded level targets and each body's flat (film, position)
    index, as :meth:`LevelRoiSet.batch` gives them (its rois here are the bodies' indices)."""
    n = int(data["grade"].numel())
    ids = LevelRoiSet(
        LevelRois(torch.arange(n), torch.arange(n)),
        data["grade"],
        data["start"],
        data["count"],
        data["label"],
        data["has_lat"],
    )
    picked, targets, flat = ids.batch(films)
    index = picked.patches
    film = data[film_key][index].float() if film_key else None
    return data["patches"][index].float(), data["context"][index], film, targets, flat


def train_head(
    data: dict[str, torch.Tensor], like: LevelHead, film_key: str | None, seed: int, epochs: int, precision: Precision
) -> ProbeHead:
    """A fresh head trained as :func:`spine_app.engines.level_refit.refit_level_head` trains one."""
    head = ProbeHead(like, film_key is not None, seed).train()
    loss = MultiTaskLoss(level_weight=1.0, level_positive_weight=3.0, level_study_weight=0.5)  # train.yaml's
    films, per_step, lr = int(data["count"].numel()), 16, 1e-3
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    total_steps = epochs * math.ceil(films / per_step)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.1)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for chunk in torch.randperm(films, generator=order).split(per_step):
            patches, context, film, targets, flat = _films_batch(data, chunk, film_key)
            with precision.autocast():
                logits = head(patches, context, film).float()
            padded = logits.new_zeros(chunk.numel() * targets["level_valid"].shape[1], GRADE_LOGITS)
            padded[flat] = logits
            padded = padded.reshape(chunk.numel(), -1, GRADE_LOGITS)
            pred = {"level_logits": padded, "cls_levels": mil_pool(padded[..., 0], targets["level_valid"], "lse")}
            label = data["label"][chunk]
            value = loss.level_loss(pred, targets, label.clamp(min=0.0), (label >= 0).float() * data["has_lat"][chunk])
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


@torch.no_grad()
def score(head: ProbeHead, data: dict[str, torch.Tensor], film_key: str | None, precision: Precision) -> dict[str, Any]:
    """Per-body figures of ``head`` on a collected set (bodies of known grade)."""
    logits = []
    for chunk in torch.arange(data["grade"].numel()).split(512):
        film = data[film_key][chunk].float() if film_key else None
        with precision.autocast():
            logits.append(head(data["patches"][chunk].float(), data["context"][chunk], film).float())
    cumulative = torch.cat(logits)
    known = data["grade"] >= 0
    truth = data["grade"][known].numpy()
    p_fracture = torch.sigmoid(cumulative[known, 0]).numpy()
    grade = predicted_grade(cumulative[known]).numpy()
    fractured = truth > 0
    cut = np.quantile(p_fracture[~fractured], 0.97)
    return {
        "fractured": int(fractured.sum()),
        "auroc": round(float(roc_auc_score(fractured, p_fracture)), 3),
        "found_at_3pct": int((p_fracture[fractured] > cut).sum()),
        "kappa": round(float(cohen_kappa_score(truth, grade, weights="linear")), 3),
        "exact_fractured": int((grade[fractured] == truth[fractured]).sum()),
        "normal_graded": int((grade[~fractured] > 0).sum()),
        "confusion": confusion_matrix(truth, grade, labels=[0, 1, 2, 3]).tolist(),
    }


def main(
    out: str,
    fresh: str,
    model: str = "bundle/models/model.pt",
    datalists: tuple[str, ...] = ("data/synthetic/datalist.json", "data/synthetic_more/datalist.json"),
    variants: tuple[str, ...] = ("A", "D", "B"),
    epochs: tuple[int, ...] = (15, 60),
    seeds: tuple[int, ...] = (0,),
    film_scale: int = 3,
) -> None:
    """Collect (or reuse), train every variant x epochs x seed, print and write ``out/probe.json``."""
    torch.manual_seed(0)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision("auto", "cpu")
    net = SpineMultiTaskNet()
    net.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
    net = precision.prepare(net).eval()
    sets = {
        "train": [e for path in datalists for e in load_datalist(path)["training"]],
        "test": load_datalist(datalists[0])["test"],
        "fresh": load_datalist(fresh)["test"],
    }
    data = {}
    for name, entries in sets.items():
        cache = root / f"{name}_x{film_scale}.pt"
        if not cache.is_file():
            began = time.time()
            write_torch(cache, collect(net, precision, entries, film_scale))
            print(f"{name}: {len(entries)} studies collected in {time.time() - began:.0f} s", flush=True)
        data[name] = torch.load(cache)
    results = []
    for variant in variants:
        film_key = VARIANTS[variant]
        for n_epochs in epochs:
            for seed in seeds:
                began = time.time()
                head = train_head(data["train"], net.level_head, film_key, seed, n_epochs, precision)
                row = {"variant": variant, "epochs": n_epochs, "seed": seed, "seconds": round(time.time() - began)}
                row |= {name: score(head, data[name], film_key, precision) for name in sets}
                results.append(row)
                brief = {k: {m: v for m, v in row[k].items() if m != "confusion"} for k in sets}
                print(variant, n_epochs, seed, json.dumps(brief), flush=True)
                write_json(root / "probe.json", results)


if __name__ == "__main__":
    fire.Fire(main)
