"""The MONAI Label tasks of the spine app (these import ``monailabel``; install it with
``bash scripts/setup.sh --monailabel``).

- ``SpineSegmentation`` (``spine_seg``): one radiograph -> a uint8 label PNG of its view's structures,
  one bit per channel (:mod:`spine_app.monailabel.encoding`), at the film's exact size; the JSON part
  has the view, the bit of each structure, mask areas, the study's Damaged probability and morphometry.
- ``SpineClassification`` (``spine_cls``): one radiograph -> Normal/Damaged with probabilities, using
  the study's other film too when the datastore holds it (``<study>_AP`` beside ``<study>_LAT``).
- ``SpineFineTune`` (``spine_bundle``): fine-tunes the bundle from the saved labels
  (:mod:`spine_app.monailabel.finetune`).

A film the bundle cannot read answers HTTP 422 with one line naming the file and the reason.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.train import TrainTask

from spine_app.data.io import file_stem, write_png
from spine_app.engines.writer import finite_json
from spine_app.monailabel.encoding import LABEL_VALUES
from spine_app.monailabel.finetune import LabelledImage, finetune
from spine_app.monailabel.service import (
    StudyFailed,
    classification_json,
    predict_study,
    segmentation_label,
)
from spine_app.monailabel.studies import class_index, known_classes, resolve_view, split_image_id

logger = logging.getLogger(__name__)


def image_id_of(path: str | Path) -> str:
    """Datastore id of a film: its file name without the extension (``.nii.gz`` counted whole)."""
    return file_stem(path)


class _BundleInfer(InferTask):
    """Shared part of both infer tasks: the served weights, the bundle, the request's film and view."""

    def __init__(self, kind: str, labels: Any, description: str, model: Path, bundle: Path, datastore: Any) -> None:
        super().__init__(
            type=kind, labels=labels, dimension=2, description=description, config={"view": "", "device": "cpu"}
        )
        self.model, self.bundle, self.datastore = Path(model), Path(bundle), datastore

    def is_valid(self) -> bool:
        return self.model.is_file()

    def _film(self, request: dict[str, Any]) -> tuple[Path, str, str, str]:
        """(film path, datastore id, view, how the view was told); HTTP 422 when it cannot be told."""
        path = self._film_path(str(request.get("image") or ""))
        image_id = image_id_of(path)
        try:
            return path, image_id, *resolve_view(path, image_id, request.get("view") or None, self.model)
        except (ValueError, OSError) as err:
            raise HTTPException(status_code=422, detail=str(err).splitlines()[0]) from err

    def _film_path(self, image: str) -> Path:
        """The film of a request: a datastore film (MONAI Label turned the id into its path) or an upload
        (MONAI Label's temporary file); anything else is refused, so no other file is ever read."""
        path = Path(image)
        if not path.is_absolute():  # an id that MONAI Label took for a path relative to its working folder
            uri = self.datastore().get_image_uri(image) if image else ""
            if not uri:
                raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
            return Path(uri)
        uri = self.datastore().get_image_uri(image_id_of(path))
        if uri and Path(uri).resolve() == path.resolve():
            return path
        if path.parent.resolve() == Path(tempfile.gettempdir()).resolve() and path.name.startswith("tmp"):
            return path  # an uploaded film
        raise HTTPException(status_code=422, detail="image must be a datastore id or an uploaded film, not a path")

    def _predict(self, images: dict[str, Path], study: str, request: dict[str, Any]):
        try:
            return predict_study(images, study, self.model, self.bundle, str(request.get("device") or "cpu"))
        except (StudyFailed, ValueError, OSError) as err:
            raise HTTPException(status_code=422, detail=str(err).splitlines()[0]) from err


class SpineSegmentation(_BundleInfer):
    """Pre-segmentation of one AP or LAT radiograph (see the module docstring)."""

    def __init__(self, model: Path, bundle: Path, datastore: Any) -> None:
        super().__init__(
            InferType.SEGMENTATION,
            dict(LABEL_VALUES),
            "Spine X-ray structures of the film's view; label PNG with one bit per structure "
            "(value 2**channel), so overlaps are kept",
            model,
            bundle,
            datastore,
        )

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        start = time.perf_counter()
        path, image_id, view, view_source = self._film(request)
        prediction = self._predict({view: path}, image_id, request)
        label = segmentation_label(prediction, view)
        out = Path(tempfile.mkstemp(prefix=f"{image_id}_", suffix=".png")[1])
        write_png(out, label)  # the server sends it, then deletes it
        result = prediction.result
        return str(out), finite_json(
            {  # strict JSON: no NaN (HTTP 500 otherwise)
                "view": view,
                "view_source": view_source,
                "encoding": "bitmask: pixel value = sum of 2**channel over the structures present",
                "label_values": {name: LABEL_VALUES[name] for name in result["mask_area_px"]},
                "mask_area_px": result["mask_area_px"],
                "mask_area_mm2": result["mask_area_mm2"],
                "damaged_probability": result["damaged_probability"],
                "morphometry": result.get("morphometry"),
                "null_values": result.get("null_values", {}),  # why a value above is null (result.json's)
                "bundle_version": result.get("bundle_version"),
                "latencies": {"total": round(time.perf_counter() - start, 2)},
            }
        )


class SpineClassification(_BundleInfer):
    """Normal/Damaged of the study a radiograph belongs to (see the module docstring)."""

    def __init__(self, model: Path, bundle: Path, datastore: Any) -> None:
        super().__init__(
            InferType.CLASSIFICATION,
            {"Normal": 0, "Damaged": 1},
            "Normal vs Damaged for the film's study (both views when the datastore has them)",
            model,
            bundle,
            datastore,
        )

    def __call__(self, request: dict[str, Any]) -> tuple[None, dict[str, Any]]:
        path, image_id, view, _ = self._film(request)
        study, named_view = split_image_id(image_id)
        images = {view: path}
        if named_view is not None:  # pair <study>_AP with <study>_LAT when both are in the datastore
            store = self.datastore()
            for other in store.list_images():
                if other != image_id and split_image_id(other) == (study, "LAT" if view == "AP" else "AP"):
                    images[split_image_id(other)[1]] = Path(store.get_image_uri(other))
        return None, finite_json(classification_json(self._predict(images, study, request)))


class SpineFineTune(TrainTask):
    """Fine-tunes the bundle on the datastore's labels and swaps the served weights only if the
    validation score did not get worse; the report is the task's result and ``<app>/train/<time>/``."""

    def __init__(self, model: Path, bundle: Path, app_dir: Path, studies: Path) -> None:
        super().__init__(
            "Fine-tune the spine bundle from saved labels; keeps the new weights only if the "
            "validation score did not get worse"
        )
        self.model, self.bundle, self.app_dir, self.studies = Path(model), Path(bundle), Path(app_dir), Path(studies)
        self._config: dict[str, Any] = {
            "max_epochs": 5,
            "val_split": 0.2,
            "learning_rate": 0.0001,
            "batch_size": 2,
            "label_tag": "final",
            "seed": 0,
        }

    def config(self) -> dict[str, Any]:
        return self._config

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        req = {**self._config, **request}
        tag = str(req["label_tag"])
        classes = known_classes(self.studies)
        items, unusable = [], []
        for image_id in datastore.get_labeled_images(tag):
            image = Path(datastore.get_image_uri(image_id))
            info = datastore.get_label_info(image_id, tag) or {}
            params = info.get("params", info) if isinstance(info.get("params"), dict) else info
            try:
                view, _ = resolve_view(image, image_id, params.get("view") or None, self.model)
            except (ValueError, OSError) as err:
                logger.error("%s", err)
                unusable.append({"image": image_id, "error": str(err).splitlines()[0]})
                continue
            study = split_image_id(image_id)[0]
            label_class = class_index(params.get("study_class"))
            items.append(
                LabelledImage(
                    image_id,
                    image,
                    Path(datastore.get_label_uri(image_id, tag)),
                    view,
                    study,
                    label_class if label_class is not None else classes.get(study),
                )
            )
        overrides = {k: req[k] for k in ("learning_rate", "batch_size", "patch_size") if req.get(k) is not None}
        workdir = self.app_dir / "train" / time.strftime("%Y%m%d-%H%M%S")
        return finetune(
            items,
            self.model,
            self.bundle,
            workdir,
            int(req["max_epochs"]),
            float(req["val_split"]),
            int(req["seed"]),
            skipped=unusable,
            **overrides,
        )


__all__ = ["SpineClassification", "SpineFineTune", "SpineSegmentation", "image_id_of"]
