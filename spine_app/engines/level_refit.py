"""The level head refitted on the finished network (the last phase of a training run).

In the multi-task run the level head learns beside the masks, at the masks' learning rate and
schedule, from features that move under it until the last epoch; how well it ends up depends on
the draw (three seeds of the same recipe: validation kappa 0.61-0.80, docs/results.md). After the
run the encoder and decoder are fixed, so the head's whole input can be computed once:

1. :func:`collect_level_rois` runs the best model's LAT pass over the training studies ``passes``
   times, each time through the training augmentation (the bodies' boxes jittered
   ``RefitSettings.box_jitter`` times as much as training jitters them), and keeps what the head
   reads of every real body (:class:`spine_app.networks.levels.LevelRois`) with its grade and the
   study's label, and, from the same film pass, what it reads of the same bodies in their
   reference boxes (where they are exactly);
2. :func:`refit_level_head` trains a freshly initialised head of the same shape on them (the run's
   own level loss, :meth:`spine_app.losses.MultiTaskLoss.level_loss`, one-cycle learning rate),
   many passes over the bodies in a few minutes of CPU, the network itself untouched: the level
   head on the jittered boxes (it decides which bodies are fractured on boxes found on predicted
   masks) and the grade head on the reference boxes (it grades the flagged bodies: a head fitted
   on the reference boxes grades more levels exactly, docs/results.md "The grade head");
3. :func:`refit_run_level_head` puts the new heads into the run's best model (``model.pt``,
   replaced atomically; :meth:`SpineMultiTaskNet.fit_grade_head`) and writes ``level_refit.json``
   beside it.

The refit starts from fresh heads and reads only the encoder and decoder, so running it again on
its own output gives the same heads: an interrupted run resumed by the same command simply redoes it.
``bundle/configs/refit.yaml`` runs this phase on its own on a run folder (other refit settings).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from monai.data import DataLoader
from monai.utils import set_determinism
from torch import nn

from spine_app.data.augment import exposure_region_prob
from spine_app.data.io import write_torch
from spine_app.data.levels import REFERENCE_BOX_KEYS, check_label_source, reference_boxes_kept, scaled_box_jitter
from spine_app.engines.batch import prepare_study_batch
from spine_app.engines.dataset import refit_studies, relabelled_fields_of_view
from spine_app.engines.handlers import _is_writer
from spine_app.engines.runs import BEST_MODEL, REFIT_RECORD
from spine_app.engines.workers import loader_worker_init
from spine_app.engines.writer import sha256_of, write_json
from spine_app.networks.levels import GRADE_LOGITS, LevelBatch, LevelHead, LevelRois, mil_pool
from spine_app.networks.precision import Precision

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefitSettings:
    """How the level head is refitted: ``epochs`` over the collected bodies (0: no refit), ``passes``
    through the training augmentation, peak ``learning_rate`` of the one-cycle schedule, ``seed``
    (the augmentation, the head's initialisation and the order), ``studies_per_step``, and
    ``box_jitter``: how much the level boxes of the collected bodies are jittered, as a multiple of
    the training's own :class:`spine_app.data.levels.LevelBoxesd` jitter (1: as in training; 0: the
    reference boxes, whose head grades more levels exactly but flags more normal ones on predicted
    boxes; docs/results.md, "The level head refitted on the reference boxes"). ``level_head``: refit
    the level head (False keeps it, and so the model's flags and thresholds); ``grade_head``: fit
    the grade head on the same passes' reference boxes (the bodies exactly where they are), where
    the network has one. ``extra_labels``: where the refit reads the per-level labels of the training
    studies that name their own source (the main job's extra studies, which train through their
    study label only), e.g. ``truth``; None: as in training (:class:`spine_app.engines.dataset.RelabelledStudies`);
    ``extra_fields_of_view``: only the extra studies of these framings (None: all).
    ``exposure_region_prob``: how often the collection pushes a band of a film toward white
    (:class:`spine_app.data.augment.RandExposureRegiond` in the training transform; None: as the
    training drew it), so the heads learn that a body near the top of the grey range is not a
    crushed one (docs/results.md, "Bodies near the top of the grey range")."""

    epochs: int = 15
    passes: int = 3
    learning_rate: float = 1e-3
    seed: int = 0
    studies_per_step: int = 16
    box_jitter: float = 1.0
    level_head: bool = True
    grade_head: bool = True
    extra_labels: str | None = None
    extra_fields_of_view: tuple[str, ...] | None = None
    exposure_region_prob: float | None = None

    def __post_init__(self) -> None:
        if (
            self.epochs < 0
            or self.passes < 1
            or self.learning_rate <= 0
            or self.studies_per_step < 1
            or self.box_jitter < 0
            or (self.exposure_region_prob is not None and not 0.0 <= self.exposure_region_prob <= 1.0)
        ):
            raise ValueError(
                "level refit: epochs >= 0, passes >= 1, learning_rate > 0, studies_per_step >= 1, "
                f"box_jitter >= 0 and exposure_region_prob within [0, 1], got {self}"
            )
        object.__setattr__(self, "extra_labels", check_label_source(self.extra_labels, "level_refit_extra_labels"))
        object.__setattr__(self, "extra_fields_of_view", relabelled_fields_of_view(self.extra_fields_of_view))


@dataclass
class LevelRoiSet:
    """The level head's inputs of every real body of a set of film passes (N bodies, S films).

    ``rois``: what the head reads of each body (patches stored in bf16); ``grade`` (N,): Genant grade,
    -1 unknown; ``start``/``count`` (S,): each film's bodies; ``label`` (S,): the study label (-1
    unknown); ``has_lat`` (S,): 1 where the study has a LAT film.
    """

    rois: LevelRois
    grade: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor
    label: torch.Tensor
    has_lat: torch.Tensor

    @property
    def films(self) -> int:
        return int(self.start.numel())

    @property
    def bodies(self) -> int:
        return int(self.grade.numel())

    def batch(self, films: torch.Tensor) -> tuple[LevelRois, dict[str, torch.Tensor], torch.Tensor]:
        """The bodies of ``films`` (indices): their rois (flat), the padded targets ``level_valid`` /
        ``level_grade`` (F, L) and each body's (film row, position) as a flat index into (F, L)."""
        count = self.count[films]
        width = max(1, int(count.max()))
        rows = torch.repeat_interleave(torch.arange(films.numel()), count)
        first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        position = torch.arange(int(count.sum())) - first
        index = torch.repeat_interleave(self.start[films], count) + position
        flat = rows * width + position
        valid = torch.zeros(films.numel() * width)
        valid[flat] = 1.0
        grade = torch.full((films.numel() * width,), -1, dtype=self.grade.dtype)
        grade[flat] = self.grade[index]
        rois = LevelRois(self.rois.patches[index], self.rois.context[index])
        targets = {"level_valid": valid.reshape(-1, width), "level_grade": grade.reshape(-1, width)}
        return rois, targets, flat


class CollectedBodies(NamedTuple):
    """The bodies of one collection: ``jittered`` what the level head reads of them in the boxes the
    training jitters, ``reference`` the same bodies in their reference boxes (each None when not asked for)."""

    jittered: LevelRoiSet | None
    reference: LevelRoiSet | None


def collect_level_rois(
    net: nn.Module,
    dataset: Any,
    precision: Precision,
    passes: int,
    seed: int = 0,
    batch_size: int = 8,
    num_workers: int = 1,
    device: torch.device | str = "cpu",
    box_jitter: float = 1.0,
    jittered: bool = True,
    reference: bool = False,
    loader_niceness: int = 0,
    exposure_region: float | None = None,
) -> CollectedBodies:
    """:class:`CollectedBodies` of ``dataset`` (training items with level boxes, its random transforms
    drawn anew on each of the ``passes``) under ``net``'s LAT pass (eval mode, no gradient): with
    ``jittered`` every box jittered ``box_jitter`` times as much as the dataset's :class:`LevelBoxesd`
    does, with ``reference`` the same bodies' unjittered boxes, both read from the one pass of each film.
    ``loader_niceness``: the loader workers' niceness increment (:func:`loader_worker_init`);
    ``exposure_region``: the probability of the transform's :class:`RandExposureRegiond` during the
    collection (None: as built)."""
    kinds = [kind for kind, wanted in (("jittered", jittered), ("reference", reference)) if wanted]
    if not kinds:
        raise ValueError("level refit: collect the jittered boxes, the reference boxes or both")
    patches: dict[str, list[torch.Tensor]] = {kind: [] for kind in kinds}
    context: dict[str, list[torch.Tensor]] = {kind: [] for kind in kinds}
    grades, start, count, label, has_lat = [], [], [], [], []
    total = 0
    was_training = net.training
    net.eval()
    transform = getattr(dataset, "transform", None)
    try:
        with (
            scaled_box_jitter(transform, box_jitter),
            exposure_region_prob(transform, exposure_region),
            reference_boxes_kept(transform) if reference else contextlib.nullcontext(),
        ):
            for k in range(passes):
                set_determinism(seed=seed * 1000 + k)
                loader = DataLoader(
                    dataset,
                    batch_size=batch_size,
                    shuffle=False,
                    num_workers=num_workers,
                    worker_init_fn=loader_worker_init(loader_niceness),
                )
                for batch in loader:
                    inputs, targets = prepare_study_batch(batch, device)
                    if "level_centre" not in inputs:
                        raise ValueError("level refit: the training items carry no level boxes (LevelBoxesd)")
                    boxes = {"jittered": LevelBatch.from_batch(inputs)}
                    if reference:
                        boxes["reference"] = reference_batch(batch, boxes["jittered"])
                    valid = (boxes["jittered"].valid > 0).reshape(-1).cpu()
                    with torch.no_grad(), precision.autocast():
                        features = net.level_features(net.view_pass(precision.to_input(inputs["lat"])))
                        for kind in kinds:
                            rois = net.level_head.rois(*features, boxes[kind])
                            patches[kind].append(rois.patches.cpu()[valid].to(torch.bfloat16))
                            context[kind].append(rois.context.cpu()[valid].float())
                    grades.append(targets["level_grade"].cpu().reshape(-1)[valid])
                    per_film = (boxes["jittered"].valid > 0).sum(dim=1).cpu()
                    for film, n in enumerate(per_film.tolist()):
                        start.append(total)
                        count.append(n)
                        total += n
                        label.append(float(targets["label"][film]))
                        has_lat.append(float(inputs["present"][film, 1]))
    finally:
        net.train(was_training)
    if not start:
        raise ValueError("level refit: the training set is empty")
    films = {
        "grade": torch.cat(grades).long(),
        "start": torch.tensor(start),
        "count": torch.tensor(count),
        "label": torch.tensor(label),
        "has_lat": torch.tensor(has_lat),
    }
    sets = {kind: LevelRoiSet(LevelRois(torch.cat(patches[kind]), torch.cat(context[kind])), **films) for kind in kinds}
    return CollectedBodies(sets.get("jittered"), sets.get("reference"))


def reference_batch(batch: dict[str, Any], jittered: LevelBatch) -> LevelBatch:
    """The unjittered boxes a :class:`LevelBoxesd` with ``keep_reference`` added to a collated
    ``batch`` (:data:`REFERENCE_BOX_KEYS`), cut and placed like the ``jittered`` boxes the network reads."""
    width = jittered.valid.shape[1]

    def take(key: str, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(batch[REFERENCE_BOX_KEYS[key]])[:, :width].to(like)  # like's device and dtype

    return LevelBatch(
        take("level_centre", jittered.centre),
        take("level_axis", jittered.axis),
        take("level_size", jittered.size),
        jittered.valid,
    )


def fresh_head(head: LevelHead, seed: int) -> LevelHead:
    """A new :class:`LevelHead` of ``head``'s shape, initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LevelHead(
            head.fine[0].in_channels, head.deep[0].in_features, roi=head.roi, width=head.deep[0].out_features
        )


def refit_level_head(
    head: LevelHead,
    rois: LevelRoiSet,
    loss: Any,
    settings: RefitSettings,
    pooling: str = "lse",
    precision: Precision | None = None,
) -> tuple[LevelHead, list[float]]:
    """A fresh head of ``head``'s shape trained on ``rois`` with ``loss.level_loss`` (the run's
    :class:`spine_app.losses.MultiTaskLoss`) and the study logit pooled by ``pooling``; returns it
    (eval mode) and the mean loss of each epoch. ``head`` itself is not changed."""
    new = fresh_head(head, settings.seed).train()
    films = rois.films
    steps_per_epoch = math.ceil(films / settings.studies_per_step)
    optimizer = torch.optim.AdamW(new.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=max(1, settings.epochs * steps_per_epoch), pct_start=0.1
    )
    order = torch.Generator().manual_seed(settings.seed)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)  # dropout
        for _ in range(settings.epochs):
            total = 0.0
            for chunk in torch.randperm(films, generator=order).split(settings.studies_per_step):
                batch_rois, targets, flat = rois.batch(chunk)
                with precision.autocast() if precision is not None else contextlib.nullcontext():
                    logits = new.score(LevelRois(batch_rois.patches.float(), batch_rois.context))
                padded = logits.float().new_zeros(chunk.numel() * targets["level_valid"].shape[1], GRADE_LOGITS)
                padded[flat] = logits.float()
                padded = padded.reshape(chunk.numel(), -1, GRADE_LOGITS)
                pred = {"level_logits": padded, "cls_levels": mil_pool(padded[..., 0], targets["level_valid"], pooling)}
                label = rois.label[chunk]
                weight = (label >= 0).float() * rois.has_lat[chunk]
                value = loss.level_loss(pred, targets, label.clamp(min=0.0), weight)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                schedule.step()
                total += float(value.detach())
            losses.append(total / steps_per_epoch)
    return new.eval(), losses


def refit_run_level_head(
    ckpt_dir: str | Path,
    net: nn.Module,
    dataset: Any,
    precision: Precision,
    loss: Any,
    settings: RefitSettings | dict[str, Any],
    device: torch.device | str = "cpu",
    num_workers: int = 1,
    loader_niceness: int = 0,
) -> Path | None:
    """Refit the level head of the run's best model (``ckpt_dir/model.pt``, loaded into ``net``, the
    plain :class:`SpineMultiTaskNet`) and fit its grade head on ``dataset`` (the run's training set),
    as ``settings`` asks, and write the model back atomically with ``level_refit.json`` beside it;
    ``net`` ends up holding the refitted model. Both heads learn from one collection of the bodies.
    Returns the model's path, or None (the model left as it was) when ``settings.epochs`` is 0, there
    is no head to fit or no training film shows a body with a level box. ``loader_niceness``: the
    collection's loader workers' niceness increment (:func:`loader_worker_init`). Under DDP every rank computes the same refit and rank 0 writes."""
    settings = settings if isinstance(settings, RefitSettings) else RefitSettings(**settings)
    if settings.epochs == 0:
        return None
    if getattr(net, "level_head", None) is None:
        logger.warning("level refit skipped: the network has no level head")
        return None
    fit_grades = settings.grade_head and getattr(net, "grade_head", None) is not None
    if settings.grade_head and not fit_grades:
        logger.warning("level refit: the network has no grade head to fit (grade_head=False)")
    if not (settings.level_head or fit_grades):
        logger.warning("level refit skipped: neither the level head nor a grade head is to be fitted")
        return None
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # rank 0 writes the best model; every rank reads it
    path = Path(ckpt_dir) / BEST_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no best model to refit the level head of (has a validation run?)")
    began = time.time()
    trunk_sha = sha256_of(path)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    bodies = collect_level_rois(
        net,
        refit_studies(dataset, settings.extra_labels, settings.extra_fields_of_view),
        precision,
        settings.passes,
        settings.seed,
        num_workers=num_workers,
        device=device,
        box_jitter=settings.box_jitter,
        jittered=settings.level_head,
        reference=fit_grades,
        loader_niceness=loader_niceness,
        exposure_region=settings.exposure_region_prob,
    )
    rois = bodies.jittered if bodies.jittered is not None else bodies.reference
    collected = time.time() - began
    if rois.bodies == 0:
        logger.warning("level refit skipped: no training film shows a vertebral body with a level box (no LAT films?)")
        return None
    logger.warning(
        "level refit: %d bodies of %d film passes collected in %.0f s; %d epochs",
        rois.bodies,
        rois.films,
        collected,
        settings.epochs,
    )
    pooling = getattr(net, "level_pooling", "lse")
    record: dict[str, Any] = {
        "settings": settings.__dict__,
        "bodies": rois.bodies,
        "film_passes": rois.films,
        "fractured_bodies": int((rois.grade > 0).sum()),
    }
    if bodies.jittered is not None:
        head, losses = refit_level_head(net.level_head, bodies.jittered, loss, settings, pooling, precision)
        net.level_head.load_state_dict(head.state_dict())
        record["epoch_losses"] = [round(v, 5) for v in losses]
    if bodies.reference is not None:
        grader, losses = refit_level_head(net.grade_head, bodies.reference, loss, settings, pooling, precision)
        net.fit_grade_head(grader.state_dict())
        record["grade_head_epoch_losses"] = [round(v, 5) for v in losses]
    state = {key: value.detach().cpu().clone() for key, value in net.state_dict().items()}
    record.update(
        collect_seconds=round(collected, 1), seconds=round(time.time() - began, 1), input_model_sha256=trunk_sha
    )
    if _is_writer():
        write_torch(path, state)
        record["model_sha256"] = sha256_of(path)
        write_json(Path(ckpt_dir) / REFIT_RECORD, record)
        logger.warning("level refit: %s rewritten in %.0f s (%s)", path, record["seconds"], REFIT_RECORD)
    return path


__all__ = [
    "REFIT_RECORD",
    "CollectedBodies",
    "LevelRoiSet",
    "RefitSettings",
    "collect_level_rois",
    "fresh_head",
    "reference_batch",
    "refit_level_head",
    "refit_run_level_head",
]
