"""Robustness evaluation: corruptions at graded severity (:mod:`spine_app.robustness.corruptions`)."""
