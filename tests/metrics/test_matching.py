"""Greedy nearest-centre matching: nearest first, each candidate once, only within reach."""

from __future__ import annotations

from spine_app.metrics.matching import nearest_matches


def test_each_point_takes_its_nearest_free_candidate_within_reach() -> None:
    points = [(0.0, 0.0), (0.5, 0.0), (10.0, 10.0)]
    candidates = [(0.2, 0.0), (1.0, 0.0), (50.0, 50.0)]
    # point 1's nearest (candidate 0) is taken by point 0, so it gets candidate 1; point 2 is out of reach
    assert nearest_matches(points, candidates, lambda i, j: 2.0) == [0, 1, None]
    # not exclusive: both first points take candidate 0
    assert nearest_matches(points, candidates, lambda i, j: 2.0, exclusive=False) == [0, 0, None]
    # reach by candidate: candidate 0 reaches 0.1 only, so point 0 gets nothing (the nearest decides)
    assert nearest_matches(points[:1], candidates, lambda i, j: 0.1 if j == 0 else 5.0) == [None]
    assert nearest_matches(points, [], lambda i, j: 1.0) == [None, None, None]
