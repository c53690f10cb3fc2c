"""``spine-app drr``: AP + LAT training studies (films, eight masks, truth.json) from a labelled CT."""

from __future__ import annotations

from spine_app.cli.common import _refuse


def drr(
    ct: str,
    label_map: str,
    out: str | None = None,
    poses: int = 1,
    fracture: bool = False,
    labels: str = "verse",
    seed: int = 0,
    beam: str = "divergent",
    sid_mm: float = 1000.0,
    sod_mm: float = 850.0,
    pixel_mm: float = 0.33,
    max_rotation_deg: float = 3.0,
    max_shift_mm: float = 5.0,
    fracture_level: str | None = None,
    fracture_grade: int | None = None,
    fracture_type: str | None = None,
    ray_step_mm: float | None = None,
    preset: str = "default",
    overwrite: bool = False,
) -> None:
    """Project CT (HU, NIfTI) and LABEL_MAP (vertebra labels on the same grid) into DRR studies under --out.

    Writes OUT/<Normal|Damaged>/<study>_drr<seed>_<pose>/ with AP.png, LAT.png, the eight masks and
    truth.json, the layout `spine-app synth` writes (docs/drr.md).

    Args:
        ct: CT volume in Hounsfield units (.nii / .nii.gz).
        label_map: vertebra label map on the CT's grid.
        out: studies folder (created; other studies in it are kept).
        poses: studies per CT, each with a small random patient rotation and shift (seeded).
        fracture: squash one vertebral body in 3-D (compression fracture; the study is Damaged).
        labels: label convention of LABEL_MAP: verse, ctspine1k or totalsegmentator.
        seed: seed of the poses, exposure and fracture.
        beam: divergent (point source) or parallel.
        sid_mm, sod_mm: source-detector and source-isocentre distances of the divergent beam.
        pixel_mm: film pixel spacing at the isocentre (a CT from `spine-app synth --ct` brings its own film).
        max_rotation_deg, max_shift_mm: size of the random patient pose (0 for the CT's own pose).
        fracture_level, fracture_grade, fracture_type: choose the fracture (level e.g. L1, grade 1-3,
            wedge|biconcave|crush); random (seeded) otherwise.
        ray_step_mm: sampling step along the rays (default: the CT's voxel size).
        preset: generator preset whose imaging-chain settings (exposure, noise, bit depth) the films use.
        overwrite: replace study folders that this command did not write.
    """
    from spine_app.drr.run import BadInput, generate
    from spine_app.drr.study import DrrSettings

    if out is None:
        _refuse("drr: --out STUDIES is required")
    settings = DrrSettings(
        labels=labels,
        poses=poses,
        seed=seed,
        beam=beam,
        sid_mm=sid_mm,
        sod_mm=sod_mm,
        pixel_mm=pixel_mm,
        max_rotation_deg=max_rotation_deg,
        max_shift_mm=max_shift_mm,
        fracture=bool(fracture),
        fracture_level=fracture_level,
        fracture_grade=fracture_grade,
        fracture_type=fracture_type,
        ray_step_mm=ray_step_mm,
        preset=preset,
    )
    try:
        summary = generate(ct, label_map, out, settings, overwrite=overwrite)
    except BadInput as err:
        _refuse(str(err))
    extra = ""
    if summary["fracture"]:
        f = summary["fracture"]
        extra = f"; fracture {f['level']} grade {f['grade']} {f['kind']} ({100 * f['height_loss']:.0f} % height loss)"
    print(
        f"wrote {len(summary['studies'])} DRR studies to {out} in {summary['seconds']} s "
        f"(levels {', '.join(summary['levels'])}{extra})"
    )
