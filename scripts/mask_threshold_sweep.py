"""Dice of every mask channel at mask-probability thresholds 0.30-0.80, on the validation and test
splits of one or more datalists, with the shipped weights through the bundle's inferer (the working
canvas, as evaluation scores it). Would a per-channel threshold chosen on validation lift a channel?
(docs/results.md, "Mask thresholds per channel").

    python scripts/mask_threshold_sweep.py DATALIST [DATALIST ...] [--json sweep.json]
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from monai.data import DataLoader, Dataset

from spine_app.bundle import BUNDLE_DIR, load_bundle_network
from spine_app.channels import CHANNEL_VIEW, MASK_NAMES, VIEW_KEYS, avail_key, seg_key
from spine_app.data.importer import load_datalist
from spine_app.data.study_transforms import LoadStudyd
from spine_app.engines.batch import prepare_study_batch
from spine_app.engines.inferer import StudyInferer

THRESHOLDS = np.round(np.arange(0.30, 0.81, 0.05), 2)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool masks (1 when both are empty, as the bundle metric counts it)."""
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (predicted & truth).sum() / total)


def sweep(network: torch.nn.Module, canvas: list[int], entries: list) -> dict[str, dict[float, float]]:
    """channel -> threshold -> mean Dice over the studies where the channel is known."""
    inferer = StudyInferer(roi_size=canvas)
    loader = DataLoader(Dataset(entries, transform=LoadStudyd(canvas)), batch_size=4, num_workers=1)
    scores: dict[str, dict[float, list[float]]] = {name: {float(t): [] for t in THRESHOLDS} for name in MASK_NAMES}
    for batch in loader:
        inputs, targets = prepare_study_batch(batch, "cpu")
        with torch.no_grad():
            pred = inferer(inputs, network)
        for view in VIEW_KEYS:
            probs = torch.sigmoid(pred[seg_key(view)].float()).numpy()
            truth = targets[seg_key(view)].float().numpy() > 0.5
            known = targets[avail_key(view)].numpy() > 0
            for b in range(probs.shape[0]):
                for c, (name, channel_view) in enumerate(zip(MASK_NAMES, CHANNEL_VIEW)):
                    if channel_view.lower() == view and known[b, c]:
                        for t in THRESHOLDS:
                            scores[name][float(t)].append(dice(probs[b, c] > t, truth[b, c]))
    return {name: {t: float(np.mean(v)) for t, v in row.items()} for name, row in scores.items()}


def main(argv: list[str]) -> None:
    json_out = argv[argv.index("--json") + 1] if "--json" in argv else None
    datalists = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] != "--json")]
    if not datalists:
        sys.exit(__doc__)
    network, canvas = load_bundle_network(BUNDLE_DIR)
    results = {}
    for datalist in datalists:
        splits = load_datalist(datalist)
        for split in ("validation", "test"):
            table = sweep(network.eval(), canvas, splits[split])
            results[f"{datalist}:{split}"] = table
            print(f"{datalist} {split} ({len(splits[split])} studies): Dice at 0.5, best threshold, Dice there")
            for name, row in table.items():
                best = max(row, key=row.get)
                print(f"  {name:30s} {row[0.5]:.4f}  {best:.2f}  {row[best]:.4f}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
