"""Files of ``spine-app bench compare``: compare.json, compare.md (one table) and compare.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spine_app.channels import LINE_CHANNELS, MASK_NAMES
from spine_app.data.io import write_atomic
from spine_app.engines.metrics import line_side_summary, segmentation_table
from spine_app.engines.writer import write_json
from spine_app.metrics.classification import auroc, auroc_ci
from spine_app.viz.figures import save_figure, subplots
from spine_app.viz.tables import markdown_table

SHORT = {
    name: name.replace("Lat_", "L ").replace("Ap_", "A ").replace("_Vertebral_Line", " line").replace("_", " ")
    for name in MASK_NAMES
}


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    """Per-mask scores and the AUROC (95 % CI) of the variant's study decision on its test records:
    the level head's pooled probability where the variant has one (ours), else the fused head."""
    records = entry["records"]
    rows = [r for r in records if r["label"] >= 0]
    key = "prob_cls_levels" if rows and all(r.get("prob_cls_levels") is not None for r in rows) else "prob_cls"
    labels, probs = [int(r["label"]) for r in rows], [r[key] for r in rows]
    both = len(set(labels)) == 2
    return {
        "segmentation": segmentation_table(records),
        "line_side": line_side_summary(records),
        "auroc": auroc(labels, probs) if both else float("nan"),
        "auroc_ci": list(auroc_ci(labels, probs)) if both else None,
        "decision": "levels" if key == "prob_cls_levels" else "fused",
    }


def markdown(results: dict[str, Any]) -> str:
    """One table: a row per variant, Dice (HD95 px) per mask, line clDice, AUROC, cost."""
    lines = [
        f"Same split, same batches, {results['steps']} AdamW steps of {results['batch']} studies at "
        f"{results['canvas'][0]}x{results['canvas'][1]} for every variant, trained in "
        f"{results.get('precision', 'fp32')}; test split scores in fp32 (Dice, HD95 in px).",
        "",
    ]
    rows = []
    for name, entry in results["variants"].items():
        s = entry["summary"]
        seg = s["segmentation"]
        cells = [f"{seg[m]['dice']:.3f} ({seg[m]['hd95_px']:.1f})" if m in seg else "-" for m in MASK_NAMES]
        cl = "/".join(f"{seg[m]['cldice']:.3f}" if m in seg else "-" for m in LINE_CHANNELS)
        side = s.get("line_side") or {}
        sides = f"{side['pass']}/{side['n']}" if side.get("n") else "-"
        ci = f" ({s['auroc_ci'][0]:.2f}-{s['auroc_ci'][1]:.2f})" if s["auroc_ci"] else ""
        peak = f"{entry['peak_train_mib']:.0f}" if entry["peak_train_mib"] is not None else "n/a (CPU)"
        rows.append(
            [name, *cells, cl, sides, f"{s['auroc']:.3f}{ci}", f"{entry['params'] / 1e6:.1f}"]
            + [f"{entry['macs_per_study'] / 1e9:.1f}", f"{entry['train_s']:.0f}", f"{entry['latency_s']:.3f}", peak]
        )
    header = ["variant", *(SHORT[m] for m in MASK_NAMES), "line clDice (ant/post)", "line side check"]
    header += ["decision AUROC (95 % CI; ours: level head)", "params (M)", "GMACs/study", "train (s)"]
    header += ["latency/study (s)", "peak train memory (MiB)"]
    lines.append(markdown_table(header, rows))
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    names = list(results["variants"])
    fig, axes = subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [4, 1]})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        seg = results["variants"][name]["summary"]["segmentation"]
        axes[0].bar(
            [m + i * width for m in range(len(MASK_NAMES))],
            [seg[m]["dice"] if m in seg else 0 for m in MASK_NAMES],
            width,
            label=name,
        )
        axes[1].bar(i, results["variants"][name]["summary"]["auroc"], label=name)
    axes[0].set_xticks(
        [m + 0.4 - width / 2 for m in range(len(MASK_NAMES))], [SHORT[m] for m in MASK_NAMES], fontsize=8
    )
    axes[0].set(ylabel="test Dice", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    axes[1].set(ylabel="decision AUROC", ylim=(0, 1), xticks=[])
    save_figure(fig, path)


def write_compare_report(results: dict[str, Any], out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for entry in results["variants"].values():
        entry["summary"] = summarize(entry)
    write_json(out / "compare.json", results)
    text = markdown(results)
    write_atomic(out / "compare.md", lambda tmp: tmp.write_text(text))
    plot(results, out / "compare.png")
