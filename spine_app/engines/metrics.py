"""Ignite metric of the bundle: per-channel segmentation scores and Normal/Damaged classification
over a validation run, computed with :mod:`spine_app.metrics` (the definitions used everywhere).

The key value is ``score = (mean Dice over the eight channels + AUROC of the study decision) / 2``,
the decision being the level head's pooled logit where the network has one, else the fused head. Every detail
(``dice_<channel>``, ``hd95_<channel>``, ``cldice_<line>``, ``line_side_pass`` (fraction of
lateral films whose two predicted lines lie on their own walls), ``auroc``, ``auroc_ap``, ``auroc_lat``,
``mean_dice``) is also written to ``engine.state.metrics`` so StatsHandler and TensorBoard show it,
and the full per-study table stays available as ``self.records`` / ``self.summary``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric

from spine_app.channels import (
    CHANNEL_VIEW,
    LINE_CHANNELS,
    MASK_NAMES,
    VIEW_KEYS,
    avail_key,
    channels_of_view,
    geom_key,
    seg_key,
)
from spine_app.data.levels import FRACTURE_KINDS, exposed_rows, film_level_boxes
from spine_app.data.study_transforms import FilmGeometry
from spine_app.engines.inferer import PARTING_DISK_KEY, parting_disk
from spine_app.metrics.classification import auroc
from spine_app.metrics.disk_exclusion import exclusion_dice
from spine_app.metrics.matching import nearest_matches
from spine_app.metrics.segmentation import lat_line_sides, score_masks
from spine_app.morphometry.measure import (
    combine_probabilities,
    measure_lat_film,
    morphometry_probability,
    study_fracture_score,
)

#: classifier heads: report name -> (record key of the probability, view that must be present, metric suffix).
#: "fused", "AP only", "LAT only" are the network's heads; "morphometry" is the Genant height reduction
#: measured on the predicted LAT vertebra mask; "combined" is their noisy-OR (spine_app.morphometry.measure).
HEADS = {
    "fused": ("prob_cls", None, ""),
    "AP only": ("prob_cls_ap", 0, "_ap"),
    "LAT only": ("prob_cls_lat", 1, "_lat"),
    "morphometry": ("prob_morphometry", 1, "_morphometry"),
    "combined": ("prob_combined", None, "_combined"),
    "levels": ("prob_cls_levels", 1, "_levels"),
    "levels + fused": ("prob_levels_fused", 1, "_levels_fused"),
}


def head_rows(records: list[dict[str, Any]], view: int | None, key: str | None = None) -> list[dict[str, Any]]:
    """The labelled studies a classifier head is scored on (those with its view, for single-view heads;
    with ``key``, those that have that head's probability: a network without level head has none)."""
    return [
        r
        for r in records
        if r["label"] >= 0 and (view is None or r["present"][view] > 0) and (key is None or r.get(key) is not None)
    ]


def segmentation_table(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean scores per mask over the studies where it is annotated (empty-truth cases counted apart)."""
    table: dict[str, dict[str, float]] = {}
    for name in MASK_NAMES:
        rows = [r[name] for r in records if name in r]
        if not rows:
            continue
        entry = {k: float(np.mean([s[k] for s in rows])) for k in ("dice", "iou", "tpr", "precision", "hd95_px")}
        mm = [s["hd95_mm"] for s in rows if s["hd95_mm"] is not None]
        entry["hd95_mm"] = float(np.mean(mm)) if mm else None
        entry["n"] = len(rows)
        entry["empty_truth"] = sum(1 for s in rows if s["empty_truth"])
        if name in LINE_CHANNELS:
            entry["cldice"] = float(np.mean([s["cldice"] for s in rows]))
            entry["nsd"] = float(np.mean([s["nsd"] for s in rows]))
        table[name] = entry
    return table


def line_side_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The line side check over the lateral films with both lines annotated: films checked, films
    passing, pass fraction (None without films) and the ids of the films that fail."""
    checked = [r for r in records if r.get("line_side_ok") is not None]
    passed = sum(1 for r in checked if r["line_side_ok"])
    return {
        "n": len(checked),
        "pass": passed,
        "fraction": passed / len(checked) if checked else None,
        "failed": [r["study_id"] for r in checked if not r["line_side_ok"]],
    }


def binary_masks(
    pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor], view: str, b: int
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) bool masks (8, H, W) of study ``b`` on ``view`` ("ap"/"lat"): sigmoid > 0.5, target > 0.5."""
    predicted = (torch.sigmoid(pred[seg_key(view)][b].float()) > 0.5).cpu().numpy()
    truth = (target[seg_key(view)][b].float() > 0.5).cpu().numpy()
    return predicted, truth


def disk_exclusion_record(pred: dict[str, torch.Tensor], lat_truth: np.ndarray, b: int) -> dict[str, float]:
    """Disk Dice of study ``b``'s LAT film without and with each exclusion threshold
    (:func:`spine_app.metrics.disk_exclusion.exclusion_dice`; ``lat_truth`` its (8, H, W) true masks),
    from the disk the network drew (before an exclusion the inferer applied)."""
    vb, disk = MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Disk_Height")
    vertebra = torch.sigmoid(pred[seg_key("lat")][b, vb].float()).cpu().numpy()
    drawn = torch.sigmoid(parting_disk(pred, b).float()).cpu().numpy()
    return exclusion_dice(drawn, vertebra, lat_truth[disk])


def parted_lat_masks(pred: dict[str, torch.Tensor], lat_masks: np.ndarray, b: int) -> np.ndarray:
    """Study ``b``'s predicted LAT masks (8, H, W) with the disk that parts the bodies for the
    morphometry: the network's own where the inferer excluded part of it (:func:`parting_disk`)."""
    if PARTING_DISK_KEY not in pred:
        return lat_masks
    parted = lat_masks.copy()
    parted[MASK_NAMES.index("Lat_Disk_Height")] = (parting_disk(pred, b).float() > 0).cpu().numpy()
    return parted


def study_probabilities(
    network: float,
    lat_masks: np.ndarray,
    geom_lat: torch.Tensor,
    has_lat: bool,
    field_rows: tuple[int, int] | None = None,
) -> dict[str, float | None]:
    """``prob_morphometry`` (None without LAT) and ``prob_combined`` of one study.

    lat_masks: (8, H, W) predicted bool masks of the LAT view at the working resolution;
    field_rows: the canvas film's exposed rows (:func:`spine_app.data.levels.exposed_rows`).
    """
    if not has_lat:
        return {"prob_morphometry": None, "prob_combined": network}
    spacing = FilmGeometry.from_tensor(geom_lat).working_spacing or (1.0, 1.0)
    masks = {MASK_NAMES[c]: lat_masks[c] for c in channels_of_view("LAT")}
    bodies = measure_lat_film(masks, spacing, field_rows=field_rows)
    morph = morphometry_probability(study_fracture_score(bodies))
    return {"prob_morphometry": morph, "prob_combined": combine_probabilities(network, morph)}


def levels_and_fused(levels: float, fused: float) -> float:
    """The study probability of the levels and the global (fused) head together: the logistic of the
    mean of their logits (both must agree to move it far)."""
    eps = 1e-6
    logit = [np.log(max(p, eps) / max(1.0 - p, eps)) for p in (levels, fused)]
    return float(1.0 / (1.0 + np.exp(-np.mean(logit))))


def level_records(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor], b: int) -> dict[str, Any]:
    """Per-level outcome of study ``b``: the predicted levels (probability, grade, centre) and, where
    the batch has a level map (``levels_lat``), the reference levels with their grade, type and the
    predicted level matched to each (nearest centre within a quarter of the box side); scored by
    :mod:`spine_app.metrics.levels`.

    Returns {"predicted": [...], "truth": [...]}; ``truth`` is empty without a level map.
    """
    valid = pred["level_valid"][b] > 0
    cumulative = torch.sigmoid(pred["level_logits"][b].float())[valid].cpu().numpy()
    centres = pred["level_centre"][b][valid].float().cpu().numpy()
    predicted = [
        {"cumulative": [round(float(v), 5) for v in cum], "centre": [float(c[0]), float(c[1])]}
        for cum, c in zip(cumulative, centres)
    ]
    truth: list[dict[str, Any]] = []
    level_map = target.get("levels_lat")
    if level_map is not None and float(level_map[b].max()) > 0:
        seg = target[seg_key("lat")][b].float().cpu().numpy()
        vb, disk = MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Disk_Height")
        boxes = film_level_boxes(seg[vb] > 0.5, seg[disk] > 0.5, 0, level_map[b, 0].cpu().numpy())
        known = [i for i in range(len(boxes)) if boxes.grade[i] >= 0]
        matches = nearest_matches(
            [boxes.centre[i] for i in known],
            [p["centre"] for p in predicted],
            lambda k, _j: 0.25 * float(boxes.size[known[k]]),
        )
        for i, match in zip(known, matches):
            truth.append({"grade": int(boxes.grade[i]), "kind": FRACTURE_KINDS[int(boxes.kind[i])], "match": match})
    return {"predicted": predicted, "truth": truth}


class StudyMetrics(Metric):
    """Accumulates per-study scores; ``compute()`` returns the key score (higher is better)."""

    required_output_keys = ("pred", "label")  # the evaluator's output dict -> (pred, targets)

    def __init__(
        self, output_transform=lambda x: x, device: str | torch.device = "cpu", keep_examples: int = 0
    ) -> None:
        self.records: list[dict[str, Any]] = []
        self.examples: list[dict[str, Any]] = []
        self.summary: dict[str, float] = {}
        self.keep_examples = keep_examples
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self.records = []
        self.examples = []

    def update(self, output: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]) -> None:
        pred, target = output
        ids = target.get("study_id") or []
        for b in range(target["label"].shape[0]):
            masks = {view: binary_masks(pred, target, view, b) for view in VIEW_KEYS}
            record: dict[str, Any] = {
                "study_id": ids[b] if b < len(ids) else str(len(self.records)),
                "label": float(target["label"][b]),
                "present": [float(x) for x in target["present"][b]],
            }
            for key in ("cls", "cls_ap", "cls_lat", "cls_levels"):
                if key in pred:
                    record[f"prob_{key}"] = float(torch.sigmoid(pred[key][b].float()))
            if "level_logits" in pred:
                record["levels"] = level_records(pred, target, b)
                record["prob_levels_fused"] = levels_and_fused(record["prob_cls_levels"], record["prob_cls"])
            film = target.get("image_lat")
            record.update(
                study_probabilities(
                    record["prob_cls"],
                    parted_lat_masks(pred, masks["lat"][0], b),
                    target[geom_key("lat")][b],
                    record["present"][1] > 0,
                    exposed_rows(film[b, 0].float().cpu().numpy()) if film is not None else None,
                )
            )
            for c, (name, view) in enumerate(zip(MASK_NAMES, CHANNEL_VIEW)):
                key = view.lower()
                if float(target[avail_key(key)][b, c]) <= 0:
                    continue
                predicted, truth = masks[key]
                spacing = FilmGeometry.from_tensor(target[geom_key(key)][b]).working_spacing
                record[name] = score_masks(predicted[c], truth[c], spacing, line=name in LINE_CHANNELS).to_dict()
            if "Lat_Disk_Height" in record:
                record["disk_exclusion"] = disk_exclusion_record(pred, masks["lat"][1], b)
            if all(name in record for name in LINE_CHANNELS):
                predicted, truth = masks["lat"]
                lines = [MASK_NAMES.index(name) for name in LINE_CHANNELS]
                record["line_side_ok"] = lat_line_sides(
                    {MASK_NAMES[c]: predicted[c] for c in lines}, {MASK_NAMES[c]: truth[c] for c in lines}
                )
            self.records.append(record)
            if len(self.examples) < self.keep_examples:
                self.examples.append(self._example(target, masks, b))

    @staticmethod
    def _example(
        target: dict[str, torch.Tensor], masks: dict[str, tuple[np.ndarray, np.ndarray]], b: int
    ) -> dict[str, Any]:
        """Image, predicted and true masks (numpy, working resolution) of study ``b`` for overlays."""
        example: dict[str, Any] = {}
        for view, (predicted, truth) in masks.items():
            example[f"image_{view}"] = target[f"image_{view}"][b, 0].float().cpu().numpy()
            example[f"pred_{view}"], example[f"truth_{view}"] = predicted, truth
            example[avail_key(view)] = target[avail_key(view)][b].cpu().numpy() > 0
        return example

    def _gather(self) -> None:
        """Under torch.distributed, every rank gets every rank's records (each saw a shard)."""
        if (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        ):
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.records)
            self.records = [r for part in gathered for r in part]

    def compute(self) -> float:
        self._gather()
        summary: dict[str, float] = {}
        for name, entry in segmentation_table(self.records).items():
            summary[f"dice_{name}"], summary[f"hd95_{name}"] = entry["dice"], entry["hd95_px"]
            if "cldice" in entry:
                summary[f"cldice_{name}"] = entry["cldice"]
        dices = [v for k, v in summary.items() if k.startswith("dice_")]
        summary["mean_dice"] = float(np.mean(dices)) if dices else 0.0
        sides = line_side_summary(self.records)
        if sides["n"]:
            summary["line_side_pass"] = sides["fraction"]
        for key, view, suffix in HEADS.values():
            rows = head_rows(self.records, view, key)
            if not rows and key == "prob_cls_levels":
                continue
            labels, probs = [int(r["label"]) for r in rows], [r[key] for r in rows]
            summary[f"auroc{suffix}"] = auroc(labels, probs) if rows else float("nan")
        decision = summary.get("auroc_levels", summary["auroc"])
        decision = decision if not np.isnan(decision) else 0.5
        summary["score"] = 0.5 * (summary["mean_dice"] + decision)
        self.summary = summary
        return summary["score"]

    def completed(self, engine: Engine, name: str) -> None:
        engine.state.metrics[name] = self.compute()  # gathers once; the summary below reuses it
        for key, value in self.summary.items():
            engine.state.metrics[f"{name}_{key}" if key != "score" else name] = value
