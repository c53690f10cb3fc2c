"""Ignite handlers of the bundle that MONAI does not provide: crash-safe checkpoint writing, resuming
the last good epoch checkpoint of the same run, and keeping the best score across a resume."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver, ValidationHandler

from spine_app.data.io import write_torch
from spine_app.engines.runs import (
    ResumeError,
    as_flag,
    checkpoint_epochs,
    library_versions,
    load_checkpoint,
    one_line_error,
)

logger = logging.getLogger(__name__)


def _is_writer() -> bool:
    """Rank 0 under torch.distributed, else always."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class AtomicDiskSaver(DiskSaver):
    """ignite's DiskSaver that writes each file to a temporary name in the same folder, fsyncs it and
    renames it into place (``spine_app.data.io.write_torch``), and removes a file that ignite rotates
    out only after the next save succeeded: a crash at any moment leaves the previous files intact.

    Args:
        dirname: folder of the files (created).
        filename: a fixed file name for every save (MONAI's ``key_metric_filename``), or None.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        self._to_remove: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        if not _is_writer():
            return
        write_torch(self.dirname / name, checkpoint)
        for old in self._to_remove:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)
        self._to_remove = []

    def remove(self, filename: str) -> None:
        """Remember ``filename``; it is deleted once the next save is on the disk."""
        self._to_remove.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's CheckpointSaver (same arguments) writing through :class:`AtomicDiskSaver`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)


class ValidationState:
    """What validation knows across epochs, kept in the epoch checkpoint so a resumed run remembers it:
    the best key-metric score and its epoch (the best-model saver then replaces ``model.pt`` only with
    a better model) and early stopping's counter.

    Args:
        saver: the validator's CheckpointSaver with ``save_key_metric``.
        evaluator: the validator (its ``best_metric`` / ``best_metric_epoch`` are restored too).
        early_stop: MONAI's EarlyStopHandler, if any.
    """

    def __init__(self, saver: CheckpointSaver, evaluator: Engine | None = None, early_stop: Any = None) -> None:
        self.saver, self.evaluator, self.early_stop = saver, evaluator, early_stop

    def state_dict(self) -> dict[str, Any]:
        best = self.saver._key_metric_checkpoint
        saved = [(float(p), str(f)) for p, f in best._saved] if best is not None else []
        state = getattr(self.evaluator, "state", None)
        stopper = getattr(self.early_stop, "_handler", None)
        return {
            "saved": saved,
            "best_metric": saved[-1][0] if saved else None,
            "best_epoch": int(getattr(state, "best_metric_epoch", -1)) if saved else -1,
            "early_stop": {k: v for k, v in stopper.state_dict().items()} if stopper is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best = self.saver._key_metric_checkpoint
        if best is not None and state.get("saved"):
            handler = best.save_handler
            model = Path(handler.dirname) / (handler.filename or state["saved"][-1][1])
            if model.is_file():
                best._saved = [Checkpoint.Item(float(p), str(f)) for p, f in state["saved"]]
            else:
                logger.warning("%s is missing: the next validation writes a new best model", model)
        if self.evaluator is not None and state.get("best_metric") is not None:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_epoch"]
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None and state.get("early_stop"):
            stopper.load_state_dict(state["early_stop"])


class _RunRecord:
    """The run's fingerprint, settings and command as a checkpoint entry (checked, not loaded)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def state_dict(self) -> dict[str, Any]:
        return self.record

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: :meth:`EpochCheckpoint.attach` compared the fingerprints already."""


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists), for comparing and storing."""
    return json.loads(json.dumps(value, default=str))


def _short(value: Any) -> str:
    return repr(value[:12] + "...") if isinstance(value, str) and len(value) > 16 else repr(value)


class EpochCheckpoint:
    """Save ``objects`` plus the trainer state every epoch, and resume from the newest good save.

    Files are ``ckpt_dir/checkpoint_epoch=N.pt`` (the last ``n_saved`` are kept), each written to a
    temporary file, fsynced and renamed. The save happens after every other end-of-epoch handler
    (validation, LR step), so a checkpoint holds the whole epoch. When ``resume`` is true, training
    continues after the newest checkpoint that loads (an unreadable one is skipped with a warning); a
    checkpoint whose ``fingerprint`` (dataset, canvas, network) differs is refused with a one-line
    error. ``resume`` false starts over; the folder's old epoch checkpoints go after the first new
    save. The trainer is added at ``attach`` time, which keeps the config free of a circular
    reference. Under DDP every rank resumes and only rank 0 writes.

    Args:
        ckpt_dir: folder of the checkpoints (the run folder).
        objects: name -> object with a state_dict (network, optimizer, LR scheduler, validation state).
        resume: load the newest checkpoint before training starts.
        fingerprint: values that must match for a resume (datalist hash, patch size, backbone ...).
        also_accepted: key -> the value an older spine-app recorded under that key for this same run
            (e.g. the datalist file's hash before the content hash): accepted too when resuming.
        settings: other settings of the run, stored for provenance only.
        n_saved: epoch checkpoints kept.
    """

    def __init__(
        self,
        ckpt_dir: str,
        objects: dict[str, Any],
        resume: bool | str = True,
        fingerprint: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        n_saved: int = 2,
        also_accepted: dict[str, Any] | None = None,
    ) -> None:
        self.ckpt_dir, self.objects = Path(ckpt_dir), dict(objects)
        # a command-line "--resume false" arrives as the string "false" (fire only parses False)
        self.resume = as_flag(resume)
        self.fingerprint = _plain(fingerprint or {})
        self.also_accepted = _plain(also_accepted or {})
        self.settings = _plain(settings or {})
        self.n_saved = int(n_saved)
        self._loaded: tuple[Path, dict[str, Any]] | None = None
        self._started = False

    def latest(self) -> Path | None:
        """The newest epoch checkpoint file (readable or not), or None."""
        found = checkpoint_epochs(self.ckpt_dir)
        return found[0][1] if found else None

    def run_record(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "command": list(sys.argv),
            "versions": library_versions(),
        }

    def check(self, path: Path, checkpoint: Mapping[str, Any], names: list[str]) -> None:
        """Refuse (ResumeError) a checkpoint of another run or one that lacks an object in ``names``."""
        run = checkpoint.get("run")
        stored = run.get("fingerprint") if isinstance(run, Mapping) else None
        if stored is None:
            raise ResumeError(
                f"error: {path}: has no run fingerprint (written by an older spine-app); "
                "pass --resume False to start over, or another --run_name"
            )
        diffs = [
            f"{key} {_short(stored.get(key))} in the checkpoint, {_short(value)} now"
            for key, value in self.fingerprint.items()
            if _plain(stored.get(key)) != value
            and (key not in self.also_accepted or _plain(stored.get(key)) != self.also_accepted[key])
        ]
        if diffs:
            raise ResumeError(
                f"error: {path}: made by a different run ({'; '.join(diffs)}); pass --resume False "
                "to start over in this folder, or another --run_name"
            )
        missing = [name for name in names if name not in checkpoint]
        if missing:
            raise ResumeError(f"error: {path}: has no {', '.join(missing)}; pass --resume False to start over")

    def find_resumable(self, names: list[str]) -> tuple[Path, dict[str, Any]] | None:
        """(path, contents) of the newest checkpoint that loads and belongs to this run, or None."""
        candidates = checkpoint_epochs(self.ckpt_dir)
        for _, path in candidates:
            try:
                checkpoint = load_checkpoint(path)
            except Exception as err:  # noqa: BLE001 - truncated / damaged: fall back to the previous epoch
                logger.warning(
                    "%s (%d bytes): cannot be read (%s); resuming from an older checkpoint",
                    path,
                    path.stat().st_size,
                    one_line_error(err),
                )
                continue
            self.check(path, checkpoint, names)
            return path, checkpoint
        if candidates:
            raise ResumeError(
                f"error: {self.ckpt_dir}: none of the {len(candidates)} epoch checkpoints can be read; "
                "pass --resume False to start over"
            )
        return None

    def attach(self, engine: Engine) -> None:
        self._objects = {**self.objects, "run": _RunRecord(self.run_record()), "trainer": engine}
        self._loaded = self.find_resumable(list(self._objects)) if self.resume else None
        if self._loaded is not None:
            path, trainer = self._loaded[0], self._loaded[1]["trainer"]
            done = trainer["iteration"] // trainer["epoch_length"] if "iteration" in trainer else trainer["epoch"]
            if engine.state.max_epochs is not None and done > engine.state.max_epochs:
                raise ResumeError(
                    f"error: {path}: already trained {done} epochs, more than --epochs "
                    f"{engine.state.max_epochs}; pass a larger --epochs, or --resume False to start over"
                )
        engine.add_event_handler(Events.STARTED, self._start)

    def _start(self, engine: Engine) -> None:
        """Load the checkpoint found at attach time, then start saving (after every handler attached so far)."""
        if self._started:  # STARTED fires on every run() call
            return
        self._started = True
        writer = _is_writer()
        if writer:
            self._remove_temporaries()
        if self._loaded is not None:
            path, checkpoint = self._loaded
            self._loaded = None
            requested = engine.state.max_epochs  # this command's --epochs, not the checkpoint's
            to_load = {k: v for k, v in self._objects.items() if k != "run"}
            Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint)
            engine.state.max_epochs = requested
            logger.warning("resumed from %s (epoch %d)", path, engine.state.epoch)
        if writer:
            saver = AtomicCheckpointSaver(
                save_dir=str(self.ckpt_dir), save_dict=self._objects, save_interval=1, n_saved=self.n_saved
            )
            interval, existing = saver._interval_checkpoint, sorted(checkpoint_epochs(self.ckpt_dir))
            if self.resume:  # rotated out like the new ones
                interval._saved = [Checkpoint.Item(epoch, path.name) for epoch, path in existing]
            else:  # an earlier run's checkpoints go once this run's first one is on the disk
                for _, path in existing:
                    logger.warning("--resume False: %s of the earlier run is removed after this run's first save", path)
                    interval.save_handler.remove(path.name)
            saver.attach(engine)

    def _remove_temporaries(self) -> None:
        """Temporary files of saves that a crash interrupted (``.<name>.pt.<random>.tmp``)."""
        for tmp in self.ckpt_dir.glob(".*.pt.*.tmp"):
            logger.warning("removing %s, left by an interrupted save", tmp)
            tmp.unlink(missing_ok=True)


class PeriodicValidation(ValidationHandler):
    """MONAI's epoch-level :class:`~monai.handlers.ValidationHandler` that also validates the last
    epoch: with ``--epochs`` not a multiple of ``interval`` the final weights would otherwise be
    neither scored nor considered for the best model."""

    def __init__(self, interval: int, validator: Any = None, exec_at_start: bool = False) -> None:
        super().__init__(interval, validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine: Engine) -> None:
        interval = self.interval

        def due(engine: Engine, epoch: int) -> bool:
            return epoch % interval == 0 or epoch == engine.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)
