"""The MONAI bundle (``bundle/``): where it is, its weights and version, its network, its workflows.

The one place the rest of the package asks about the bundle:

- :data:`BUNDLE_DIR`: the checkout's ``bundle/`` or the installed wheel's copy (:mod:`spine_app.resources`);
- :func:`weights_path`, :func:`bundle_version`: its weights file and ``metadata.json`` version;
- :func:`config_value`: one plain setting of one of its configs (:func:`bundle_disk_exclusion`: one of them);
- :func:`load_bundle_network`: the network of ``configs/inference.yaml`` with the weights loaded;
- :func:`config_workflow`: a ``monai.bundle.ConfigWorkflow`` over its configs (with its
  ``metadata.json`` and ``logging.conf``), as ``python -m monai.bundle run`` builds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spine_app.resources import bundle_dir

if TYPE_CHECKING:
    from monai.bundle import ConfigWorkflow

    from spine_app.networks.multitask import SpineMultiTaskNet

BUNDLE_DIR = bundle_dir()  # the checkout's bundle/ or the installed wheel's copy (spine_app.resources)


def weights_path(bundle_dir: str | Path, model: str | Path | None = None, must_exist: bool = True) -> Path:
    """``model``, or the bundle's ``models/model.pt``; FileNotFoundError naming it when it is missing."""
    path = Path(model) if model else Path(bundle_dir) / "models" / "model.pt"
    if must_exist and not path.is_file():
        raise FileNotFoundError(f"{path}: no model weights (train one, see README, or pass --model)")
    return path


def bundle_version(bundle_root: str) -> str:
    """The ``version`` of ``bundle_root/configs/metadata.json`` ("unknown" without one)."""
    import json

    meta = Path(bundle_root) / "configs" / "metadata.json"
    return str(json.loads(meta.read_text()).get("version", "unknown")) if meta.is_file() else "unknown"


def config_value(config: str, key: str, default: Any = None, bundle_dir: str | Path | None = None) -> Any:
    """A plain (non-expression) setting ``key`` of ``bundle_dir/configs/<config>`` (default the bundle's),
    or ``default`` when the file does not set it."""
    import yaml

    text = (Path(bundle_dir or BUNDLE_DIR) / "configs" / config).read_text()
    return (yaml.safe_load(text) or {}).get(key, default)


def bundle_disk_exclusion(bundle_dir: str | Path | None = None, model: str | Path | None = None) -> float | None:
    """inference.yaml's ``disk_exclusion`` for the bundle's own weights; None for another ``model``
    (its threshold is its own evaluation report's, not the bundle's)."""
    return None if model else config_value("inference.yaml", "disk_exclusion", None, bundle_dir)


def load_bundle_network(bundle_dir: str | Path, model: str | Path | None = None) -> tuple[SpineMultiTaskNet, list[int]]:
    """(network in eval mode with the weights loaded, working canvas [H, W]) from the inference config."""
    from monai.bundle import ConfigParser

    from spine_app.networks.multitask import load_weights

    bundle_dir = Path(bundle_dir)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle_dir)
    net = load_weights(parser.get_parsed_content("network_def"), str(weights_path(bundle_dir, model)))
    return net.eval(), [int(v) for v in parser.get_parsed_content("patch_size")]


def config_workflow(configs: str | Sequence[str], bundle_dir: str | Path = BUNDLE_DIR, **kwargs: Any) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` over ``bundle_dir/configs/<configs>`` (one file name, or several merged in
    order, e.g. ``["train.yaml", "evaluate.yaml"]``) with the bundle's ``metadata.json`` and
    ``logging.conf``; ``kwargs`` are ConfigWorkflow's own arguments (``workflow_type``, ``run_id``,
    ...) and config overrides (``bundle_root`` is not set here: pass it)."""
    from monai.bundle import ConfigWorkflow

    folder = Path(bundle_dir) / "configs"
    files = [str(folder / name) for name in ([configs] if isinstance(configs, str) else configs)]
    return ConfigWorkflow(
        files[0] if isinstance(configs, str) else files,
        meta_file=str(folder / "metadata.json"),
        logging_file=str(folder / "logging.conf"),
        **kwargs,
    )


__all__ = [
    "BUNDLE_DIR",
    "bundle_disk_exclusion",
    "bundle_version",
    "config_workflow",
    "load_bundle_network",
    "weights_path",
]
