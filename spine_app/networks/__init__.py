"""Networks: the shared-encoder multi-task model."""

from spine_app.networks.multitask import (
    SUPPORTED_BACKBONES,
    SpineMultiTaskNet,
    StudyModel,
    init_output_bias,
    load_weights,
)
from spine_app.networks.precision import Precision, resolve_precision

__all__ = [
    "SUPPORTED_BACKBONES",
    "Precision",
    "SpineMultiTaskNet",
    "StudyModel",
    "init_output_bias",
    "load_weights",
    "resolve_precision",
]
