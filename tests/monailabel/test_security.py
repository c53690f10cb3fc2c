"""What the MONAI Label server refuses (docs/monailabel.md, "Security"), checked against real servers on
127.0.0.1: paths given as ids or tags (nothing is written outside the studies folder), a foreign web
origin or Host, a path as the film to infer, deletes, oversized or ill-fitting labels, replacing a
film; and ``spine-app monailabel serve`` refusing to expose the server without authentication.

The ``server`` fixture (conftest.py, default settings) is shared with test_server.py: every request
here is refused or read-only there. ``open_server`` runs with --allow-delete, --cors-origin and a
1 MB upload limit on its own studies folder."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spine_app.data.io import read_image
from spine_app.engines.writer import sha256_of
from spine_app.monailabel.security import parse_origins, plain_name_problem
from tests.monailabel.conftest import running_server

EVIL = b"import os\nos.system('echo planted')\n"
FILM = "syn7_00003_AP"  # a DICOM film, never labelled by test_server.py
VIEWER = "http://viewer.local"


def film_of(server: dict, image_id: str) -> Path:
    """The file of a datastore film (PNG or DICOM)."""
    return next(server["studies"].glob(f"{image_id}.*"))


def snapshot(server: dict) -> dict[Path, set[str]]:
    """Names in the folder holding the studies folder and in the one above it."""
    root = server["studies"].parent
    return {folder: {p.name for p in folder.iterdir()} for folder in (root, root.parent)}


def label_png(shape: tuple[int, int], dtype: type = np.uint8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros(shape, dtype=dtype)).save(buffer, format="PNG")
    return buffer.getvalue()


def lat_bits(shape: tuple[int, int]) -> bytes:
    """A label of the right size for an AP film that sets a LAT structure's bit (value 8)."""
    array = np.zeros(shape, dtype=np.uint8)
    array[10:20, 10:20] = 8
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def raw_put(port: int, target: str, length: int) -> tuple[int, str]:
    """Send only the head of a PUT announcing ``length`` body bytes; (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(
            f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
            f"boundary=x\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        size = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        while len(body) < size and (chunk := sock.recv(65536)):
            body += chunk
    return int(head.split()[1]), body.decode()


# --- path traversal: ids and tags are plain names ------------------------------------------------

ESCAPES = [  # (method, route, query, files): each would write outside the studies folder or read a path
    ("PUT", "/datastore/label", {"image": FILM, "tag": "../../escape"}, {"label": ("evil.py", EVIL)}),
    ("PUT", "/datastore/label", {"image": FILM, "tag": "../../../escape_up"}, {"label": ("evil.py", EVIL)}),
    ("PUT", "/datastore/label", {"image": "../escape", "tag": "final"}, {"label": ("evil.py", EVIL)}),
    ("PUT", "/datastore/label", {"image": FILM, "tag": ""}, {"label": ("evil.py", EVIL)}),
    ("PUT", "/datastore/image", {"image": "../escape"}, {"file": ("evil.png", EVIL)}),
    ("PUT", "/datastore/image", {}, {"file": ("..", EVIL)}),  # the id would come from the file's name
    ("PUT", "/datastore/image/info", {"image": "..\\escape"}, None),
    ("PUT", "/datastore/label/info", {"label": FILM, "tag": "a/b"}, None),
    ("GET", "/datastore/image", {"image": "/etc/passwd"}, None),
    ("GET", "/datastore/label", {"label": FILM, "tag": "../../.."}, None),
    ("DELETE", "/datastore/image", {"id": "../studies"}, None),
    ("DELETE", "/datastore/label", {"id": FILM, "tag": "../../escape"}, None),
    ("POST", "/infer/spine_seg", {"image": "film\x00.png"}, None),
    ("POST", "/infer/spine_seg", {"image": "a" * 129}, None),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "route", "query", "files"), ESCAPES, ids=lambda v: str(v)[:40])
def test_ids_and_tags_that_are_paths_get_422_and_nothing_is_written_outside(
    server: dict, method: str, route: str, query: dict, files: dict | None
) -> None:
    before = snapshot(server)
    response = server["client"].request(method, route, params=query, files=files, data={"params": "{}"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "plain" in detail
    assert snapshot(server) == before
    root = server["studies"].parent
    assert not (root / "escape").exists() and not (root / "escape.png").exists()
    assert not (root.parent / "escape_up").exists()


@pytest.mark.slow
def test_infer_params_cannot_swap_the_film_or_save_outside(server: dict) -> None:
    client, before = server["client"], snapshot(server)
    outside = next((server["root"] / "dataset").rglob("*.png"))  # a readable film outside the studies folder
    for params in ({"image": str(outside)}, {"model": "spine_cls"}):
        response = client.post("/infer/spine_seg?image=syn7_00000_AP&output=json", data={"params": json.dumps(params)})
        assert response.status_code == 422 and "params may not set" in response.json()["detail"], response.text
    response = client.post(
        "/infer/spine_seg",
        params={"image": FILM, "output": "json"},
        data={"params": json.dumps({"save_label": True, "label_tag": "../../escape"})},
    )
    assert response.status_code == 422 and "tag" in response.json()["detail"], response.text
    assert snapshot(server) == before and not (server["studies"].parent / "escape").exists()


@pytest.mark.slow
def test_infer_takes_datastore_ids_only(server: dict) -> None:
    outside = next((server["root"] / "dataset").rglob("*AP*.png"))
    assert outside.is_file() and server["studies"] not in outside.parents
    response = server["client"].post("/infer/spine_seg", params={"image": str(outside), "output": "json"})
    assert response.status_code == 422, response.text
    response = server["client"].post("/infer/spine_seg", params={"image": "nosuchfilm", "output": "json"})
    assert response.status_code == 404, response.text
    assert "nosuchfilm" in response.json()["detail"]
    assert "/" not in response.text and str(server["studies"]) not in response.text
    response = server["client"].post(
        "/infer/spine_seg",
        params={"output": "json"},  # an uploaded film still is
        files={"file": ("upload.png", outside.read_bytes())},
        data={"params": json.dumps({"view": "AP"})},
    )
    assert response.status_code == 200 and response.json()["view"] == "AP", response.text


# --- CORS and Host: web pages in the browser ----------------------------------------------------


@pytest.mark.slow
def test_a_foreign_origin_gets_no_cors_headers_and_is_refused(server: dict) -> None:
    client = server["client"]
    evil = {"Origin": "http://evil.example"}
    response = client.get("/info/", headers=evil)
    assert "access-control-allow-origin" not in response.headers and response.status_code == 403
    preflight = client.options("/datastore/label", headers={**evil, "Access-Control-Request-Method": "PUT"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-credentials" not in preflight.headers
    response = client.post("/train/spine_bundle", headers={**evil, "Content-Type": "text/plain"}, content=b"{}")
    assert response.status_code == 403  # a "simple" cross-site POST (no preflight) does not start training
    same = client.get("/info/", headers={"Origin": f"http://127.0.0.1:{server['port']}"})
    assert same.status_code == 200  # the server's own pages (e.g. /ohif/) keep working


@pytest.mark.slow
def test_a_dns_rebinding_host_is_refused(server: dict) -> None:
    response = server["client"].get("/info/", headers={"Host": f"evil.example:{server['port']}"})
    assert response.status_code == 403 and "Host" in response.json()["detail"]
    assert server["client"].get("/info/", headers={"Host": f"localhost:{server['port']}"}).status_code == 200


# --- deletes, uploads, labels -----------------------------------------------------------------


@pytest.mark.slow
def test_deleting_films_and_labels_is_refused_by_default(server: dict) -> None:
    film = film_of(server, FILM)
    before = sha256_of(film)
    for route, query in (
        ("/datastore/image", {"id": FILM}),
        ("/datastore/", {"id": FILM}),
        ("/datastore/label", {"id": FILM, "tag": "final"}),
    ):
        response = server["client"].delete(route, params=query)
        assert response.status_code == 403 and "--allow-delete" in response.json()["detail"], response.text
    assert sha256_of(film) == before


@pytest.mark.slow
def test_an_existing_film_is_not_replaced(server: dict) -> None:
    film = film_of(server, "syn7_00003_LAT")
    before = sha256_of(film)
    response = server["client"].put(
        "/datastore/image", params={"image": "syn7_00003_LAT"}, files={"file": ("x.png", label_png((80, 80)))}
    )
    assert response.status_code == 409, response.text
    assert sha256_of(film) == before


@pytest.mark.slow
def test_uploads_over_the_limit_get_413(server: dict) -> None:
    status, body = raw_put(server["port"], f"/datastore/label?image={FILM}&tag=final", 64 * 2**20 + 1)
    assert status == 413 and "--max-upload-mb" in body
    assert not list((server["studies"] / "labels").glob(f"*/{FILM}.*"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("label.png", lambda shape: b"\x89PNG\r\n\x1a\n not really", "cannot decode"),
        ("label.png", lambda shape: label_png((shape[0] // 2, shape[1])), "but the film is"),
        ("label.png", lambda shape: label_png(shape, np.uint16), "8-bit"),
        ("label.py", lambda shape: label_png(shape), "PNG"),
        ("label.png", lambda shape: lat_bits(shape), "Lat_Vertebra"),
    ],
    ids=["garbage", "wrong-size", "16-bit", "not-png", "other-view-bits"],
)
def test_a_label_that_does_not_fit_its_film_gets_422_naming_it(server: dict, name: str, make, reason: str) -> None:
    shape = read_image(film_of(server, FILM))[0].shape
    response = server["client"].put(
        "/datastore/label", params={"image": FILM, "tag": "final"}, files={"label": (name, make(shape))}
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert FILM in detail and reason in detail and "\n" not in detail
    assert not list((server["studies"] / "labels").glob(f"*/{FILM}.*"))


# --- a server started with --allow-delete, --cors-origin and --max-upload-mb ----------------------


@pytest.fixture(scope="module")
def open_server(server: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("monailabel-open")
    studies = root / "studies"
    studies.mkdir()
    for name in ("syn7_00000_AP.png", "syn7_00001_AP.dcm", "syn7_00002_AP.png"):
        shutil.copyfile(server["studies"] / name, studies / name)
    flags = ("--allow-delete", "--cors-origin", VIEWER, "--max-upload-mb", "1")
    with running_server(root, studies, root / "app", flags) as running:
        yield running


@pytest.mark.slow
def test_an_allowed_origin_gets_cors_headers(open_server: dict) -> None:
    client = open_server["client"]
    response = client.get("/info/", headers={"Origin": VIEWER})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == VIEWER
    preflight = client.options("/datastore/label", headers={"Origin": VIEWER, "Access-Control-Request-Method": "PUT"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == VIEWER
    assert "PUT" in preflight.headers["access-control-allow-methods"]
    evil = client.options(
        "/datastore/label", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "PUT"}
    )
    assert "access-control-allow-origin" not in evil.headers


@pytest.mark.slow
def test_allow_delete_removes_a_film(open_server: dict) -> None:
    film = open_server["studies"] / "syn7_00002_AP.png"
    response = open_server["client"].delete("/datastore/image", params={"id": "syn7_00002_AP"})
    assert response.status_code == 200, response.text
    assert not film.exists()


@pytest.mark.slow
def test_max_upload_mb_sets_the_limit(open_server: dict) -> None:
    status, body = raw_put(open_server["port"], "/datastore/label?image=syn7_00000_AP&tag=final", 3 * 2**19)
    assert status == 413 and str(2**20) in body
    label = label_png(read_image(open_server["studies"] / "syn7_00000_AP.png")[0].shape)
    assert len(label) < 2**20
    response = open_server["client"].put(
        "/datastore/label", params={"image": "syn7_00000_AP", "tag": "final"}, files={"label": ("label.png", label)}
    )
    assert response.status_code == 200, response.text  # a fitting label under the limit is saved


# --- spine-app monailabel serve: the command line ----------------------------------------------


def serve(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``spine-app monailabel serve`` in a subprocess (a refused command line never starts a server)."""
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if k != "MONAI_LABEL_AUTH_ENABLE"} | (env or {})
    cmd = [
        sys.executable,
        "-m",
        "spine_app.cli",
        "monailabel",
        "serve",
        str(studies),
        "--app",
        str(tmp_path / "app"),
        "--port",
        "1",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=environment)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_serve_refuses_a_non_loopback_host_without_auth(tmp_path: Path, host: str) -> None:
    done = serve(["--host", host], tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "MONAI_LABEL_AUTH_ENABLE" in lines[0] and "--insecure" in lines[0]
    assert not (tmp_path / "app").exists()  # refused before anything was written


@pytest.mark.parametrize("origin", ["*", "http://viewer.local/path", "viewer.local"])
def test_serve_refuses_a_cors_origin_that_is_not_an_origin(tmp_path: Path, origin: str) -> None:
    done = serve(["--cors-origin", origin], tmp_path)
    assert done.returncode == 2 and "--cors-origin" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_serve_reads_every_repeated_cors_origin(tmp_path: Path) -> None:
    done = serve(["--cors-origin", "*", "--cors-origin", VIEWER], tmp_path)  # python-fire alone keeps the last
    assert done.returncode == 2 and "'*'" in done.stderr


def test_origins_and_plain_names() -> None:
    assert parse_origins("http://a.local:3000,https://b.example/") == ("http://a.local:3000", "https://b.example")
    assert parse_origins(["http://a", "http://a"]) == ("http://a",) and parse_origins(None) == ()
    for bad in ("", "..", ".", "a/b", "a\\b", "/abs", "x\x00", "a" * 129, "a..b"):
        assert plain_name_problem(bad), bad
    for good in ("syn7_00000_AP", "final", "film.v2", "a" * 128):
        assert plain_name_problem(good) is None, good
