"""Networks: the shared-encoder multi-task model."""

from spine_app.networks.multitask import SUPPORTED_BACKBONES, SpineMultiTaskNet, StudyModel, load_weights

__all__ = ["SUPPORTED_BACKBONES", "SpineMultiTaskNet", "StudyModel", "load_weights"]
