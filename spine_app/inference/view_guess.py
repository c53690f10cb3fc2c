"""Telling AP from LAT by the pixels, for films whose name and DICOM tags do not say it.

The bundle's network segments all eight structures on any film. Two light up mainly on films of
one view: the AP spinous processes on AP films, the lateral spinous processes on LAT films (the
vertebra, disk and line channels fire on both; so does the pedicle channel of the 0.5 weights,
about 2 % of the canvas on either view, which is why it is not evidence). The score is the
log-ratio of their foreground fractions (one whole-film pass at the working canvas, no sliding window)::

    score = ln((frac(Ap_Spinous_Process) + 0.001) / (frac(Lat_Spinous_Process) + 0.001))

AP when ``score > 0``. The guess is refused when ``|score| < MIN_MARGIN`` or when no vertebral
column is found (both vertebra channels under 1 % of the canvas, or no disk space between its bodies:
``Lat_Disk_Height`` under 0.2 %; the 0.4.0 weights draw vertebra masks on textured noise, never disks). ``spine-app bench view`` measures
it on a datalist split (docs/inference.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from spine_app.channels import MASK_NAMES, VIEWS
from spine_app.data.io import read_image
from spine_app.data.study_transforms import fit_to_canvas, normalize_intensity

AP_EVIDENCE = ("Ap_Spinous_Process",)  # docs/inference.md: chosen on the validation films
LAT_EVIDENCE = ("Lat_Spinous_Process",)
COLUMN = ("Ap_Vertebra", "Lat_Vertebra")
MIN_MARGIN = 0.25  # |log-ratio| below this is not trusted
MIN_COLUMN = 0.01  # fraction of the canvas a vertebral column covers at least
MIN_DISK = 0.002  # ... and its disk spaces (a column of bodies without disks is not a spine)


@dataclass(frozen=True)
class ViewGuess:
    """The guessed view, the score it came from (> 0: AP) and whether the margin is large enough."""

    view: str
    score: float
    confident: bool

    def note(self, path: str | Path) -> str:
        return (
            f"{path}: view {self.view} guessed from the image (score {self.score:+.2f}; no name or DICOM tag says it)"
        )


@lru_cache(maxsize=2)
def _network(bundle_dir: str, model: str | None, stamp: float) -> tuple[torch.nn.Module, tuple[int, int]]:
    """The bundle's network with ``model``'s weights; ``stamp`` (the file's mtime) keys the cache, so
    weights replaced in place (MONAI Label fine-tuning) are loaded again."""
    from spine_app.bundle import load_bundle_network

    net, canvas = load_bundle_network(bundle_dir, model)
    return net, (int(canvas[0]), int(canvas[1]))


def view_score(image: np.ndarray, network: torch.nn.Module, canvas: tuple[int, int]) -> tuple[float, float]:
    """(AP-vs-LAT log-ratio score, vertebral column fraction) of one film (rows, cols) in its grey levels."""
    x = fit_to_canvas(normalize_intensity(image)[None], canvas)[None]
    with torch.no_grad():
        fractions = (torch.sigmoid(network(x))[0] > 0.5).float().mean(dim=(1, 2))

    def total(names: tuple[str, ...]) -> float:
        return sum(float(fractions[MASK_NAMES.index(n)]) for n in names)

    column = max(float(fractions[MASK_NAMES.index(n)]) for n in COLUMN)
    if float(fractions[MASK_NAMES.index("Lat_Disk_Height")]) < MIN_DISK:
        column = 0.0
    return float(np.log((total(AP_EVIDENCE) + 1e-3) / (total(LAT_EVIDENCE) + 1e-3))), column


def guess_view(path: str | Path, bundle_dir: str | Path | None = None, model: str | Path | None = None) -> ViewGuess:
    """Guess the view of the film at ``path`` with the bundle's network (ImageReadError if unreadable)."""
    from spine_app.bundle import BUNDLE_DIR, weights_path

    bundle = str(bundle_dir or BUNDLE_DIR)
    stamp = weights_path(bundle, model).stat().st_mtime_ns
    network, canvas = _network(bundle, None if model is None else str(model), stamp)
    score, column = view_score(read_image(path)[0], network, canvas)
    return ViewGuess("AP" if score > 0 else "LAT", round(score, 4), abs(score) >= MIN_MARGIN and column >= MIN_COLUMN)


def bench_views(datalist: str | Path, split: str = "test", model: str | Path | None = None) -> dict:
    """Guess every film of ``split`` whose view is known; accuracy, refusals, margins and time per film."""
    import time

    from spine_app.data.importer import load_datalist

    rows = []
    for entry in load_datalist(datalist)[split]:
        for view in VIEWS:
            path = entry.get(f"image_{view.lower()}")
            if path:
                start = time.perf_counter()
                guess = guess_view(path, model=model)
                rows.append({"view": view, "guess": guess, "seconds": time.perf_counter() - start})
    decided = [r for r in rows if r["guess"].confident]
    scores = {v: [r["guess"].score for r in rows if r["view"] == v] for v in VIEWS}
    return {
        "films": len(rows),
        "correct": sum(r["guess"].view == r["view"] for r in decided),
        "wrong": sum(r["guess"].view != r["view"] for r in decided),
        "refused": len(rows) - len(decided),
        "ap_score_min": min(scores["AP"], default=float("nan")),
        "lat_score_max": max(scores["LAT"], default=float("nan")),
        "median_seconds": float(np.median([r["seconds"] for r in rows[1:]] or [0.0])),  # first includes loading
    }


__all__ = [
    "AP_EVIDENCE",
    "COLUMN",
    "LAT_EVIDENCE",
    "MIN_COLUMN",
    "MIN_MARGIN",
    "ViewGuess",
    "bench_views",
    "guess_view",
    "view_score",
]
