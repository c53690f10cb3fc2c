"""Evaluation report: thresholds chosen on validation, scores on test, files a reader can check.

Writes into ``output_dir``: ``metrics.json`` (everything), ``per_study.csv``, ``results.md`` (one row
per mask, in the seed reports' shape, plus the classification table) and plots: per-mask Dice bars,
ROC curves (fused, AP-only, LAT-only), training curves (from the TensorBoard logs, if any) and
example overlays.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from spine_app import __version__
from spine_app.channels import CHANNEL_VIEW, MASK_NAMES, VIEW_KEYS, avail_key
from spine_app.data.io import write_atomic
from spine_app.engines.metrics import HEADS, StudyMetrics, head_rows, line_side_summary, segmentation_table
from spine_app.metrics.classification import auroc, auroc_ci, threshold_scores, youden_threshold
from spine_app.metrics.disk_exclusion import NO_EXCLUSION, choose_disk_exclusion, mean_exclusion_dice
from spine_app.metrics.level_suppression import NO_SUPPRESSION
from spine_app.metrics.levels import (
    LEVEL_FLAG_RATE,
    fit_records_suppression,
    level_markdown,
    level_scores,
    level_threshold,
    normal_level_scores,
    suppress_records,
)
from spine_app.viz.figures import save_figure, subplots
from spine_app.viz.tables import markdown_table

logger = logging.getLogger(__name__)


def run_on(evaluator: Any, loader: Any) -> None:
    """Run an evaluator over another data loader (resets Ignite's epoch length)."""
    evaluator.data_loader = loader
    evaluator.state.epoch_length = len(loader)
    evaluator.run()


def classification_table(val: list[dict[str, Any]], test: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Per head: AUROC with a bootstrap 95 % CI on test, and threshold scores at the validation threshold."""
    out: dict[str, Any] = {}
    for head, (key, view, _) in HEADS.items():
        val_rows, test_rows = head_rows(val, view, key), head_rows(test, view, key)
        if not test_rows:
            continue
        threshold = youden_threshold([r["label"] for r in val_rows], [r[key] for r in val_rows]) if val_rows else 0.5
        labels, probs = [int(r["label"]) for r in test_rows], [r[key] for r in test_rows]
        lo, hi = auroc_ci(labels, probs, seed=seed)
        out[head] = {
            "n": len(test_rows),
            "auroc": auroc(labels, probs),
            "auroc_ci95": [lo, hi],
            **threshold_scores(labels, probs, threshold),
        }
    return out


def side_line(sides: dict[str, Any] | None) -> str:
    """One sentence on the line side check (empty when no film has both lines annotated)."""
    if not sides or not sides.get("n"):
        return ""
    failed = (
        f"; fails: {', '.join(sides['failed'][:10])}" + (" ..." if len(sides["failed"]) > 10 else "")
        if sides["failed"]
        else ""
    )
    return f"Line side check (both predicted lines on their own wall): {sides['pass']}/{sides['n']} lateral films pass{failed}.\n"


def markdown(
    seg: dict[str, dict[str, float]],
    cls: dict[str, Any],
    sides: dict[str, Any] | None = None,
    levels: dict[str, Any] | None = None,
    disk: dict[str, Any] | None = None,
) -> str:
    """The results as Markdown tables (one row per mask, then one row per classification head),
    with the line side check and the disk exclusion chosen on validation between them."""
    rows = [
        [name, *(f"{e[k]:.4f}" for k in ("dice", "iou", "tpr", "precision")), f"{e['hd95_px']:.2f}"]
        + [f"{e['hd95_mm']:.2f}" if e["hd95_mm"] is not None else "-"]
        + ([f"{e['cldice']:.4f}", f"{e['nsd']:.4f}"] if "cldice" in e else ["-", "-"])
        + [e["n"]]
        for name, e in seg.items()
    ]
    header = ["Mask", "Dice", "IoU", "TPR", "Precision", "HD95 (px)", "HD95 (mm)", "clDice", "NSD", "n"]
    lines = [markdown_table(header, rows)]
    if side_line(sides):
        lines += ["", side_line(sides).strip()]
    if disk_exclusion_line(disk):
        lines += ["", disk_exclusion_line(disk).strip()]
    rows = [
        [head, f"{e['auroc']:.3f} ({e['auroc_ci95'][0]:.3f}-{e['auroc_ci95'][1]:.3f})"]
        + [f"{e[k]:.3f}" for k in ("accuracy", "sensitivity", "specificity", "f1", "threshold")]
        + [e["confusion_matrix"]]
        for head, e in cls.items()
    ]
    header = ["Classifier", "AUROC (95 % CI)", "Accuracy", "Sensitivity", "Specificity", "F1", "Threshold"]
    lines += ["", markdown_table(header + ["Confusion [[TN, FP], [FN, TP]]"], rows)]
    if levels and "levels" in levels:
        source = levels.get("threshold_source", "truth")
        lines += [
            "",
            "Per vertebra (level head; reference levels of the LAT films, threshold from validation's "
            + ("normal levels):" if source == "truth" else "Normal studies' levels, as with study labels only):"),
            "",
            level_markdown(levels, "test").strip(),
        ]
        lines += _suppression_lines(levels)
    elif levels:
        lines += [
            "",
            f"Level threshold {levels['threshold']:.3f} (flags at most {LEVEL_FLAG_RATE:.0%} of the validation Normal "
            "studies' levels); no per-level reference to score the test split against.",
        ]
        lines += _suppression_lines(levels)
    return "\n".join(lines) + "\n"


def _suppression_lines(levels: dict[str, Any]) -> list[str]:
    """What to copy into inference.yaml for these levels: the threshold and the suppression weight."""
    if "neighbour_suppression" not in levels:
        return []
    auc = levels.get("head_level_auroc")
    head = f" (level AUROC before the suppression {auc:.3f})" if auc is not None else ""
    return [
        "",
        f"For inference.yaml: `level_threshold: {levels['threshold']:.3f}`, "
        f"`level_neighbour_suppression: {levels['neighbour_suppression']}` (fitted on validation's reference levels){head}.",
    ]


def plot_dice_bars(seg: dict[str, dict[str, float]], path: Path) -> None:
    fig, ax = subplots(figsize=(8, 3.5))
    names = list(seg)
    ax.bar(
        range(len(names)),
        [seg[n]["dice"] for n in names],
        color=["#d55" if CHANNEL_VIEW[MASK_NAMES.index(n)] == "AP" else "#58c" for n in names],
    )
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (test)")
    ax.set_title("Per-mask Dice (red: AP, blue: LAT)")
    save_figure(fig, path)


def _roc_points(labels: list[int], probs: list[float]) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(labels, bool), np.asarray(probs)
    thresholds = np.r_[np.inf, np.sort(np.unique(p))[::-1]]
    tpr = [((p >= t) & y).sum() / max(y.sum(), 1) for t in thresholds]
    fpr = [((p >= t) & ~y).sum() / max((~y).sum(), 1) for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


def plot_roc(test: list[dict[str, Any]], cls: dict[str, Any], path: Path) -> None:
    fig, ax = subplots(figsize=(4.5, 4.5))
    for head, (key, view, _) in HEADS.items():
        rows = head_rows(test, view, key)
        if head in cls and rows:
            fpr, tpr = _roc_points([int(r["label"]) for r in rows], [r[key] for r in rows])
            ax.plot(fpr, tpr, label=f"{head} (AUROC {cls[head]['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Normal vs Damaged (test)")
    save_figure(fig, path)


def plot_training_curves(log_dir: Path, path: Path) -> bool:
    """Training loss and validation score from the TensorBoard logs in ``log_dir``; False if none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for event_file in sorted(log_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    wanted = [t for t in ("train_loss", "val_score", "val_score_mean_dice", "val_score_auroc") if t in series]
    if not wanted:
        return False
    fig, axes = subplots(1, 2, figsize=(9, 3.5))
    steps, values = zip(*sorted(series["train_loss"])) if "train_loss" in series else ((), ())
    axes[0].plot(steps, values, lw=0.8)
    axes[0].set_title("training loss")
    axes[0].set_xlabel("iteration")
    for tag in wanted[1:] if "train_loss" in wanted else wanted:
        s, v = zip(*sorted(series[tag]))
        axes[1].plot(s, v, marker="o", ms=3, label=tag.replace("val_score_", "").replace("val_score", "score"))
    axes[1].set_title("validation")
    axes[1].set_xlabel("epoch")
    axes[1].legend(fontsize=8)
    save_figure(fig, path)
    return True


def plot_examples(examples: list[dict[str, Any]], path: Path) -> None:
    """Working-resolution overlays: prediction (channel colours) over the image, truth contour in white."""
    from scipy import ndimage

    from spine_app.viz.contact_sheet import overlay

    fig, axes = subplots(len(examples), 2, figsize=(6, 4 * len(examples)), squeeze=False)
    for row, ex in enumerate(examples):
        for col, view in enumerate(VIEW_KEYS):
            channels = np.nonzero(ex[avail_key(view)])[0]
            rgb = overlay(ex[f"image_{view}"], {int(c): ex[f"pred_{view}"][c] for c in channels})
            for c in channels:
                truth = ex[f"truth_{view}"][c]
                rgb[truth & ~ndimage.binary_erosion(truth)] = 255
            axes[row, col].imshow(rgb)
            axes[row, col].set_axis_off()
            axes[row, col].set_title(f"{view.upper()}: prediction (colour), truth (white)", fontsize=8)
    save_figure(fig, path)


def level_report(
    val: list[dict[str, Any]], test: list[dict[str, Any]], threshold_source: str = "auto"
) -> dict[str, Any]:
    """Per-level scores of ``test`` at the level threshold chosen on ``val`` from the normal levels of
    ``threshold_source`` (:func:`spine_app.metrics.levels.normal_level_scores`; the head's own
    probabilities), the test levels flagged after the neighbour suppression whose weight is fitted on
    ``val``'s reference levels (:mod:`spine_app.metrics.level_suppression`; none with study labels
    only); without reference levels in ``test``, only the threshold and the weight (what
    inference.yaml's ``level_threshold`` and ``level_neighbour_suppression`` take)."""
    normal, source = normal_level_scores(val, threshold_source)
    if normal.size == 0:
        return {}
    suppression = fit_records_suppression(val) if source == "truth" else NO_SUPPRESSION
    threshold = level_threshold(val, source=source)
    scores = level_scores(suppress_records(test, suppression), threshold) or {"threshold": threshold}
    return {**scores, "threshold_source": source, "neighbour_suppression": suppression.weight}


def disk_exclusion_report(val: list[dict[str, Any]], test: list[dict[str, Any]]) -> dict[str, Any]:
    """The disk exclusion chosen on ``val`` (:func:`spine_app.metrics.disk_exclusion.choose_disk_exclusion`)
    with ``test``'s disk Dice at it and without; validation's Dice at every threshold tried. Empty
    without disk masks on validation. The sweep starts from the disk the network drew, whatever
    exclusion the inferer applied (:func:`spine_app.engines.metrics.disk_exclusion_record`)."""
    choice = choose_disk_exclusion([r["disk_exclusion"] for r in val if "disk_exclusion" in r])
    if choice is None:
        return {}
    rows = [r["disk_exclusion"] for r in test if "disk_exclusion" in r]
    key = NO_EXCLUSION if choice.threshold is None else f"{choice.threshold:g}"
    means = mean_exclusion_dice(rows)
    return {
        **choice.to_dict(),
        "test_dice": means.get(key),
        "test_dice_without": means.get(NO_EXCLUSION),
        "n_test": len(rows),
        "validation_grid": mean_exclusion_dice([r["disk_exclusion"] for r in val if "disk_exclusion" in r]),
    }


def disk_exclusion_line(disk: dict[str, Any] | None) -> str:
    """One sentence on the disk exclusion chosen on validation (empty without one)."""
    if not disk:
        return ""
    if disk["threshold"] is None:
        return (
            f"Disk space exclusive of the bodies: no exclusion gains on validation (disk Dice {disk['dice_without']:.4f}); "
            "for inference.yaml: `disk_exclusion: null`.\n"
        )
    test = (
        f", test {disk['test_dice_without']:.4f} -> {disk['test_dice']:.4f}"
        if disk.get("test_dice") is not None
        else ""
    )
    return (
        f"Disk space exclusive of the bodies (pixels with a vertebra probability above {disk['threshold']:g} are not disk): "
        f"validation disk Dice {disk['dice_without']:.4f} -> {disk['dice']:.4f}{test}; "
        f"for inference.yaml: `disk_exclusion: {disk['threshold']:g}`.\n"
    )


def report_metrics(
    val: list[dict[str, Any]], test: list[dict[str, Any]], level_threshold_source: str = "auto"
) -> dict[str, Any]:
    """The metrics dictionary of metrics.json: test scores at thresholds chosen on validation."""
    return {
        "spine_app_version": __version__,
        "n_validation": len(val),
        "n_test": len(test),
        "segmentation": segmentation_table(test),
        "line_side": line_side_summary(test),
        "disk_exclusion": disk_exclusion_report(val, test),
        "classification": classification_table(val, test),
        "levels": level_report(val, test, level_threshold_source),
    }


def write_report(
    val: list[dict[str, Any]],
    test: list[dict[str, Any]],
    examples: list[dict[str, Any]],
    output_dir: str,
    log_dir: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every report file (``metrics``: :func:`report_metrics`, computed when not given); returns the metrics."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = metrics if metrics is not None else report_metrics(val, test)
    seg, cls, sides, levels = (
        metrics["segmentation"],
        metrics["classification"],
        metrics["line_side"],
        metrics["levels"],
    )
    write_atomic(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
    disk = metrics.get("disk_exclusion")
    write_atomic(out / "results.md", lambda tmp: tmp.write_text(markdown(seg, cls, sides, levels, disk)))
    write_atomic(
        out / "records.json", lambda tmp: tmp.write_text(json.dumps({"validation": val, "test": test}, default=float))
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["study_id", "label", "prob_fused", "prob_ap", "prob_lat", "prob_morphometry", "prob_combined", "prob_levels"]
        + [f"dice_{n}" for n in MASK_NAMES]
        + [f"hd95_px_{n}" for n in MASK_NAMES]
    )
    for r in test:
        writer.writerow(
            [
                r["study_id"],
                int(r["label"]),
                r["prob_cls"],
                r["prob_cls_ap"],
                r["prob_cls_lat"],
                r.get("prob_morphometry"),
                r.get("prob_combined"),
                r.get("prob_cls_levels"),
            ]
            + [r[n]["dice"] if n in r else "" for n in MASK_NAMES]
            + [r[n]["hd95_px"] if n in r else "" for n in MASK_NAMES]
        )
    write_atomic(out / "per_study.csv", lambda tmp: tmp.write_text(buffer.getvalue()))
    plot_dice_bars(seg, out / "per_mask_dice.png")
    plot_roc(test, cls, out / "roc.png")
    if examples:
        plot_examples(examples, out / "examples.png")
    if log_dir is not None:
        plot_training_curves(Path(log_dir), out / "training_curves.png")
    return metrics


def write_embedding_map(
    network: Any, test_loader: Any, test: list[dict[str, Any]], threshold: float, output_dir: str
) -> dict[str, Any]:
    """embedding_map.png and embedding_map.json of the test split (:mod:`spine_app.explain.embedding`);
    returns the summary stored in metrics.json."""
    from spine_app.explain.embedding import plot_embedding_map, study_embeddings

    emb = study_embeddings(network, test_loader)
    probabilities = {r["study_id"]: r["prob_cls"] for r in test}
    out = Path(output_dir)
    result = plot_embedding_map(emb, probabilities, threshold, out / "embedding_map.png")
    write_atomic(out / "embedding_map.json", lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    return {
        "method": "t-SNE (scikit-learn), fused head input",
        "figure": "embedding_map.png",
        "misclassified": result["misclassified"],
    }


def evaluate_and_report(
    evaluator: Any,
    val_loader: Any,
    test_loader: Any,
    metric: StudyMetrics,
    output_dir: str,
    log_dir: str | None = None,
    embedding_map: bool = True,
    level_threshold_source: str = "auto",
) -> dict[str, Any]:
    """Run ``evaluator`` on validation (thresholds) then test (scores) and write the report (with the
    test split's embedding map unless ``embedding_map`` is False; the level threshold from the
    normal levels of ``level_threshold_source``, see :func:`level_report`)."""
    run_on(evaluator, val_loader)
    val = list(metric.records)
    run_on(evaluator, test_loader)
    test = list(metric.records)
    metrics = report_metrics(val, test, level_threshold_source)
    if embedding_map:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        threshold = metrics["classification"].get("fused", {}).get("threshold", 0.5)
        metrics["embedding_map"] = write_embedding_map(evaluator.network, test_loader, test, threshold, output_dir)
    write_report(val, test, list(metric.examples), output_dir, log_dir, metrics)
    logger.warning("evaluation report written to %s", output_dir)
    print(
        markdown(
            metrics["segmentation"],
            metrics["classification"],
            metrics["line_side"],
            metrics.get("levels"),
            metrics.get("disk_exclusion"),
        )
    )
    return metrics
