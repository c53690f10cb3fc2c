"""A second training cycle in the same run: after the first ``epochs``, the cosine learning rate restarts
at a lower peak and the epochs also draw studies that only this cycle sees (e.g. more framed films).

It is the shape of the shipped 0.7.0 weights' recipe (a main job, then a fine-tune on 240 framed films
at learning rate 3e-4, two runs) in one run: one command, one run folder, one resume path. Every epoch has the first
cycle's number of studies, so Ignite's epoch length stays fixed; a second-cycle epoch draws that many
studies without replacement from all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from ignite.engine import Engine, Events
from monai.data import DistributedSampler
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler
from torch.utils.data import Sampler

from spine_app.data.sampling import curvature_sampler


class TwoCycleCosine:
    """Learning-rate factor of epoch ``e`` (0-based): cosine from 1 towards 0 over ``first_epochs``
    (as ``CosineAnnealingLR(T_max=first_epochs)``), then cosine from ``second_scale`` towards 0 over
    ``second_epochs``. A plain object, so ``LambdaLR.state_dict`` stores it."""

    def __init__(self, first_epochs: int, second_epochs: int, second_scale: float) -> None:
        if first_epochs < 1 or second_epochs < 0 or second_scale <= 0:
            raise ValueError(
                f"two-cycle schedule: need epochs >= 1, cycle2_epochs >= 0 and a positive cycle-2 learning rate, got "
                f"{first_epochs}, {second_epochs}, scale {second_scale}"
            )
        self.first_epochs, self.second_epochs, self.second_scale = first_epochs, second_epochs, second_scale

    def __call__(self, epoch: int) -> float:
        if epoch < self.first_epochs:
            return 0.5 * (1.0 + math.cos(math.pi * epoch / self.first_epochs))
        step = min(epoch - self.first_epochs, self.second_epochs)
        return self.second_scale * 0.5 * (1.0 + math.cos(math.pi * step / max(1, self.second_epochs)))


def lr_schedule(
    optimizer: Optimizer, epochs: int, cycle2_epochs: int = 0, cycle2_learning_rate: float | None = None
) -> LRScheduler:
    """The run's per-epoch schedule: ``CosineAnnealingLR(T_max=epochs)`` alone (as every run before
    bundle 0.7.2, so their checkpoints resume), or with ``cycle2_epochs`` a warm restart at
    ``cycle2_learning_rate`` (:class:`TwoCycleCosine`; the factor scales each parameter group's own
    learning rate)."""
    if not cycle2_epochs:
        return CosineAnnealingLR(optimizer, T_max=epochs)
    base = optimizer.defaults["lr"]
    scale = float(cycle2_learning_rate if cycle2_learning_rate is not None else base) / base
    return LambdaLR(optimizer, TwoCycleCosine(int(epochs), int(cycle2_epochs), scale))


class CycleSampler(Sampler[int]):
    """Indices of one epoch: ``first`` of them each time. In the first ``first_epochs`` epochs a
    permutation of ``range(first)`` (the first cycle's studies, which come first in the dataset); after
    them ``first`` indices drawn without replacement from ``range(total)``. Seeded by ``seed`` and the
    epoch (:meth:`set_epoch`, called by :class:`SamplerEpoch`), so a resumed run draws the same.

    Across ``num_replicas`` processes (DDP) every rank draws the same epoch list, pads it by repeating
    its head to a multiple of ``num_replicas`` (as DistributedSampler does) and keeps every
    ``num_replicas``-th index from ``rank``, so the ranks share each epoch without overlap."""

    def __init__(
        self, first: int, total: int, first_epochs: int, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if not 0 < first <= total:
            raise ValueError(f"cycle sampler: need 0 < first-cycle studies <= all studies, got {first} of {total}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"cycle sampler: rank {rank} is not one of {num_replicas} processes")
        self.first, self.total, self.first_epochs, self.seed = first, total, first_epochs, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def in_second_cycle(self) -> bool:
        return self.epoch >= self.first_epochs

    def epoch_indices(self) -> list[int]:
        """This epoch's indices across all ranks (before sharding)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        pool = self.total if self.in_second_cycle() else self.first
        return torch.randperm(pool, generator=generator)[: self.first].tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        indices += indices[: len(self) * self.num_replicas - len(indices)]
        return iter(indices[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return math.ceil(self.first / self.num_replicas)


class SamplerEpoch:
    """Trainer handler: tells a :class:`CycleSampler` the epoch (0-based) when each epoch starts,
    before Ignite asks the loader for that epoch's iterator (as MONAI's workflow does for its
    DistributedSampler, which this leaves alone, like any other sampler or none)."""

    def __init__(self, sampler: Sampler | None) -> None:
        self.sampler = sampler

    def attach(self, engine: Engine) -> None:
        if isinstance(self.sampler, CycleSampler):
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.sampler.set_epoch(engine.state.epoch - 1)


def training_sampler(
    entries: list[dict],
    first: int,
    epochs: int,
    cycle2_epochs: int = 0,
    curvature_oversampling: float = 0.0,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
) -> Sampler | None:
    """The training loader's sampler: a :class:`CycleSampler` when the run has a second cycle (its
    ``first`` entries are the first cycle's), else the curvature-weighted sampler where
    ``curvature_oversampling`` > 0, else None (the loader shuffles). The two do not combine yet.

    Under DDP (``num_replicas`` > 1) every process gets its ``rank``'s share of each epoch: the
    cycle sampler's shard, or MONAI's shuffling :class:`monai.data.DistributedSampler` (seed 0, padded
    to an even share); the curvature-weighted sampler has no sharded form, so it is refused there."""
    if cycle2_epochs and curvature_oversampling:
        raise ValueError("cycle2_epochs and curvature_oversampling cannot be combined; set one of them to 0")
    if cycle2_epochs:
        return CycleSampler(first, len(entries), int(epochs), seed, num_replicas, rank)
    if num_replicas > 1:
        if curvature_oversampling:
            raise ValueError("curvature_oversampling has no multi-process (DDP) form; set it to 0 under torchrun")
        return DistributedSampler(entries, even_divisible=True, num_replicas=num_replicas, rank=rank, shuffle=True)
    return curvature_sampler(entries, curvature_oversampling)


__all__ = ["CycleSampler", "SamplerEpoch", "TwoCycleCosine", "lr_schedule", "training_sampler"]
