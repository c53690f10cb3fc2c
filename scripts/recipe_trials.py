"""Fixed-budget recipe trials of the multi-task network (docs/results.md, "Recipe trials").

One trial = train ``SpineMultiTaskNet`` for ``--steps`` AdamW steps on the bundle's real training
pipeline (LoadStudyd + augmentation, seeded batches), then score the validation split with the
bundle's metric (per-channel Dice, line clDice, line side check, fused AUROC). Each trial changes
one setting against the baseline; results are appended to ``--out`` (JSON lines) and printed.

    python scripts/recipe_trials.py trial data/synthetic/datalist.json --name baseline --steps 400
    python scripts/recipe_trials.py trial data/synthetic/datalist.json --name bias --bias_init true
    python scripts/recipe_trials.py table recipe_trials.jsonl      # the Markdown table of docs/results.md
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import fire
import numpy as np
import torch

from spine_app.bench.speed import to_device
from spine_app.channels import MASK_NAMES
from spine_app.data.importer import load_datalist
from spine_app.engines.dataset import mask_priors
from spine_app.engines.metrics import line_side_summary, segmentation_table
from spine_app.evaluation.runner import SplitRunner
from spine_app.losses import MultiTaskLoss
from spine_app.networks import SpineMultiTaskNet, StudyModel, resolve_precision
from spine_app.networks.multitask import init_output_bias


def cached_batches(datalist: str, batch: int, canvas: tuple[int, int], workers: int, seed: int):
    """Endless seeded training batches as the bundle makes them: LoadStudyd cached once (CacheDataset),
    the augmentation drawn anew for every sample."""
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose
    from monai.utils import set_determinism

    from spine_app.data.augment import study_augmentation
    from spine_app.data.study_transforms import LoadStudyd

    set_determinism(seed)
    transform = Compose([LoadStudyd(canvas), study_augmentation(canvas=canvas)])
    dataset = CacheDataset(load_datalist(datalist)["training"], transform, num_workers=2, progress=False)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    while True:
        yield from loader


def trial(
    datalist: str,
    name: str,
    steps: int = 400,
    canvas: tuple[int, int] = (256, 192),
    batch: int = 4,
    seed: int = 0,
    amp: str = "auto",
    bias_init: bool = False,
    lr: float = 1e-3,
    schedule: str = "constant",
    warmup: float = 0.1,
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16),
    backbone: str = "resnet18",
    cls_weight: float = 0.5,
    line_weight: float = 2.0,
    workers: int = 1,
    out: str = "recipe_trials.jsonl",
    split: str = "validation",
) -> dict:
    """Train one variant for ``steps`` and score it on ``split``; append the result to ``out``."""
    torch.manual_seed(seed)
    precision = resolve_precision(amp, "cpu")
    net = SpineMultiTaskNet(backbone, decoder_channels=tuple(decoder_channels))
    if bias_init:
        init_output_bias(net, mask_priors(datalist, tuple(canvas)))
    model = StudyModel(net, precision).train()
    loss_fn = MultiTaskLoss(cls_weight=cls_weight, line_weight=line_weight)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=1e-4)
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=warmup)
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / max(1, warmup * steps)) * 0.5 * (1 + math.cos(math.pi * s / steps))
        )
    else:
        sched = None
    batches = cached_batches(datalist, batch, tuple(canvas), workers, seed)
    start = time.perf_counter()
    for step in range(steps):
        if step % 50 == 0:
            print(f"{name}: step {step}/{steps} {time.perf_counter() - start:.0f} s", flush=True)
        b = to_device(next(batches), torch.device("cpu"))
        loss = loss_fn(model(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    train_s = time.perf_counter() - start
    model.eval()
    runner = SplitRunner(
        net, load_datalist(datalist)[split], list(canvas), torch.device("cpu"), batch_size=1, workers=0
    )
    records = runner.run()
    seg = segmentation_table(records)
    rows = [r for r in records if r["label"] >= 0]
    from spine_app.metrics.classification import auroc

    result = {
        "name": name,
        "steps": steps,
        "canvas": list(canvas),
        "precision": precision.name,
        "bias_init": bias_init,
        "lr": lr,
        "schedule": schedule,
        "decoder_channels": list(decoder_channels),
        "backbone": backbone,
        "cls_weight": cls_weight,
        "line_weight": line_weight,
        "seed": seed,
        "split": split,
        "train_s": round(train_s, 1),
        "dice": {m: round(seg[m]["dice"], 4) for m in MASK_NAMES if m in seg},
        "cldice": {m: round(seg[m]["cldice"], 4) for m in MASK_NAMES if m in seg and "cldice" in seg[m]},
        "line_side": line_side_summary(records),
        "auroc": round(auroc([int(r["label"]) for r in rows], [r["prob_cls"] for r in rows]), 4),
    }
    result["mean_dice"] = round(float(np.mean(list(result["dice"].values()))), 4)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))
    return result


def table(results: str = "recipe_trials.jsonl") -> str:
    """Markdown table of the trials in ``results`` (one row per trial, Dice per channel)."""
    short = {
        m: m.replace("Lat_", "L ").replace("Ap_", "A ").replace("_Vertebral_Line", " line").replace("_", " ")
        for m in MASK_NAMES
    }
    lines = [
        "| trial | precision | " + " | ".join(short.values()) + " | mean Dice | line clDice (ant/post) | "
        "line side check | fused AUROC | train (s) |",
        "|---|---|" + "---|" * (len(MASK_NAMES) + 5),
    ]
    for row in (json.loads(line) for line in Path(results).read_text().splitlines() if line.strip()):
        cells = [f"{row['dice'].get(m, float('nan')):.3f}" for m in MASK_NAMES]
        cl = "/".join(f"{v:.3f}" for v in row["cldice"].values())
        side = row["line_side"]
        lines.append(
            f"| {row['name']} | {row['precision']} | " + " | ".join(cells) + f" | {row['mean_dice']:.3f} | {cl} | "
            f"{side['pass']}/{side['n']} | {row['auroc']:.3f} | {row['train_s']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    fire.Fire({"trial": trial, "table": table})
