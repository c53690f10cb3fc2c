"""A real Orthanc (DICOMweb plugin) on 127.0.0.1 holding two generated DX studies, one server per test
module (a module's stores do not reach another's), and the repository's bundle at 128 x 96 with
seeded weights (fast inference)."""

from __future__ import annotations

import os
import shutil

import pydicom
import pytest
import torch

from spine_app.bundle import BUNDLE_DIR
from spine_app.networks import SpineMultiTaskNet
from spine_app.pacs import orthanc


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    if not orthanc.available():
        if os.environ.get("SPINE_APP_REQUIRE_EXTRAS") == "1":  # CI installs Orthanc: there it must run
            pytest.fail("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    from spine_app.synthetic.generator import generate_dataset

    tmp = tmp_path_factory.mktemp("pacs")
    generate_dataset(tmp / "studies", 2, seed=8, preset="easy", workers=1, image_format="dcm")
    files = sorted((tmp / "studies").glob("*/*/*.dcm"))
    uids = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files})
    assert len(files) == 4 and len(uids) == 2  # a study's AP and LAT share one StudyInstanceUID
    bundle = tmp / "bundle"  # the repository's bundle at 128 x 96 with seeded weights (fast)
    shutil.copytree(BUNDLE_DIR / "configs", bundle / "configs")
    config = bundle / "configs" / "inference.yaml"
    config.write_text(config.read_text().replace("patch_size: [384, 288]", "patch_size: [128, 96]"))
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(SpineMultiTaskNet().state_dict(), bundle / "models" / "model.pt")
    server = orthanc.LocalOrthanc(tmp / "orthanc").start()
    server.upload(files)
    yield {"server": server, "uids": uids, "bundle": bundle, "tmp": tmp}
    server.stop()
