"""Explanations of the study decision: saliency maps (:mod:`.saliency`) and the embedding map of a
split (:mod:`.embedding`), built on ``monai.visualize`` and scikit-learn's t-SNE."""

from spine_app.explain.saliency import METHODS, nearest_level, peak_position, saliency_maps, scale_per_film

__all__ = ["METHODS", "nearest_level", "peak_position", "saliency_maps", "scale_per_film"]
