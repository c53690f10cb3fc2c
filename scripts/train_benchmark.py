"""Train-and-evaluate benchmark: the bundle's own configs through ConfigWorkflow, with timings.

Generates the synthetic default (if DATA is empty), trains with the given overrides, evaluates the
best model on the test split and prints the phase timings and the results table. ``--speed`` first
times training steps (fp32 / channels-last / AMP on CUDA; ``spine-app bench speed``). The figures in docs/results.md were made
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

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset_dir (the synthetic default is generated if empty)")
    parser.add_argument("--root", required=True, help="bundle_root for the run folder (runs/) and the report (eval/)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--val_interval", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--overrides", default="{}", help="JSON dict of further config overrides")
    parser.add_argument("--speed", action="store_true", help="time training steps first")
    args = parser.parse_args()

    from spine_app.bundle import config_workflow

    if args.speed:
        from spine_app.bench.speed import bench_speed, format_speed

        print(format_speed(bench_speed(batch=8, canvas=(512, 384))))
    common = {
        "dataset_dir": args.data,
        "bundle_root": args.root,
        "num_workers": args.num_workers,
        **json.loads(args.overrides),
    }
    start = time.perf_counter()
    train = config_workflow(
        "train.yaml",
        BUNDLE,
        workflow_type="train",
        run_id="training",
        epochs=args.epochs,
        val_interval=args.val_interval,
        **common,
    )
    train.initialize()
    train.run()
    train.finalize()
    trained = time.perf_counter()
    run_dir = train.parser.get_parsed_content("ckpt_dir")  # the run folder: evaluate its best model
    evaluate = config_workflow(
        ["train.yaml", "evaluate.yaml"],
        BUNDLE,
        workflow_type="train",
        run_id="evaluate",
        **{**common, "ckpt_dir": run_dir},
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    done = time.perf_counter()
    print(f"training (incl. data preparation): {trained - start:.1f} s; evaluation: {done - trained:.1f} s")
    print((Path(args.root) / "eval" / "results.md").read_text())


if __name__ == "__main__":
    main()
