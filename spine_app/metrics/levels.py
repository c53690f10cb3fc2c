"""Per-vertebra fracture detection scores (the level head), from the evaluation's per-study records.

A record's ``levels`` (see :func:`spine_app.engines.metrics.level_records`) lists the predicted
levels (``cumulative``: P(grade >= 1), P(grade >= 2), P(grade >= 3); ``centre``) and the reference
levels (``grade``, ``kind``, ``match``: the index of the predicted level on it, or None when no
predicted body was found there). A reference level without a match counts as not flagged (grade 0).
A predicted level's fracture probability is its ``probability`` after the neighbour suppression
where :func:`suppress_records` set one (:mod:`spine_app.metrics.level_suppression`), else the
head's P(grade >= 1); the level threshold is chosen on the head's own.

Definitions (docs/design.md, "Metrics"):

- a level is *flagged* when its fracture probability is at or above the level threshold (chosen on
  validation on the head's probabilities: the lowest that flags at most 3 % of the validation split's normal levels,
  :data:`LEVEL_FLAG_RATE`; with study labels only, every level of the Normal studies counts as
  normal, :func:`normal_level_scores`); its grade is then 1 + the number of the
  higher cumulative probabilities at or above 0.5, else 0;
- fractured levels found = flagged fractured levels / fractured levels; normal levels flagged =
  flagged normal levels / normal levels (both over the reference levels);
- top level right = Damaged studies whose most suspicious predicted level lies on a fractured
  reference level / Damaged studies;
- grade agreement: linearly weighted Cohen's kappa over all reference levels, and exact grade on
  the fractured ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from spine_app.metrics.classification import auroc, youden_threshold
from spine_app.metrics.level_suppression import NeighbourSuppression, fit_neighbour_suppression


class GradeDistribution(NamedTuple):
    """What a scored level's grade is read from (result.json ``grade_probabilities`` and
    ``severity_probabilities``): ``grades`` P(grade 0), ..., P(grade 3), whose P(grade 0) is one minus
    the level's fracture probability (the one that flags it), and ``severity`` P(grade 1), P(grade 2),
    P(grade 3) of a fractured body (the grade head's where the model has one); ``grades`` is the
    fracture probability times ``severity`` above grade 0."""

    grades: tuple[float, float, float, float]
    severity: tuple[float, float, float]

    @property
    def median_severity(self) -> int:
        """The median grade (1-3) of ``severity``: the grade a flagged level gets from the network."""
        at_least_2, at_least_3 = self.severity[1] + self.severity[2], self.severity[2]
        return 1 + int(at_least_2 >= 0.5) + int(at_least_3 >= 0.5)


def grade_distribution(cumulative: Sequence[float], probability: float | None = None) -> GradeDistribution:
    """:class:`GradeDistribution` of a predicted level from its cumulative probabilities P(grade >= 1),
    P(grade >= 2), P(grade >= 3) and its fracture ``probability`` (after the neighbour suppression;
    the head's ``cumulative[0]`` where not given). P(grade >= 3) is capped at P(grade >= 2), so the
    grades are ordered; the severity does not depend on the fracture probability (the grade head
    grades a body whatever the level head thinks of it)."""
    fractured = float(cumulative[0] if probability is None else probability)
    at_least_2 = float(cumulative[1])
    at_least_3 = min(float(cumulative[2]), at_least_2)
    severity = (1.0 - at_least_2, at_least_2 - at_least_3, at_least_3)
    grades = (1.0 - fractured, fractured * severity[0], fractured * severity[1], fractured * severity[2])
    return GradeDistribution(grades=grades, severity=severity)


def graded(cumulative: Sequence[float], threshold: float, probability: float | None = None) -> int:
    """Genant grade of a predicted level at the level ``threshold`` (see the module docstring): 0
    when not flagged, else the median of its :func:`grade_distribution` severity. The level is flagged
    by ``probability`` (its fracture probability after the neighbour suppression) where given, else
    by the head's ``cumulative[0]``."""
    if (cumulative[0] if probability is None else probability) < threshold:
        return 0
    return grade_distribution(cumulative, probability).median_severity


#: where a reported level grade comes from (result.json ``levels[].grade_source``)
GRADE_FROM_MORPHOMETRY, GRADE_FROM_HEAD = "morphometry", "level head"
#: ``grade_source`` of a level above the level threshold in a study the decision labels Normal: no grade
#: reported (``spine_app.engines.writer.hold_back_levels``)
GRADE_HELD_BACK = "held back: study decided Normal"


def reported_grade(head_grade: int, flagged: bool, morphometry_grade: int | None) -> tuple[int, str]:
    """(grade, source) that inference reports for one level: the level head decides whether the body
    is fractured (``flagged``); a flagged body's grade is the higher of the head's grade (at least 1;
    the grade head's where the model has one) and the morphometry's Genant grade of the same body
    measured on the film's own pixels (where that grades it, 1-3), the source naming which (the
    morphometry on a tie). The morphometry on predicted masks grades low, never high, by a grade
    (the masks fill a biconcave body's middle), where the grade head errs both ways; the higher of
    the two was chosen on the validation split and confirmed on a fresh set (docs/results.md,
    "The grade head")."""
    if not flagged:
        return 0, GRADE_FROM_HEAD
    head = max(1, int(head_grade))
    if morphometry_grade is not None and morphometry_grade >= head:
        return int(morphometry_grade), GRADE_FROM_MORPHOMETRY
    return head, GRADE_FROM_HEAD


def level_per_body(levels: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Morphometry body number (1 = top-most) -> the level of result.json's ``levels`` reported on that
    body; where two levels lie on one body (a pair the canvas merged), the one with the higher
    ``grade`` (the first on a tie). What the overlay labels each body with and the DICOM SR grades it by."""
    per_body: dict[int, dict[str, Any]] = {}
    for level in levels:
        if level.get("morphometry"):
            body = level["morphometry"]["body"]
            if body not in per_body or int(level["grade"]) > int(per_body[body]["grade"]):
                per_body[body] = level
    return per_body


def level_probability(level: dict[str, Any]) -> float:
    """A predicted level's fracture probability in a record: its ``probability`` after the neighbour
    suppression (:func:`suppress_records`) where set, else the head's P(grade >= 1)."""
    return float(level.get("probability", level["cumulative"][0]))


def level_labels(record: dict[str, Any]) -> list[int | None]:
    """Per predicted level of a record: 1 where it lies on a fractured reference level, 0 on a normal
    one, None on none (or in a record without reference levels)."""
    levels = record.get("levels") or {}
    labels: list[int | None] = [None] * len(levels.get("predicted", []))
    for truth in levels.get("truth", []):
        match = truth.get("match")
        if match is not None and truth["grade"] >= 0:
            labels[match] = max(labels[match] or 0, int(truth["grade"] > 0))
    return labels


def fit_records_suppression(records: list[dict[str, Any]]) -> NeighbourSuppression:
    """:func:`spine_app.metrics.level_suppression.fit_neighbour_suppression` on the records' predicted
    levels labelled by their reference levels (:func:`level_labels`)."""
    films = []
    for record in records:
        predicted = (record.get("levels") or {}).get("predicted", [])
        if predicted:
            films.append(([p["cumulative"][0] for p in predicted], level_labels(record)))
    return fit_neighbour_suppression(films)


def suppress_records(records: list[dict[str, Any]], suppression: NeighbourSuppression) -> list[dict[str, Any]]:
    """Copies of the records whose predicted levels carry ``probability``: the fracture probability
    of each after the neighbour ``suppression`` (the records themselves are not changed)."""
    out = []
    for record in records:
        levels = record.get("levels")
        if not levels or not levels.get("predicted"):
            out.append(record)
            continue
        predicted = levels["predicted"]
        probabilities = suppression.probabilities([p["cumulative"][0] for p in predicted])
        suppressed = [{**p, "probability": round(float(q), 5)} for p, q in zip(predicted, probabilities)]
        out.append({**record, "levels": {**levels, "predicted": suppressed}})
    return out


def reference_levels(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every reference level of the records, with the matched predicted level's probabilities
    (``cumulative`` zeros when none was found) and its study's label."""
    rows = []
    for record in records:
        levels = record.get("levels") or {}
        predicted = levels.get("predicted", [])
        for truth in levels.get("truth", []):
            match = truth.get("match")
            cumulative = predicted[match]["cumulative"] if match is not None else [0.0, 0.0, 0.0]
            probability = level_probability(predicted[match]) if match is not None else 0.0
            rows.append(
                {
                    "study_id": record["study_id"],
                    "label": record["label"],
                    "grade": truth["grade"],
                    "kind": truth["kind"],
                    "found_body": match is not None,
                    "cumulative": cumulative,
                    "probability": probability,
                }
            )
    return rows


LEVEL_FLAG_RATE = 0.03
"""Largest share of the validation split's normal levels the level threshold may flag (a margin under
the 5 % product target: validation and test normal-level scores differ by about that much)."""


#: where the level threshold's normal levels come from (evaluate.yaml ``level_threshold_source``)
LEVEL_THRESHOLD_SOURCES = ("auto", "truth", "normal_studies")


def normal_level_scores(records: list[dict[str, Any]], source: str = "auto") -> tuple[np.ndarray, str]:
    """The level head's own fracture probabilities of the levels taken as normal (what the level
    threshold is chosen on), and the source used: the normal
    reference levels (``truth``: per-level labels), every predicted level of the Normal-labelled
    studies (``normal_studies``: all a dataset with study labels only has), or ``auto``: the
    reference levels where the records hold any, else the Normal studies' levels."""
    if source not in LEVEL_THRESHOLD_SOURCES:
        raise ValueError(f"level threshold source must be one of {LEVEL_THRESHOLD_SOURCES}, got {source!r}")
    rows = reference_levels(records)
    if source == "truth" or (source == "auto" and rows):
        return np.array([float(r["cumulative"][0]) for r in rows if r["grade"] == 0]), "truth"
    scores = [
        float(level["cumulative"][0])
        for record in records
        if record.get("label") == 0
        for level in (record.get("levels") or {}).get("predicted", [])
    ]
    return np.array(scores), "normal_studies"


def level_threshold(
    records: list[dict[str, Any]], max_flag_rate: float | None = LEVEL_FLAG_RATE, source: str = "auto"
) -> float:
    """Level threshold from (validation) records: the lowest fracture probability at which at most
    ``max_flag_rate`` of their normal levels (:func:`normal_level_scores` of ``source``) are flagged
    (midway between the last normal score let through and the next one up), or Youden's J over all
    their reference levels when ``max_flag_rate`` is None; 0.5 without normal levels."""
    if max_flag_rate is None:
        rows = reference_levels(records)
        if not rows:
            return 0.5
        return youden_threshold([int(r["grade"] > 0) for r in rows], [r["cumulative"][0] for r in rows])
    normal = np.sort(normal_level_scores(records, source)[0])[::-1]
    if normal.size == 0:
        return 0.5
    allowed = int(np.floor(max_flag_rate * normal.size + 1e-9))
    if allowed >= normal.size:
        return float(normal[-1])
    above = float(normal[allowed - 1]) if allowed > 0 else 1.0
    return float(
        min(
            1.0, (above + float(normal[allowed])) / 2 if above > normal[allowed] else np.nextafter(normal[allowed], 2.0)
        )
    )


def _fraction(hits: int, total: int) -> dict[str, Any]:
    return {"n": total, "hits": hits, "fraction": hits / total if total else None}


def level_scores(records: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The per-level figures of the module docstring at the level ``threshold`` (empty dict when
    the records hold no reference level)."""
    from sklearn.metrics import cohen_kappa_score

    rows = reference_levels(records)
    if not rows:
        return {}
    truth = np.array([r["grade"] for r in rows])
    prob = np.array([r["probability"] for r in rows])
    head = np.array([r["cumulative"][0] for r in rows])
    pred = np.array([graded(r["cumulative"], threshold, r["probability"]) for r in rows])
    fractured, flagged = truth > 0, pred > 0
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "levels": len(rows),
        "bodies_found": _fraction(int(sum(r["found_body"] for r in rows)), len(rows)),
        "level_auroc": auroc(fractured.astype(int).tolist(), prob.tolist())
        if fractured.any() and (~fractured).any()
        else None,
        "head_level_auroc": auroc(fractured.astype(int).tolist(), head.tolist())
        if fractured.any() and (~fractured).any()
        else None,
        "fractured_found": _fraction(int((flagged & fractured).sum()), int(fractured.sum())),
        "normal_flagged": _fraction(int((flagged & ~fractured).sum()), int((~fractured).sum())),
        "kappa_linear": float(cohen_kappa_score(truth, pred, weights="linear", labels=[0, 1, 2, 3])),
        "exact_grade_fractured": _fraction(int(((pred == truth) & fractured).sum()), int(fractured.sum())),
        "by_grade": {
            str(g): _fraction(int((flagged & (truth == g)).sum()), int((truth == g).sum())) for g in (1, 2, 3)
        },
        "by_kind": {},
    }
    kinds = np.array([r["kind"] for r in rows])
    for kind in sorted(set(kinds[fractured])):
        sel = fractured & (kinds == kind)
        out["by_kind"][kind] = _fraction(int((flagged & sel).sum()), int(sel.sum()))
    top_hits, damaged = 0, 0
    for record in records:
        levels = record.get("levels") or {}
        if record["label"] != 1 or not levels.get("truth"):
            continue
        damaged += 1
        predicted = levels.get("predicted", [])
        if not predicted:
            continue
        top = int(np.argmax([level_probability(p) for p in predicted]))
        top_hits += any(t.get("match") == top and t["grade"] > 0 for t in levels["truth"])
    out["top_level_fractured"] = _fraction(top_hits, damaged)
    return out


def level_markdown(scores: dict[str, Any], name: str = "levels") -> str:
    """One Markdown table row set of :func:`level_scores` (header included)."""
    if not scores:
        return ""

    def cell(entry: dict[str, Any]) -> str:
        return f"{entry['hits']}/{entry['n']} = {entry['fraction']:.2f}" if entry["n"] else "-"

    kinds = ", ".join(f"{k} {v['hits']}/{v['n']}" for k, v in scores["by_kind"].items())
    grades = ", ".join(f"{g}: {v['hits']}/{v['n']}" for g, v in scores["by_grade"].items())
    auc = f"{scores['level_auroc']:.3f}" if scores["level_auroc"] is not None else "-"
    return (
        "\n".join(
            [
                "| levels | level AUROC | fractured levels found | by grade | by type | normal levels flagged | most suspicious level is fractured (Damaged studies) | kappa (linear) | exact grade (fractured) | level threshold | bodies found on the predicted masks |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
                f"| {name} | {auc} | {cell(scores['fractured_found'])} | {grades} | {kinds} | {cell(scores['normal_flagged'])} | "
                f"{cell(scores['top_level_fractured'])} | {scores['kappa_linear']:.3f} | {cell(scores['exact_grade_fractured'])} | "
                f"{scores['threshold']:.3f} | {cell(scores['bodies_found'])} |",
            ]
        )
        + "\n"
    )
