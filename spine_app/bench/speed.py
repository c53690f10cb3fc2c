"""``spine-app bench speed``: training throughput and per-study inference latency of the network,
for each precision / memory-format option the device supports (fp32 and channels-last everywhere;
bf16 autocast with and without channels-last on CPUs with bf16 instructions; bf16 and fp16 on CUDA).
Each option runs the network the way training does (:class:`spine_app.networks.Precision`).

With ``data`` (a datalist), training batches come from the bundle's real pipeline as the main job
runs it (``LoadStudyd`` cached once, the augmentation block in ``workers`` loader processes; only
the studies the timed steps need are cached) and the time each step waits for its batch is
reported, so a data-bound configuration shows as loader wait, not as a slow network. Without
``data`` the batches are random tensors (the network alone).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from spine_app.channels import VIEW_KEYS, avail_key, geom_key, seg_key
from spine_app.losses import MultiTaskLoss
from spine_app.networks import SpineMultiTaskNet, StudyModel
from spine_app.networks.precision import Precision, cpu_has_native_bf16
from spine_app.viz.tables import markdown_table


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _random_batches(batch: int, canvas: tuple[int, int]):
    """Endless random study batches in the training batch format."""
    while True:
        out = {k: torch.rand(batch, 1, *canvas) for k in VIEW_KEYS}
        out |= {seg_key(v): torch.rand(batch, 8, *canvas).round() for v in VIEW_KEYS}
        out |= {avail_key(v): torch.ones(batch, 8) for v in VIEW_KEYS}
        out |= {"label": torch.ones(batch), "present": torch.ones(batch, 2)}
        yield out


@lru_cache(maxsize=1)
def training_dataset(datalist: str, canvas: tuple[int, int], limit: int | None = None) -> Any:
    """The training split through the bundle's training pipeline (``LoadStudyd`` with the level map,
    LAT films turned to face the canonical way, augmentation, the level boxes) in a ``CacheDataset``,
    as the main job runs it: the deterministic part is computed once (here, before any step is
    timed), the augmentation on every fetch. ``limit``: only the first entries. Kept for the next
    call with the same arguments (one process benchmarks several settings on the same data)."""
    from monai.data import CacheDataset
    from monai.transforms import Compose

    from spine_app.data.augment import study_augmentation
    from spine_app.data.facing import CanonicalLatFacingd
    from spine_app.data.importer import load_datalist
    from spine_app.data.levels import LevelBoxesd
    from spine_app.data.study_transforms import LoadStudyd

    transform = Compose(
        [
            LoadStudyd(canvas, level_labels="auto"),
            CanonicalLatFacingd(),
            study_augmentation(canvas=canvas),
            LevelBoxesd(),
        ]
    )
    entries = load_datalist(datalist)["training"][:limit]
    return CacheDataset(entries, transform, cache_rate=1.0, num_workers=None, progress=False)


def training_batches(
    datalist: str, batch: int, canvas: tuple[int, int], workers: int, seed: int | None = None, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """Endless augmented training batches of :func:`training_dataset` (built before this returns);
    with ``seed`` the order and the augmentation are reproducible."""
    from monai.data import DataLoader
    from monai.utils import set_determinism

    dataset = training_dataset(datalist, tuple(canvas), limit)
    if seed is not None:
        set_determinism(seed)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=True,
        generator=generator,
    )

    def endless() -> Iterator[dict[str, Any]]:
        while True:
            yield from loader

    return endless()


def to_device(raw: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors a training step needs (inputs and targets of ``prepare_study_batch``) on ``device``."""
    from spine_app.data.levels import trim_levels
    from spine_app.engines.batch import INPUT_KEYS, LEVEL_INPUT_KEYS, LEVEL_TARGET_KEYS, TARGET_KEYS, plain_tensor

    keys = {*INPUT_KEYS, *TARGET_KEYS, *LEVEL_INPUT_KEYS, *LEVEL_TARGET_KEYS} - {
        *map(geom_key, VIEW_KEYS),
        "levels_lat",
    }
    return trim_levels({k: plain_tensor(raw[k]).to(device) for k in keys if k in raw})


def training_speed(
    device: torch.device,
    precision: Precision,
    batch: int = 4,
    canvas: tuple[int, int] = (384, 288),
    steps: int = 10,
    warmup: int = 3,
    data: str | None = None,
    workers: int = 1,
) -> dict[str, float]:
    """Seconds per training step (forward, masked multi-task loss, backward, AdamW) and loader wait."""
    model = StudyModel(SpineMultiTaskNet(), precision).to(device)
    loss_fn, opt = MultiTaskLoss().to(device), torch.optim.AdamW(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.engine_amp)
    fp16 = torch.autocast(device.type, dtype=torch.float16, enabled=precision.engine_amp)
    batches = (
        training_batches(data, batch, canvas, workers, limit=batch * (warmup + steps))
        if data
        else _random_batches(batch, canvas)
    )
    waits, totals = [], []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        raw = next(batches)
        fetched = time.perf_counter()
        b = to_device(raw, device)
        with fp16:
            loss = loss_fn(model(b), b)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        if i >= warmup:
            waits.append(fetched - start)
            totals.append(time.perf_counter() - start)
    step = float(np.mean(totals))
    return {"step_s": step, "loader_wait_s": float(np.mean(waits)), "images_per_s": 2 * batch / step}


def inference_latency(
    device: torch.device,
    precision: Precision,
    canvas: tuple[int, int] = (384, 288),
    n: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """Network latency of one study (AP + LAT masks and the Damaged logits), median and p95 seconds."""
    model = StudyModel(SpineMultiTaskNet(), precision).to(device).eval()
    fp16 = torch.autocast(device.type, dtype=torch.float16, enabled=precision.engine_amp)
    times = []
    for i in range(warmup + n):
        batch = {k: torch.rand(1, 1, *canvas, device=device) for k in VIEW_KEYS}
        batch["present"] = torch.ones(1, 2, device=device)
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad(), fp16:
            model(batch)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "p95_s": float(np.percentile(times, 95))}


def precision_options(device: torch.device) -> list[Precision]:
    """The options measured on ``device``: fp32 (+ channels-last) everywhere, bf16 where it is native,
    fp16 (MONAI's GradScaler path) on CUDA."""
    options = [Precision(None, device.type, False), Precision(None, device.type, True)]
    if device.type == "cuda" or cpu_has_native_bf16():
        options += [Precision(torch.bfloat16, device.type, cl) for cl in (False, True)]
    if device.type == "cuda":
        options += [Precision(torch.float16, device.type, cl, engine_amp=True) for cl in (False, True)]
    return options


def bench_speed(
    device: str = "auto",
    batch: int = 4,
    canvas: tuple[int, int] = (384, 288),
    steps: int = 10,
    n: int = 20,
    data: str | None = None,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """One row per option: training step, images/s, loader wait, inference median/p95."""
    from spine_app.inference.run import resolve_device

    dev = torch.device(resolve_device(device))
    rows = []
    for precision in precision_options(dev):
        train = training_speed(dev, precision, batch, tuple(canvas), steps, data=data, workers=workers)
        infer = inference_latency(dev, precision, tuple(canvas), n)
        rows.append(
            {
                "device": str(dev),
                "amp": precision.name,
                "channels_last": precision.channels_last,
                "batch": batch,
                "canvas": list(canvas),
                "threads": torch.get_num_threads(),
                "data": "real" if data else "random",
                **train,
                **{f"infer_{k}": v for k, v in infer.items()},
            }
        )
    return rows


def format_speed(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`bench_speed` rows."""
    header = ["device", "precision", "channels-last", "batch (studies)", "canvas", "train step (s)", "images/s"]
    header += ["loader wait (s/step)", "inference median (s)", "p95 (s)"]
    return markdown_table(
        header,
        [
            [f"{r['device']} ({r['threads']} threads)", r["amp"], r["channels_last"], r["batch"]]
            + [f"{r['canvas'][0]}x{r['canvas'][1]}", f"{r['step_s']:.3f}", f"{r['images_per_s']:.1f}"]
            + [f"{r['loader_wait_s']:.3f} ({r['data']} data)", f"{r['infer_median_s']:.3f}", f"{r['infer_p95_s']:.3f}"]
            for r in rows
        ],
    )
