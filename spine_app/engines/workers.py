"""Data-loader workers that yield the CPU to the network.

On a small CPU (the project's reference machine has 2 cores) the loader workers that augment the
next batch run beside the network's own threads. When a worker takes a core in the middle of a
step, the step's other thread waits for it at every parallel region. Lowering the workers'
scheduling priority (``os.nice``) lets the network's threads run first and the workers fill the
gaps, with the same batches: the work is the same and only its order on the cores changes
(docs/benchmarks.md, "Loader workers at low priority").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from functools import partial

from monai.data.utils import worker_init_fn as monai_worker_init

#: the default increment of a loader worker's niceness (19: the lowest priority)
DEFAULT_NICENESS = 19


def _init_worker(worker_id: int, niceness: int) -> None:
    monai_worker_init(worker_id)  # MONAI's per-worker seeding of the random transforms, unchanged
    if niceness:
        with contextlib.suppress(OSError, AttributeError):  # no os.nice (Windows) or not permitted
            os.nice(niceness)


def loader_worker_init(niceness: int = DEFAULT_NICENESS) -> Callable[[int], None]:
    """A ``worker_init_fn`` for :class:`monai.data.DataLoader`: MONAI's own seeding of the worker's
    random transforms, then the worker's niceness raised by ``niceness`` (0: left as it is).

    Raises:
        ValueError: ``niceness`` is not a whole number in 0..19.
    """
    if isinstance(niceness, bool) or not isinstance(niceness, int) or not 0 <= niceness <= 19:
        raise ValueError(f"loader_niceness must be a whole number in 0..19, got {niceness!r}")
    return partial(_init_worker, niceness=niceness)


__all__ = ["DEFAULT_NICENESS", "loader_worker_init"]
