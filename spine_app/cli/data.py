"""``spine-app synth``, ``import``, ``check``, ``contact-sheet``: synthetic studies and datasets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spine_app.cli.common import _refuse


def synth(
    out: str,
    n: int = 100,
    seed: int = 0,
    preset: str = "default",
    workers: int | None = None,
    overwrite: bool = False,
    ct: bool = False,
    ct_voxel_mm: float = 1.0,
    **overrides,
) -> None:
    """Generate N synthetic studies (canonical layout, 16-bit PNG by default) into OUT.

    Args:
        out: output folder (created); must be new or empty unless --overwrite.
        n: number of studies (>= 1).
        seed: dataset seed (>= 0); study i is the same for any N and any number of workers.
        preset: "easy", "default", "hard", "lumbar", "thoracolumbar", "thoracic", "whole_spine", "mixed_fov"
            (configs/synthetic/) or a path to a YAML preset.
        workers: processes (default: all cores).
        overwrite: write into a non-empty OUT: replace the generated files of same-id studies (file by
            file) and the manifest; every other file is kept.
        ct: also write each study's 3-D patient as <study>/ct.nii.gz (HU) and <study>/ct_labels.nii.gz
            (VerSe vertebra labels), the input of `spine-app drr` (docs/drr.md).
        ct_voxel_mm: voxel size of those volumes (mm).
        overrides: any generator setting, e.g. --image_format mixed --damaged_fraction 0.3.
    """
    from spine_app.data.io import FolderNotEmptyError
    from spine_app.synthetic.config import load_preset
    from spine_app.synthetic.generator import check_count_and_seed, generate_dataset

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        _refuse(f"workers must be a whole number >= 1, got {workers!r}")
    try:
        check_count_and_seed(n, seed)
        load_preset(preset, **overrides)  # an unknown preset or a bad setting is a bad command line
    except ValueError as err:
        _refuse(str(err))
    if isinstance(ct_voxel_mm, bool) or not isinstance(ct_voxel_mm, (int, float)) or not 0.25 <= ct_voxel_mm <= 5:
        _refuse(f"ct_voxel_mm must be a number within [0.25, 5], got {ct_voxel_mm!r}")
    try:
        manifest = generate_dataset(out, n, seed=seed, preset=preset, workers=workers, overwrite=overwrite, **overrides)
    except (FolderNotEmptyError, NotADirectoryError) as err:
        _refuse(str(err))
    counts = ", ".join(f"{k} {v}" for k, v in manifest["class_counts"].items())
    print(
        f"wrote {n} studies ({counts}) to {out} in {manifest['seconds']} s ({manifest['studies_per_second']} studies/s)"
    )
    if ct:
        from spine_app.synthetic.ct import write_study_cts

        seconds = write_study_cts(out, n, seed, preset, float(ct_voxel_mm), workers, **overrides)
        print(f"wrote {n} CT volumes (ct.nii.gz, ct_labels.nii.gz; {ct_voxel_mm} mm voxels) in {seconds:.1f} s")


def import_(
    root: str,
    out: str = "datalist.json",
    seed: int = 0,
    val: float = 0.15,
    test: float = 0.15,
    workers: int | None = None,
    strict: bool = False,
) -> None:
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


def contact_sheet(
    datalist: str, out: str = "docs/figures/contact_sheet.png", per_class: int = 2, height: int = 420
) -> None:
    """Draw PER_CLASS Normal and Damaged studies of DATALIST (image + coloured masks, AP and LAT) to OUT."""
    from spine_app.viz.contact_sheet import contact_sheet as draw

    print(f"wrote {draw(datalist, out, per_class=per_class, height=height)}")


def _synth_settings() -> list[str]:
    """The generator settings ``synth`` takes as flags (fields of SynthConfig)."""
    import dataclasses

    from spine_app.synthetic.config import SynthConfig

    return [f.name for f in dataclasses.fields(SynthConfig)]


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
    '\n\n    Generator settings, each a flag (e.g. --scoliosis_deg "[0, 20]"; what they do: docs/data.md):\n'
    + "\n".join("      " + line.strip() for line in _synth_settings_help().splitlines())
    + "\n\n    Args:",
    1,
)
