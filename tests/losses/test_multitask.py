"""Masked multi-task loss: unknown channels get exactly zero gradient; known ones do not."""

from __future__ import annotations

import torch

from spine_app.losses import MultiTaskLoss, masked_dice_bce


def test_missing_channel_receives_zero_gradient() -> None:
    logits = torch.randn(2, 8, 16, 16, requires_grad=True)
    target = (torch.rand(2, 8, 16, 16) > 0.5).float()
    available = torch.ones(2, 8)
    available[0, 3] = 0  # study 0: channel 3 not annotated
    available[:, 5] = 0  # channel 5 missing everywhere
    dice, bce = masked_dice_bce(logits, target, available)
    (dice + bce).backward()
    assert torch.all(logits.grad[0, 3] == 0) and torch.all(logits.grad[:, 5] == 0)
    assert logits.grad[1, 3].abs().sum() > 0 and logits.grad[0, 2].abs().sum() > 0


def test_unknown_is_not_empty() -> None:
    """A wrong prediction on an unknown channel costs nothing; on an empty known channel it does."""
    logits = torch.full((1, 1, 8, 8), 5.0)  # confident foreground everywhere
    target = torch.zeros(1, 1, 8, 8)
    unknown = masked_dice_bce(logits, target, torch.zeros(1, 1))
    empty = masked_dice_bce(logits, target, torch.ones(1, 1))
    assert float(unknown[0]) == 0.0 and float(unknown[1]) == 0.0
    assert float(empty[0]) > 0.9 and float(empty[1]) > 4.0


def test_dice_matches_a_hand_computed_case() -> None:
    logits = torch.tensor([[[[20.0, 20.0], [-20.0, -20.0]]]])  # prediction = top row
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    dice, _ = masked_dice_bce(logits, target, torch.ones(1, 1), smooth=0.0)
    assert abs(float(dice) - (1 - 2 * 1 / 3)) < 1e-4


def test_multitask_loss_uses_both_views_and_the_label() -> None:
    loss = MultiTaskLoss()
    pred = {
        "seg_ap": torch.zeros(2, 8, 8, 8, requires_grad=True),
        "seg_lat": torch.zeros(2, 8, 8, 8, requires_grad=True),
        "cls": torch.zeros(2, requires_grad=True),
        "cls_ap": torch.zeros(2),
        "cls_lat": torch.zeros(2),
    }
    avail_ap = torch.zeros(2, 8)
    avail_ap[:, :3] = 1
    avail_lat = torch.zeros(2, 8)
    avail_lat[:, 3:] = 1
    target = {
        "seg_ap": torch.zeros(2, 8, 8, 8),
        "seg_lat": torch.ones(2, 8, 8, 8),
        "avail_ap": avail_ap,
        "avail_lat": avail_lat,
        "label": torch.tensor([0.0, 1.0]),
        "present": torch.ones(2, 2),
    }
    total = loss(pred, target)
    total.backward()
    assert pred["seg_ap"].grad[:, 3:].abs().sum() == 0 and pred["seg_lat"].grad[:, :3].abs().sum() == 0
    assert pred["cls"].grad.abs().sum() > 0 and set(loss.last) == {"seg", "cls"}


def test_line_cldice_term_respects_availability() -> None:
    loss = MultiTaskLoss(line_cldice_weight=1.0)
    seg_lat = torch.zeros(2, 8, 16, 16, requires_grad=True)
    pred = {
        "seg_ap": torch.zeros(2, 8, 16, 16),
        "seg_lat": seg_lat,
        "cls": torch.zeros(2),
        "cls_ap": torch.zeros(2),
        "cls_lat": torch.zeros(2),
    }
    line = torch.zeros(2, 8, 16, 16)
    line[:, 6:, 2:14, 8] = 1.0
    avail_lat = torch.zeros(2, 8)
    avail_lat[0, 6:] = 1  # only study 0 has annotated lines
    target = {
        "seg_ap": torch.zeros(2, 8, 16, 16),
        "seg_lat": line,
        "avail_ap": torch.zeros(2, 8),
        "avail_lat": avail_lat,
        "label": torch.zeros(2),
        "present": torch.ones(2, 2),
    }
    loss(pred, target).backward()
    assert seg_lat.grad[1].abs().sum() == 0 and seg_lat.grad[0, 6:].abs().sum() > 0
    assert float(MultiTaskLoss(line_cldice_weight=1.0)._line_cldice(pred, target)) > 0


def test_unknown_class_gets_no_classification_gradient() -> None:
    """A study labelled -1 (class unknown: masks only, e.g. from MONAI Label) trains no classifier term."""
    loss = MultiTaskLoss()
    pred = {
        "seg_ap": torch.zeros(2, 8, 8, 8),
        "seg_lat": torch.zeros(2, 8, 8, 8),
        "cls": torch.zeros(2, requires_grad=True),
        "cls_ap": torch.zeros(2, requires_grad=True),
        "cls_lat": torch.zeros(2, requires_grad=True),
    }
    target = {
        "seg_ap": torch.zeros(2, 8, 8, 8),
        "seg_lat": torch.zeros(2, 8, 8, 8),
        "avail_ap": torch.ones(2, 8),
        "avail_lat": torch.ones(2, 8),
        "label": torch.tensor([-1.0, 1.0]),
        "present": torch.ones(2, 2),
    }
    loss(pred, target).backward()
    for key in ("cls", "cls_ap", "cls_lat"):
        assert pred[key].grad[0] == 0 and pred[key].grad[1] < 0  # only the Damaged study pulls its logit up
    loss(pred, {**target, "label": torch.tensor([-1.0, -1.0])})
    assert loss.last["cls"] == 0.0
