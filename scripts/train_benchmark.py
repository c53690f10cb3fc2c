"""Train-and-evaluate benchmark: the bundle's own configs through ConfigWorkflow, with timings.

Generates the synthetic default (if DATA is empty), trains with the given overrides, evaluates the
best model on the test split and prints the phase timings and the results table. ``--speed`` first
times training steps (fp32 / channels-last / AMP on CUDA). The figures in docs/results.md were made
with it, e.g. on a GPU:

    python scripts/train_benchmark.py --data /tmp/data --root /tmp/bundle --epochs 30 --speed
    python scripts/train_benchmark.py --data /tmp/data --root /tmp/bundle --epochs 30 \\
        --overrides '{"loss#line_cldice_weight": 0.5}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


def step_times(device: torch.device, batch: int = 8, size: tuple[int, int] = (512, 384), steps: int = 10) -> None:
    """Print ms per training step of ``batch`` studies for each precision / memory-format option."""
    from spine_app.losses import MultiTaskLoss
    from spine_app.networks import SpineMultiTaskNet

    for amp in (False, True) if device.type == "cuda" else (False,):
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            net = SpineMultiTaskNet().to(device).to(memory_format=fmt)
            loss_fn, opt = MultiTaskLoss(), torch.optim.AdamW(net.parameters(), 1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=amp)
            images = {
                k: torch.rand(batch, 1, *size, device=device).contiguous(memory_format=fmt) for k in ("ap", "lat")
            }
            target = {f"seg_{v}": torch.rand(batch, 8, *size, device=device).round() for v in ("ap", "lat")}
            target |= {f"avail_{v}": torch.ones(batch, 8, device=device) for v in ("ap", "lat")}
            target |= {"label": torch.ones(batch, device=device), "present": torch.ones(batch, 2, device=device)}
            for i in range(steps + 3):
                if i == 3:
                    torch.cuda.synchronize() if device.type == "cuda" else None
                    start = time.perf_counter()
                with torch.autocast(device.type, enabled=amp):
                    loss = loss_fn(net.forward_study(images["ap"], images["lat"], target["present"]), target)
                opt.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            torch.cuda.synchronize() if device.type == "cuda" else None
            ms = (time.perf_counter() - start) / steps * 1000
            print(
                f"step of {batch} studies {size}: amp={amp} channels_last={channels_last}: {ms:.1f} ms, {2 * batch * 1000 / ms:.0f} images/s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset_dir (the synthetic default is generated if empty)")
    parser.add_argument("--root", required=True, help="bundle_root for checkpoints and the report (eval/)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--val_interval", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--overrides", default="{}", help="JSON dict of further config overrides")
    parser.add_argument("--speed", action="store_true", help="time training steps first")
    args = parser.parse_args()

    from monai.bundle import ConfigWorkflow

    if args.speed:
        step_times(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    common = {
        "dataset_dir": args.data,
        "bundle_root": args.root,
        "num_workers": args.num_workers,
        **json.loads(args.overrides),
    }
    files = {"meta_file": str(CONFIGS / "metadata.json"), "logging_file": str(CONFIGS / "logging.conf")}
    start = time.perf_counter()
    train = ConfigWorkflow(str(CONFIGS / "train.yaml"), workflow_type="train", run_id="training", epochs=args.epochs,
                           val_interval=args.val_interval, **files, **common)  # fmt: skip
    train.initialize()
    train.run()
    train.finalize()
    trained = time.perf_counter()
    evaluate = ConfigWorkflow([str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")], workflow_type="train",
                              run_id="evaluate", **files, **common)  # fmt: skip
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    done = time.perf_counter()
    print(f"training (incl. data preparation): {trained - start:.1f} s; evaluation: {done - trained:.1f} s")
    print((Path(args.root) / "eval" / "results.md").read_text())


if __name__ == "__main__":
    main()
