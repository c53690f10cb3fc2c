"""Fine-tuning keeps the served weights when validation gets worse, and skips a bad label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from spine_app.bundle import BUNDLE_DIR
from spine_app.channels import MASK_NAMES, channels_of_view
from spine_app.data.io import read_mask, write_png
from spine_app.data.layout import find_studies
from spine_app.engines.writer import sha256_of
from spine_app.monailabel.encoding import encode_masks
from spine_app.monailabel.finetune import LabelledImage, finetune


def test_worse_weights_are_not_served(synth_root: Path, tmp_path: Path) -> None:
    served = tmp_path / "model.pt"
    shutil.copyfile(BUNDLE_DIR / "models" / "model.pt", served)
    items = []
    for study in find_studies(synth_root)[:3]:
        for view in ("AP", "LAT"):
            label = encode_masks({c: read_mask(study.masks[MASK_NAMES[c]]) for c in channels_of_view(view)})
            path = write_png(tmp_path / "labels" / f"{study.study_id}_{view}.png", label)
            items.append(
                LabelledImage(f"{study.study_id}_{view}", study.images[view], path, view, study.study_id, study.label)
            )
    wrong = write_png(tmp_path / "labels" / "wrong_view.png", encode_masks({0: np.ones((64, 64), bool)}))
    items.append(LabelledImage("extra_LAT", items[1].image, wrong, "LAT", "extra"))
    before = sha256_of(served)
    # a learning rate of 1.0 wrecks the weights: the validation score drops and the served file stays
    report = finetune(items, served, BUNDLE_DIR, tmp_path / "work", epochs=1, learning_rate=1.0, batch_size=2)
    assert not report["replaced"] and report["after"]["score"] < report["before"]["score"]
    assert sha256_of(served) == before == report["served_sha256"]
    assert [s["image"] for s in report["skipped"]] == ["extra_LAT"] and "label is 64x64" in report["skipped"][0][
        "error"
    ]
    datalist = json.loads((tmp_path / "work" / "datalist.json").read_text())
    assert len(datalist["training"]) == 2 and len(datalist["validation"]) == 1
    assert all(e["label"] in (0, 1) for e in datalist["training"] + datalist["validation"])
