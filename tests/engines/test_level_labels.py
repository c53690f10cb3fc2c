"""One name per body: a level's ``label`` in result.json, the overlay mark and summary.csv is the
morphometry's body number on the film, even where the level head counts the bodies differently."""

from __future__ import annotations

import torch

from spine_app.data.levels import MAX_LEVELS
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
        rows = [40.0 + 30.0 * i for i in range(18)]  # a whole-spine film: 18 measured bodies
        logits = torch.full((1, n_levels, 3), -6.0)
        pred = {
            "level_valid": torch.ones(1, n_levels),
            "level_logits": logits,
            "level_centre": torch.tensor([[[r, 100.0] for r in rows[:n_levels]]]),
            "cls_levels": torch.tensor([-6.0]),
        }
        geom = FilmGeometry(rows=700, cols=300, scale=1.0, top=0.0, left=0.0).to_tensor()
        return level_summary(pred, 0, geom, [body(i, r) for i, r in enumerate(rows)], threshold=0.5)

    assert block(MAX_LEVELS)["unscored"] == ["#17", "#18"]
    assert block(MAX_LEVELS - 1)["unscored"] == []  # under the cap every body the head found is scored
