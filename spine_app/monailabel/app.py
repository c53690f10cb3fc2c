"""The MONAI Label app: ``SpineXrayAppBase`` holds everything; the app folder's ``main.py`` (written by
:func:`spine_app.monailabel.appdir.write_app`) only declares ``class SpineXrayApp(SpineXrayAppBase,
MONAILabelApp)``, because MONAI Label loads the class of ``main.py`` that names ``MONAILabelApp`` as a
direct base.

``--conf`` keys: ``bundle`` (bundle folder, default the installed one). The served weights are
``<app>/model/model.pt`` (copied from the bundle's shipped model when the app folder is made).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore

from spine_app.engines.dataset import bundle_version
from spine_app.infer import BUNDLE_DIR
from spine_app.monailabel.appdir import SERVED_MODEL
from spine_app.monailabel.encoding import LABEL_VALUES
from spine_app.monailabel.tasks import SpineClassification, SpineFineTune, SpineSegmentation

#: film types the datastore lists (MONAI Label's default list has no DICOM)
FILM_PATTERNS = ("*.png", "*.dcm", "*.dicom", "*.tif", "*.tiff", "*.jpg", "*.jpeg", "*.nii.gz", "*.nii")


class SpineXrayAppBase:
    """Infers ``spine_seg`` and ``spine_cls``, trains ``spine_bundle`` (see :mod:`spine_app.monailabel.tasks`)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.spine_bundle = Path(conf.get("bundle") or BUNDLE_DIR)
        self.served_model = Path(app_dir) / SERVED_MODEL
        if not self.served_model.is_file():
            raise FileNotFoundError(
                f"{self.served_model}: no served weights; make the app with `spine-app monailabel app`"
            )
        super().__init__(  # type: ignore[call-arg]
            app_dir=app_dir, studies=studies, conf=conf, name="spine-xray",
            description="Spine X-ray (AP/LAT) structures and Normal/Damaged, from the spine-app MONAI bundle",
            version=bundle_version(str(self.spine_bundle)), labels=dict(LABEL_VALUES),
        )  # fmt: skip

    def init_datastore(self) -> Any:
        extensions = list(dict.fromkeys([*settings.MONAI_LABEL_DATASTORE_FILE_EXT, *FILM_PATTERNS]))
        return LocalDatastore(
            self.studies, extensions=extensions, auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,  # type: ignore[attr-defined]
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )  # fmt: skip

    def init_infers(self) -> dict[str, Any]:
        return {
            "spine_seg": SpineSegmentation(self.served_model, self.spine_bundle),
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


__all__ = ["FILM_PATTERNS", "SpineXrayAppBase"]
