"""Neighbour suppression of level probabilities: the excess, the fit, and its use by the report."""

from __future__ import annotations

import numpy as np
import pytest

from spine_app.engines.report import level_report, markdown
from spine_app.metrics.level_suppression import (
    NO_SUPPRESSION,
    NeighbourSuppression,
    fit_neighbour_suppression,
    logit,
    neighbour_excess,
)
from spine_app.metrics.levels import level_labels, level_scores, suppress_records


def test_the_excess_is_how_far_the_more_suspicious_neighbour_is_above():
    p = [0.1, 0.9, 0.2, 0.05]
    z = logit(p)
    expected = [z[1] - z[0], 0.0, z[1] - z[2], z[2] - z[3]]  # the top and bottom levels have one neighbour
    np.testing.assert_allclose(neighbour_excess(p), expected)
    assert neighbour_excess([0.7]).tolist() == [0.0] and neighbour_excess([]).size == 0


def test_suppression_only_lowers_and_leaves_a_level_without_a_higher_neighbour_alone():
    p = [0.05, 0.5, 0.99, 0.5, 0.3]
    out = NeighbourSuppression(0.6).probabilities(p)
    assert (out <= np.asarray(p)).all()
    assert out[2] == pytest.approx(0.99, abs=1e-4)  # the most suspicious level keeps its probability
    assert out[1] < 0.25 and out[3] < 0.25  # the bodies beside it fall
    np.testing.assert_allclose(NO_SUPPRESSION.probabilities(p), p)
    with pytest.raises(ValueError, match="suppression"):
        NeighbourSuppression(-0.5)


def _bleeding_films(rng: np.random.Generator, n: int) -> list[tuple[list[float], list[int | None], list[bool]]]:
    """Films of 8 levels (head probabilities, labels, which levels border the fracture): a fracture
    scores high, and its neighbours inherit a share of its score."""
    films = []
    for _ in range(n):
        z = rng.normal(-4.0, 1.0, 8)
        labels: list[int | None] = [0] * 8
        beside = [False] * 8
        if rng.random() < 0.6:
            k = int(rng.integers(1, 7))
            z[k] = rng.normal(2.0, 1.0)
            labels[k] = 1
            for j in (k - 1, k + 1):
                z[j] = rng.normal(0.0, 1.0)  # the bleed: normal, but close to the fracture's score
                beside[j] = True
        labels[0] = None  # a level on no reference body
        films.append(((1 / (1 + np.exp(-z))).tolist(), labels, beside))
    return films


def test_the_fit_learns_the_bleed_and_tells_fractures_from_their_neighbours_better():
    from spine_app.metrics.classification import auroc

    rng = np.random.default_rng(0)
    suppression = fit_neighbour_suppression([(p, lab) for p, lab, _ in _bleeding_films(rng, 200)])
    assert suppression.weight > 0.1
    y, head, suppressed = [], [], []
    for probs, labels, beside in _bleeding_films(rng, 200):
        for p, q, lab, near in zip(probs, suppression.probabilities(probs), labels, beside):
            if lab == 1 or near:  # fractures against the normal levels beside them
                y.append(int(lab == 1))
                head.append(p)
                suppressed.append(q)
    assert auroc(y, suppressed) > auroc(y, head) + 0.02


def test_no_bleed_or_too_few_labelled_levels_give_no_suppression():
    rng = np.random.default_rng(2)
    plain = []
    for _ in range(150):  # fractures and normal levels scored independently of their neighbours
        labels = (rng.random(8) < 0.1).astype(int)
        z = np.where(labels == 1, rng.normal(1.0, 1.5, 8), rng.normal(-3.0, 1.5, 8))
        plain.append(((1 / (1 + np.exp(-z))).tolist(), labels.tolist()))
    assert fit_neighbour_suppression(plain).weight < 0.1
    assert fit_neighbour_suppression([([0.9, 0.1], [1, 0])]) == NO_SUPPRESSION
    assert fit_neighbour_suppression([]) == NO_SUPPRESSION


def _record(study_id: str, probs: list[float], labels: list[int | None]) -> dict:
    truth = [
        {"grade": 2 if y else 0, "kind": "wedge" if y else "none", "match": i}
        for i, y in enumerate(labels)
        if y is not None
    ]
    return {
        "study_id": study_id,
        "label": float(any(labels)),
        "levels": {
            "predicted": [
                {"cumulative": [p, 0.5 * p, 0.1 * p], "centre": [10.0 * i, 5.0]} for i, p in enumerate(probs)
            ],
            "truth": truth,
        },
    }


def test_records_are_labelled_suppressed_as_copies_and_scored_by_the_suppressed_probability():
    record = _record("a", [0.1, 0.9, 0.6, 0.05], [0, 1, 0, None])
    assert level_labels(record) == [0, 1, 0, None]
    (suppressed,) = suppress_records([record], NeighbourSuppression(0.5))
    assert "probability" not in record["levels"]["predicted"][0]  # the input is not changed
    probabilities = [p["probability"] for p in suppressed["levels"]["predicted"]]
    assert probabilities[2] < 0.5 < probabilities[1]  # the fracture's neighbour falls under 0.5, the fracture does not
    assert level_scores([record], 0.5)["normal_flagged"]["hits"] == 1
    scores = level_scores([suppressed], 0.5)
    assert scores["normal_flagged"]["hits"] == 0 and scores["fractured_found"]["hits"] == 1
    assert scores["head_level_auroc"] == level_scores([record], 0.5)["level_auroc"]


def test_level_report_keeps_the_heads_threshold_and_withdraws_flags_only():
    rng = np.random.default_rng(1)
    val = [_record(f"v{i}", probs, labels) for i, (probs, labels, _) in enumerate(_bleeding_films(rng, 120))]
    test = [_record(f"t{i}", probs, labels) for i, (probs, labels, _) in enumerate(_bleeding_films(rng, 120))]
    report = level_report(val, test)
    plain = level_scores(test, report["threshold"])  # the head alone at the same threshold
    assert report["neighbour_suppression"] > 0 and report["level_auroc"] > report["head_level_auroc"]
    assert report["normal_flagged"]["hits"] < plain["normal_flagged"]["hits"]
    assert report["fractured_found"]["hits"] <= plain["fractured_found"]["hits"]
    text = markdown({}, {}, None, report)
    assert f"level_neighbour_suppression: {report['neighbour_suppression']}" in text
    assert f"level_threshold: {report['threshold']:.3f}" in text
    # study labels only: no per-level reference, so no suppression
    only = [{**r, "levels": {**r["levels"], "truth": []}} for r in val]
    assert level_report(only, test, "normal_studies")["neighbour_suppression"] == 0.0
