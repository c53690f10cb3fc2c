"""The MONAI Label app folder (``main.py`` + the served weights) and the server command line, without
importing MONAI Label: ``spine-app monailabel app`` writes the folder, ``spine-app monailabel serve``
starts ``monailabel start_server`` on it (127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from spine_app.data.io import write_atomic

SERVED_MODEL = Path("model") / "model.pt"
LOOPBACK = ("127.0.0.1", "localhost", "::1")

MAIN_PY = '''"""MONAI Label app of spine-app, written by `spine-app monailabel app` (all logic lives in
spine_app.monailabel; MONAI Label needs a class here that names MONAILabelApp as a direct base)."""

from monailabel.interfaces.app import MONAILabelApp

from spine_app.monailabel.app import SpineXrayAppBase


class SpineXrayApp(SpineXrayAppBase, MONAILabelApp):
    """Pre-segments spine radiographs, classifies studies and fine-tunes the bundle from saved labels."""
'''


def default_app_dir() -> Path:
    """``$XDG_DATA_HOME/spine-app/monailabel-app`` (``~/.local/share/...``): writable, outside the package."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "spine-app" / "monailabel-app"


def write_app(out: str | Path | None = None, model: str | Path | None = None, force: bool = False) -> Path:
    """Write ``main.py`` into the app folder and copy the weights to serve (default: the bundle's shipped
    model) to ``model/model.pt``; existing served weights (perhaps fine-tuned) are kept unless ``force``."""
    from spine_app.bundle import BUNDLE_DIR, weights_path

    app = Path(out) if out else default_app_dir()
    write_atomic(app / "main.py", lambda tmp: tmp.write_text(MAIN_PY))
    served = app / SERVED_MODEL
    if force or not served.is_file():
        source = weights_path(BUNDLE_DIR, model)
        write_atomic(served, lambda tmp: shutil.copyfile(source, tmp))
    return app


#: the ASGI app the server runs: MONAI Label's, with the spine app's request policy (:mod:`.server`)
UVICORN_APP = "spine_app.monailabel.server:app"


def server_command(
    app: Path, studies: Path, host: str = "127.0.0.1", port: int = 8000, conf: dict[str, str] | None = None
) -> list[str]:
    """``python -m monailabel.main start_server ...`` with this interpreter (so its packages are used),
    serving :data:`UVICORN_APP`."""
    cmd = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(app),
        "--studies",
        str(studies),
        "--host",
        host,
        "--port",
        str(port),
        "--uvicorn_app",
        UVICORN_APP,
    ]
    for key, value in (conf or {}).items():
        cmd += ["--conf", str(key), str(value)]
    return cmd


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    app: Path, studies: Path, port: int, log: IO, flags: list[str] | tuple[str, ...] = ()
) -> subprocess.Popen:
    """``spine-app monailabel serve`` on 127.0.0.1:``port`` (plus ``flags``, e.g. ``--allow-delete``) as a
    child process (its id is the server's)."""
    cmd = [
        sys.executable,
        "-m",
        "spine_app.cli",
        "monailabel",
        "serve",
        str(studies),
        "--app",
        str(app),
        "--port",
        str(port),
        *flags,
    ]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``url/info/`` until it answers 200; RuntimeError if the server exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"MONAI Label server exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/info/", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/info/ did not answer within {timeout:.0f} s")
        time.sleep(1)


def stop_server(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the server by its process id, SIGKILL if it is still there after ``timeout``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


__all__ = [
    "LOOPBACK",
    "MAIN_PY",
    "SERVED_MODEL",
    "UVICORN_APP",
    "default_app_dir",
    "free_port",
    "server_command",
    "start_server",
    "stop_server",
    "wait_ready",
    "write_app",
]
