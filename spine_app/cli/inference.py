"""``spine-app infer``, ``export``, ``publish``: running, exporting and publishing the model."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from spine_app.cli.common import _names, _refuse


def infer(
    *inputs: str,
    out: str = "predictions",
    model: str | None = None,
    device: str = "auto",
    view: str | None = None,
    nifti: bool = False,
    damaged_threshold: float | None = None,
    level_threshold: float | None = None,
    level_neighbour_suppression: float | None = None,
    disk_exclusion: float | str | None = None,
    levels_follow_decision: bool | str | None = None,
    level_shape_check: bool | str | None = None,
    bundle: str | None = None,
    split: str | None = None,
    explain: bool | str = False,
    force: bool = False,
    no_dicom_out: bool = False,
    fixed_canvas: bool = False,
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
        damaged_threshold: override the bundle's Damaged threshold (0-1).
        level_threshold: override the bundle's level threshold: a vertebra is flagged where its fracture
            probability reaches it (0-1; a model of your own: its evaluation report's, docs/inference.md).
        level_neighbour_suppression: override the bundle's neighbour suppression weight (>= 0; 0: none).
        disk_exclusion: LAT pixels whose vertebra probability is above this (0-1, exclusive) are not
            disk space in the written disk mask, or "none". Default: inference.yaml's, which is the
            bundle's own weights' (a --model of yours runs with none unless given; its evaluation report
            prints its own value, docs/inference.md).
        levels_follow_decision: true (inference.yaml's default): a study labelled Normal reports no
            flagged or graded vertebra (those above the level threshold are listed as held_back with
            their probabilities); false: every vertebra above the level threshold is flagged and graded
            whatever the study's label.
        level_shape_check: true (inference.yaml's default): a vertebra whose predicted mask cannot be a
            vertebral body's (a fragment, a blob merged with something beside the column) is listed
            as left_out, not in the study's probability: it cannot make a study Damaged on its own;
            false: every vertebra counts.
        bundle: bundle folder (default: the repository's bundle/).
        split: for datalist inputs, only this split (e.g. test).
        explain: also write saliency_AP.png / saliency_LAT.png (where the network looks for its
            Damaged decision) and result.json's "explanation" (the vertebra under the strongest
            response). --explain alone = gradcam; or gradcampp, occlusion (much slower). Costs about
            one extra second per study on a 2-core CPU (docs/inference.md).
        force: redo studies whose complete output is already in OUT (by default a re-run skips a
            study written with the same model, films and settings, and lists it as skipped).
        no_dicom_out: do not write seg_<VIEW>.dcm / report.dcm (DICOM SEG and SR of films read from DICOM).
        fixed_canvas: fit every film into the training canvas (by default a tall film of known pixel
            spacing, e.g. a whole-spine film, gets a taller canvas so its vertebrae keep the size the
            model was trained at: inference.yaml's working_spacing_mm, docs/inference.md).
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
        _refuse(
            "give at least one study folder, image, DICOM folder or datalist, or --dicomweb URL (spine-app infer --help)"
        )
    if (study or patient or dates) and not dicomweb:
        _refuse("--study, --patient and --dates select studies of a PACS: give --dicomweb URL too")
    overrides: dict = {"write_nifti": bool(nifti), "dicom_out": not no_dicom_out}
    if fixed_canvas:
        overrides["working_spacing_mm"] = None
    if explain is True or (isinstance(explain, str) and explain.lower() in ("true", "yes", "1")):
        explain = "gradcam"
    if explain not in (False, None, "", "false", "no", "0"):
        if str(explain).lower() not in METHODS:
            _refuse(f"--explain {explain!r} is not one of {', '.join(METHODS)}")
        overrides["explain"] = str(explain).lower()
    for name, value, upper in (
        ("damaged_threshold", damaged_threshold, 1.0),
        ("level_threshold", level_threshold, 1.0),
        ("level_neighbour_suppression", level_neighbour_suppression, None),
    ):
        if value is not None:
            overrides[name] = _setting_number(name, value, upper)
    if levels_follow_decision is not None:
        overrides["levels_follow_decision"] = _flag_setting("levels_follow_decision", levels_follow_decision)
    if level_shape_check is not None:
        overrides["level_shape_check"] = _flag_setting("level_shape_check", level_shape_check)
    if disk_exclusion is not None:
        overrides["disk_exclusion"] = _exclusion_setting(disk_exclusion)
    elif model is not None:
        overrides["disk_exclusion"] = None  # inference.yaml's value is the bundle's own weights'
    try:
        device = resolve_device(device)
        check_model(bundle or BUNDLE_DIR, model, **overrides)  # before the view guesses use the model
        if dicomweb:
            from spine_app.pacs.dicomweb import PacsError
            from spine_app.pacs.run import infer_from_pacs

            try:
                result = infer_from_pacs(
                    dicomweb,
                    _names(study) or [],
                    out,
                    model,
                    device,
                    bundle or BUNDLE_DIR,
                    bool(force),
                    sys.stderr.isatty(),
                    patient,
                    dates,
                    **overrides,
                )
            except PacsError as err:
                _refuse(str(err), 1)
        else:
            entries, errors = resolve_inputs(list(inputs), view, split, model, out=out)
            result = run_inference(
                entries,
                out,
                model,
                device,
                bundle or BUNDLE_DIR,
                errors,
                force=bool(force),
                progress=sys.stderr.isatty(),
                **overrides,
            )
    except (BadArgument, PermissionError, FileNotFoundError) as err:
        _refuse(str(err))
    except OSError as err:  # e.g. summary.csv could not be written (a full disk): the run is incomplete
        _refuse(str(err), 1)
    for error in result["errors"]:
        print(f"failed: {error['error']}", file=sys.stderr)
    print(summary_line(result, out))
    if dicomweb:
        print(
            f"PACS: results of {len(result['stored'])} studies stored, {len(result['already_in_pacs'])} studies "
            f"already had them (--force redoes them)"
        )
    if result["errors"]:
        sys.exit(1)


def _setting_number(name: str, value: object, upper: float | None) -> float:
    """``value`` of the command-line setting ``--name`` as a finite number from 0 to ``upper`` (None:
    no upper bound), or a one-line refusal (exit 2)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and 0.0 <= number <= (math.inf if upper is None else upper)):
        bounds = "of 0 or more" if upper is None else f"from 0 to {upper:g}"
        _refuse(f"--{name} {value!r}: must be a number {bounds}")
    return number


def _exclusion_setting(value: object) -> float | None:
    """``--disk_exclusion``: None for "none"/"null", else a vertebra probability in (0, 1); a one-line
    refusal (exit 2) otherwise."""
    from spine_app.metrics.disk_exclusion import check_exclusion

    if isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        return check_exclusion(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        _refuse(f"--disk_exclusion {value!r}: must be a number between 0 and 1 (exclusive) or none")


def _flag_setting(name: str, value: object) -> bool:
    """A true/false option (``--name`` alone, true/false, yes/no, 1/0); a one-line refusal (exit 2)
    otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    _refuse(f"--{name} {value!r}: must be true or false")


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


def publish(run_dir: str, bundle: str | None = None) -> None:
    """Make a training run's best model the bundle's model: copy RUN_DIR/model.pt onto
    BUNDLE/models/model.pt (written to a temporary file, then renamed) with models/model_provenance.json
    beside it (run folder, settings, datalist hash, best score and epoch, git commit, versions).

    Args:
        run_dir: a training run folder, e.g. bundle/runs/synthetic+synthetic_fov+synthetic_more-384x288-resnet18.
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
