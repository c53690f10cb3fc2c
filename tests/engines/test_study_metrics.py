"""StudyMetrics on batches made from generated studies: a perfect prediction scores 1 everywhere it
is defined, swapped vertebral lines fail the side check, unknown channels are not scored, and the
key score follows the decision's AUROC."""

from __future__ import annotations

import pytest
import torch

from spine_app.channels import LINE_CHANNELS, MASK_NAMES
from spine_app.data.importer import load_datalist
from spine_app.data.study_transforms import LoadStudyd
from spine_app.engines.batch import prepare_study_batch
from spine_app.engines.dataset import ensure_datalist
from spine_app.engines.metrics import StudyMetrics

CANVAS = (160, 120)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("studies")
    datalist = load_datalist(ensure_datalist(str(folder), synthetic_studies=4, seed=11, preset="easy"))
    entries = [e for split in ("training", "validation", "test") for e in datalist.get(split, [])]
    chosen = [next(e for e in entries if e["label"] == 0), next(e for e in entries if e["label"] == 1)]
    samples = [LoadStudyd(CANVAS)(e) for e in chosen]
    collated = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if torch.is_tensor(samples[0][k])}
    collated.update({k: [s[k] for s in samples] for k in samples[0] if not torch.is_tensor(samples[0][k])})
    return collated


def perfect_prediction(target: dict, damaged_logit: float = 3.0) -> dict:
    pred = {f"seg_{v}": (target[f"seg_{v}"] > 0.5).float() * 16 - 8 for v in ("ap", "lat")}
    logits = torch.where(target["label"] > 0, torch.tensor(damaged_logit), torch.tensor(-damaged_logit))
    pred.update(cls=logits, cls_ap=logits, cls_lat=logits)
    return pred


def test_a_perfect_prediction_scores_one(batch: dict) -> None:
    _, target = prepare_study_batch(batch)
    metric = StudyMetrics()
    metric.update((perfect_prediction(target), target))
    score = metric.compute()
    for record in metric.records:
        scored = [name for name in MASK_NAMES if name in record]
        assert scored == list(MASK_NAMES)  # every channel of both films is known here
        assert all(record[name]["dice"] == pytest.approx(1.0) for name in scored)
        assert all(record[name]["hd95_px"] == pytest.approx(0.0) for name in scored)
        assert record["line_side_ok"] is True
        # the reference disk is exclusive of the bodies: no exclusion threshold takes a true disk pixel away
        assert all(value == pytest.approx(1.0) for value in record["disk_exclusion"].values())
    assert metric.summary["auroc"] == 1.0 and metric.summary["line_side_pass"] == 1.0
    assert score == pytest.approx(1.0)


def test_swapped_lines_fail_the_side_check_and_unknown_channels_are_not_scored(batch: dict) -> None:
    _, target = prepare_study_batch(batch)
    pred = perfect_prediction(target, damaged_logit=-3.0)  # the classifier is exactly wrong
    anterior, posterior = (MASK_NAMES.index(n) for n in LINE_CHANNELS)
    pred["seg_lat"][:, [anterior, posterior]] = pred["seg_lat"][:, [posterior, anterior]].clone()
    target = dict(target, avail_ap=target["avail_ap"].clone())
    target["avail_ap"][:, MASK_NAMES.index("Ap_Pedicle")] = 0  # the pedicles were not annotated
    metric = StudyMetrics()
    metric.update((pred, target))
    metric.compute()
    assert all(record["line_side_ok"] is False for record in metric.records)
    assert metric.summary["line_side_pass"] == 0.0
    assert all("Ap_Pedicle" not in record for record in metric.records)
    assert "dice_Ap_Pedicle" not in metric.summary
    assert metric.summary["dice_Lat_Anterior_Vertebral_Line"] < 0.5
    assert metric.summary["auroc"] == 0.0


def test_a_prepared_batch_has_the_named_keys(batch: dict) -> None:
    """The batch-key contract: LoadStudyd writes the per-view keys the channel module names, and
    prepare_study_batch returns exactly the keys its TypedDicts declare (the optional level keys
    only where the batch has them)."""
    from spine_app.channels import VIEWS, avail_key, geom_key, seg_key, view_key
    from spine_app.engines.batch import StudyInputs, StudyTargets

    assert [(seg_key(v), avail_key(v), geom_key(v)) for v in VIEWS] == [
        ("seg_ap", "avail_ap", "geom_ap"),
        ("seg_lat", "avail_lat", "geom_lat"),
    ]
    assert seg_key("lat") == seg_key("LAT")
    with pytest.raises(ValueError, match="unknown view 'PA'"):
        view_key("PA")
    assert {key(v) for v in VIEWS for key in (seg_key, avail_key, geom_key)} <= set(batch)
    inputs, target = prepare_study_batch(batch)
    assert set(inputs) == StudyInputs.__required_keys__  # no level boxes without LevelBoxesd
    assert (
        StudyTargets.__required_keys__ <= set(target) <= StudyTargets.__required_keys__ | StudyTargets.__optional_keys__
    )
