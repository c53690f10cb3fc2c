"""A local Orthanc with its DICOMweb plugin (Debian packages ``orthanc`` and ``orthanc-dicomweb``) for
tests, docs and workstations: its own temporary storage, a loopback port, stopped by its PID.

    with LocalOrthanc() as pacs:
        pacs.upload(paths)                   # REST upload of DICOM files
        print(pacs.dicomweb_url)             # http://127.0.0.1:PORT/dicom-web
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def available() -> bool:
    """True when the Orthanc binary and its DICOMweb plugin are installed."""
    return Path(ORTHANC).is_file() and Path(PLUGIN).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalOrthanc:
    """Start Orthanc on 127.0.0.1 (HTTP only, no DICOM port, no remote access) in a temporary folder."""

    def __init__(self, folder: str | Path | None = None, port: int | None = None) -> None:
        self._owned = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="orthanc-"))
        self.port = port or _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 30.0) -> LocalOrthanc:
        """Start it and wait until ``GET /system`` answers. RuntimeError when it does not."""
        if not available():
            raise RuntimeError(
                f"Orthanc is not installed ({ORTHANC}, {PLUGIN}): apt-get install orthanc orthanc-dicomweb"
            )
        config = {
            "Name": "spine-app-test",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 - the server writes to it while it runs
        self.process = subprocess.Popen(
            [ORTHANC, str(self.folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {(self.folder / 'orthanc.log').read_text()[-500:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=1) as answer:
                    if "Version" in json.loads(answer.read()):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout:.0f} s")

    def upload(self, paths: list[str | Path]) -> list[str]:
        """POST each DICOM file to ``/instances``; returns Orthanc's instance ids."""
        ids = []
        for path in paths:
            request = urllib.request.Request(f"{self.url}/instances", data=Path(path).read_bytes(), method="POST")
            with urllib.request.urlopen(request, timeout=30) as answer:
                ids.append(json.loads(answer.read())["ID"])
        return ids

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temporary folder if it made it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self._owned:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
