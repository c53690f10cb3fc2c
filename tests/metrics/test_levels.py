"""Per-vertebra fracture detection scores on hand-made records."""

from __future__ import annotations

import pytest

from spine_app.engines.report import level_report, markdown
from spine_app.metrics.levels import (
    grade_distribution,
    graded,
    level_scores,
    level_threshold,
    normal_level_scores,
    reported_grade,
)


def study(study_id: str, label: int, truth: list[tuple[int, str, int | None]], predicted: list[list[float]]) -> dict:
    """A record: reference levels (grade, kind, index of the matched predicted level) and predicted levels."""
    return {
        "study_id": study_id,
        "label": float(label),
        "levels": {
            "predicted": [{"cumulative": c, "centre": [10.0 * i, 5.0]} for i, c in enumerate(predicted)],
            "truth": [{"grade": g, "kind": k, "match": m} for g, k, m in truth],
        },
    }


def test_grade_follows_the_level_threshold_then_the_higher_thresholds():
    assert graded([0.2, 0.9, 0.9], 0.3) == 0
    assert graded([0.4, 0.2, 0.9], 0.3) == 1  # P(>=3) does not count without P(>=2)
    assert graded([0.9, 0.6, 0.1], 0.3) == 2
    assert graded([0.9, 0.6, 0.7], 0.3) == 3


@pytest.mark.parametrize(
    "cumulative, probability",
    [([0.35, 0.9, 0.2], None), ([0.9, 0.6, 0.7], 0.4), ([0.95, 0.5, 0.5], None), ([0.8, 0.1, 0.9], 0.31)],
)
def test_the_grade_probabilities_are_the_ones_the_grade_is_read_from(cumulative, probability):
    """result.json's grade_probabilities: P(grade 0) is one minus the probability that flags the level,
    the rest its severity scaled by it; a flagged level's grade is the severity's median."""
    dist = grade_distribution(cumulative, probability)
    flag = cumulative[0] if probability is None else probability
    assert sum(dist.grades) == pytest.approx(1.0) and sum(dist.severity) == pytest.approx(1.0)
    assert min(dist.grades) >= 0 and min(dist.severity) >= 0
    assert dist.grades[0] == pytest.approx(1.0 - flag)
    assert dist.grades[1:] == pytest.approx(tuple(flag * p for p in dist.severity))
    grade = graded(cumulative, 0.3, probability)
    assert grade == dist.median_severity  # every case here is flagged at 0.3
    at_least = [sum(dist.severity[k:]) for k in range(3)] + [0.0]  # P(grade >= 1), ..., P(>= 4) = 0
    assert at_least[grade - 1] >= 0.5 - 1e-9 and at_least[grade] < 0.5  # the median (ties go up)


def test_a_flagged_level_whose_grade_head_is_sure_keeps_that_severity():
    """A level flagged at a low threshold (0.35 >= 0.3) with a grade head sure of grade 2: the
    severity says grade 2 whatever the fracture probability (the cap P(>=2) <= P(>=1) of the
    network's cumulative outputs would have put grade 1 at zero and grade 2 at 0.35)."""
    dist = grade_distribution([0.35, 0.9, 0.2])
    assert graded([0.35, 0.9, 0.2], 0.3) == 2
    assert max(range(3), key=lambda k: dist.severity[k]) == 1  # grade 2 is the most likely severity
    assert dist.grades[1] > 0 and dist.grades[2] == pytest.approx(0.35 * 0.7)


def test_found_flagged_top_level_and_grade_agreement():
    records = [
        # Damaged: the grade-2 wedge is found and is the most suspicious level; the normal one is clean
        study("a", 1, [(0, "none", 0), (2, "wedge", 1), (0, "none", 2)], [[0.1, 0, 0], [0.9, 0.7, 0.1], [0.2, 0, 0]]),
        # Damaged: the grade-1 crush is missed, a normal level is flagged and is the most suspicious
        study("b", 1, [(1, "crush", 0), (0, "none", 1)], [[0.2, 0, 0], [0.8, 0.1, 0.1]]),
        # Normal, one reference level whose body was not found on the predicted masks
        study("c", 0, [(0, "none", None), (0, "none", 0)], [[0.05, 0, 0]]),
    ]
    scores = level_scores(records, threshold=0.5)
    assert scores["fractured_found"] == {"n": 2, "hits": 1, "fraction": 0.5}
    assert scores["normal_flagged"]["hits"] == 1 and scores["normal_flagged"]["n"] == 5
    assert scores["top_level_fractured"] == {"n": 2, "hits": 1, "fraction": 0.5}
    assert scores["by_grade"]["2"]["hits"] == 1 and scores["by_grade"]["1"]["hits"] == 0
    assert scores["by_kind"] == {
        "crush": {"n": 1, "hits": 0, "fraction": 0.0},
        "wedge": {"n": 1, "hits": 1, "fraction": 1.0},
    }
    assert scores["exact_grade_fractured"]["hits"] == 1
    assert scores["bodies_found"]["hits"] == 6 and scores["bodies_found"]["n"] == 7
    assert -1.0 <= scores["kappa_linear"] < 1.0
    perfect = level_scores([study("a", 1, [(0, "none", 0), (2, "wedge", 1)], [[0.1, 0, 0], [0.9, 0.7, 0.1]])], 0.5)
    assert perfect["kappa_linear"] == pytest.approx(1.0)


def test_level_threshold_separates_validation_levels_and_empty_records_give_nothing():
    records = [study("a", 1, [(0, "none", 0), (3, "crush", 1)], [[0.2, 0, 0], [0.7, 0.6, 0.6]])]
    assert 0.2 < level_threshold(records) <= 0.7
    assert 0.2 < level_threshold(records, max_flag_rate=None) <= 0.7
    assert level_threshold([]) == 0.5


def test_level_threshold_flags_at_most_the_allowed_share_of_normal_levels():
    # 100 normal levels scored 0.00..0.99 and one fractured level at 0.5: Youden would sit near 0.5
    # and flag half the normals; the rate rule lets through at most 3 of them, whatever the fractured score.
    normal = [[i / 100, 0.0, 0.0] for i in range(100)]
    records = [
        study("n", 0, [(0, "none", i) for i in range(100)], normal),
        study("d", 1, [(2, "wedge", 0)], [[0.5, 0.4, 0.1]]),
    ]
    threshold = level_threshold(records, max_flag_rate=0.03)
    assert 0.96 < threshold <= 0.97
    flagged = level_scores(records, threshold)["normal_flagged"]
    assert flagged["hits"] == 3 and flagged["n"] == 100
    assert level_threshold(records, max_flag_rate=0.0) > 0.99
    assert level_threshold(records, max_flag_rate=None) < 0.6
    assert level_scores([{"study_id": "x", "label": 0.0}], 0.5) == {}


def _labels_only(record: dict) -> dict:
    """The record as a dataset with study labels only gives it: no reference levels."""
    return {**record, "levels": {"predicted": record["levels"]["predicted"], "truth": []}}


def test_study_labels_only_take_the_normal_studies_levels_as_normal():
    # a Normal study's 100 levels scored 0.00..0.99; a Damaged study's normal level at 0.995 would
    # count as normal with per-level labels but is unknown with study labels only
    records = [
        study("n", 0, [(0, "none", i) for i in range(100)], [[i / 100, 0.0, 0.0] for i in range(100)]),
        study("d", 1, [(0, "none", 0), (2, "wedge", 1)], [[0.995, 0.0, 0.0], [0.999, 0.6, 0.1]]),
    ]
    labels_only = [_labels_only(r) for r in records]
    scores, source = normal_level_scores(labels_only)
    assert source == "normal_studies" and len(scores) == 100  # auto falls back: no reference levels
    assert normal_level_scores(records)[1] == "truth" and len(normal_level_scores(records)[0]) == 101
    assert normal_level_scores(records, "normal_studies")[0].max() < 0.995
    assert 0.96 < level_threshold(labels_only) <= 0.97
    assert level_threshold(records) > 0.97  # the Damaged study's normal level moves the truth threshold
    with pytest.raises(ValueError, match="level threshold source"):
        normal_level_scores(records, "levels")

    # the report: scores where the test split has reference levels, else only the threshold
    scored = level_report(labels_only, records)
    assert scored["threshold_source"] == "normal_studies" and scored["fractured_found"]["n"] == 1
    threshold_only = level_report(labels_only, labels_only)
    assert set(threshold_only) == {"threshold", "threshold_source", "neighbour_suppression"}
    assert "no per-level reference" in markdown({}, {}, None, threshold_only)
    assert level_report([_labels_only(records[1])], records) == {}  # no Normal study, no reference level


def test_reported_grade_is_the_higher_of_head_and_film_morphometry_of_a_flagged_level_only():
    assert reported_grade(0, False, 3) == (0, "level head")  # the head decides whether a body is fractured
    assert reported_grade(1, True, 2) == (2, "morphometry")  # the film's pixels see more loss
    assert reported_grade(2, True, 2) == (2, "morphometry")  # a tie: the film's pixels
    assert reported_grade(3, True, 1) == (3, "level head")  # the morphometry grades low: the head's
    assert reported_grade(2, True, 0) == (2, "level head")  # the morphometry sees no loss: the head's grade
    assert reported_grade(3, True, None) == (3, "level head")  # not measurable
    assert reported_grade(0, True, -1) == (1, "level head")  # flagged is at least grade 1
