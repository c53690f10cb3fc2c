"""``spine-app bench ...``: the benchmarks (spine_app.bench)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from spine_app.cli.common import _names


def bench_synth(
    n: int = 200, seed: int = 0, preset: str = "default", workers: int | None = None, keep: str | None = None
) -> None:
    """Benchmark the generator: write N studies to a temporary folder and print studies/s.

    The issue's target is 1000 default studies in at most 5 minutes, i.e. >= 3.33 studies/s.
    """
    from spine_app.synthetic.generator import generate_dataset

    out = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="spine-synth-bench-"))
    try:
        manifest = generate_dataset(out, n, seed=seed, preset=preset, workers=workers)
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    rate = manifest["studies_per_second"]
    print(f"preset {preset}: {n} studies in {manifest['seconds']} s with {manifest['workers']} workers")
    print(f"studies/s: {rate}   projected 1000 studies: {1000 / rate:.0f} s")


def bench_infer(
    n: int = 50,
    seed: int = 0,
    model: str | None = None,
    device: str = "cpu",
    json_out: str | None = None,
    keep: str | None = None,
) -> None:
    """Inference speed: per-study latency (median, p95) and throughput over N studies of ~1500 px.

    Args:
        n: studies generated and run (batch size 1, the bundle's inference config).
        device: "cpu", "cuda:0", ...
        json_out: also write the figures as JSON.
        keep: keep the generated studies and outputs in this folder.
    """
    from spine_app.bench.infer import bench_inference, format_inference_bench

    report = bench_inference(n=n, seed=seed, model=model, device=device, keep=keep)
    print(format_inference_bench(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))


def bench_speed(
    device: str = "auto",
    batch: int = 4,
    canvas: tuple = (384, 288),
    steps: int = 10,
    n: int = 20,
    data: str | None = None,
    workers: int = 1,
    json_out: str | None = None,
) -> None:
    """Training throughput (images/s, loader wait per step) and per-study network latency, per option.

    Args:
        device: "auto" (CUDA when present), "cpu", "cuda:0".
        batch: studies per training step (2 images each).
        canvas: working size (rows, cols).
        steps: timed training steps (after 3 warm-up steps).
        n: timed inference passes.
        data: a datalist: train batches from the real pipeline (loader wait measured); default random.
        workers: loader processes with --data.
        json_out: also write the rows as JSON.
    """
    from spine_app.bench.speed import bench_speed as run_bench
    from spine_app.bench.speed import format_speed

    rows = run_bench(device, batch, tuple(int(c) for c in canvas), steps, n, data, workers)
    print(format_speed(rows))
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=2))


def bench_compare(
    data: str,
    out: str = "compare",
    steps: int = 300,
    batch: int = 4,
    canvas: tuple = (384, 288),
    seed: int = 0,
    workers: int = 1,
    device: str = "cpu",
    variants: str | None = None,
    amp: str = "auto",
) -> None:
    """Ours vs eight single-task models + a two-view classifier, and two ablations, at equal steps.

    Args:
        data: datalist JSON (its split is used as is).
        out: output folder (compare.json, compare.md, compare.png).
        steps: optimisation steps for every variant (the budget).
        batch: studies per step.
        canvas: working size (rows, cols).
        variants: comma-separated subset: ours, seed-style, no-cls, cls-only, other-sharing (default: all).
        amp: training precision of every variant (auto, bf16, fp16, off), as the bundle's ``amp``.
    """
    from spine_app.bench.compare import compare

    chosen = _names(variants)
    compare(data, out, steps, batch, tuple(int(c) for c in canvas), seed, workers, device, chosen, amp)
    print((Path(out) / "compare.md").read_text())


def bench_morphometry(datalist: str, split: str = "test", pred: str | None = None, json_out: str | None = None) -> None:
    """Morphometry vs truth.json on a synthetic datalist: height error, grade agreement, detection.

    Args:
        datalist: a datalist of synthetic studies (with truth.json).
        split: training, validation or test.
        pred: an inference output folder (masks of `spine-app infer`); default: the reference masks.
            Its disk mask parts the bodies: for inference's own morphometry, infer with
            `--disk_exclusion none` (the exclusion shapes only the written disk mask).
        json_out: also write the figures as JSON.
    """
    from spine_app.morphometry.evaluate import evaluate_morphometry, format_morphometry

    report = evaluate_morphometry(datalist, split, pred)
    print(format_morphometry(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))


def bench_all(
    data: str,
    out: str = "bench_out",
    docs: str | None = None,
    only: str | None = None,
    model: str | None = None,
    device: str = "auto",
    split: str = "test",
    workers: int = 1,
    infer_studies: int = 50,
    speed_steps: int = 10,
    speed_passes: int = 20,
    speed_canvas: tuple = (384, 288),
    compare_steps: int = 500,
    compare_canvas: tuple = (256, 192),
    compare_batch: int = 4,
    compare_variants: str | None = None,
) -> None:
    """Every benchmark in one command; with --docs their tables replace the marked blocks of the docs.

    Parts, in order: machine, infer, speed, speed_data, view, morphometry, compare (about 90 min on a
    2-core CPU, 60 of them for compare at 500 steps). Exits with status 1 when a part failed (OUT/errors.json).

    Args:
        data: a synthetic datalist (view, morphometry, compare and the real-pipeline speed use it).
        out: folder for each part's .md and .json (and the compare / prediction folders).
        docs: comma-separated Markdown files whose ``<!-- bench:PART -->`` blocks are rewritten
            (e.g. docs/benchmarks.md,docs/results.md); figures go to docs/figures/benchmarks/.
        only: comma-separated subset of the parts.
        model: weights (default the shipped model).
        infer_studies, speed_steps, speed_passes, speed_canvas, compare_steps, compare_canvas,
        compare_batch: the parts' budgets (as in bench infer / speed / compare).
        compare_variants: comma-separated subset of bench compare's variants (ours, seed-style, no-cls, cls-only,
            other-sharing; default: all).
    """
    from spine_app.bench.suite import BenchSettings, run_all

    settings = BenchSettings(
        data,
        Path(out),
        model,
        device,
        split,
        workers,
        infer_studies,
        speed_steps,
        speed_passes,
        tuple(int(c) for c in speed_canvas),
        compare_steps,
        tuple(int(c) for c in compare_canvas),
        compare_batch,
        _names(compare_variants),
    )
    result = run_all(settings, _names(only), [Path(d) for d in _names(docs) or []])
    for part, table in result["tables"].items():
        print(f"## {part}\n\n{table}\n")
    for doc, parts in result["docs"].items():
        print(f"{doc}: rewrote {', '.join(parts) or 'nothing (no bench markers)'}")
    for part, error in result["errors"].items():
        print(f"failed: {part}: {error}", file=sys.stderr)
    if result["errors"]:
        sys.exit(1)


def bench_view(data: str, split: str = "test", model: str | None = None) -> None:
    """Accuracy of telling AP from LAT by the pixels (for films no name or DICOM tag names).

    Args:
        data: datalist JSON.
        split: split whose films are guessed.
        model: weights (default the shipped model).
    """
    from spine_app.inference.view_guess import MIN_MARGIN, bench_views

    r = bench_views(data, split, model)
    print(
        f"{r['films']} films: {r['correct']} correct, {r['wrong']} wrong, {r['refused']} refused (|score| < {MIN_MARGIN} or no column)"
    )
    print(
        f"lowest AP score {r['ap_score_min']:+.3f}, highest LAT score {r['lat_score_max']:+.3f}; "
        f"{r['median_seconds']:.2f} s per film"
    )
