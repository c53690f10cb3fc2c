"""Files of a robustness evaluation: results.json, results.csv, results.md and the plots
(Dice vs severity per mask, AUROC vs severity, heat-map of the Dice drop, example images)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from spine_app.channels import MASK_NAMES
from spine_app.data.io import read_image, write_atomic
from spine_app.engines.writer import write_json
from spine_app.robustness.corruptions import CorruptionSpec, full_scale
from spine_app.viz.contact_sheet import to_display
from spine_app.viz.figures import save_figure, subplots
from spine_app.viz.tables import markdown_table


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per condition: corruption, severity, value, per-mask Dice/HD95, AUROCs, drops."""
    clean = results["clean"]
    out = [{"corruption": "clean", "severity": 0, "value": "", **_flat(clean, clean)}]
    for name, entry in results["corruptions"].items():
        for severity, (value, scores) in enumerate(zip(entry["values"], entry["severities"]), start=1):
            out.append({"corruption": name, "severity": severity, "value": value, **_flat(scores, clean)})
    return out


def _flat(scores: dict[str, Any], clean: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {
        "mean_dice": scores["mean_dice"],
        "drop_mean_dice": clean["mean_dice"] - scores["mean_dice"],
    }
    for name in MASK_NAMES:
        if name in scores["dice"]:
            flat[f"dice_{name}"] = scores["dice"][name]
            flat[f"hd95_px_{name}"] = scores["hd95_px"][name]
    for head, value in scores["auroc"].items():
        flat[f"auroc_{head.replace(' ', '_')}"] = value
    flat["drop_auroc_decision"] = clean["auroc"]["decision"] - scores["auroc"]["decision"]
    return flat


def markdown(results: dict[str, Any]) -> str:
    """The summary table: per corruption, mean Dice at each severity, decision/fused AUROC, relative errors."""
    clean, per = results["clean"], results["summary"]["per_corruption"]
    lines = [
        f"Clean: mean Dice {clean['mean_dice']:.3f}, decision AUROC {clean['auroc']['decision']:.3f}, "
        f"fused AUROC {clean['auroc']['fused']:.3f} ({results['studies']} {results['split']} studies)",
        "",
    ]
    rows = []
    for name, entry in results["corruptions"].items():
        sev, p = entry["severities"], per[name]
        rows.append(
            [name, *(f"{s['mean_dice']:.3f}" for s in sev)]
            + [" ".join(f"{s['auroc'][head]:.2f}" for s in sev) for head in ("decision", "fused")]
            + [f"{p['relative_error_dice']:.2f}", f"{p['relative_error_auroc']:.2f}"]
        )
    header = ["corruption", "mean Dice s1", "s2", "s3", "s4", "s5", "decision AUROC s1..s5", "fused AUROC s1..s5"]
    lines.append(markdown_table(header + ["rel. error Dice", "rel. error AUROC (decision)"], rows))
    mean = results["summary"]["mean"]
    lines += [
        "",
        f"Mean relative error (1.0 = as on clean images): Dice {mean['relative_error_dice']:.2f}, "
        f"decision AUROC {mean['relative_error_auroc']:.2f}, fused AUROC {mean['relative_error_auroc_fused']:.2f}.",
    ]
    return "\n".join(lines) + "\n"


def plot_dice(results: dict[str, Any], path: Path) -> None:
    masks = list(results["clean"]["dice"])
    fig, axes = subplots(2, (len(masks) + 1) // 2, figsize=(4 * ((len(masks) + 1) // 2), 7), sharey=True)
    for ax, name in zip(axes.ravel(), masks):
        for corruption, entry in results["corruptions"].items():
            ax.plot(
                range(6),
                [results["clean"]["dice"][name]] + [s["dice"][name] for s in entry["severities"]],
                marker=".",
                label=corruption,
            )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("severity")
        ax.set_ylim(0, 1)
    axes.ravel()[0].set_ylabel("Dice")
    axes.ravel()[0].legend(fontsize=6, ncol=2)
    save_figure(fig, path)


def plot_auroc(results: dict[str, Any], path: Path) -> None:
    fig, axes = subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, head in zip(axes, ("decision", "fused")):
        for corruption, entry in results["corruptions"].items():
            ax.plot(
                range(6),
                [results["clean"]["auroc"][head]] + [s["auroc"][head] for s in entry["severities"]],
                marker=".",
                label=corruption,
            )
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{head} AUROC", fontsize=10)
        ax.set_xlabel("severity")
    axes[0].set_ylabel("AUROC")
    axes[1].legend(fontsize=6, ncol=2)
    save_figure(fig, path)


def plot_heatmap(results: dict[str, Any], path: Path) -> None:
    masks = list(results["clean"]["dice"])
    names = list(results["corruptions"])
    drop = np.array(
        [
            [
                results["clean"]["dice"][m] - np.mean([s["dice"][m] for s in results["corruptions"][c]["severities"]])
                for m in masks
            ]
            for c in names
        ]
    )
    fig, ax = subplots(figsize=(1.1 * len(masks) + 3, 0.35 * len(names) + 2))
    image = ax.imshow(drop, cmap="magma_r", vmin=0, vmax=max(0.05, float(drop.max())))
    ax.set_xticks(range(len(masks)), masks, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(masks)):
            ax.text(
                j,
                i,
                f"{drop[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if drop[i, j] > 0.3 else "black",
            )
    fig.colorbar(image, ax=ax, label="Dice drop (mean over severities)")
    save_figure(fig, path)


def plot_examples(entry: dict[str, Any], specs: list[CorruptionSpec], seed: int, path: Path) -> None:
    """One LAT film under each corruption at severities 1, 3 and 5."""
    image, meta = read_image(entry["image_lat"])
    full = full_scale(image, meta)
    fig, axes = subplots(3, len(specs) + 1, figsize=(1.6 * (len(specs) + 1), 7))
    for r, severity in enumerate((1, 3, 5)):
        axes[r, 0].imshow(to_display(image), cmap="gray")
        axes[r, 0].set_title("clean" if r == 0 else "", fontsize=7)
        axes[r, 0].set_ylabel(f"severity {severity}", fontsize=7)
        for c, spec in enumerate(specs, start=1):
            out, _ = spec.apply(image, None, severity, seed, "LAT", full)
            axes[r, c].imshow(to_display(out), cmap="gray")
            if r == 0:
                axes[r, c].set_title(spec.name, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)


def write_robustness_report(
    results: dict[str, Any], out: str | Path, example: dict[str, Any], specs: list[CorruptionSpec], seed: int
) -> None:
    """Write every output file into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    table = rows(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in table for k in row)))
    writer.writeheader()
    writer.writerows(table)
    text = buffer.getvalue()
    write_atomic(out / "results.csv", lambda tmp: tmp.write_text(text))
    summary = markdown(results)
    write_atomic(out / "results.md", lambda tmp: tmp.write_text(summary))
    plot_dice(results, out / "dice_vs_severity.png")
    plot_auroc(results, out / "auroc_vs_severity.png")
    plot_heatmap(results, out / "dice_drop_heatmap.png")
    if example.get("image_lat"):
        plot_examples(example, specs, seed, out / "examples.png")
