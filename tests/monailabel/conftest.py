"""A real MONAI Label server on 127.0.0.1 serving the spine app, started once per test session with the
default settings of `spine-app monailabel serve` and shared by test_server.py and test_security.py
(test_security.py's requests against it change nothing). The server is always stopped by its id."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from spine_app.data.io import read_image, write_png
from spine_app.monailabel.appdir import free_port, start_server, stop_server, wait_ready
from spine_app.monailabel.studies import prepare_studies
from spine_app.synthetic.generator import generate_dataset


def _require_monailabel() -> None:
    if os.environ.get("SPINE_APP_REQUIRE_EXTRAS") != "1":  # CI sets it: a missing extra fails, not skips
        pytest.importorskip("monailabel", reason="MONAI Label not installed: bash scripts/setup.sh --monailabel")


@contextmanager
def running_server(root: Path, studies: Path, app: Path, flags: tuple[str, ...] = ()) -> Iterator[dict]:
    """`spine-app monailabel serve STUDIES --app APP FLAGS` on a free loopback port until the block ends:
    {"client" (httpx, base URL set), "port", "root", "studies", "app", "log"}."""
    _require_monailabel()
    import httpx

    port = free_port()
    log_path = root / f"server-{app.name}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in finally
    process = start_server(app, studies, port, log, flags)
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}", process, timeout=120)
        except RuntimeError as err:
            pytest.fail(f"{err}\n{log_path.read_text()[-3000:]}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield {"client": client, "port": port, "root": root, "studies": studies, "app": app, "log": log_path}
    finally:
        stop_server(process)
        log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The default server on 4 synthetic studies (PNG 16-bit and DICOM), an 8-bit film, a corrupt film
    and a film whose name gives no view: 11 films."""
    _require_monailabel()
    root = tmp_path_factory.mktemp("monailabel")
    generate_dataset(root / "dataset", 4, seed=7, workers=2, image_format="mixed")  # PNG 16-bit and DICOM studies
    studies = root / "studies"
    prepare_studies(root / "dataset", studies)
    film = read_image(studies / "syn7_00000_AP.png")[0]
    write_png(studies / "eightbit_AP.png", (255 * (film - film.min()) / np.ptp(film)).astype(np.uint8))
    (studies / "broken_AP.png").write_bytes(b"not a png at all")
    shutil.copyfile(studies / "syn7_00002_AP.png", studies / "film.png")  # a name that says no view
    with running_server(root, studies, root / "app") as running:
        yield running
