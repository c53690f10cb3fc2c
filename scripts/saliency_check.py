"""Sanity checks of the decision's saliency maps on a datalist split (docs/results.md, "Explaining
the decision"). For every study of the split, with the given weights:

- Grad-CAM of the fused Damaged logit on each view (``spine_app.explain.saliency_maps``) and its cost;
- the same network with randomised weights (Adebayo et al. 2018, "Sanity checks for saliency
  maps"): Spearman rank correlation between the trained and the randomised map of each film;
- on Damaged studies, whether the strongest response falls on a fractured level (nearest level
  centre of truth.json), against the chance rate (fractured share of the levels in view);
- on the first ``--occlusion`` Damaged studies, occlusion sensitivity (model-agnostic) and its rank
  correlation with Grad-CAM;
- a figure of a few Damaged studies: film, trained Grad-CAM, randomised Grad-CAM, occlusion.

    python scripts/saliency_check.py data/synthetic/datalist.json --out docs/figures/explain
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import fire
import numpy as np
import torch
from scipy.stats import spearmanr

from spine_app.data.importer import load_datalist
from spine_app.data.io import read_image, write_atomic
from spine_app.data.study_transforms import LoadStudyd
from spine_app.engines.writer import resize_to_original
from spine_app.explain import peak_position, saliency_maps
from spine_app.networks import SpineMultiTaskNet, load_weights

VIEWS = (("ap", "AP"), ("lat", "LAT"))


def _rank_correlation(a: torch.Tensor, b: torch.Tensor, size: tuple[int, int] = (48, 36)) -> float:
    """Spearman correlation of two (H, W) maps compared on a coarse grid (the CAM's own resolution)."""
    pool = [torch.nn.functional.adaptive_avg_pool2d(m[None, None].float(), size).flatten() for m in (a, b)]
    if float(pool[0].std()) == 0 or float(pool[1].std()) == 0:
        return float("nan")
    return float(spearmanr(pool[0].numpy(), pool[1].numpy()).statistic)


def _truth_levels(entry: dict, key: str) -> tuple[dict[str, tuple[float, float]], set[str]]:
    """(level name -> centre (row, col) in the film's pixels for levels in view, fractured level names)."""
    truth = json.loads(Path(entry["truth"]).read_text())
    centres = {lv["name"]: tuple(lv[f"center_{key}_px"]) for lv in truth["levels"] if lv.get(f"in_view_{key}")}
    return centres, {f["level"] for f in truth.get("fractures") or []}


def check(
    datalist: str,
    out: str = "docs/figures/explain",
    model: str = "bundle/models/model.pt",
    split: str = "test",
    canvas: tuple[int, int] = (384, 288),
    occlusion: int = 8,
    figure_studies: int = 3,
    seed: int = 0,
    limit: int | None = None,
) -> None:
    """Run the checks; writes OUT/saliency_check.json and OUT/saliency_check.png and prints the summary."""
    torch.manual_seed(seed)
    net = load_weights(SpineMultiTaskNet(), model).eval()
    torch.manual_seed(seed + 1)
    randomised = SpineMultiTaskNet().eval()  # same architecture, fresh initialisation
    load = LoadStudyd(tuple(canvas))
    entries = load_datalist(datalist)[split][:limit]
    rows, figure = [], []
    for entry in entries:
        data = load(entry)
        ap, lat = data["ap"][None], data["lat"][None]
        present = torch.as_tensor(data["present"])[None].float()
        start = time.perf_counter()
        trained = saliency_maps(net, ap, lat, present, "gradcam")
        seconds = time.perf_counter() - start
        random_maps = saliency_maps(randomised, ap, lat, present, "gradcam")
        do_occlusion = int(entry["label"]) == 1 and sum(r["occlusion"] is not None for r in rows) < occlusion
        occluded = saliency_maps(net, ap, lat, present, "occlusion") if do_occlusion else None
        row = {
            "study_id": entry["study_id"],
            "label": int(entry["label"]),
            "gradcam_s": round(seconds, 3),
            "views": {},
            "occlusion": {} if occluded else None,
        }
        for key, view in VIEWS:
            if float(present[0, 0 if key == "ap" else 1]) <= 0:
                continue
            film = trained[key][0, 0]
            centres, fractured = _truth_levels(entry, key)
            full = resize_to_original(trained[key][0], torch.as_tensor(data[f"geom_{key}"]))[0]
            peak = peak_position(full)
            level = None
            if peak is not None and centres:
                names = list(centres)
                distance = [np.hypot(peak[0] - centres[n][0], peak[1] - centres[n][1]) for n in names]
                level = names[int(np.argmin(distance))]
            row["views"][view] = {
                "rho_random": _rank_correlation(film, random_maps[key][0, 0]),
                "peak_px": list(peak) if peak else None,
                "nearest_level": level,
                "on_fractured_level": (level in fractured) if level else None,
                "chance": len(fractured & set(centres)) / max(1, len(centres)),
            }
            if occluded is not None:
                row["occlusion"][view] = _rank_correlation(film, occluded[key][0, 0])
        rows.append(row)
        if int(entry["label"]) == 1 and len(figure) < figure_studies and occluded is not None:
            figure.append((entry, data, trained, random_maps, occluded))
        print(entry["study_id"], json.dumps(row["views"]), flush=True)
    summary = _summary(rows)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "datalist": datalist,
        "model": model,
        "split": split,
        "canvas": list(canvas),
        "summary": summary,
        "studies": rows,
    }
    write_atomic(out_dir / "saliency_check.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))
    _figure(figure, out_dir / "saliency_check.png")
    print(json.dumps(summary, indent=1))
    return None  # (fire would print a returned dict again)


def _summary(rows: list[dict]) -> dict:
    """Medians and rates over the studies, per view."""
    summary: dict = {"studies": len(rows), "gradcam_s_median": float(np.median([r["gradcam_s"] for r in rows]))}
    for _, view in VIEWS:
        items = [r["views"][view] for r in rows if view in r["views"]]
        damaged = [r["views"][view] for r in rows if view in r["views"] and r["label"] == 1]
        hits = [v["on_fractured_level"] for v in damaged if v["on_fractured_level"] is not None]
        occl = [r["occlusion"][view] for r in rows if r["occlusion"] and view in r["occlusion"]]
        summary[view] = {
            "rho_trained_vs_random_median": float(np.nanmedian([v["rho_random"] for v in items])),
            "damaged_films": len(damaged),
            "peak_on_fractured_level": float(np.mean(hits)) if hits else None,
            "chance_rate": float(np.mean([v["chance"] for v in damaged])) if damaged else None,
            "rho_gradcam_vs_occlusion_median": float(np.nanmedian(occl)) if occl else None,
            "occlusion_films": len(occl),
        }
    return summary


def _figure(items: list, path: Path) -> None:
    """Rows of Damaged studies (LAT): film, trained Grad-CAM, randomised Grad-CAM, occlusion."""
    import matplotlib.pyplot as plt

    from spine_app.engines.report import _save_figure
    from spine_app.viz.saliency import saliency_picture

    if not items:
        return
    fig, axes = plt.subplots(len(items), 4, figsize=(10, 3.6 * len(items)), squeeze=False)
    titles = ("LAT film", "Grad-CAM (trained)", "Grad-CAM (random weights)", "occlusion (trained)")
    for r, (entry, data, trained, random_maps, occluded) in enumerate(items):
        geom = torch.as_tensor(data["geom_lat"])
        image, _ = read_image(entry["image_lat"])
        truth = json.loads(Path(entry["truth"]).read_text())
        grades = ", ".join(f"{f['level']} G{f['grade']}" for f in truth.get("fractures") or [])
        panels = [np.zeros_like(image)] + [
            resize_to_original(m["lat"][0], geom)[0].numpy() for m in (trained, random_maps, occluded)
        ]
        for c, (panel, title) in enumerate(zip(panels, titles)):
            shown = saliency_picture(image, panel) if c else saliency_picture(image, panel, max_alpha=0.0)
            axes[r, c].imshow(shown)
            axes[r, c].set_title(title if r == 0 else "", fontsize=9)
            axes[r, c].axis("off")
        axes[r, 0].set_title(f"{entry['study_id']}: {grades}", fontsize=8)
    _save_figure(fig, path)


if __name__ == "__main__":
    fire.Fire(check)
