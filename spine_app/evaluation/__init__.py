"""Evaluate a network on a split's entries: the one loop that robustness, bench compare, MONAI Label
fine-tuning and the recipe trials share (:class:`SplitRunner`), and the scores of its records."""

from spine_app.evaluation.runner import SplitRunner, StudyForward, cached_reader, plain_forward, split_scores

__all__ = ["SplitRunner", "StudyForward", "cached_reader", "plain_forward", "split_scores"]
