"""Embedding map of a split: what the study classifier's input looks like, projected to 2-D.

Each study's point is the fused head's input (the AP and LAT embeddings of the shared encoder,
``SpineMultiTaskNet.study_embedding``), projected with scikit-learn's t-SNE: a well-kept library
already beside SciPy in most scientific stacks, deterministic with a fixed ``random_state``, and
fast for the few hundred points of a test split (UMAP would add numba/llvmlite for no gain here).
Two panels: coloured by class, misclassified studies (at the decision threshold) ringed; and
coloured by the study's worst Genant grade when truth.json gives it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spine_app.networks.precision import FP32, Precision


@dataclass
class StudyEmbeddings:
    """One split's study embeddings with what colours them."""

    study_ids: list[str]
    vectors: np.ndarray  # (N, D)
    labels: np.ndarray  # (N,) 0 Normal, 1 Damaged, -1 unknown
    grades: np.ndarray  # (N,) worst Genant grade from truth.json, -1 unknown


def worst_grade(truth_path: str | None) -> int:
    """The highest Genant grade of truth.json's fractures (0 without fractures, -1 without truth)."""
    if not truth_path or not Path(truth_path).is_file():
        return -1
    try:
        fractures = json.loads(Path(truth_path).read_text()).get("fractures") or []
    except (OSError, ValueError):
        return -1
    return max((int(f.get("grade", 0)) for f in fractures), default=0)


def study_embeddings(net: torch.nn.Module, loader: Any, precision: Precision = FP32) -> StudyEmbeddings:
    """Embeddings of every study ``loader`` yields (batches of LoadStudyd dicts); ``net`` is a
    :class:`spine_app.networks.SpineMultiTaskNet` (inside a StudyModel/DDP wrapper is fine)."""
    from spine_app.engines.inferer import unwrap_network

    net = unwrap_network(net)
    device = next(net.parameters()).device
    entries = {e["study_id"]: e for e in getattr(loader.dataset, "data", [])}
    ids, vectors, labels, grades = [], [], [], []
    was_training = net.training
    net.eval()
    with torch.no_grad(), precision.autocast():
        for batch in loader:
            ap, lat = (precision.to_input(torch.as_tensor(batch[k]).to(device)) for k in ("ap", "lat"))
            present = torch.as_tensor(batch["present"]).to(device)
            vectors.append(net.study_embedding(ap, lat, present).float().cpu().numpy())
            for b, study_id in enumerate(batch["study_id"]):
                ids.append(study_id)
                labels.append(int(torch.as_tensor(batch["label"])[b]))
                grades.append(worst_grade(entries.get(study_id, {}).get("truth")))
    net.train(was_training)
    return StudyEmbeddings(ids, np.concatenate(vectors), np.asarray(labels), np.asarray(grades))


def project_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) t-SNE coordinates (perplexity adapted to small N; PCA start; seeded)."""
    from sklearn.manifold import TSNE

    n = len(vectors)
    if n < 3:
        return np.zeros((n, 2))
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(vectors, dtype=np.float64)
    )


def plot_embedding_map(
    emb: StudyEmbeddings, probabilities: dict[str, float], threshold: float, path: str | Path, seed: int = 0
) -> dict[str, Any]:
    """Write the two-panel embedding map PNG; returns {"points": [...], "misclassified": [...]}.

    ``probabilities``: study id -> the decision's Damaged probability; a study is misclassified
    when ``probability >= threshold`` differs from its label.
    """
    from spine_app.viz.figures import save_figure, subplots

    xy = project_2d(emb.vectors, seed)
    prob = np.asarray([probabilities.get(i, np.nan) for i in emb.study_ids])
    wrong = (emb.labels >= 0) & np.isfinite(prob) & ((prob >= threshold) != (emb.labels == 1))
    fig, axes = subplots(1, 2, figsize=(10, 4.5))
    for label, name, colour in ((0, "Normal", "tab:blue"), (1, "Damaged", "tab:red")):
        pick = emb.labels == label
        axes[0].scatter(xy[pick, 0], xy[pick, 1], s=22, c=colour, label=f"{name} ({int(pick.sum())})")
    axes[0].scatter(
        xy[wrong, 0],
        xy[wrong, 1],
        s=90,
        facecolors="none",
        edgecolors="black",
        linewidths=1.2,
        label=f"misclassified ({int(wrong.sum())})",
    )
    axes[0].set_title("studies by class (ringed: misclassified)")
    axes[0].legend(fontsize=8)
    colours = {-1: "lightgrey", 0: "tab:green", 1: "gold", 2: "darkorange", 3: "tab:red"}
    for grade, colour in colours.items():
        pick = emb.grades == grade
        if pick.any():
            name = "no truth" if grade < 0 else f"worst Genant grade {grade}"
            axes[1].scatter(xy[pick, 0], xy[pick, 1], s=22, c=colour, label=f"{name} ({int(pick.sum())})")
    axes[1].set_title("studies by worst fracture grade (truth.json)")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("t-SNE of the study classifier's input (AP + LAT embeddings)")
    save_figure(fig, Path(path))
    points = [
        {
            "study_id": s,
            "x": round(float(x), 3),
            "y": round(float(y), 3),
            "label": int(lab),
            "worst_grade": int(g),
            "misclassified": bool(w),
        }
        for s, (x, y), lab, g, w in zip(emb.study_ids, xy, emb.labels, emb.grades, wrong)
    ]
    return {"points": points, "misclassified": [p["study_id"] for p in points if p["misclassified"]]}
