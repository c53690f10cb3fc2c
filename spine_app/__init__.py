"""Spine X-ray multi-task analysis: data IO, synthetic studies, MONAI bundle glue and tools."""

__version__ = "0.1.0"
