"""Ignite handlers of the bundle that MONAI does not provide."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch.distributed as dist
from monai.handlers import CheckpointLoader, CheckpointSaver

logger = logging.getLogger(__name__)


class EpochCheckpoint:
    """Save ``objects`` plus the trainer state every epoch, and resume from the newest save.

    Files are ``ckpt_dir/checkpoint_epoch=N.pt`` (only the newest is kept). When ``resume`` is true and
    one exists, training continues after its epoch: the same command picks up after an interruption.
    The trainer is added at ``attach`` time, which keeps the config free of a circular reference.
    Under DDP every rank resumes and only rank 0 writes.

    Args:
        ckpt_dir: folder of the checkpoints.
        objects: name -> object with a state_dict (network, optimizer, LR scheduler).
        resume: load the newest checkpoint before training starts.
    """

    def __init__(self, ckpt_dir: str, objects: dict[str, Any], resume: bool | str = True) -> None:
        self.ckpt_dir, self.objects = Path(ckpt_dir), dict(objects)
        # a command-line "--resume false" arrives as the string "false" (fire only parses False)
        self.resume = resume if isinstance(resume, bool) else str(resume).strip().lower() in ("1", "true", "yes")

    def latest(self) -> Path | None:
        found = []
        for path in self.ckpt_dir.glob("checkpoint_epoch=*.pt"):
            match = re.search(r"epoch=(\d+)", path.name)
            if match:
                found.append((int(match.group(1)), path))
        return max(found)[1] if found else None

    def attach(self, engine: Any) -> None:
        objects = {**self.objects, "trainer": engine}
        path = self.latest() if self.resume else None
        if path is not None:
            logger.warning("resuming from %s", path)
            CheckpointLoader(load_path=str(path), load_dict=objects, map_location="cpu").attach(engine)
        if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:  # one writer under DDP
            CheckpointSaver(save_dir=str(self.ckpt_dir), save_dict=objects, save_interval=1, n_saved=1).attach(engine)


def key_metric_score(engine: Any) -> float:
    """The evaluator's key metric value (higher is better), for early stopping."""
    return float(engine.state.metrics[engine.state.key_metric_name])
