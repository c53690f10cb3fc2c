"""The optimizer's parameter groups: the level head may learn at its own rate (``level_lr_scale``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from spine_app.engines.inferer import unwrap_network


def parameter_groups(network: nn.Module, learning_rate: float, level_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` over a SpineMultiTaskNet (bare, in a StudyModel or DDP).

    With ``level_lr_scale`` 1 (or a network without a level head) this is one group at
    ``learning_rate`` over the parameters that learn (all of ``network.parameters()`` but the grade
    head's, frozen until the level refit fits it). Otherwise the level head's own layers form
    a second group at ``learning_rate * level_lr_scale``: the head learns last (it reads the masks the
    rest of the network draws), and a schedule such as cosine annealing scales both groups alike.

    Raises:
        ValueError: ``level_lr_scale`` is not a positive number.
    """
    scale = float(level_lr_scale)
    if not scale > 0:
        raise ValueError(f"level_lr_scale must be a positive number, got {level_lr_scale!r}")
    net = unwrap_network(network)
    head = getattr(net, "level_head", None)
    trained = [p for p in network.parameters() if p.requires_grad]  # not the frozen grade head
    if scale == 1.0 or head is None:
        return [{"params": trained, "lr": float(learning_rate)}]
    head_ids = {id(p) for p in head.parameters()}
    shared = [p for p in trained if id(p) not in head_ids]
    own = list(head.parameters())
    return [
        {"params": shared, "lr": float(learning_rate), "name": "shared"},
        {"params": own, "lr": float(learning_rate) * scale, "name": "level_head"},
    ]


__all__ = ["parameter_groups"]
