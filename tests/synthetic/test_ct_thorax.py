"""`spine-app synth --ct` of the field-of-view presets: the thorax's organs, the rib cage and the
patient features the films show are in the CT too, with the labels of the bodies alone."""

from __future__ import annotations

import numpy as np

from spine_app.synthetic import ct
from spine_app.synthetic.config import load_preset

SMALL = {"long_side_px": (400, 400), "render_voxel_mm": 1.5}


def test_a_thoracic_ct_holds_lungs_heart_ribs_and_the_implants() -> None:
    plain = load_preset("thoracic", **SMALL)
    implants = load_preset("thoracic", instrumentation_probability=1.0, ecg_probability=1.0, **SMALL)
    scene = ct.build_scene(implants, 3, 1)
    assert scene.soft and scene.neck_z is not None and scene.torso_y is not None  # organs and chest recorded
    hu, labels, _ = ct.voxelise(scene, 2.0)
    hu_plain, labels_plain, _ = ct.voxelise(ct.build_scene(plain, 3, 1), 2.0)
    np.testing.assert_array_equal(labels, labels_plain)  # implants and organs carry no vertebra label
    body = hu > -900
    torso_rows = body.any(axis=(0, 1))
    lung = (hu > -950) & (hu < -500)  # aerated lung inside the body outline
    assert lung[:, :, torso_rows].sum() > 0.05 * body.sum()
    # screws, rods and ECG snaps: metal at the top of the 12-bit HU scale, well beyond the median bone
    assert np.median(hu_plain[labels_plain > 0]) < 2000
    assert (hu >= 3000).sum() > 1.5 * (hu_plain >= 3000).sum() + 100
    # the rib cage: bone outside the labelled column, on both sides of it
    ribs = (hu > 300) & (labels == 0)
    columns = np.nonzero(labels.any(axis=(1, 2)))[0]
    left, right = ribs[: columns.min() - 5].sum(), ribs[columns.max() + 5 :].sum()
    assert left > 100 and right > 100


def test_the_default_ct_has_no_thorax_organs() -> None:
    scene = ct.build_scene(load_preset("default", **SMALL), 3, 1)
    assert not scene.soft and not scene.blocks and scene.neck_z is None
