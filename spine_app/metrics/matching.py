"""Greedy nearest-centre matching of points (e.g. predicted vertebral bodies) to candidates (e.g.
reference levels): one rule for evaluation, morphometry against truth, and result.json."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def nearest_matches(
    points: Sequence[Sequence[float]],
    candidates: Sequence[Sequence[float]],
    reach: Callable[[int, int], float],
    exclusive: bool = True,
) -> list[int | None]:
    """For each point in order, the index of the nearest candidate (not yet taken when ``exclusive``)
    if its distance is within ``reach(point index, candidate index)``, else None."""
    taken: set[int] = set()
    matches: list[int | None] = []
    centres = np.asarray(candidates, dtype=float).reshape(-1, 2)
    for i, point in enumerate(points):
        distances = np.hypot(*(centres - np.asarray(point, dtype=float)).T) if len(centres) else np.zeros(0)
        order = [j for j in np.argsort(distances, kind="stable") if not (exclusive and int(j) in taken)]
        best = int(order[0]) if order else None
        if best is not None and distances[best] <= reach(i, best):
            matches.append(best)
            taken.add(best)
        else:
            matches.append(None)
    return matches


__all__ = ["nearest_matches"]
