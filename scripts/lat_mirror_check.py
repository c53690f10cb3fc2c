"""Films facing either way: mirror the LAT film (and its LAT masks) of the first N test studies, run
`spine-app infer` on the originals and the mirrored copies, and apply the line side check at the
films' resolution (docs/results.md, "The shipped model").

    python scripts/lat_mirror_check.py [N] [--root data/synthetic] [--out /tmp/mirror]
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from spine_app.channels import LINE_CHANNELS
from spine_app.metrics.segmentation import lat_line_sides

args = sys.argv[1:]
n = int(args[0]) if args and not args[0].startswith("--") else 5
root = Path(args[args.index("--root") + 1]) if "--root" in args else Path("data/synthetic")
out = Path(args[args.index("--out") + 1]) if "--out" in args else Path("/tmp/mirror")
if out.exists():
    sys.exit(f"{out}: exists; give another --out")
entries = json.load(open(root / "datalist.json"))["test"][:n]
studies = []
for e in entries:
    src = root / Path(e["image_lat"]).parent
    for tag, flip in (("", False), ("_mirrored", True)):
        dst = out / "in" / (e["study_id"] + tag)
        shutil.copytree(src, dst)
        if flip:
            for f in ["LAT.png"] + [
                f"{n}.png" for n in ("Lat_Vertebra", "Lat_Spinous_Process", "Lat_Disk_Height", *LINE_CHANNELS)
            ]:
                pixels = np.array(Image.open(dst / f))
                Image.fromarray(pixels[:, ::-1].copy()).save(dst / f)
        studies.append(dst)
subprocess.run(["spine-app", "infer", *map(str, studies), "--out", str(out / "pred")], check=True)
for dst in studies:
    pred = {n: np.array(Image.open(out / "pred" / dst.name / f"{n}.png")) > 0 for n in LINE_CHANNELS}
    truth = {n: np.array(Image.open(dst / f"{n}.png")) > 0 for n in LINE_CHANNELS}
    warn = [w for w in json.load(open(out / "pred" / dst.name / "result.json"))["warnings"] if "faces" in w]
    print(dst.name, "side check:", lat_line_sides(pred, truth), "| mirrored warning:", bool(warn))
