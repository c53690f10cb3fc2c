"""Glue between spine_app and MONAI/Ignite engines, referenced by the bundle configs."""

from spine_app.engines.batch import output_loss, prepare_study_batch
from spine_app.engines.dataset import bundle_version, datalist_split, ensure_datalist, inference_entries
from spine_app.engines.handlers import EpochCheckpoint, key_metric_score
from spine_app.engines.inferer import StudyInferer, unwrap_network
from spine_app.engines.metrics import StudyMetrics
from spine_app.engines.report import evaluate_and_report
from spine_app.engines.writer import StudyPredictionWriter

__all__ = [
    "bundle_version",
    "EpochCheckpoint",
    "StudyInferer",
    "StudyMetrics",
    "datalist_split",
    "StudyPredictionWriter",
    "ensure_datalist",
    "evaluate_and_report",
    "inference_entries",
    "key_metric_score",
    "output_loss",
    "prepare_study_batch",
    "unwrap_network",
]
