"""The optimizer's parameter groups: one group by default, the level head apart when scaled."""

from __future__ import annotations

import pytest
import torch

from spine_app.engines import parameter_groups
from spine_app.networks import SpineMultiTaskNet, StudyModel


@pytest.fixture(scope="module")
def model() -> StudyModel:
    return StudyModel(SpineMultiTaskNet(decoder_channels=(32, 16, 16, 8, 8)))


def test_default_is_one_group_of_every_parameter_that_learns(model: StudyModel) -> None:
    """Every parameter but the grade head's, which only the level refit fits (frozen in training)."""
    (group,) = parameter_groups(model, 1e-3)
    grade_ids = {id(p) for p in model.net.grade_head.parameters()}
    assert grade_ids and group["lr"] == 1e-3
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters() if id(p) not in grade_ids]


def test_scaled_level_head_is_its_own_group(model: StudyModel) -> None:
    shared, head = parameter_groups(model, 1e-3, 3.0)
    head_ids = {id(p) for p in model.net.level_head.parameters()}
    assert {id(p) for p in head["params"]} == head_ids and head["lr"] == pytest.approx(3e-3)
    assert not head_ids & {id(p) for p in shared["params"]} and shared["lr"] == 1e-3
    trained = [p for p in model.parameters() if p.requires_grad]
    assert len(shared["params"]) + len(head["params"]) == len(trained) < len(list(model.parameters()))
    # the groups drive a real optimizer and a schedule scales both alike
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-3, 3.0), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    optimizer.step()
    schedule.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[1] == pytest.approx(3 * lrs[0]) and lrs[0] < 1e-3


@pytest.mark.parametrize("scale", [0, -1.0, float("nan")])
def test_bad_scale_is_refused(model: StudyModel, scale: float) -> None:
    with pytest.raises(ValueError, match="level_lr_scale"):
        parameter_groups(model, 1e-3, scale)
