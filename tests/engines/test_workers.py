"""Loader workers at low priority: the same batches, the workers niced."""

from __future__ import annotations

import os

import numpy as np
import pytest
from monai.data import DataLoader, Dataset
from monai.transforms import Randomizable, Transform
from monai.utils import set_determinism

from spine_app.engines import loader_worker_init


class _Draw(Randomizable, Transform):
    """Each item: a number drawn from the transform's own random state, and the worker's niceness."""

    def randomize(self, data: object = None) -> None:
        self.value = self.R.uniform()

    def __call__(self, data: int) -> np.ndarray:
        self.randomize()
        return np.array([data, self.value, os.nice(0)])


def _collect(niceness: int | None) -> np.ndarray:
    kwargs = {} if niceness is None else {"worker_init_fn": loader_worker_init(niceness)}
    set_determinism(seed=0)  # the workers' base seed comes from torch's global generator
    loader = DataLoader(Dataset(list(range(8)), transform=_Draw()), batch_size=2, num_workers=2, **kwargs)
    return np.concatenate([np.asarray(batch) for batch in loader])


def test_workers_are_niced_and_draw_what_monai_workers_draw() -> None:
    parent = os.nice(0)
    plain = _collect(None)  # MONAI's own worker_init_fn
    niced = _collect(5)
    assert (plain[:, 2] == parent).all()
    assert (niced[:, 2] == min(19, parent + 5)).all()
    np.testing.assert_array_equal(niced[:, :2], plain[:, :2])  # the same items and the same random draws
    np.testing.assert_array_equal(_collect(0), plain)


@pytest.mark.parametrize("bad", [-1, 20, 2.5, True, "19"])
def test_bad_niceness_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="loader_niceness"):
        loader_worker_init(bad)  # type: ignore[arg-type]
