"""Seeded, class-stratified train/validation/test split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS: tuple[str, str, str] = ("training", "validation", "test")


def _allocate(count: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of ``count`` items; validation and test get one each when count >= 3."""
    raw = np.asarray(fractions, dtype=float) * count
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - sizes), kind="stable")[: count - sizes.sum()]:
        sizes[i] += 1
    if count >= 3:
        for i in (1, 2):
            if fractions[i] > 0 and sizes[i] == 0:
                sizes[i] += 1
                sizes[int(np.argmax(sizes))] -= 1
    return sizes.tolist()


def stratified_split(
    study_ids: Sequence[str], labels: Sequence[int], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[str]]:
    """Split ids into training/validation/test, each class split separately with the given fractions.

    The result depends only on the ids, labels, fractions and seed (ids are sorted first), so the same
    dataset always gives the same split.
    """
    if len(study_ids) != len(labels):
        raise ValueError("study_ids and labels differ in length")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for label in sorted(set(labels)):
        ids = sorted(i for i, lab in zip(study_ids, labels) if lab == label)
        ids = [ids[k] for k in rng.permutation(len(ids))]
        start = 0
        for name, size in zip(SPLITS, _allocate(len(ids), fractions)):
            out[name] += ids[start : start + size]
            start += size
    return {name: sorted(ids) for name, ids in out.items()}
