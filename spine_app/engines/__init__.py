"""Glue between spine_app and MONAI/Ignite engines, referenced by the bundle configs."""

from spine_app.data.sampling import curvature_sampler
from spine_app.engines.batch import output_loss, prepare_study_batch
from spine_app.engines.cycles import (
    CycleSampler,
    SamplerEpoch,
    TwoCycleCosine,
    lr_schedule,
    training_sampler,
)
from spine_app.engines.dataset import (
    DRR_PRESET,
    ExtraStudies,
    datalist_split,
    ensure_datalist,
    extra_training_datalist,
    fields_of_view_setting,
    inference_entries,
    is_embedded_default,
    mask_priors,
    second_cycle_entries,
    tall_film_spacing,
    training_entries,
)
from spine_app.engines.distributed import end_distributed_run
from spine_app.engines.handlers import (
    AtomicCheckpointSaver,
    EpochCheckpoint,
    PeriodicValidation,
    ValidationState,
)
from spine_app.engines.inferer import StudyInferer, unwrap_network
from spine_app.engines.level_refit import RefitSettings, refit_run_level_head
from spine_app.engines.metrics import StudyMetrics
from spine_app.engines.optim import parameter_groups
from spine_app.engines.report import evaluate_and_report
from spine_app.engines.runs import (
    as_flag,
    datalist_file_sha256,
    datalist_sha256,
    default_run_name,
    publish_model,
    refuse_published_dir,
    weights_sha256,
)
from spine_app.engines.workers import loader_worker_init
from spine_app.engines.writer import StudyPredictionWriter, shard_entries

__all__ = [
    "DRR_PRESET",
    "loader_worker_init",
    "AtomicCheckpointSaver",
    "ValidationState",
    "as_flag",
    "datalist_file_sha256",
    "datalist_sha256",
    "default_run_name",
    "publish_model",
    "refuse_published_dir",
    "weights_sha256",
    "EpochCheckpoint",
    "PeriodicValidation",
    "StudyInferer",
    "StudyMetrics",
    "curvature_sampler",
    "CycleSampler",
    "SamplerEpoch",
    "TwoCycleCosine",
    "lr_schedule",
    "training_sampler",
    "second_cycle_entries",
    "end_distributed_run",
    "RefitSettings",
    "refit_run_level_head",
    "datalist_split",
    "StudyPredictionWriter",
    "shard_entries",
    "ensure_datalist",
    "is_embedded_default",
    "extra_training_datalist",
    "ExtraStudies",
    "fields_of_view_setting",
    "training_entries",
    "evaluate_and_report",
    "inference_entries",
    "mask_priors",
    "tall_film_spacing",
    "output_loss",
    "parameter_groups",
    "prepare_study_batch",
    "unwrap_network",
]
