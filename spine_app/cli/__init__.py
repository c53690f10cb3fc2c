"""``spine-app``: the command line (python-fire). Run ``spine-app --help`` or ``spine-app COMMAND --help``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import fire
import fire.helptext

from spine_app import __version__
from spine_app.cli.checks import CommandLineError, Group, check_command_line


def _refuse(message: str, status: int = 2) -> NoReturn:
    """Print one line "error: MESSAGE" to stderr and exit with ``status`` (2: a bad command line)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def synth(
    out: str, n: int = 100, seed: int = 0, preset: str = "default", workers: int | None = None,
    overwrite: bool = False, **overrides,
) -> None:  # fmt: skip
    """Generate N synthetic studies (canonical layout, 16-bit PNG by default) into OUT.

    Args:
        out: output folder (created); must be new or empty unless --overwrite.
        n: number of studies (>= 1).
        seed: dataset seed (>= 0); study i is the same for any N and any number of workers.
        preset: "easy", "default", "hard" (configs/synthetic/) or a path to a YAML preset.
        workers: processes (default: all cores).
        overwrite: write into a non-empty OUT: replace the generated files of same-id studies (file by
            file) and the manifest; every other file is kept.
        overrides: any generator setting, e.g. --image_format mixed --damaged_fraction 0.3.
    """
    from spine_app.data.io import FolderNotEmptyError
    from spine_app.synthetic.generator import check_count_and_seed, generate_dataset

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        _refuse(f"workers must be a whole number >= 1, got {workers!r}")
    try:
        check_count_and_seed(n, seed)
    except ValueError as err:
        _refuse(str(err))
    try:
        manifest = generate_dataset(out, n, seed=seed, preset=preset, workers=workers, overwrite=overwrite,
                                    **overrides)  # fmt: skip
    except (FolderNotEmptyError, NotADirectoryError) as err:
        _refuse(str(err))
    counts = ", ".join(f"{k} {v}" for k, v in manifest["class_counts"].items())
    print(
        f"wrote {n} studies ({counts}) to {out} in {manifest['seconds']} s ({manifest['studies_per_second']} studies/s)"
    )


def import_(
    root: str, out: str = "datalist.json", seed: int = 0, val: float = 0.15, test: float = 0.15, workers: int | None = None,
    strict: bool = False,
) -> None:  # fmt: skip
    """Validate the studies under ROOT and write a datalist JSON with a seeded, stratified split.

    Args:
        root: dataset folder (ROOT/<Normal|Damaged>/<study>/...).
        out: datalist path to write.
        seed: split seed.
        val, test: fractions of each class for validation and test (the rest trains).
        workers: processes used to decode files (default: all cores).
        strict: exit with status 1 if any study was skipped.
    """
    from spine_app.data.importer import DuplicateStudyError, format_report, import_dataset

    try:
        datalist = import_dataset(root, out, seed=seed, fractions=(1.0 - val - test, val, test), workers=workers)
    except DuplicateStudyError as err:
        _refuse(str(err), 1)
    print(format_report(datalist["summary"], datalist["errors"], datalist["warnings"]))
    print(f"datalist written to {out}")
    if datalist["summary"]["imported"] == 0:
        sys.exit(f"error: no usable study under {root}")
    if strict and datalist["errors"]:
        sys.exit(1)


def check(root: str, workers: int | None = None, json_out: str | None = None) -> None:
    """Print a dataset report for ROOT (classes, views, missing masks, sizes, bit depths, problems).

    Exits with status 1 when any study has a problem. ``--json_out`` also writes the report as JSON.
    """
    from spine_app.data.importer import all_warnings, check_dataset, format_report, skipped_studies, summarize

    checks = check_dataset(root, workers)
    summary = summarize(checks)
    errors, warnings_ = skipped_studies(checks), all_warnings(checks)
    print(format_report(summary, errors, warnings_))
    if json_out:
        Path(json_out).write_text(json.dumps({"summary": summary, "errors": errors, "warnings": warnings_}, indent=1))
    if errors:
        sys.exit(1)


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


def contact_sheet(
    datalist: str, out: str = "docs/figures/contact_sheet.png", per_class: int = 2, height: int = 420
) -> None:
    """Draw PER_CLASS Normal and Damaged studies of DATALIST (image + coloured masks, AP and LAT) to OUT."""
    from spine_app.viz.contact_sheet import contact_sheet as draw

    print(f"wrote {draw(datalist, out, per_class=per_class, height=height)}")


def infer(
    *inputs: str,
    out: str = "predictions",
    model: str | None = None,
    device: str = "auto",
    view: str | None = None,
    nifti: bool = False,
    damaged_threshold: float | None = None,
    bundle: str | None = None,
    split: str | None = None,
    explain: bool | str = False,
    force: bool = False,
    no_dicom_out: bool = False,
    dicomweb: str | None = None,
    study: str | tuple | None = None,
    patient: str | None = None,
    dates: str | None = None,
) -> None:
    """Run the model on new studies: masks, overlays, result.json per study; summary.csv, errors.json.

    INPUTS: study folders, folders of studies, DICOM folders, single images or datalist JSON files.
    Exits with status 1 when any study failed (listed in OUT/errors.json) or the summary could not be
    written, 2 for a bad command line (no input, unknown device, unusable model, unwritable OUT).

    Args:
        out: output folder (created); a study's earlier output there is replaced whole when its new
            one is complete; a folder with files this command did not write is never touched.
        model: weights (default: the bundle's models/model.pt).
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
        view: AP or LAT, for single images whose name and tags do not say (else guessed from the image).
        nifti: also write each mask as NIfTI with the pixel spacing.
        damaged_threshold: override the bundle's Damaged threshold.
        bundle: bundle folder (default: the repository's bundle/).
        split: for datalist inputs, only this split (e.g. test).
        explain: also write saliency_AP.png / saliency_LAT.png (where the network looks for its
            Damaged decision) and result.json's "explanation" (the vertebra under the strongest
            response). --explain alone = gradcam; or gradcampp, occlusion (much slower). Costs about
            one extra second per study on a 2-core CPU (docs/inference.md).
        force: redo studies whose complete output is already in OUT (by default a re-run skips a
            study written with the same model, films and settings, and lists it as skipped).
        no_dicom_out: do not write seg_<VIEW>.dcm / report.dcm (DICOM SEG and SR of films read from DICOM).
        dicomweb: a DICOMweb PACS (e.g. http://127.0.0.1:8042/dicom-web) to read the studies from
            instead of INPUTS; their DICOM SEG and SR are stored back (docs/pacs.md). Credentials
            from SPINE_APP_DICOMWEB_USER / _PASSWORD or _TOKEN, never on the command line.
        study: with --dicomweb, StudyInstanceUIDs (comma-separated or repeated); without it, every
            CR/DX study the PACS lists (narrowed by --patient and --dates YYYYMMDD-YYYYMMDD).
        patient: with --dicomweb and no --study, only this PatientID.
        dates: with --dicomweb and no --study, a StudyDate range YYYYMMDD-YYYYMMDD.
    """
    from spine_app.bundle import BUNDLE_DIR
    from spine_app.explain import METHODS
    from spine_app.inference.run import (
        BadArgument,
        check_model,
        resolve_device,
        resolve_inputs,
        run_inference,
        summary_line,
    )

    if dicomweb and inputs:
        _refuse("give either study folders/files or --dicomweb, not both")
    if not inputs and not dicomweb:
        _refuse("give at least one study folder, image, DICOM folder or datalist, or --dicomweb URL (spine-app infer --help)")
    if (study or patient or dates) and not dicomweb:
        _refuse("--study, --patient and --dates select studies of a PACS: give --dicomweb URL too")
    overrides = {"write_nifti": bool(nifti), "dicom_out": not no_dicom_out}
    if explain is True or (isinstance(explain, str) and explain.lower() in ("true", "yes", "1")):
        explain = "gradcam"
    if explain not in (False, None, "", "false", "no", "0"):
        if str(explain).lower() not in METHODS:
            _refuse(f"--explain {explain!r} is not one of {', '.join(METHODS)}")
        overrides["explain"] = str(explain).lower()
    if damaged_threshold is not None:
        overrides["damaged_threshold"] = float(damaged_threshold)
    try:
        device = resolve_device(device)
        check_model(bundle or BUNDLE_DIR, model, **overrides)  # before the view guesses use the model
        if dicomweb:
            from spine_app.pacs.dicomweb import PacsError
            from spine_app.pacs.run import infer_from_pacs

            try:
                result = infer_from_pacs(dicomweb, _names(study) or [], out, model, device, bundle or BUNDLE_DIR,
                                         bool(force), sys.stderr.isatty(), patient, dates, **overrides)  # fmt: skip
            except PacsError as err:
                _refuse(str(err), 1)
        else:
            entries, errors = resolve_inputs(list(inputs), view, split, model, out=out)
            result = run_inference(entries, out, model, device, bundle or BUNDLE_DIR, errors, force=bool(force),
                                   progress=sys.stderr.isatty(), **overrides)  # fmt: skip
    except (BadArgument, PermissionError, FileNotFoundError) as err:
        _refuse(str(err))
    except OSError as err:  # e.g. summary.csv could not be written (a full disk): the run is incomplete
        _refuse(str(err), 1)
    for error in result["errors"]:
        print(f"failed: {error['error']}", file=sys.stderr)
    print(summary_line(result, out))
    if dicomweb:
        print(f"PACS: results of {len(result['stored'])} studies stored, {len(result['already_in_pacs'])} studies "
              f"already had them (--force redoes them)")  # fmt: skip
    if result["errors"]:
        sys.exit(1)


def export(out: str = "export", model: str | None = None, bundle: str | None = None, onnx: bool = False) -> None:
    """Export the network to TorchScript: OUT/model.ts (masks), OUT/study.ts (masks + Damaged logits).

    Args:
        out: output folder.
        model: weights (default: the bundle's models/model.pt).
        bundle: bundle folder (default: the repository's bundle/).
        onnx: also OUT/model.onnx and OUT/study.onnx, checked with onnxruntime (pip install -e ".[onnx]").
    """
    from spine_app.bundle import BUNDLE_DIR
    from spine_app.inference.export import export_onnx, export_torchscript
    from spine_app.inference.run import check_model

    check_model(bundle or BUNDLE_DIR, model)  # BadArgument (exit 2) for a missing or unusable file
    info = export_torchscript(out, bundle or BUNDLE_DIR, model)
    print(
        f"wrote {out}/model.ts and {out}/study.ts (canvas {info['canvas']}, weights {info['weights']['sha256'][:12]})"
    )
    if onnx:
        try:
            checked = export_onnx(out, bundle or BUNDLE_DIR, model)
        except ImportError as err:
            sys.exit(f'error: ONNX export needs the onnx extra (pip install -e ".[onnx]"): {err}')
        worst = max(checked["max_abs_difference_vs_eager"].values())
        print(f"wrote {out}/model.onnx and {out}/study.onnx (onnxruntime vs eager: max abs difference {worst:.1e})")


def bench_infer(
    n: int = 50, seed: int = 0, model: str | None = None, device: str = "cpu", json_out: str | None = None,
    keep: str | None = None,
) -> None:  # fmt: skip
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
    device: str = "auto", batch: int = 4, canvas: tuple = (384, 288), steps: int = 10, n: int = 20,
    data: str | None = None, workers: int = 1, json_out: str | None = None,
) -> None:  # fmt: skip
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
    data: str, out: str = "compare", steps: int = 300, batch: int = 4, canvas: tuple = (384, 288), seed: int = 0,
    workers: int = 1, device: str = "cpu", variants: str | None = None, amp: str = "auto",
) -> None:  # fmt: skip
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
        json_out: also write the figures as JSON.
    """
    from spine_app.morphometry.evaluate import evaluate_morphometry, format_morphometry

    report = evaluate_morphometry(datalist, split, pred)
    print(format_morphometry(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))


def robustness_evaluate(
    data: str, out: str = "robustness", suite: str = "configs/robustness/default.yaml", model: str | None = None,
    split: str = "test", device: str = "cpu", seed: int = 0, limit: int | None = None, only: str | None = None,
    bundle: str | None = None, canvas: tuple | None = None,
) -> None:  # fmt: skip
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
    results = evaluate_robustness(data, suite, out, model, bundle, split, device, seed, limit, names,
                                  [int(c) for c in canvas] if canvas else None)  # fmt: skip
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


def bench_all(
    data: str, out: str = "bench_out", docs: str | None = None, only: str | None = None, model: str | None = None,
    device: str = "auto", split: str = "test", workers: int = 1, infer_studies: int = 50, speed_steps: int = 10,
    speed_passes: int = 20, speed_canvas: tuple = (384, 288), compare_steps: int = 500,
    compare_canvas: tuple = (256, 192), compare_batch: int = 4, compare_variants: str | None = None,
) -> None:  # fmt: skip
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
        data, Path(out), model, device, split, workers, infer_studies, speed_steps, speed_passes,
        tuple(int(c) for c in speed_canvas), compare_steps, tuple(int(c) for c in compare_canvas), compare_batch,
        _names(compare_variants),
    )  # fmt: skip
    result = run_all(settings, _names(only), [Path(d) for d in _names(docs) or []])
    for part, table in result["tables"].items():
        print(f"## {part}\n\n{table}\n")
    for doc, parts in result["docs"].items():
        print(f"{doc}: rewrote {', '.join(parts) or 'nothing (no bench markers)'}")
    for part, error in result["errors"].items():
        print(f"failed: {part}: {error}", file=sys.stderr)
    if result["errors"]:
        sys.exit(1)


def _names(value: str | tuple | list | None) -> list[str] | None:
    """A comma-separated CLI value (fire may already have split it into a tuple) as a list."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()] or None


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
    print(f"lowest AP score {r['ap_score_min']:+.3f}, highest LAT score {r['lat_score_max']:+.3f}; "
          f"{r['median_seconds']:.2f} s per film")  # fmt: skip


def monailabel_app(out: str | None = None, model: str | None = None, force: bool = False) -> None:
    """Write the MONAI Label app folder and print its path (for ``monailabel start_server --app``).

    Args:
        out: app folder (default ~/.local/share/spine-app/monailabel-app).
        model: weights to serve (default the bundle's shipped model.pt); kept if the app already
            serves (possibly fine-tuned) weights, unless --force.
        force: replace the served weights with --model (or the shipped model).
    """
    from spine_app.monailabel.appdir import write_app

    print(write_app(out, model, force))


def monailabel_prepare(dataset: str, out: str, link: bool = False, overwrite: bool = False) -> None:
    """Flatten a dataset (canonical layout) into a MONAI Label studies folder: <study>_AP/_LAT files
    and study_classes.json from the Normal/Damaged folders.

    Args:
        dataset: dataset root (e.g. data/synthetic).
        out: studies folder to fill; must be new or empty unless --overwrite.
        link: symlink the films instead of copying them.
        overwrite: write into a non-empty OUT: replace only the films of DATASET's studies and merge
            study_classes.json; everything else (e.g. saved labels/) is kept.
    """
    from spine_app.data.importer import DuplicateStudyError
    from spine_app.data.io import FolderNotEmptyError
    from spine_app.monailabel.studies import prepare_studies

    try:
        done = prepare_studies(dataset, out, copy=not link, overwrite=overwrite)
    except (FolderNotEmptyError, NotADirectoryError) as err:
        _refuse(str(err))
    except DuplicateStudyError as err:
        _refuse(str(err), 1)
    for note in done["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    print(f"{done['images']} films of {done['studies']} studies -> {out} ({done['classes']} with a class)")


def _repeated_flag(names: tuple[str, ...]) -> list[str]:
    """Every value of a flag given more than once on the command line (python-fire keeps only the last)."""
    args, values = sys.argv[1:], []
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name in names:
            values += [value] if value else args[i + 1 : i + 2]
    return values if len(values) > 1 else []


def monailabel_serve(studies: str, app: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                     model: str | None = None, cors_origin: str | list[str] | tuple[str, ...] | None = None,
                     allow_delete: bool = False, max_upload_mb: float = 64.0, insecure: bool = False,
                     **conf: str) -> None:  # fmt: skip
    """Start the MONAI Label server on a studies folder (writes the app folder first if needed).

    Ids and tags must be plain names (no paths); see docs/monailabel.md, "Security".

    Args:
        studies: folder of films (<study>_AP.png, <study>_LAT.dcm, ...).
        app: app folder (default as `spine-app monailabel app`).
        host: interface to bind; 127.0.0.1 (this machine only) by default. Another address needs
            MONAI_LABEL_AUTH_ENABLE=true (MONAI Label's authentication) or --insecure.
        port: TCP port.
        model: weights to serve when the app folder is new.
        cors_origin: web origin allowed to call the server from a browser, e.g. http://viewer.local:3000
            (an OHIF viewer); repeated or comma-separated; default none (same origin only).
        allow_delete: allow DELETE of films and labels (refused with HTTP 403 by default).
        max_upload_mb: largest request body (label or film upload) in MB; larger answers HTTP 413.
        insecure: bind a non-loopback --host without authentication (anyone who reaches the port
            can read the films, overwrite labels and retrain the model).
        conf: extra --conf key value pairs for the app (e.g. --bundle PATH).
    """
    import ipaddress

    from spine_app.monailabel.appdir import LOOPBACK, server_command, write_app
    from spine_app.monailabel.security import ServerPolicy, parse_origins

    try:
        loopback = host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    auth = os.environ.get("MONAI_LABEL_AUTH_ENABLE", "").strip().lower() in ("1", "true", "yes", "on")
    if not loopback and not auth and not insecure:
        _refuse(f"--host {host} would let anyone who reaches the port read the films and change the model: "
                "set MONAI_LABEL_AUTH_ENABLE=true (with a Keycloak realm) or pass --insecure")  # fmt: skip
    try:
        origins = parse_origins(_repeated_flag(("--cors-origin", "--cors_origin")) or cors_origin)
    except ValueError as err:
        _refuse(str(err))
    if isinstance(max_upload_mb, bool) or not isinstance(max_upload_mb, (int, float)) or not max_upload_mb > 0:
        _refuse(f"--max-upload-mb must be a number > 0, got {max_upload_mb!r}")
    if not Path(studies).is_dir():
        raise FileNotFoundError(f"{studies}: no such studies folder")
    folder = write_app(app, model)
    if not loopback:
        print(f"warning: binding {host}" + ("" if auth else " without authentication (--insecure)"), file=sys.stderr)
    if os.environ.get("MONAI_LABEL_CORS_ORIGINS"):
        print("warning: MONAI_LABEL_CORS_ORIGINS is ignored; allow origins with --cors-origin", file=sys.stderr)
    policy = ServerPolicy(origins, bool(allow_delete), int(max_upload_mb * 2**20))
    os.environ.update(policy.environment())
    os.environ["MONAI_LABEL_SESSIONS"] = "false"  # sessions keep uploads outside the studies folder
    print(f"app {folder}; serving {studies} on http://{host}:{port}; CORS origins: "
          f"{', '.join(origins) or 'none (same origin only)'}", file=sys.stderr, flush=True)  # fmt: skip
    cmd = server_command(folder, Path(studies), host, port, conf)
    os.execv(cmd[0], cmd)  # the server takes this process (and its id): stop it with that id


def publish(run_dir: str, bundle: str | None = None) -> None:
    """Make a training run's best model the bundle's model: copy RUN_DIR/model.pt onto
    BUNDLE/models/model.pt (written to a temporary file, then renamed) with models/model_provenance.json
    beside it (run folder, settings, datalist hash, best score and epoch, git commit, versions).

    Args:
        run_dir: a training run folder, e.g. bundle/runs/synthetic-384x288-resnet18.
        bundle: bundle folder (default: the repository's bundle/).
    """
    from spine_app.bundle import BUNDLE_DIR
    from spine_app.engines.runs import PROVENANCE, publish_model

    if not Path(run_dir).is_dir():
        _refuse(f"{run_dir}: no such run folder")
    try:
        target = publish_model(run_dir, bundle or BUNDLE_DIR)
    except FileNotFoundError as err:
        _refuse(str(err))
    except ValueError as err:
        _refuse(str(err), 1)
    print(f"published {Path(run_dir) / 'model.pt'} -> {target} (provenance: {Path(target).with_name(PROVENANCE)})")


def version() -> None:
    """Print the spine-app version."""
    print(__version__)


def _synth_settings() -> list[str]:
    """The generator settings ``synth`` takes as flags (fields of SynthConfig)."""
    import dataclasses

    from spine_app.synthetic.config import SynthConfig

    return [f.name for f in dataclasses.fields(SynthConfig)]


def _train_settings() -> list[str]:
    """The bundle settings (train.yaml ids) that the robustness experiments take as flags."""
    import yaml

    from spine_app.bundle import BUNDLE_DIR

    return list(yaml.safe_load((BUNDLE_DIR / "configs" / "train.yaml").read_text()))


def _synth_settings_help() -> str:
    """One line per generator setting: name, default and the comment beside it in SynthConfig."""
    import dataclasses
    import inspect

    from spine_app.synthetic.config import SynthConfig

    comments = {}
    for line in inspect.getsource(SynthConfig).splitlines():
        name, _, rest = line.strip().partition(":")
        if "#" in rest and name.isidentifier():
            comments[name] = rest.split("#", 1)[1].strip()
    lines = []
    for f in dataclasses.fields(SynthConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"--{f.name} = {default!r}" + (f"  ({comments[f.name]})" if f.name in comments else ""))
    return "\n".join(lines)


synth.__doc__ = (synth.__doc__ or "").replace(
    "\n\n    Args:",
    "\n\n    Generator settings, each a flag (e.g. --scoliosis_deg \"[0, 20]\"; what they do: docs/data.md):\n"
    + "\n".join("      " + line.strip() for line in _synth_settings_help().splitlines())
    + "\n\n    Args:",
    1,
)

COMMANDS = {
    "synth": synth,
    "import": import_,
    "check": check,
    "bench": Group("Benchmarks: generator speed, inference speed, training speed, the equal-budget comparison, "
                   "morphometry, view guessing; `bench all` runs them and rewrites the docs' tables.", {
        "synth": bench_synth,
        "infer": bench_infer,
        "speed": bench_speed,
        "compare": bench_compare,
        "morphometry": bench_morphometry,
        "view": bench_view,
        "all": bench_all,
    }),  # fmt: skip
    "contact-sheet": contact_sheet,
    "infer": infer,
    "export": export,
    "publish": publish,
    "robustness": Group("Robustness: the model under corruptions, learning curve by training-set size, "
                        "training with noise.", {
        "evaluate": robustness_evaluate,
        "train-size": robustness_train_size,
        "noise-train": robustness_noise_train,
    }),  # fmt: skip
    "monailabel": Group("MONAI Label: build the app, prepare a studies folder, serve it (loopback by default).",
                        {"app": monailabel_app, "prepare": monailabel_prepare, "serve": monailabel_serve}),  # fmt: skip
    "version": version,
}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: the command line is checked (flags, device) before fire runs anything."""
    from spine_app.inference.run import resolve_device

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        line = check_command_line(args, COMMANDS, resolve_device, {
            synth: _synth_settings, robustness_train_size: _train_settings, robustness_noise_train: _train_settings})  # fmt: skip
    except CommandLineError as err:
        _refuse(str(err))
    if line.version:
        print(f"spine-app {__version__}")
        return
    logging.basicConfig(level=line.log_level, format="%(levelname)s %(name)s: %(message)s")
    if line.log_level != logging.WARNING:
        logging.getLogger().setLevel(line.log_level)
    fire.helptext._GetShortFlags = lambda flags: []  # help lists no single-letter aliases (refused above)
    try:
        fire.Fire(COMMANDS, command=line.argv, name="spine-app")
    except (ValueError, FileNotFoundError) as err:
        _refuse(str(err), getattr(err, "exit_status", 1))  # 2 for spine_app.inference.run.BadArgument

