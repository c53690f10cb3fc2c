"""``spine-app robustness ...``: corruptions, learning curve, training with noise."""

from __future__ import annotations

from pathlib import Path

from spine_app.cli.common import _names


def robustness_evaluate(
    data: str,
    out: str = "robustness",
    suite: str = "configs/robustness/default.yaml",
    model: str | None = None,
    split: str = "test",
    device: str = "cpu",
    seed: int = 0,
    limit: int | None = None,
    only: str | None = None,
    bundle: str | None = None,
    canvas: tuple | None = None,
) -> None:
    """Run the model on DATA's test split under every corruption of SUITE at five severities.

    Writes OUT/results.json, results.csv, results.md, dice_vs_severity.png, auroc_vs_severity.png,
    dice_drop_heatmap.png and examples.png.

    Args:
        data: datalist JSON (spine-app import).
        out: output folder.
        suite: corruption suite YAML (configs/robustness/default.yaml documents the format).
        model: weights (default: the bundle's models/model.pt).
        split: datalist split to evaluate.
        device: "cpu" or "cuda:0".
        seed: corruption seed.
        limit: only the first N studies of the split.
        only: comma-separated corruption names to run (default: the whole suite).
        canvas: working size the model was trained at, e.g. "[256, 192]" (default the bundle's).
    """
    from spine_app.bundle import BUNDLE_DIR
    from spine_app.inference.run import BadArgument, check_model, resolve_device
    from spine_app.robustness.corruptions import load_suite
    from spine_app.robustness.evaluate import evaluate_robustness
    from spine_app.robustness.report import markdown

    try:
        load_suite(suite)
    except ValueError as err:
        raise BadArgument(str(err)) from None
    device = resolve_device(device)
    check_model(bundle or BUNDLE_DIR, model)
    names = _names(only)
    results = evaluate_robustness(
        data, suite, out, model, bundle, split, device, seed, limit, names, [int(c) for c in canvas] if canvas else None
    )
    print(markdown(results))
    print(
        f"{results['studies']} studies x {1 + 5 * len(results['corruptions'])} conditions in {results['seconds']:.0f} s -> {out}"
    )


def robustness_train_size(
    data: str, out: str = "train_size", sizes: str | list | None = None, steps: int | None = None, **overrides
) -> None:
    """Learning curve: train the bundle with the first N training studies for each N, score on test.

    Args:
        data: datalist JSON (fixed split).
        out: output folder (one training run per size, train_size.json/.md/.png).
        sizes: list of N (default 5,10,15,20,25,45,65,85,105; capped at all training studies).
        steps: equal budget: about this many optimisation steps per size (epochs scaled to N);
            without it every size trains for --epochs.
        overrides: any train.yaml id, e.g. --epochs 6 --patch_size "[256, 192]" --val_interval 2.
    """
    from spine_app.robustness.experiments import TRAIN_SIZES, train_size

    if sizes is None:
        chosen = list(TRAIN_SIZES)
    else:  # fire gives "5,20" as a tuple, "5" as an int
        chosen = [int(n) for n in (sizes if isinstance(sizes, (list, tuple)) else str(sizes).split(","))]
    result = train_size(data, out, chosen, steps=steps, **overrides)
    print((Path(out) / "train_size.md").read_text())
    print(f"{len(result['runs'])} trainings -> {out}/train_size.png")


def robustness_noise_train(
    data: str, out: str = "noise_train", corruption: str = "gaussian_noise", severity: int = 5, **overrides
) -> None:
    """Noise in training vs noise only at test time (the seed study's experiment), one table.

    Args:
        data: datalist JSON.
        out: output folder.
        corruption: suite corruption used both as test corruption and training augmentation.
        severity: test severity (default 5: sigma 5000 grey levels for gaussian_noise).
        overrides: any train.yaml id (--epochs, --patch_size, ...).
    """
    from spine_app.robustness.experiments import noise_train

    noise_train(data, out, corruption, severity, **overrides)
    print((Path(out) / "noise_train.md").read_text())


def _train_settings() -> list[str]:
    """The bundle settings (train.yaml ids) that the robustness experiments take as flags."""
    import yaml

    from spine_app.bundle import BUNDLE_DIR

    return list(yaml.safe_load((BUNDLE_DIR / "configs" / "train.yaml").read_text()))
