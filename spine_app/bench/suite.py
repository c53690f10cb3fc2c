"""``spine-app bench all``: every benchmark in one command, its tables written into the docs.

Each part writes ``OUT/<part>.md`` (the table as the docs show it) and ``OUT/<part>.json`` (the raw
figures). With ``docs``, the text between ``<!-- bench:PART -->`` and ``<!-- /bench:PART -->`` in
each given Markdown file is replaced by that part's table (write, then rename) and the parts'
figures are copied to ``<docs folder>/figures/benchmarks/``; prose outside the markers is kept.
A part that fails is reported in one line and in ``OUT/errors.json``; the other parts still run.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spine_app.data.io import write_atomic
from spine_app.viz.tables import markdown_table

logger = logging.getLogger(__name__)


@dataclass
class BenchSettings:
    """What ``bench all`` runs: the data, the model, and each part's budget."""

    datalist: str
    out: Path
    model: str | None = None
    device: str = "auto"  # "auto": CUDA when present, else CPU
    split: str = "test"
    workers: int = 1
    infer_studies: int = 50
    speed_steps: int = 10
    speed_passes: int = 20
    speed_canvas: tuple[int, int] = (384, 288)
    compare_steps: int = 500
    compare_canvas: tuple[int, int] = (256, 192)
    compare_batch: int = 4
    compare_variants: list[str] | None = None  # None: every variant of bench compare


#: a part's result: (Markdown for the docs, figures as JSON, figure files to publish)
PartResult = tuple[str, Any, list[Path]]


def part_machine(s: BenchSettings) -> PartResult:
    """The machine, library versions and commit the figures were measured with."""
    import monai
    import torch

    import spine_app

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    memory = (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else float("nan")
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "gpu": gpu,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "spine_app": spine_app.__version__,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
    }
    header = ["CPU", "cores", "memory", "GPU", "torch", "MONAI", "spine-app", "commit", "date"]
    row = [
        cpu,
        str(info["cores"]),
        f"{info['memory_gib']} GiB",
        gpu,
        info["torch"],
        info["monai"],
        info["spine_app"],
        commit,
        info["date"],
    ]
    return markdown_table(header, [row]), info, []


def part_infer(s: BenchSettings) -> PartResult:
    """Per-study latency and throughput of the whole ``spine-app infer`` pipeline on ~1500 px studies."""
    from spine_app.bench.infer import bench_inference

    r = bench_inference(n=s.infer_studies, model=s.model, device=s.device)
    lat = r["latency_s"]
    header = [
        "studies (long side)",
        "per-study latency, median",
        "p95",
        "first study",
        "throughput",
        "peak memory (process RSS)",
    ]
    row = [
        f"{r['studies']} ({r['long_side_px'][0]}-{r['long_side_px'][1]} px), {r['failed']} failed",
        f"{lat['median']:.2f} s",
        f"{lat['p95']:.2f} s",
        f"{lat['first']:.2f} s",
        f"{r['throughput_studies_per_s']:.2f} studies/s",
        f"{r['peak_rss_mib']:.0f} MiB",
    ]
    return markdown_table(header, [row]), r, []


def _speed(s: BenchSettings, data: str | None) -> PartResult:
    from spine_app.bench.speed import bench_speed, format_speed

    rows = bench_speed(s.device, 4, s.speed_canvas, s.speed_steps, s.speed_passes, data, s.workers)
    return format_speed(rows), rows, []


def part_speed(s: BenchSettings) -> PartResult:
    """Training step and network latency on random batches (the network alone; CUDA rows when present)."""
    return _speed(s, None)


def part_speed_data(s: BenchSettings) -> PartResult:
    """The same through the real data pipeline (loader wait per step measured)."""
    return _speed(s, s.datalist)


def part_view(s: BenchSettings) -> PartResult:
    """Telling AP from LAT by the pixels on the split's films."""
    from spine_app.inference.view_guess import bench_views

    r = bench_views(s.datalist, s.split, s.model)
    header = ["films", "correct", "wrong", "refused", "lowest AP score", "highest LAT score", "time per film"]
    row = [
        str(r["films"]),
        str(r["correct"]),
        str(r["wrong"]),
        str(r["refused"]),
        f"{r['ap_score_min']:+.3f}",
        f"{r['lat_score_max']:+.3f}",
        f"{r['median_seconds']:.2f} s",
    ]
    return markdown_table(header, [row]), r, []


def morphometry_row(name: str, r: dict[str, Any]) -> list[str]:
    """One row of the morphometry table from :func:`evaluate_morphometry`'s report."""
    h, lv, fx, st, ds = r["heights"], r["levels"], r["fractures"], r["study"], r["damaged_studies"]
    by_type = ", ".join(f"{k} {v['detected']}/{v['total']}" for k, v in fx["by_type"].items())
    ci = f" ({st['auroc_ci'][0]:.3f}-{st['auroc_ci'][1]:.3f})" if st["auroc_ci"] else ""
    pos = ("anterior", "middle", "posterior")
    return [
        name,
        " / ".join(f"{h[p]['mae_mm']:.2f} ({h[p]['bias_mm']:+.2f})" for p in pos) if all(h[p] for p in pos) else "-",
        f"{lv['grade_agreement']:.3f} ({lv['graded']} levels; {lv['within_one_grade']:.3f} within one grade)",
        f"{fx['detected']}/{fx['total']} = {fx['rate']:.2f} ({by_type})",
        f"{r['normal_levels_flagged']:.3f}",
        f"{ds['fracture_found']}/{ds['total']}",
        f"{ds['most_reduced_is_fractured']}/{ds['total']}",
        f"{st['auroc_max_reduction']:.3f}{ci}",
    ]


MORPHOMETRY_HEADER = [
    "masks",
    "height MAE (bias) anterior / middle / posterior (mm)",
    "exact Genant grade",
    "fractured levels found",
    "normal levels flagged",
    "Damaged studies: a fractured level found",
    "Damaged studies: most reduced level is the fractured one",
    "study AUROC (largest reduction)",
]


def part_morphometry(s: BenchSettings) -> PartResult:
    """Morphometry against truth.json: the reference masks (the method) and the model's (end to end)."""
    from spine_app.inference.run import resolve_inputs, run_inference
    from spine_app.morphometry.evaluate import evaluate_morphometry

    pred = s.out / f"predictions_{s.split}"
    entries, errors = resolve_inputs([s.datalist], split=s.split, model=s.model)
    # the disk as the network draws it, which parts the bodies in inference's own morphometry
    # (the disk exclusion shapes only the written disk mask: docs/inference.md)
    run_inference(entries, pred, s.model, s.device, errors=errors, disk_exclusion=None)
    reports = {
        "reference": evaluate_morphometry(s.datalist, s.split),
        "model": evaluate_morphometry(s.datalist, s.split, pred),
    }
    rows = [
        morphometry_row("reference (the method alone)", reports["reference"]),
        morphometry_row("the model's predictions (end to end)", reports["model"]),
    ]
    return markdown_table(MORPHOMETRY_HEADER, rows), reports, []


def part_compare(s: BenchSettings) -> PartResult:
    """Ours vs the seed approach and the ablations at an equal step budget."""
    from spine_app.bench.compare import compare
    from spine_app.bench.compare_report import markdown

    folder = s.out / "compare"
    results = compare(
        s.datalist,
        folder,
        s.compare_steps,
        s.compare_batch,
        s.compare_canvas,
        0,
        s.workers,
        s.device,
        s.compare_variants,
    )
    return markdown(results).strip(), results, [folder / name for name in ("compare.png", "compare.md", "compare.json")]


PARTS: dict[str, Callable[[BenchSettings], PartResult]] = {
    "machine": part_machine,
    "infer": part_infer,
    "speed": part_speed,
    "speed_data": part_speed_data,
    "view": part_view,
    "morphometry": part_morphometry,
    "compare": part_compare,
}


def replace_generated(text: str, part: str, table: str) -> tuple[str, bool]:
    """``text`` with the block between ``<!-- bench:part -->`` and ``<!-- /bench:part -->`` set to
    ``table``; the flag says whether the markers were there."""
    pattern = re.compile(rf"(<!-- bench:{re.escape(part)} -->\n).*?(<!-- /bench:{re.escape(part)} -->)", re.DOTALL)
    new, count = pattern.subn(lambda m: m.group(1) + table.strip() + "\n" + m.group(2), text)
    return new, count > 0


def update_docs(docs: list[Path], tables: dict[str, str], figures: list[Path]) -> dict[str, list[str]]:
    """Write each part's table into the docs' marker blocks and copy the figures; returns doc -> parts."""
    updated: dict[str, list[str]] = {}
    for doc in docs:
        text = doc.read_text()
        parts = []
        for part, table in tables.items():
            text, found = replace_generated(text, part, table)
            if found:
                parts.append(part)
        write_atomic(doc, lambda tmp, text=text: tmp.write_text(text))
        updated[str(doc)] = parts
    if docs and figures:
        target = docs[0].parent / "figures" / "benchmarks"
        target.mkdir(parents=True, exist_ok=True)
        for fig in figures:
            write_atomic(target / fig.name, lambda tmp, fig=fig: shutil.copyfile(fig, tmp))
    return updated


def run_all(settings: BenchSettings, only: list[str] | None = None, docs: list[Path] | None = None) -> dict[str, Any]:
    """Run the chosen parts (default all) in order; write OUT/<part>.md/.json, errors.json, the docs.

    Returns {"tables": part -> Markdown, "errors": part -> one-line reason, "docs": doc -> parts}.
    """
    chosen = only or list(PARTS)
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown benchmark part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    for doc in docs or []:
        if not doc.is_file():
            raise FileNotFoundError(f"{doc}: no such documentation file")
    from spine_app.inference.run import resolve_device

    settings.device = resolve_device(settings.device)
    settings.out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, str] = {}
    errors: dict[str, str] = {}
    figures: list[Path] = []
    for part in chosen:
        logger.warning("bench all: %s ...", part)  # progress of a long run
        try:
            table, raw, figs = PARTS[part](settings)
        except Exception as err:  # one broken part must not lose the others' figures
            errors[part] = f"{type(err).__name__}: {err}".splitlines()[0]
            logger.error("bench all: %s failed: %s", part, errors[part])
            continue
        tables[part], figures = table, figures + figs
        write_atomic(settings.out / f"{part}.md", lambda tmp, t=table: tmp.write_text(t + "\n"))
        write_atomic(
            settings.out / f"{part}.json", lambda tmp, r=raw: tmp.write_text(json.dumps(r, indent=2, default=str))
        )
    write_atomic(settings.out / "errors.json", lambda tmp: tmp.write_text(json.dumps(errors, indent=2)))
    updated = update_docs(list(docs or []), tables, figures)
    return {"tables": tables, "errors": errors, "docs": updated}
