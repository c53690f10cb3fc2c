"""Neighbour-aware calibration of level probabilities: features, fit, and its use by the report."""

from __future__ import annotations

import numpy as np
import pytest

from spine_app.engines.report import level_report, markdown
from spine_app.metrics.level_calibration import IDENTITY, LevelCalibration, fit_level_calibration, logit
from spine_app.metrics.levels import calibrate_records, level_labels, level_scores


def test_features_take_the_higher_neighbour_and_a_lone_level_the_typical_normal_logit():
    calibration = LevelCalibration(lone_logit=-5.0)
    x = calibration.features([0.1, 0.9, 0.2, 0.05])
    np.testing.assert_allclose(x[:, 0], logit([0.1, 0.9, 0.2, 0.05]))
    np.testing.assert_allclose(x[:, 1], logit([0.9, 0.2, 0.9, 0.2]))  # the edges have one neighbour
    np.testing.assert_allclose(calibration.features([0.3]), [[logit([0.3])[0], -5.0]])
    assert calibration.features([]).shape == (0, 2) and calibration.probabilities([]).size == 0


def test_the_identity_returns_the_head_probabilities():
    p = [1e-3, 0.2, 0.5, 0.97]
    np.testing.assert_allclose(IDENTITY.probabilities(p), p, rtol=1e-6)


def test_a_level_beside_a_more_suspicious_one_is_lowered():
    calibration = LevelCalibration(scale=1.0, neighbour=-0.3, bias=-1.0, lone_logit=-5.0)
    # the same head score 0.4: beside a sure fracture it falls, beside normal levels it rises
    beside_fracture, beside_normal = (
        calibration.probabilities([0.99, 0.4, 0.01])[1],
        calibration.probabilities([0.01, 0.4, 0.01])[1],
    )
    assert beside_fracture < 0.4 < beside_normal


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
    calibration = fit_level_calibration([(p, lab) for p, lab, _ in _bleeding_films(rng, 200)])
    assert calibration.neighbour < 0 < calibration.scale
    assert calibration.lone_logit == pytest.approx(-4.0, abs=0.5)  # the median normal level's logit
    y, head, calibrated = [], [], []
    for probs, labels, beside in _bleeding_films(rng, 200):
        for p, q, lab, near in zip(probs, calibration.probabilities(probs), labels, beside):
            if lab == 1 or near:  # fractures against the normal levels beside them
                y.append(int(lab == 1))
                head.append(p)
                calibrated.append(q)
    assert auroc(y, calibrated) > auroc(y, head) + 0.03


def test_too_few_labelled_levels_give_the_identity_and_bad_settings_are_refused():
    assert fit_level_calibration([([0.9, 0.1], [1, 0])]) == IDENTITY
    assert fit_level_calibration([]) == IDENTITY
    assert LevelCalibration.from_mapping(None) == IDENTITY
    assert LevelCalibration.from_mapping({"scale": 2, "neighbour": -0.5}).neighbour == -0.5
    with pytest.raises(ValueError, match="unknown keys"):
        LevelCalibration.from_mapping({"neighbor": -0.5})


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


def test_records_are_labelled_calibrated_as_copies_and_scored_by_the_calibrated_probability():
    record = _record("a", [0.1, 0.9, 0.6, 0.05], [0, 1, 0, None])
    assert level_labels(record) == [0, 1, 0, None]
    calibration = LevelCalibration(scale=1.0, neighbour=-0.5, bias=0.0, lone_logit=-5.0)
    (calibrated,) = calibrate_records([record], calibration)
    assert "probability" not in record["levels"]["predicted"][0]  # the input is not changed
    probabilities = [p["probability"] for p in calibrated["levels"]["predicted"]]
    assert probabilities[2] < 0.5 < probabilities[1]  # the fracture's neighbour falls under 0.5, the fracture does not
    assert level_scores([record], 0.5)["normal_flagged"]["hits"] == 1
    scores = level_scores([calibrated], 0.5)
    assert scores["normal_flagged"]["hits"] == 0 and scores["fractured_found"]["hits"] == 1
    assert scores["head_level_auroc"] == level_scores([record], 0.5)["level_auroc"]


def test_level_report_fits_on_validation_and_reports_what_inference_takes():
    rng = np.random.default_rng(1)
    val = [_record(f"v{i}", probs, labels) for i, (probs, labels, _) in enumerate(_bleeding_films(rng, 120))]
    test = [_record(f"t{i}", probs, labels) for i, (probs, labels, _) in enumerate(_bleeding_films(rng, 120))]
    report = level_report(val, test)
    assert report["calibration"]["neighbour"] < 0
    assert report["level_auroc"] > report["head_level_auroc"]
    text = markdown({}, {}, None, report)
    assert "level_calibration: {scale:" in text and f"level_threshold: {report['threshold']:.3f}" in text
    # study labels only: no per-level reference, so the head's own probabilities
    only = [{**r, "levels": {**r["levels"], "truth": []}} for r in val]
    assert level_report(only, test, "normal_studies")["calibration"] == IDENTITY.as_dict()
