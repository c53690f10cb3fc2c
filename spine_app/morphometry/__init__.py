"""Vertebral morphometry: ``measure`` (body heights, height ratios, Genant grades and the study's
fracture probability from a LAT vertebra mask) and ``evaluate`` (against the generator's truth.json).
Import the modules themselves (nothing is imported here)."""
