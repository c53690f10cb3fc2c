"""The second training cycle's parts: the two-cycle cosine schedule, the sampler that keeps the epoch
length and only lets the second cycle draw its own studies, and the guards."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR

from spine_app.engines.cycles import (
    CycleSampler,
    TwoCycleCosine,
    lr_schedule,
    training_sampler,
)


def _lrs(schedule, optimizer, epochs: int) -> list[float]:
    values = []
    for _ in range(epochs):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return values


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)


def test_without_a_second_cycle_the_schedule_is_the_plain_cosine() -> None:
    assert isinstance(lr_schedule(_optimizer(), 5), CosineAnnealingLR)


def test_the_first_cycle_follows_the_plain_cosine_then_restarts_lower() -> None:
    reference_optimizer = _optimizer()
    reference = _lrs(CosineAnnealingLR(reference_optimizer, T_max=4), reference_optimizer, 4)
    optimizer = _optimizer()
    schedule = lr_schedule(optimizer, 4, 3, 3e-4)
    assert isinstance(schedule, LambdaLR)
    values = _lrs(schedule, optimizer, 7)
    assert values[:4] == pytest.approx(reference)
    assert values[4] == pytest.approx(3e-4) and values[4] > values[3]  # the warm restart
    assert values[5] == pytest.approx(3e-4 * 0.75) and values[6] == pytest.approx(3e-4 * 0.25)


def test_the_schedule_resumes_from_its_state_dict() -> None:
    optimizer = _optimizer()
    schedule = lr_schedule(optimizer, 4, 3, 3e-4)
    _lrs(schedule, optimizer, 5)
    state = schedule.state_dict()
    resumed_optimizer = _optimizer()
    resumed = lr_schedule(resumed_optimizer, 4, 3, 3e-4)
    resumed.load_state_dict(state)
    assert resumed.get_last_lr() == pytest.approx(schedule.get_last_lr())
    assert resumed.lr_lambdas[0].second_scale == pytest.approx(0.3)


def test_two_cycle_cosine_refuses_a_bad_schedule() -> None:
    with pytest.raises(ValueError, match="two-cycle"):
        TwoCycleCosine(0, 3, 0.3)


def test_the_sampler_keeps_the_epoch_length_and_draws_the_second_cycle_studies_only_after_the_first() -> None:
    sampler = CycleSampler(first=6, total=10, first_epochs=2, seed=4)
    drawn = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == len(sampler) == 6 and len(set(indices)) == 6
        drawn.append(indices)
    assert all(sorted(indices) == list(range(6)) for indices in drawn[:2])  # a permutation of the first cycle's
    assert any(max(indices) >= 6 for indices in drawn[2:])  # the second cycle's own studies come in
    assert drawn[0] != drawn[1]  # a new order every epoch
    sampler.set_epoch(3)
    assert list(sampler) == drawn[3]  # seeded by the epoch: a resumed run draws the same


def test_the_training_sampler_picks_one_and_refuses_both() -> None:
    entries = [{"study_id": str(i)} for i in range(8)]
    assert training_sampler(entries, 8, 5) is None  # the loader shuffles
    assert isinstance(training_sampler(entries, 5, 5, cycle2_epochs=2), CycleSampler)
    with pytest.raises(ValueError, match="cannot be combined"):
        training_sampler(entries, 5, 5, cycle2_epochs=2, curvature_oversampling=2.0)
    with pytest.raises(ValueError, match="first-cycle"):
        CycleSampler(first=0, total=4, first_epochs=1)


def test_under_ddp_without_a_second_cycle_each_rank_gets_its_share_of_a_shuffle() -> None:
    entries = [{"study_id": str(i)} for i in range(9)]
    shards = [list(training_sampler(entries, 9, 5, num_replicas=2, rank=r)) for r in range(2)]
    assert [len(s) for s in shards] == [5, 5]  # padded to an even share, as DistributedSampler does
    assert set(shards[0]) | set(shards[1]) == set(range(9))
    assert shards[0] + shards[1] != list(range(9))  # shuffled
    with pytest.raises(ValueError, match="no multi-process"):
        training_sampler(entries, 9, 5, curvature_oversampling=2.0, num_replicas=2, rank=0)
    assert isinstance(training_sampler(entries, 5, 5, cycle2_epochs=2, num_replicas=2, rank=1), CycleSampler)


def test_under_ddp_the_ranks_share_each_epoch_without_overlap() -> None:
    shards = [CycleSampler(first=7, total=11, first_epochs=1, seed=2, num_replicas=3, rank=r) for r in range(3)]
    for epoch in (0, 2):  # a first-cycle and a second-cycle epoch
        for shard in shards:
            shard.set_epoch(epoch)
        drawn = [list(shard) for shard in shards]
        assert [len(d) for d in drawn] == [len(s) for s in shards] == [3, 3, 3]
        whole = shards[0].epoch_indices()
        assert sorted(set(sum(drawn, []))) == sorted(whole)  # every index of the epoch, padding repeats its head
        assert sum(drawn, []).count(whole[0]) == 2 and len(sum(drawn, [])) == 9
    with pytest.raises(ValueError, match="rank 3"):
        CycleSampler(first=4, total=4, first_epochs=1, num_replicas=3, rank=3)
