"""End-to-end MONAI Label demo that also draws the figure of docs/monailabel.md.

Makes two synthetic studies (a PNG and a DICOM one), flattens them into a studies folder, starts the
real server with ``spine-app monailabel serve`` on 127.0.0.1, asks ``spine_seg`` for each film and
``spine_cls`` for each study over REST, decodes the returned label PNGs and draws them on the films:

    python scripts/monailabel_demo.py --out docs/figures/monailabel

Writes ``presegmented.png`` (the four films with their label images) and ``demo.json`` (the /info
summary, answers and latencies); the server is stopped by its process id at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from spine_app.data.io import read_image, write_atomic
from spine_app.engines.writer import write_json
from spine_app.monailabel.appdir import free_port, start_server, stop_server, wait_ready, write_app
from spine_app.monailabel.encoding import decode_masks
from spine_app.monailabel.studies import prepare_studies
from spine_app.synthetic.generator import generate_dataset
from spine_app.viz.overlay import write_overlay


def post(url: str) -> tuple[bytes, float]:
    """POST with an empty body; (response bytes, seconds)."""
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=300) as response:
        return response.read(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures/monailabel")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="spine-monailabel-demo-") as tmp:
        root = Path(tmp)
        generate_dataset(root / "dataset", 2, seed=args.seed, workers=2, image_format="mixed")
        prepare_studies(root / "dataset", root / "studies")
        app, port = write_app(root / "app"), free_port()
        url = f"http://127.0.0.1:{port}"
        with open(root / "server.log", "w") as log:
            process = start_server(app, root / "studies", port, log)
            try:
                started = time.perf_counter()
                wait_ready(url, process)
                ready = time.perf_counter() - started
                with urllib.request.urlopen(f"{url}/info/") as response:
                    info = json.load(response)
                films = sorted(p for p in (root / "studies").iterdir() if p.suffix in (".png", ".dcm"))
                panels, answers = [], {}
                for film in films:
                    image_id, view = film.stem, film.stem.rsplit("_", 1)[1]
                    label, seconds = post(f"{url}/infer/spine_seg?image={image_id}&output=image")
                    masks = decode_masks(np.asarray(Image.open(io.BytesIO(label))), view)
                    verdict, cls_seconds = post(f"{url}/infer/spine_cls?image={image_id}&output=json")
                    verdict_json = json.loads(verdict)
                    answers[image_id] = {
                        "format": film.suffix,
                        "seg_seconds": round(seconds, 2),
                        "cls_seconds": round(cls_seconds, 2),
                        "classification": verdict_json,
                        "label_values": sorted(np.unique(np.asarray(Image.open(io.BytesIO(label)))).tolist()),
                    }
                    damaged = next(p["score"] for p in verdict_json["prediction"] if p["label"] == "Damaged")
                    title = f"{image_id} ({film.suffix[1:]}): spine_seg | spine_cls Damaged p={damaged:.2f}"
                    drawn = write_overlay(root / f"{image_id}.png", read_image(film)[0], masks, title, max_height=700)
                    panels.append(Image.open(drawn).convert("RGB"))  # loaded now: the folder goes away
            finally:
                stop_server(process)
    pictures = panels
    sheet = Image.new("RGB", (sum(p.width for p in pictures), max(p.height for p in pictures)), "white")
    left = 0
    for picture in pictures:
        sheet.paste(picture, (left, 0))
        left += picture.width
    write_atomic(out / "presegmented.png", lambda path: sheet.save(path, format="PNG", optimize=True))
    summary = {
        "server_ready_seconds": round(ready, 1),
        "models": sorted(info["models"]),
        "trainers": sorted(info["trainers"]),
        "labels": info["labels"],
        "answers": answers,
    }
    write_json(out / "demo.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "answers"}, indent=1))
    for image_id, answer in answers.items():
        print(
            image_id,
            answer["format"],
            f"seg {answer['seg_seconds']} s, cls {answer['cls_seconds']} s,",
            "label values",
            answer["label_values"],
        )
    print(f"-> {out / 'presegmented.png'}")


if __name__ == "__main__":
    main()
