"""Losses: per-channel masked Dice + BCE and the multi-task study loss."""

from spine_app.losses.multitask import MultiTaskLoss, masked_dice_bce

__all__ = ["MultiTaskLoss", "masked_dice_bce"]
