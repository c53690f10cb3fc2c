"""Inference speed benchmark: per-study latency (AP + LAT, long side about 1500 px) and batch
throughput of ``spine-app infer`` with the shipped model, on the device at hand.

Latency is measured inside one run, from fetching a study (reading and preprocessing both views)
to the end of writing its outputs (masks, overlays, morphometry, result.json), batch size 1.
Peak memory is the process's peak resident set size (``ru_maxrss``) and, on CUDA, the peak
allocated GPU memory.
"""

from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from spine_app.bundle import BUNDLE_DIR
from spine_app.inference.run import resolve_inputs, run_inference


def bench_inference(
    n: int = 50,
    seed: int = 0,
    model: str | None = None,
    device: str = "cpu",
    bundle: str | Path = BUNDLE_DIR,
    pixel_spacing_mm: tuple[float, float] = (0.27, 0.28),
    keep: str | None = None,
) -> dict[str, Any]:
    """Generate ``n`` default-preset studies at ~1500 px and time ``run_inference`` over them."""
    import torch
    from ignite.engine import Events

    from spine_app.synthetic.generator import generate_dataset

    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="spine-infer-bench-"))
    try:
        generate_dataset(root / "studies", n, seed=seed, pixel_spacing_mm=pixel_spacing_mm)
        entries, errors = resolve_inputs([str(root / "studies")])
        sizes = [max(_long_side(p) for p in (e["image_ap"], e["image_lat"])) for e in entries]
        starts: list[float] = []
        latencies: list[float] = []

        def attach(evaluator: Any) -> None:
            evaluator.add_event_handler(Events.GET_BATCH_STARTED, lambda _: starts.append(time.perf_counter()))
            evaluator.add_event_handler(
                Events.ITERATION_COMPLETED, lambda _: latencies.append(time.perf_counter() - starts[-1])
            )

        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        result = run_inference(
            entries, root / "out", model, device, bundle, errors, on_evaluator=attach, progress=sys.stderr.isatty()
        )
        wall = time.perf_counter() - began
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    lat = np.array(latencies)
    return {
        "studies": n,
        "failed": len(result["errors"]),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "long_side_px": [int(min(sizes)), int(max(sizes))],
        "latency_s": {
            "median": float(np.median(lat)),
            "p95": float(np.percentile(lat, 95)),
            "first": float(lat[0]),
            "mean": float(lat.mean()),
        },
        "throughput_studies_per_s": n / float(lat.sum()),
        "wall_s_with_setup": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
    }


def _long_side(path: str) -> int:
    from PIL import Image

    with Image.open(path) as img:
        return max(img.size)


def format_inference_bench(report: dict[str, Any]) -> str:
    """The figures as printed lines."""
    lat = report["latency_s"]
    return "\n".join(
        [
            f"device {report['device']} ({report['torch_threads']} threads), {report['studies']} studies "
            f"(AP+LAT, long side {report['long_side_px'][0]}-{report['long_side_px'][1]} px), {report['failed']} failed",
            f"per-study latency: median {lat['median']:.2f} s, p95 {lat['p95']:.2f} s (first {lat['first']:.2f} s)",
            f"throughput: {report['throughput_studies_per_s']:.3f} studies/s; whole run with set-up {report['wall_s_with_setup']:.1f} s",
            f"peak memory: {report['peak_rss_mib']:.0f} MiB RSS"
            + (f", {report['peak_cuda_mib']:.0f} MiB CUDA" if report["peak_cuda_mib"] is not None else ""),
        ]
    )
