"""The MONAI Label app: ``SpineXrayAppBase`` holds everything; the app folder's ``main.py`` (written by
:func:`spine_app.monailabel.appdir.write_app`) only declares ``class SpineXrayApp(SpineXrayAppBase,
MONAILabelApp)``, because MONAI Label loads the class of ``main.py`` that names ``MONAILabelApp`` as a
direct base.

``--conf`` keys: ``bundle`` (bundle folder, default the installed one). The served weights are
``<app>/model/model.pt`` (copied from the bundle's shipped model when the app folder is made).

The datastore (:class:`GuardedDatastore`) takes only plain ids and tags, never replaces a film, and
saves only labels that fit their film; the request policy in front of the routes is
:mod:`spine_app.monailabel.server` (installed here too when MONAI Label was started without it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore

from spine_app.bundle import BUNDLE_DIR, bundle_version
from spine_app.monailabel.appdir import SERVED_MODEL
from spine_app.monailabel.encoding import LABEL_VALUES
from spine_app.monailabel.pacs import push_quietly
from spine_app.monailabel.security import label_problem, plain_name_problem
from spine_app.monailabel.studies import split_image_id
from spine_app.monailabel.tasks import SpineClassification, SpineFineTune, SpineSegmentation

#: film types the datastore lists (MONAI Label's default list has no DICOM)
FILM_PATTERNS = ("*.png", "*.dcm", "*.dicom", "*.tif", "*.tiff", "*.jpg", "*.jpeg", "*.nii.gz", "*.nii")


def _check_name(what: str, value: str) -> None:
    """HTTP 422 naming ``what`` unless ``value`` is a plain name (no path, see :mod:`.security`)."""
    problem = plain_name_problem(value)
    if problem:
        raise HTTPException(422, f"{what} {value[:80]!r} {problem}: give a plain datastore id, not a path")


class GuardedDatastore(LocalDatastore):
    """MONAI Label's local datastore that writes only inside the studies folder and keeps users' films:
    plain ids and tags (422), film types only, no replacing an existing film (409), labels that
    decode as 8-bit images of their film's size (422 naming the id). A final label of a film pulled
    from a PACS (:mod:`spine_app.monailabel.pacs`) is also stored there as a DICOM SEG; when the PACS
    refuses it, the label stays saved locally and the server log says why."""

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        image_id = image_id or self._to_id(Path(image_filename).name)[0]
        _check_name("image", image_id)
        if not str(image_filename).lower().endswith(tuple(p.lstrip("*") for p in FILM_PATTERNS)):
            raise HTTPException(422, f"image {image_id!r}: not a film type ({', '.join(FILM_PATTERNS)})")
        if self.get_image_uri(image_id):
            raise HTTPException(409, f"image {image_id!r} is already in the datastore; it is not replaced")
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        _check_name("image", image_id)
        _check_name("tag", label_tag)
        film = self.get_image_uri(image_id)
        if not film:
            raise HTTPException(404, f"image {image_id!r} is not in the datastore")
        problem = label_problem(label_filename, film, split_image_id(image_id)[1])
        if problem:
            raise HTTPException(422, f"label for {image_id!r} refused: {problem}")
        label_id = super().save_label(image_id, label_filename, label_tag, label_info)
        if label_tag == "final":  # a film pulled from a PACS: the final label also goes back as a DICOM SEG
            push_quietly(
                self._datastore_path, image_id, self.get_label_uri(image_id, label_tag), bundle_version(str(BUNDLE_DIR))
            )
        return label_id

    def remove_image(self, image_id: str) -> None:
        _check_name("image", image_id)
        super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        _check_name("label", label_id)
        _check_name("tag", label_tag)
        super().remove_label(label_id, label_tag)


class SpineXrayAppBase:
    """Infers ``spine_seg`` and ``spine_cls``, trains ``spine_bundle`` (see :mod:`spine_app.monailabel.tasks`)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.spine_bundle = Path(conf.get("bundle") or BUNDLE_DIR)
        self.served_model = Path(app_dir) / SERVED_MODEL
        if not self.served_model.is_file():
            raise FileNotFoundError(
                f"{self.served_model}: no served weights; make the app with `spine-app monailabel app`"
            )
        if "monailabel.app" in sys.modules:  # a server started without --uvicorn_app spine_app.monailabel.server:app
            import spine_app.monailabel.server  # noqa: F401 - secures monailabel.app.app on import
        super().__init__(  # type: ignore[call-arg]
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="spine-xray",
            description="Spine X-ray (AP/LAT) structures and Normal/Damaged, from the spine-app MONAI bundle",
            version=bundle_version(str(self.spine_bundle)),
            labels=dict(LABEL_VALUES),
        )

    def init_datastore(self) -> Any:
        extensions = list(dict.fromkeys([*settings.MONAI_LABEL_DATASTORE_FILE_EXT, *FILM_PATTERNS]))
        return GuardedDatastore(
            self.studies,
            extensions=extensions,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,  # type: ignore[attr-defined]
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, Any]:
        return {
            "spine_seg": SpineSegmentation(self.served_model, self.spine_bundle, self.datastore),  # type: ignore[attr-defined]
            "spine_cls": SpineClassification(self.served_model, self.spine_bundle, self.datastore),  # type: ignore[attr-defined]
        }

    def init_trainers(self) -> dict[str, Any]:
        return {
            "spine_bundle": SpineFineTune(self.served_model, self.spine_bundle, Path(self.app_dir), Path(self.studies))
        }  # type: ignore[attr-defined]

    def init_strategies(self) -> dict[str, Any]:
        from monailabel.tasks.activelearning.first import First
        from monailabel.tasks.activelearning.random import Random

        return {"random": Random(), "first": First()}


__all__ = ["FILM_PATTERNS", "GuardedDatastore", "SpineXrayAppBase"]
