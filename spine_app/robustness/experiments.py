"""The seed study's experiments with the bundle's own training: learning curves over the number of
training studies (``train-size``) and noise in training vs noise only at test time (``noise-train``).

Every run trains ``bundle/configs/train.yaml`` through ``ConfigWorkflow`` (same split, same seed,
the schedule given by ``epochs`` and the other overrides) into ``out/<run>/``, then scores the best
model on the test split with the robustness runner (the bundle's metric).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from spine_app.data.importer import load_datalist
from spine_app.data.io import write_atomic
from spine_app.engines.writer import write_json
from spine_app.evaluation.runner import SplitRunner, split_scores
from spine_app.robustness.corruptions import load_suite
from spine_app.robustness.evaluate import corruption_hook
from spine_app.viz.figures import save_figure, subplots
from spine_app.viz.tables import markdown_table

logger = logging.getLogger(__name__)
TRAIN_SIZES = (5, 10, 15, 20, 25, 45, 65, 85, 105)


def train_bundle(datalist: str | Path, run_dir: Path, bundle: Path, **overrides: Any) -> Path:
    """Train the bundle on ``datalist`` into ``run_dir`` (fresh, no resume); returns the best model path.

    A run that already finished with the same overrides (``run_dir/train_done.json``) is reused, so
    an interrupted experiment continues with the runs it has not done yet.
    """
    from spine_app.bundle import config_workflow

    done, model = run_dir / "train_done.json", run_dir / "models" / "model.pt"
    settings = json.loads(json.dumps({"datalist": str(Path(datalist).resolve()), **overrides}, default=str))
    if done.is_file() and model.is_file() and json.loads(done.read_text()).get("settings") == settings:
        logger.warning("%s: finished run reused", run_dir)
        return model
    workflow = config_workflow(
        "train.yaml",
        bundle,
        workflow_type="train",
        **{
            "datalist": str(Path(datalist).resolve()),
            "bundle_root": str(run_dir),
            "ckpt_dir": str(run_dir / "models"),
            "resume": False,
            "extra_synthetic_studies": 0,  # the datalist alone (the main job's extra studies are not part of it)
            "extra_default_studies": 0,
            **overrides,
        },
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    write_json(done, {"settings": settings, "model": str(model)})
    return model


def _test_scores(
    model: Path, datalist: str | Path, bundle: Path, conditions: dict[str, tuple], canvas: list[int] | None = None
) -> dict[str, Any]:
    """Scores of ``model`` on the test split for each named condition (spec, severity) or (None, 0),
    at the training canvas (``canvas``, default the inference config's)."""
    from spine_app.bundle import load_bundle_network

    network, default_canvas = load_bundle_network(bundle, model)
    runner = SplitRunner(network, load_datalist(datalist)["test"], list(canvas or default_canvas))
    return {
        name: split_scores(runner.run(corruption_hook(spec, severity))) for name, (spec, severity) in conditions.items()
    }


def _plot(x: list[int], runs: list[dict[str, Any]], path: Path) -> None:
    fig, axes = subplots(1, 2, figsize=(12, 4.5))
    for name in runs[0]["clean"]["dice"]:
        axes[0].plot(x, [r["clean"]["dice"][name] for r in runs], marker="o", label=name)
    for ax in axes:  # learning curves: sizes on a log axis, labelled as they are
        ax.set_xscale("log")
        ax.set_xticks(x, [str(n) for n in x])
        ax.minorticks_off()
    axes[0].set(xlabel="training studies", ylabel="test Dice", ylim=(0, 1), title="Dice per mask")
    axes[0].legend(fontsize=7)
    for head in ("decision", "fused"):
        axes[1].plot(x, [r["clean"]["auroc"][head] for r in runs], marker="o", label=head)
    axes[1].set(xlabel="training studies", ylabel="test AUROC", ylim=(0.3, 1), title="Normal/Damaged AUROC")
    axes[1].legend()
    save_figure(fig, path)


def epochs_for_steps(steps: int, studies: int, batch_size: int) -> int:
    """Epochs that give about ``steps`` optimisation steps on ``studies`` studies in batches of ``batch_size``
    (at least one): every training-set size then gets the same budget, not the same number of epochs."""
    steps_per_epoch = -(-studies // batch_size)
    return max(1, round(steps / steps_per_epoch))


def train_size(
    datalist: str | Path,
    out: str | Path,
    sizes: list[int] | tuple[int, ...] = TRAIN_SIZES,
    bundle: str | Path | None = None,
    steps: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train with the first N training studies for each N in ``sizes`` (up to all) and score each.

    With ``steps``, each size trains for about that many optimisation steps (epochs scaled to N,
    validated once at the end); otherwise every size uses the ``epochs`` override."""
    from spine_app.bundle import BUNDLE_DIR

    bundle, out = Path(bundle or BUNDLE_DIR), Path(out)
    available = len(load_datalist(datalist)["training"])
    chosen = sorted({min(int(n), available) for n in sizes})
    batch_size = int(overrides.get("batch_size", 4))
    runs = []
    for n in chosen:
        schedule = {}
        if steps:
            epochs = epochs_for_steps(int(steps), n, batch_size)
            schedule = {"epochs": epochs, "val_interval": epochs, "early_stop_patience": epochs + 1}
        model = train_bundle(datalist, out / f"n{n:04d}", bundle, train_limit=n, **{**overrides, **schedule})
        runs.append(
            {
                "train_studies": n,
                "epochs": schedule.get("epochs", overrides.get("epochs")),
                **_test_scores(model, datalist, bundle, {"clean": (None, 0)}, overrides.get("patch_size")),
            }
        )
        logger.warning("train-size %d: mean Dice %.3f", n, runs[-1]["clean"]["mean_dice"])
    result = {"sizes": chosen, "steps": steps, "runs": runs, "overrides": overrides}
    write_json(out / "train_size.json", result)
    text = train_size_markdown(runs)
    write_atomic(out / "train_size.md", lambda tmp: tmp.write_text(text))
    _plot(chosen, runs, out / "train_size.png")
    return result


def train_size_markdown(runs: list[dict[str, Any]]) -> str:
    """train_size.md: a row per training-set size, clean test scores (mean and per-mask Dice, AUROCs)."""
    masks = list(runs[0]["clean"]["dice"])
    rows = [
        [r["train_studies"], *(f"{v:.3f}" for v in (r["clean"]["mean_dice"], *r["clean"]["dice"].values()))]
        + [f"{r['clean']['auroc'][head]:.3f}" for head in ("decision", "fused")]
        for r in runs
    ]
    return markdown_table(["training studies", "mean Dice", *masks, "decision AUROC", "fused AUROC"], rows) + "\n"


def noise_train_markdown(runs: dict[str, dict[str, dict[str, Any]]]) -> str:
    """noise_train.md: a row per (training, test condition)."""
    rows = [
        [name, condition, f"{c['mean_dice']:.3f}", f"{c['auroc']['decision']:.3f}", f"{c['auroc']['fused']:.3f}"]
        for name, scores in runs.items()
        for condition, c in scores.items()
    ]
    return markdown_table(["training", "test films", "mean Dice", "decision AUROC", "fused AUROC"], rows) + "\n"


def noise_train(
    datalist: str | Path,
    out: str | Path,
    corruption: str = "gaussian_noise",
    severity: int = 5,
    suite: str = "configs/robustness/default.yaml",
    bundle: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The seed study's noise experiment: a model trained clean and one trained with ``corruption``
    as training-time augmentation, each tested on clean and on corrupted (``severity``) test films."""
    from spine_app.bundle import BUNDLE_DIR

    bundle, out = Path(bundle or BUNDLE_DIR), Path(out)
    spec = next((s for s in load_suite(suite) if s.name == corruption), None)
    if spec is None:
        raise ValueError(f"{suite}: no corruption named {corruption!r}")
    conditions = {"clean": (None, 0), f"{corruption} s{severity}": (spec, severity)}
    runs = {}
    for name, extra in (("noise only at test", {}), ("noise in training", {"training_corruptions": [corruption]})):
        model = train_bundle(datalist, out / name.replace(" ", "_"), bundle, **{**overrides, **extra})
        runs[name] = _test_scores(model, datalist, bundle, conditions, overrides.get("patch_size"))
    result = {
        "corruption": corruption,
        "severity": severity,
        "value": spec.values[severity - 1],
        "runs": runs,
        "overrides": overrides,
    }
    write_json(out / "noise_train.json", result)
    text = noise_train_markdown(runs)
    write_atomic(out / "noise_train.md", lambda tmp: tmp.write_text(text))
    return result


__all__ = ["TRAIN_SIZES", "epochs_for_steps", "noise_train", "train_bundle", "train_size"]
