"""The level head refitted on a fixed network: the body set's batching, learning from the collected
inputs only, determinism, and the run's model rewritten with the trunk untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spine_app.engines.level_refit import (
    REFIT_RECORD,
    LevelRoiSet,
    RefitSettings,
    collect_level_rois,
    refit_level_head,
    refit_run_level_head,
)
from spine_app.losses import MultiTaskLoss
from spine_app.networks.levels import LevelHead, LevelRois


def roi_set(films: int = 24, bodies: int = 5, seed: int = 0) -> LevelRoiSet:
    """Films of ``bodies`` bodies; in every second film one body is fractured (grade 2) and only that
    body's patch carries a bright band, so the grade can be learnt from the patches alone."""
    g = torch.Generator().manual_seed(seed)
    n = films * bodies
    patches = torch.rand(n, 4, 16, 16, generator=g) * 0.2
    grade = torch.zeros(n, dtype=torch.long)
    label = torch.zeros(films)
    for film in range(0, films, 2):
        body = film * bodies + film % bodies
        grade[body] = 2
        patches[body, 0, 6:10] += 1.0
        label[film] = 1.0
    return LevelRoiSet(
        rois=LevelRois(patches.to(torch.bfloat16), torch.rand(n, 8, generator=g)),
        grade=grade,
        start=torch.arange(films) * bodies,
        count=torch.full((films,), bodies),
        label=label,
        has_lat=torch.ones(films),
    )


def test_a_batch_puts_each_body_at_its_film_and_position() -> None:
    rois = LevelRoiSet(
        rois=LevelRois(torch.arange(6.0).reshape(6, 1, 1, 1), torch.arange(6.0).reshape(6, 1)),
        grade=torch.tensor([0, 1, 0, 0, 3, -1]),
        start=torch.tensor([0, 2, 5]),
        count=torch.tensor([2, 3, 1]),
        label=torch.tensor([1.0, 1.0, -1.0]),
        has_lat=torch.ones(3),
    )
    batch, targets, flat = rois.batch(torch.tensor([1, 0]))
    assert batch.context.reshape(-1).tolist() == [2.0, 3.0, 4.0, 0.0, 1.0]  # film 1's bodies, then film 0's
    assert targets["level_valid"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert targets["level_grade"].tolist() == [[0, 0, 3], [0, 1, -1]]  # padding: grade unknown
    assert flat.tolist() == [0, 1, 2, 3, 4]


def test_the_refit_learns_the_grades_from_the_collected_inputs() -> None:
    rois = roi_set()
    head = LevelHead(4, 8, roi=16, width=16)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    settings = RefitSettings(epochs=30, passes=1, learning_rate=3e-3, seed=0, studies_per_step=4)
    new, losses = refit_level_head(head, rois, MultiTaskLoss(), settings)
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        logits = new.score(LevelRois(rois.rois.patches.float(), rois.rois.context))
    fractured = rois.grade > 0
    assert logits[fractured, 0].min() > logits[~fractured, 0].max()  # every fractured body above every normal one
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())  # the given head is not trained
    assert not new.training


def test_the_refit_is_deterministic_and_starts_from_a_fresh_head() -> None:
    rois = roi_set(films=8)
    settings = RefitSettings(epochs=2, passes=1, seed=5, studies_per_step=4)
    first, _ = refit_level_head(LevelHead(4, 8, roi=16, width=16), rois, MultiTaskLoss(), settings)
    other = LevelHead(4, 8, roi=16, width=16)
    torch.nn.init.normal_(other.out[-1].weight)  # a different trained head in: the same refit out
    second, _ = refit_level_head(other, rois, MultiTaskLoss(), settings)
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(
    "bad", [{"passes": 0}, {"epochs": -1}, {"learning_rate": 0.0}, {"box_jitter": -0.5}, {"exposure_region_prob": 1.5}]
)
def test_settings_refuse_what_cannot_run(bad: dict) -> None:
    with pytest.raises(ValueError, match="level refit"):
        RefitSettings(**bad)


def test_box_jitter_without_level_boxes_in_the_transform_is_refused() -> None:
    """A box jitter other than the transform's own needs a LevelBoxesd to scale: a dataset without
    one is named rather than refitted on boxes that silently ignore the setting."""
    from monai.data import Dataset

    from spine_app.networks import SpineMultiTaskNet
    from spine_app.networks.precision import FP32

    with pytest.raises(ValueError, match="no LevelBoxesd"):
        collect_level_rois(SpineMultiTaskNet(), Dataset([], transform=lambda x: x), FP32, 1, box_jitter=0.0)


def test_zero_epochs_leave_the_run_alone(tmp_path: Path) -> None:
    assert refit_run_level_head(tmp_path, torch.nn.Linear(1, 1), [], None, None, {"epochs": 0}) is None
    assert not (tmp_path / REFIT_RECORD).exists()


def test_a_run_without_a_best_model_is_named(tmp_path: Path) -> None:
    from spine_app.networks import SpineMultiTaskNet

    with pytest.raises(FileNotFoundError, match="model.pt"):
        refit_run_level_head(tmp_path, SpineMultiTaskNet(), [], None, None, RefitSettings(epochs=1))


def test_a_refit_with_no_head_to_fit_leaves_the_run_alone(tmp_path: Path) -> None:
    """Keeping the level head on a network without a grade head leaves nothing to fit: no model is
    read or written (the run folder may not even hold one)."""
    from spine_app.networks import SpineMultiTaskNet

    net = SpineMultiTaskNet(decoder_channels=(32, 16, 16, 8, 8), grade_head=False)
    assert refit_run_level_head(tmp_path, net, [], None, None, RefitSettings(epochs=1, level_head=False)) is None
    assert not (tmp_path / REFIT_RECORD).exists()
    with pytest.raises(ValueError, match="jittered boxes, the reference boxes or both"):
        collect_level_rois(net, [], None, 1, jittered=False, reference=False)
