"""The disk space exclusive of the bodies: the mask rule, its choice on validation, the inferer's
logits and the evaluation report's line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spine_app.channels import MASK_NAMES
from spine_app.engines.inferer import EXCLUDED_LOGIT, PARTING_DISK_KEY, StudyInferer, exclude_disk
from spine_app.engines.report import disk_exclusion_line, disk_exclusion_report
from spine_app.metrics.disk_exclusion import (
    NO_EXCLUSION,
    check_exclusion,
    choose_disk_exclusion,
    exclusion_dice,
    exclusive_disk,
)
from spine_app.networks import SpineMultiTaskNet

VB, DISK = MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Disk_Height")


def _bow_tie() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A disk band drawn at even height between two bodies whose rims bulge into it: the reference
    disk is the band minus the rims, the vertebra probability is 0.3 on the rims."""
    truth = np.zeros((40, 40), bool)
    truth[18:22, 5:35] = True
    rims = np.zeros_like(truth)
    rims[18:19, 15:25] = rims[21:22, 15:25] = True
    truth &= ~rims
    disk_p = np.zeros((40, 40))
    disk_p[18:22, 5:35] = 0.9  # the network's band covers the rims too
    vertebra_p = np.zeros((40, 40))
    vertebra_p[:18], vertebra_p[22:] = 0.95, 0.95
    vertebra_p[rims] = 0.3
    return disk_p, vertebra_p, truth


def test_the_exclusion_takes_out_of_the_disk_only_pixels_above_the_vertebra_threshold() -> None:
    disk_p, vertebra_p, truth = _bow_tie()
    disk = disk_p > 0.5
    assert (exclusive_disk(disk, vertebra_p, None) == disk).all()
    assert (exclusive_disk(disk, vertebra_p, 0.5) == disk).all()  # rims at 0.3 stay
    assert (exclusive_disk(disk, vertebra_p, 0.2) == truth).all()  # rims at 0.3 leave: the bow tie
    scores = exclusion_dice(disk_p, vertebra_p, truth, grid=(0.2, 0.5))
    assert scores["0.2"] == pytest.approx(1.0)
    assert scores["0.5"] == scores[NO_EXCLUSION] < 0.95


def test_the_threshold_chosen_on_validation_is_the_best_and_must_gain() -> None:
    rows = [{NO_EXCLUSION: 0.80, "0.2": 0.83, "0.3": 0.82}, {NO_EXCLUSION: 0.84, "0.2": 0.85, "0.3": 0.86}]
    choice = choose_disk_exclusion(rows)
    assert choice is not None and choice.threshold == 0.2 and choice.dice == pytest.approx(0.84)
    assert choice.dice_without == pytest.approx(0.82) and choice.n == 2
    flat = [{NO_EXCLUSION: 0.85, "0.2": 0.851, "0.3": 0.80}]
    assert choose_disk_exclusion(flat).threshold is None  # 0.001 is no gain
    assert choose_disk_exclusion([]) is None


def test_an_exclusion_outside_zero_one_is_refused_by_name() -> None:
    assert check_exclusion(None) is None and check_exclusion("0.25") == 0.25
    for bad in (0.0, 1.0, -0.1, 2):
        with pytest.raises(ValueError, match="disk_exclusion"):
            check_exclusion(bad)
    with pytest.raises(ValueError, match="disk_exclusion"):
        StudyInferer(roi_size=(32, 32), disk_exclusion=1.5)


def test_the_inferer_logits_lose_the_disk_only_where_the_vertebra_is_likely() -> None:
    seg = torch.zeros(1, 8, 4, 4)
    seg[0, DISK] = 3.0  # disk probability 0.95 everywhere
    seg[0, VB, 0, :] = 2.0  # vertebra probability 0.88 on the top row
    seg[0, VB, 1, :] = -1.0  # 0.27 on the second row
    seg[0, VB, 2:, :] = -5.0
    out = exclude_disk(seg, 0.2)
    assert (out[0, DISK, :2] <= EXCLUDED_LOGIT).all() and (out[0, DISK, 2:] == 3.0).all()
    assert torch.equal(out[0, VB], seg[0, VB]) and seg[0, DISK].eq(3.0).all()  # the input is not changed
    assert torch.equal(exclude_disk(seg, 0.5)[0, DISK, 1:], seg[0, DISK, 1:])
    assert exclude_disk(seg, None) is seg


def test_the_report_chooses_on_validation_and_scores_test_at_that_threshold() -> None:
    val = [{"disk_exclusion": {NO_EXCLUSION: 0.80, "0.2": 0.84, "0.3": 0.83}}, {"label": 0}]
    test = [{"disk_exclusion": {NO_EXCLUSION: 0.86, "0.2": 0.85, "0.3": 0.88}}]
    report = disk_exclusion_report(val, test)
    assert report["threshold"] == 0.2 and report["test_dice"] == pytest.approx(0.85)
    assert report["test_dice_without"] == pytest.approx(0.86) and report["n_test"] == 1
    assert "`disk_exclusion: 0.2`" in disk_exclusion_line(report)
    none = disk_exclusion_report([{"disk_exclusion": {NO_EXCLUSION: 0.9, "0.2": 0.8}}], test)
    assert none["threshold"] is None and "`disk_exclusion: null`" in disk_exclusion_line(none)
    assert disk_exclusion_report([{"label": 1}], test) == {} and disk_exclusion_line({}) == ""


def test_the_inferer_excludes_the_written_disk_but_parts_the_bodies_with_the_drawn_one() -> None:
    torch.manual_seed(0)
    net = SpineMultiTaskNet(decoder_channels=(16, 16, 8, 8, 8)).eval()
    inputs = {"ap": torch.rand(2, 1, 96, 64), "lat": torch.rand(2, 1, 96, 64), "present": torch.ones(2, 2)}
    with torch.no_grad():
        plain = StudyInferer(roi_size=(96, 64))(inputs, net)
        threshold = float(torch.sigmoid(plain["seg_lat"][:, VB]).median())  # an untrained net: about 0.5
        excluded = StudyInferer(roi_size=(96, 64), disk_exclusion=threshold)(inputs, net)
    assert PARTING_DISK_KEY not in plain
    torch.testing.assert_close(excluded[PARTING_DISK_KEY][:, 0], plain["seg_lat"][:, DISK])
    torch.testing.assert_close(excluded["level_logits"], plain["level_logits"])  # the same bodies
    bone = torch.sigmoid(plain["seg_lat"][:, VB]) > threshold
    assert bone.any() and (~bone).any()
    assert (excluded["seg_lat"][:, DISK][bone] <= EXCLUDED_LOGIT).all()
    torch.testing.assert_close(excluded["seg_lat"][:, DISK][~bone], plain["seg_lat"][:, DISK][~bone])
    others = [c for c in range(8) if c != DISK]
    torch.testing.assert_close(excluded["seg_lat"][:, others], plain["seg_lat"][:, others])
