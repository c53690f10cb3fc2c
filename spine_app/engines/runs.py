"""Training run folders: their default name, the fingerprint that ties a checkpoint to its run, and
publishing a run's best model as the bundle's ``models/model.pt`` with a provenance record.

Training writes into ``bundle/runs/<run_name>/`` (``model.pt``, the best model; ``checkpoint_epoch=N.pt``,
the last two epochs). The shipped ``bundle/models/model.pt`` changes only when a run is published:
``--publish true`` at the end of the bundle run, or ``spine-app publish RUN_DIR``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from spine_app import __version__
from spine_app.data.io import write_atomic, write_torch
from spine_app.engines.writer import sha256_of, write_json

logger = logging.getLogger(__name__)

CHECKPOINT_GLOB = "checkpoint_epoch=*.pt"
BEST_MODEL = "model.pt"
#: written beside the best model by the level-head refit (spine_app.engines.level_refit)
REFIT_RECORD = "level_refit.json"
PROVENANCE = "model_provenance.json"


class ResumeError(SystemExit):
    """A checkpoint that must not be resumed; ``str(err)`` is one line, printed when the command exits."""


def as_flag(value: bool | str | int | None) -> bool:
    """A bundle flag given as a bool or as a command-line string ("false", "True", "0", "yes")."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


#: datalist fields that say when and by which version it was written, not what it holds
DATALIST_STAMP_KEYS = ("created", "spine_app_version")


def datalist_sha256(datalist: str | Path) -> str:
    """SHA-256 of what a datalist holds (its studies, their files' settings, the split), without when
    and by which spine-app version it was written: the same seeds give the same hash, so a checkpoint
    or a published model is recognised on a dataset generated again; another split differs. A file
    that is not a JSON object is hashed as it is."""
    try:
        content = json.loads(Path(datalist).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return sha256_of(datalist)
    if not isinstance(content, dict):
        return sha256_of(datalist)
    kept = {key: value for key, value in content.items() if key not in DATALIST_STAMP_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def datalist_file_sha256(datalist: str | Path) -> str:
    """SHA-256 of the datalist file as it is: the fingerprint spine-app 0.2.0 (bundle <= 0.5.2) stored
    in its checkpoints, still accepted when such a run is resumed."""
    return sha256_of(datalist)


def weights_sha256(path: str | Path | None) -> str | None:
    """SHA-256 of the weights a run starts from (``init_weights``), None for a run from scratch: a
    published model's provenance then names its starting point even after that file is replaced."""
    return None if not path else sha256_of(path)


def default_run_name(
    datalist: str | Path, patch_size: list[int] | tuple[int, ...], backbone: str, *extras: str | Path | None
) -> str:
    """``<dataset folder>[+<extra folder>...]-<rows>x<cols>-<backbone>``, e.g.
    ``synthetic+synthetic_fov+synthetic_more-384x288-resnet18`` for ``data/synthetic/datalist.json``
    with the extra training studies of ``data/synthetic_fov`` and ``data/synthetic_more`` (None
    extras are left out): the same command always finds the same run folder."""
    base = "+".join(_dataset_name(Path(item)) for item in (datalist, *extras) if item)
    name = f"{base}-{'x'.join(str(int(v)) for v in patch_size)}-{backbone}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def _dataset_name(datalist: Path) -> str:
    """The folder of a datalist, with the file's stem when it is not ``datalist.json``."""
    base = datalist.parent.name or "data"
    return base if datalist.stem == "datalist" else f"{base}-{datalist.stem}"


def checkpoint_epochs(folder: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the epoch checkpoints in ``folder``, newest first."""
    found = []
    for path in Path(folder).glob(CHECKPOINT_GLOB):
        match = re.fullmatch(r"checkpoint_epoch=(\d+)\.pt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """An epoch checkpoint as a dict (tensors on the CPU); any read error propagates."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a checkpoint dictionary")
    return checkpoint


class PublishedModelError(SystemExit):
    """A job that rewrites ``model.pt`` in place was pointed at the bundle's published model;
    ``str(err)`` is one line, printed when the command exits."""


def refuse_published_dir(ckpt_dir: str | Path, bundle_dir: str | Path) -> None:
    """Stop (one-line error) when ``ckpt_dir`` is the bundle's ``models/`` folder: a job that rewrites
    ``model.pt`` in place works on a run folder, and only ``publish_model`` replaces the shipped one."""
    if Path(ckpt_dir).resolve() == (Path(bundle_dir) / "models").resolve():
        raise PublishedModelError(
            f"{ckpt_dir}: the bundle's published model is not rewritten in place; "
            "pass --ckpt_dir bundle/runs/<run_name> (then `spine-app publish` it)"
        )


def newest_readable_checkpoint(folder: str | Path) -> tuple[Path | None, dict[str, Any]]:
    """The newest epoch checkpoint of ``folder`` that loads, or (None, {})."""
    for _, path in checkpoint_epochs(folder):
        try:
            return path, load_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - a damaged file: the older one may still load
            logger.warning("%s: cannot be read (%s); trying an older checkpoint", path, one_line_error(err))
    return None, {}


def one_line_error(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(err).strip().splitlines()
    return (f"{type(err).__name__}: {text[0]}" if text else type(err).__name__)[:300]


def _git_commit(folder: Path) -> dict[str, Any] | None:
    """Commit of the git checkout holding ``folder`` and whether it had uncommitted changes, or None."""
    try:
        options = {"cwd": folder, "capture_output": True, "text": True, "timeout": 10, "check": True}
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **options).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **options).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "uncommitted_changes": bool(dirty)}


def library_versions() -> dict[str, str]:
    import ignite
    import monai

    versions = {
        "spine_app": __version__,
        "monai": monai.__version__,
        "torch": torch.__version__,
        "ignite": ignite.__version__,
        "python": sys.version.split()[0],
    }
    return {name: str(version) for name, version in versions.items()}  # torch's is a TorchVersion, not a str


def publish_model(run_dir: str | Path, bundle_dir: str | Path, half: bool = True) -> Path | None:
    """Copy ``run_dir/model.pt`` (the run's best model) onto ``bundle_dir/models/model.pt`` atomically
    (``half``: floating-point tensors stored as fp16, half the size; they load into the fp32 network) and
    write ``models/model_provenance.json`` beside it: run folder, settings and command of the run,
    datalist hash, best score and epoch, git commit, time and versions. Returns the published path
    (None on DDP ranks other than 0, which do not write).

    Raises:
        FileNotFoundError: the run folder has no best model yet (no validation has run).
        ValueError: the best model is not a readable state dict.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None
    run_dir = Path(run_dir)
    source = run_dir / BEST_MODEL
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no best model in this run folder (has a validation run yet?)")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{source}: cannot be read ({one_line_error(err)})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: not a plain state dict of the network")
    checkpoint_path, checkpoint = newest_readable_checkpoint(run_dir)
    run, validation = checkpoint.get("run") or {}, checkpoint.get("validation") or {}
    target = Path(bundle_dir) / "models" / BEST_MODEL
    if half:
        write_torch(target, {k: v.half() if v.is_floating_point() else v for k, v in state.items()})
    else:
        write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))
    provenance = {
        "model": str(target),
        "sha256": sha256_of(target),
        "bytes": target.stat().st_size,
        "published": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "published_by": sys.argv,
        "run_dir": str(run_dir.resolve()),
        "source_model": str(source.resolve()),
        "checkpoint": str(checkpoint_path.resolve()) if checkpoint_path else None,
        "stored_as": "fp16" if half else "as trained",
        "best_score": validation.get("best_metric"),
        "best_epoch": validation.get("best_epoch"),
        "fingerprint": run.get("fingerprint"),
        "settings": run.get("settings"),
        "training_command": run.get("command"),
        "git": _git_commit(Path(bundle_dir).resolve()),
        "versions": library_versions(),
        "training_versions": run.get("versions"),
        "level_refit": _refit_record(run_dir),
    }
    write_json(target.with_name(PROVENANCE), provenance)
    write_large_files(Path(bundle_dir), provenance["sha256"])
    logger.warning(
        "published %s -> %s (best score %s at epoch %s)",
        source,
        target,
        provenance["best_score"],
        provenance["best_epoch"],
    )
    return target


__all__ = [
    "ResumeError",
    "as_flag",
    "checkpoint_epochs",
    "datalist_file_sha256",
    "datalist_sha256",
    "default_run_name",
    "load_checkpoint",
    "newest_readable_checkpoint",
    "publish_model",
]


LARGE_FILES = "large_files.yml"


def _refit_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``level_refit.json`` (what the level-head refit did), or None without one."""
    path = run_dir / REFIT_RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError) as err:
        return {"error": f"{path}: {one_line_error(err)}"}


def write_large_files(bundle_dir: Path, sha256: str) -> Path:
    """``bundle_dir/large_files.yml`` (the model zoo's list of files kept out of the configs) naming
    ``models/model.pt`` with its SHA-256; written atomically."""
    text = (
        "# The bundle's large files (MONAI model-zoo convention). The weights ship inside the repository\n"
        "# and the wheel; there is no download URL until the project publishes them elsewhere.\n"
        "# spine-app checks the hash before it uses models/model.pt; spine-app publish rewrites this file.\n"
        "large_files:\n"
        '  - path: "models/model.pt"\n'
        '    url: ""\n'
        f'    hash_val: "{sha256}"\n'
        '    hash_type: "sha256"\n'
    )
    return write_atomic(Path(bundle_dir) / LARGE_FILES, lambda tmp: tmp.write_text(text))


def listed_sha256(bundle_dir: str | Path, relative: str = "models/model.pt") -> str | None:
    """The SHA-256 ``large_files.yml`` lists for ``relative`` (None without the file or the entry)."""
    import yaml

    path = Path(bundle_dir) / LARGE_FILES
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    for item in data.get("large_files") or []:
        if item.get("path") == relative and str(item.get("hash_type", "")).lower() == "sha256":
            return str(item.get("hash_val") or "") or None
    return None
