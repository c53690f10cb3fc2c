"""The hospital path against a real Orthanc (DICOMweb plugin) on 127.0.0.1: studies fetched by
WADO-RS, results stored back by STOW-RS, re-runs skipped, one line per failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from spine_app.pacs import orthanc


def infer(pacs: dict, out: Path, *studies: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "spine_app.cli",
        "infer",
        "--dicomweb",
        pacs["server"].dicomweb_url,
        "--out",
        str(out),
        "--bundle",
        str(pacs["bundle"]),
        "--study",
        ",".join(studies),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def series_of(pacs: dict, uid: str) -> list[dict]:
    url = pacs["server"].url
    found = json.loads(urllib.request.urlopen(f"{url}/tools/lookup", data=uid.encode()).read())
    study = next(f["ID"] for f in found if f["Type"] == "Study")
    return json.loads(urllib.request.urlopen(f"{url}/studies/{study}/series").read())


def test_results_are_stored_back_and_a_rerun_skips_them(pacs: dict, tmp_path: Path) -> None:
    from spine_app.pacs.dicomweb import connect

    missing = "1.2.3.4.5"
    done = infer(pacs, tmp_path / "out", *pacs["uids"], missing)
    assert done.returncode == 1, done.stderr  # the missing study fails, the others complete
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed:")]
    assert failed == [f"failed: study {missing}: not found on the server or no film in it"]
    assert "PACS: results of 2 studies stored" in done.stdout
    client = connect(pacs["server"].dicomweb_url)
    for uid in pacs["uids"]:
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in series_of(pacs, uid))
        assert modalities == ["DX", "DX", "SEG", "SEG", "SR"]
    folders = [p for p in (tmp_path / "out").iterdir() if (p / "result.json").is_file()]
    assert len(folders) == 2
    for folder in folders:
        local_seg = pydicom.dcmread(folder / "seg_LAT.dcm")
        stored = client.retrieve_instance(
            local_seg.StudyInstanceUID, local_seg.SeriesInstanceUID, local_seg.SOPInstanceUID
        )
        frames = stored.pixel_array.reshape(len(stored.SegmentSequence), int(stored.Rows), int(stored.Columns)) > 0
        labels = [s.SegmentLabel for s in stored.SegmentSequence]
        for k, name in enumerate(labels):  # the PACS copy holds the masks of the folder run
            assert np.array_equal(frames[k], np.array(Image.open(folder / f"{name}.png")) > 0), name
        report = pydicom.dcmread(folder / "report.dcm")
        stored_sr = client.retrieve_instance(report.StudyInstanceUID, report.SeriesInstanceUID, report.SOPInstanceUID)
        assert stored_sr.ContentSequence == report.ContentSequence  # the same heights, grades and finding
    again = infer(pacs, tmp_path / "out2", *pacs["uids"])
    assert again.returncode == 0, again.stderr
    assert "2 studies already had them" in again.stdout
    assert all(len(series_of(pacs, uid)) == 5 for uid in pacs["uids"])  # nothing stored twice


def test_a_stopped_server_is_one_line_per_study(pacs: dict, tmp_path: Path) -> None:
    server = orthanc.LocalOrthanc(pacs["tmp"] / "stopped")
    stopped = {**pacs, "server": server}  # a port nothing listens on
    done = infer(stopped, tmp_path / "out", *pacs["uids"])
    assert done.returncode == 1
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 2 and all("cannot list its" in line for line in failed), done.stderr
    assert "Traceback" not in done.stderr
