"""One name per body: a level's ``label`` in result.json, the overlay mark and summary.csv is the
morphometry's body number on the film, even where the level head counts the bodies differently."""

from __future__ import annotations

import dataclasses

import torch

from spine_app.data.levels import INFERENCE_MAX_LEVELS
from spine_app.data.study_transforms import FilmGeometry
from spine_app.engines.writer import _suspect_marks, level_summary
from spine_app.metrics.level_suppression import NO_SUPPRESSION, NeighbourSuppression
from spine_app.morphometry.measure import VertebralBody


def body(index: int, row: float) -> VertebralBody:
    return VertebralBody(
        index=index,
        level=None,
        centroid_px=(row, 100.0),
        area_px=1600,  # a 40-px body: a level counts as on it within 0.6 * 40 = 24 px
        heights_mm={"anterior": 24.0, "middle": 24.0, "posterior": 24.0},
        ratios={"anterior_posterior": 1.0},
        expected_posterior_mm=24.0,
        reduction=0.0,
        grade=0,
        deformity="none",
    )


def summary(level_rows: list[float], fracture: list[float], suppression: NeighbourSuppression = NO_SUPPRESSION) -> dict:
    """level_summary of one study whose levels sit at ``level_rows`` (film = canvas here)."""
    n = len(level_rows)
    logits = torch.full((1, n, 3), -6.0)
    logits[0, :, 0] = torch.logit(torch.tensor(fracture))
    pred = {
        "level_valid": torch.ones(1, n),
        "level_logits": logits,
        "level_centre": torch.tensor([[[r, 100.0] for r in level_rows]]),
        "cls_levels": torch.tensor([max(fracture)]).logit(),
    }
    geom = FilmGeometry(rows=600, cols=300, scale=1.0, top=0.0, left=0.0).to_tensor()
    bodies = [body(i, 50.0 + 60.0 * i) for i in range(5)]  # film bodies #1-#5 at rows 50, 110, ..., 290
    return level_summary(pred, 0, geom, bodies, threshold=0.5, suppression=suppression)


def test_merged_bodies_keep_the_films_numbering() -> None:
    # the canvas merged film bodies #2 and #3 into one level (centre nearer #3); #4 is fractured
    block = summary([50.0, 150.0, 230.0, 290.0], [0.05, 0.1, 0.9, 0.1])
    levels = block["levels"]
    assert [lv["number"] for lv in levels] == [1, 2, 3, 4]
    assert [lv["label"] for lv in levels] == ["#1", "#3", "#4", "#5"]
    assert [lv["morphometry"]["body"] for lv in levels] == [1, 3, 4, 5]
    assert block["drives_decision"] == [3]
    ((centre, text),) = _suspect_marks(block)
    assert text.startswith("#4 P(fracture) 0.90") and centre == (230.0, 100.0)


def test_a_level_on_no_measured_body_is_named_by_its_count() -> None:
    block = summary([50.0, 500.0], [0.9, 0.8])  # row 500: far below every measured body
    assert [lv["label"] for lv in block["levels"]] == ["#1", "level 2"]
    assert block["levels"][1]["morphometry"] is None
    assert [text.split(" P(")[0] for _, text in _suspect_marks(block)] == ["#1", "level 2"]


def test_result_json_without_labels_still_marks_its_levels() -> None:
    old = {"levels": [{"number": 3, "name": None, "centre_px": [1.0, 2.0], "fracture_probability": 0.7, "grade": 1}]}
    old["drives_decision"] = [3]
    assert _suspect_marks(old)[0][1] == "level 3 P(fracture) 0.70 G1"


def test_suppressed_probabilities_flag_and_the_heads_own_are_kept() -> None:
    # the fracture at #4 bleeds onto #3 (0.6): the neighbour suppression keeps #4 and drops #3
    suppression = NeighbourSuppression(0.5)
    raw, suppressed = (
        summary([50.0, 110.0, 170.0, 230.0], [0.05, 0.1, 0.6, 0.95], s) for s in (NO_SUPPRESSION, suppression)
    )
    assert [lv["flagged"] for lv in raw["levels"]] == [False, False, True, True]
    assert [lv["flagged"] for lv in suppressed["levels"]] == [False, False, False, True]
    assert [lv["head_probability"] for lv in suppressed["levels"]] == [0.05, 0.1, 0.6, 0.95]
    assert suppressed["levels"][2]["fracture_probability"] < 0.5 and suppressed["levels"][2]["grade"] == 0
    assert suppressed["drives_decision"] == [4] and suppressed["neighbour_suppression"] == 0.5


def test_bodies_below_the_level_heads_cap_are_named_as_unscored() -> None:
    def block(n_levels: int) -> dict:
        rows = [40.0 + 30.0 * i for i in range(INFERENCE_MAX_LEVELS + 2)]  # more bodies than the head scores
        logits = torch.full((1, n_levels, 3), -6.0)
        pred = {
            "level_valid": torch.ones(1, n_levels),
            "level_logits": logits,
            "level_centre": torch.tensor([[[r, 100.0] for r in rows[:n_levels]]]),
            "cls_levels": torch.tensor([-6.0]),
        }
        geom = FilmGeometry(rows=40 + 30 * len(rows), cols=300, scale=1.0, top=0.0, left=0.0).to_tensor()
        return level_summary(pred, 0, geom, [body(i, r) for i, r in enumerate(rows)], threshold=0.5)

    last = INFERENCE_MAX_LEVELS
    assert block(INFERENCE_MAX_LEVELS)["unscored"] == [f"#{last + 1}", f"#{last + 2}"]
    assert block(INFERENCE_MAX_LEVELS - 1)["unscored"] == []  # under the cap every body the head found is scored


def decide(damaged_threshold: float, follow: bool = True) -> dict:
    """result.json's decision and levels of one study whose level head scores three bodies 0.05 / 0.7 /
    0.1 (study probability 0.7), through the writer's own decision step."""
    from spine_app.channels import geom_key
    from spine_app.engines.writer import StudyPredictionWriter

    rows, fracture = [50.0, 110.0, 170.0], [0.05, 0.7, 0.1]
    logits = torch.full((1, 3, 3), -6.0)
    logits[0, :, 0] = torch.logit(torch.tensor(fracture))
    logits[0, 1, 1] = 2.0  # P(grade >= 2) high: the head would grade it 2
    pred = {
        "level_valid": torch.ones(1, 3),
        "level_logits": logits,
        "level_centre": torch.tensor([[[r, 100.0] for r in rows]]),
        "cls_levels": torch.tensor([0.7]).logit(),
    }
    geom = FilmGeometry(rows=600, cols=300, scale=1.0, top=0.0, left=0.0).to_tensor()
    target = {"present": torch.ones(1, 2), geom_key("lat"): geom[None]}
    writer = StudyPredictionWriter(
        "unused",
        damaged_threshold=damaged_threshold,
        decision="levels",
        level_threshold=0.5,
        levels_follow_decision=follow,
    )
    result = {"morphometry_probability": 0.0, "warnings": []}
    writer._decide(result, 0.5, pred, target, 0, [body(i, r) for i, r in enumerate(rows)])
    return result


def test_a_study_decided_normal_reports_no_flagged_or_graded_level() -> None:
    damaged, normal = decide(0.5), decide(0.9)
    assert damaged["label"] == "Damaged" and normal["label"] == "Normal"
    level = damaged["levels"]["levels"][1]
    assert level["flagged"] and level["grade"] == 2 and not level["held_back"]
    held = normal["levels"]["levels"][1]
    assert not held["flagged"] and held["grade"] == 0 and held["grade_head"] == 0 and held["held_back"]
    assert held["grade_source"].startswith("held back")
    # what the head read stays: the same probabilities and grade distribution as in the Damaged study
    for key in ("fracture_probability", "head_probability", "grade_probabilities", "severity_probabilities"):
        assert held[key] == level[key]
    assert normal["levels"]["drives_decision"] == [2] and normal["levels"]["follows_decision"] is True
    assert not any(lv["held_back"] for i, lv in enumerate(normal["levels"]["levels"]) if i != 1)
    assert [text.split(" P(")[0] for _, text in _suspect_marks(normal["levels"])] == ["#2"]


def test_levels_can_be_graded_whatever_the_label() -> None:
    result = decide(0.9, follow=False)
    level = result["levels"]["levels"][1]
    assert result["label"] == "Normal" and level["flagged"] and level["grade"] == 2 and not level["held_back"]
    assert result["levels"]["follows_decision"] is False


def test_the_sr_grades_a_body_as_its_level_is_reported() -> None:
    """report.dcm's Genant grade of a body is result.json's reported grade of its level (0 when not
    flagged or held back), the morphometry's only where the level head did not score the body."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    from spine_app.engines.dicom_out import _code, _vertebra_group

    lat = Dataset()
    lat.SOPClassUID, lat.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", generate_uid()
    graded_by_masks = dataclasses.replace(body(0, 50.0), grade=2, deformity="wedge")
    held = {"fracture_probability": 0.7, "grade": 0, "held_back": True}

    def sr_grade(level: dict | None) -> str:
        group = _vertebra_group(graded_by_masks, lat, level, _code("mm", "UCUM", "mm"), _code("1", "UCUM", "1"))
        return next(
            item.ConceptCodeSequence[0].CodeValue
            for item in group[0].ContentSequence
            if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == "GENANT"
        )

    assert sr_grade(held) == "G0"
    assert sr_grade({"fracture_probability": 0.9, "grade": 3}) == "G3"
    assert sr_grade(None) == "G2"


def test_summary_lists_the_findings_of_the_levels() -> None:
    """summary.csv's graded levels are the flagged levels' reported grades: none in a study labelled
    Normal; the morphometry's grades only where the level head scored nothing."""
    from spine_app.engines.writer import summary_row

    damaged, normal = summary_row(decide(0.5), "d", "written"), summary_row(decide(0.9), "n", "written")
    assert (damaged["max_genant_grade"], damaged["graded_levels"]) == (2, "#2: grade 2")
    assert (normal["max_genant_grade"], normal["graded_levels"]) == (0, "")
    morphometry = {"max_grade": 1, "fractured_levels": ["#4: grade 1 wedge"], "vertebrae": [{}] * 5}
    alone = summary_row({"morphometry": morphometry}, "m", "written")
    assert (alone["max_genant_grade"], alone["graded_levels"], alone["vertebrae"]) == (1, "#4: grade 1 wedge", 5)


def test_a_body_under_two_levels_is_reported_by_the_higher_grade() -> None:
    """The canvas merged two film bodies' levels onto body #3: the overlay and the SR both take the
    higher of the two grades for it (metrics.levels.level_per_body)."""
    from spine_app.engines.writer import _reported_grades
    from spine_app.metrics.levels import level_per_body

    def level(number: int, body_number: int | None, grade: int) -> dict:
        return {"number": number, "grade": grade, "morphometry": None if body_number is None else {"body": body_number}}

    levels = [level(1, 1, 0), level(2, 3, 2), level(3, 3, 0), level(4, None, 3)]
    assert {body: lv["number"] for body, lv in level_per_body(levels).items()} == {1: 1, 3: 2}
    assert _reported_grades({"levels": levels}) == {0: 0, 2: 2}
