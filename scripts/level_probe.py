"""The level head on the reference bodies of a datalist split: is it the head or the body finding?

    python scripts/level_probe.py DATALIST [--split test] [--model PATH] [--threshold T] [--out FILE.json]
        [--exposure_band S] [--band_extent 0.5]

``spine-app infer`` scores the bodies it finds on the predicted LAT masks; a Normal study called
Damaged may come from a head that flags a normal body or from a body cut or merged by the mask. This
script takes the body finding out: every body the study's ``truth.json`` grades is read in its
reference box (the reference masks' bodies, no jitter, no augmentation, the network in fp32), as the level refit
collects them (``spine_app.evaluation.level_probe``). It prints, for the normal bodies of Normal
studies, the normal bodies of Damaged studies and the fractured bodies, how many, the median, 90th
percentile and maximum of P(grade >= 1) and the share at or above ``--threshold`` (default:
inference.yaml's ``level_threshold``), then the study AUROC of each study's highest body.
``--out`` also writes them as JSON (temporary name, then renamed). Studies without a truth.json
(or without per-level grades in it) have no body in a group; the script says so, and the AUROC then
reads every body of the reference masks. ``--exposure_band S`` first pushes the lower
``--band_extent`` of every LAT film toward white by S (0-1; ``spine_app.data.augment.exposure_band``):
the bodies of a film framed on the thorax that lie in the abdomen, near the top of the grey range
(docs/results.md, "Bodies near the top of the grey range"). A bad command line exits 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

from spine_app.bundle import BUNDLE_DIR, config_value, load_bundle_network
from spine_app.data.io import write_atomic
from spine_app.engines import datalist_split
from spine_app.evaluation.level_probe import GROUPS, ExposureBand, probe_levels
from spine_app.viz.tables import markdown_table


def main(
    datalist: str,
    split: str = "test",
    model: str | None = None,
    threshold: float | None = None,
    out: str | None = None,
    exposure_band: float | None = None,
    band_extent: float = 0.5,
) -> None:
    """Probe the level head on the reference bodies of ``datalist``'s ``split`` (module docstring)."""
    path = Path(datalist)
    if not path.is_file():
        print(f"{path}: no such datalist", file=sys.stderr)
        sys.exit(2)
    if split not in ("training", "validation", "test"):
        print(f"--split {split}: choose training, validation or test", file=sys.stderr)
        sys.exit(2)
    try:
        entries = datalist_split(str(path), split)
    except (ValueError, KeyError, OSError) as err:  # not a datalist, or an empty split
        print(str(err) if str(path) in str(err) else f"{path}: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        band = None if exposure_band is None else ExposureBand(float(exposure_band), float(band_extent))
    except (TypeError, ValueError) as err:
        print(f"--exposure_band {exposure_band} --band_extent {band_extent}: {err}", file=sys.stderr)
        sys.exit(2)
    level_threshold = float(config_value("inference.yaml", "level_threshold") if threshold is None else threshold)
    network, canvas = load_bundle_network(BUNDLE_DIR, model)
    probe = probe_levels(network, entries, canvas, level_threshold, band=band)
    rows = [
        [name.replace("_", " "), g.bodies, f"{g.median:.3f}", f"{g.p90:.3f}", f"{g.maximum:.3f}", f"{g.flagged:.3f}"]
        for name, g in ((name, probe.groups[name]) for name in GROUPS)
    ]
    header = ["reference bodies", "n", "median", "90th percentile", "maximum", f">= {level_threshold:g}"]
    print(markdown_table(header, rows))
    print(f"study AUROC from the highest body: {probe.study_auroc:.3f} ({probe.studies} studies)")
    if not any(group.bodies for group in probe.groups.values()):
        print("no body of the split has a grade in a truth.json: the groups are empty (the AUROC reads every body)")
    if out:
        band_record = None if band is None else band.__dict__
        report = json.dumps(
            {"datalist": str(path), "split": split, "model": model, "exposure_band": band_record, **probe.as_dict()},
            indent=2,
        )
        write_atomic(Path(out), lambda tmp: tmp.write_text(report))


if __name__ == "__main__":
    fire.Fire(main)
