"""The level head: ROI pooling per body, MIL pooling, the level loss and the body boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spine_app.channels import MASK_NAMES
from spine_app.data.levels import (
    INFERENCE_MAX_LEVELS,
    MAX_LEVELS,
    LevelBoxesd,
    body_instances,
    check_label_source,
    decode_level,
    drop_implausible_bodies,
    encode_level,
    exposed_rows,
    film_level_boxes,
    level_map_from_truth,
    pad_boxes,
    reference_boxes_kept,
    scaled_box_jitter,
    trim_levels,
)
from spine_app.engines.batch import prepare_study_batch
from spine_app.engines.inferer import predicted_levels
from spine_app.losses import MultiTaskLoss
from spine_app.losses.multitask import cumulative_targets
from spine_app.networks import SpineMultiTaskNet
from spine_app.networks.levels import (
    LevelBatch,
    LevelHead,
    mil_pool,
    predicted_grade,
    sample_rois,
    with_grades,
)
from tests.helpers import twin_networks


def column(n: int = 5, height: int = 14, gap: int = 4, top: int = 10, shape=(128, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A straight column of ``n`` bodies (rectangles) with disks between them: (vertebra, disk) masks."""
    vertebra = np.zeros(shape, bool)
    disk = np.zeros(shape, bool)
    row = top
    for i in range(n):
        vertebra[row : row + height, 20:44] = True
        if i < n - 1:
            disk[row + height : row + height + gap, 22:42] = True
        row += height + gap
    return vertebra, disk


def column_item() -> dict[str, torch.Tensor]:
    """A study item whose LAT reference masks are one :func:`column` (vertebra and disk channels)."""
    vertebra, disk = column()
    seg = torch.zeros(8, *vertebra.shape)
    seg[3], seg[5] = torch.from_numpy(vertebra).float(), torch.from_numpy(disk).float()
    avail = torch.zeros(8)
    avail[[3, 5]] = 1
    return {"seg_lat": seg, "avail_lat": avail}


def boxes_of(vertebra: np.ndarray, disk: np.ndarray | None) -> LevelBatch:
    padded = pad_boxes(film_level_boxes(vertebra, disk))
    return LevelBatch(*(padded[k][None] for k in ("level_centre", "level_axis", "level_size", "level_valid")))


def test_bodies_are_separated_by_the_disks_and_merged_ones_are_split():
    vertebra, disk = column()
    boxes = film_level_boxes(vertebra, disk)
    assert len(boxes) == 5
    assert np.all(np.diff(boxes.centre[:, 0]) > 0)  # top to bottom
    np.testing.assert_allclose(boxes.axis[:, 0], 1.0, atol=1e-6)  # a vertical column
    # without the disk mask the column is one blob of touching bodies: split at the narrow waists
    narrow = vertebra.copy()
    narrow[disk] = True
    narrow[:, 20:22] &= ~disk[:, 22:24]  # the disk spaces are narrower than the bodies
    narrow[:, 42:44] &= ~disk[:, 22:24]
    _, n = body_instances(narrow, None)
    assert 4 <= n <= 6


def test_bodies_cut_by_the_exposed_field_are_left_out():
    """A body the film's edge (or a collimated band) cuts shows only part of its height: the level head
    does not grade it. The field is where the working-canvas film has any non-zero pixel."""
    vertebra, disk = column(n=5, top=10)  # bodies at rows 10-23, 28-41, ..., 82-95
    film = np.zeros(vertebra.shape, np.float32)
    film[12:90] = 0.5  # exposed rows 12..89: the first and the last body run past the field's edges
    field = exposed_rows(film)
    assert field == (12, 89)
    boxes = film_level_boxes(vertebra, disk, field_rows=field)
    assert len(boxes) == 3 and boxes.centre[0, 0] > 28 and boxes.centre[-1, 0] < 82
    assert len(film_level_boxes(vertebra, disk, field_rows=(0, 127))) == 5  # a whole field cuts nothing
    assert exposed_rows(np.zeros((8, 8))) is None
    # the inferer's level search applies it to the LAT film it is given
    logits = torch.where(torch.from_numpy(np.stack([vertebra, disk])), 5.0, -5.0)
    seg = torch.full((1, 8, *vertebra.shape), -5.0)
    seg[0, [MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Disk_Height")]] = logits
    present = torch.ones(1)
    assert int(predicted_levels(seg, present).valid.sum()) == 5
    assert int(predicted_levels(seg, present, lat=torch.from_numpy(film)[None, None]).valid.sum()) == 3


@pytest.mark.parametrize("band", [1.0, 0.0])
def test_a_collimator_band_bounds_the_exposed_field(band: float):
    """Under the collimator blades no dose reaches the detector: the band is uniformly white on a
    radiograph (or black where processing blanked it), and the network draws the column on into it.
    A body that reaches into the band is cut, as one at the film's edge; mid-grey rows are the field."""
    vertebra, disk = column(n=5, top=10)  # bodies at rows 10-23, 28-41, ..., 82-95
    rng = np.random.default_rng(0)
    film = rng.uniform(0.1, 0.9, vertebra.shape).astype(np.float32)  # the patient, every row
    film[:12] = band
    film[90:] = band
    film[90:, :3] = 0.5  # a marker or a scatter halo in the band: a few grey pixels do not make it field
    assert exposed_rows(film) == (12, 89)
    boxes = film_level_boxes(vertebra, disk, field_rows=exposed_rows(film))
    assert len(boxes) == 3 and boxes.centre[0, 0] > 28 and boxes.centre[-1, 0] < 82
    film[:12] = rng.uniform(0.1, 0.9, (12, vertebra.shape[1]))  # no band at the top: the field starts at row 0
    assert exposed_rows(film) == (0, 89)


def test_blobs_no_body_could_be_are_not_graded():
    """On a real chest film the predicted vertebra mask also holds the heart (one blob far larger than
    a body, in front of the column) and stray spots beside it: the level head grades the column only."""
    vertebra, disk = column(n=6, shape=(128, 128))  # bodies at cols 20-43, rows 10-23, 28-41, ...
    stray = vertebra.copy()
    stray[40:100, 70:125] = True  # the heart: 3300 px against 336 px bodies
    stray[30:44, 60:70] = True  # a spot off the column, beside the second body
    assert len(film_level_boxes(stray, disk)) > 6  # the heart is even split like merged bodies
    boxes = film_level_boxes(stray, disk, plausible_only=True)
    assert len(boxes) == 6
    assert np.all(np.abs(boxes.centre[:, 1] - 31.5) < 1.0)  # every kept centre on the column
    # the inferer's level search applies it
    seg = torch.full((1, 8, 128, 128), -5.0)
    seg[0, [MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Disk_Height")]] = torch.where(
        torch.from_numpy(np.stack([stray, disk])), 5.0, -5.0
    )
    assert int(predicted_levels(seg, torch.ones(1)).valid.sum()) == 6


def test_a_curved_column_and_a_short_one_keep_every_body():
    """A kyphotic column (centres on an arc) and lumbar bodies twice a thoracic one's area are bodies;
    with fewer than four blobs there is no column to judge by, and nothing is removed."""
    shape = (200, 160)
    instances = np.zeros(shape, np.int32)
    for i in range(9):
        row = 10 + 20 * i
        col = int(40 + 0.012 * (row - 100) ** 2)  # an arc bowing by 30 px over the column
        half = 8 if i < 6 else 11  # the lowest three twice the area
        instances[row : row + 14, col - half : col + half] = i + 1
    kept, n = drop_implausible_bodies(instances, 9)
    assert n == 9 and np.array_equal(kept, instances)
    few = np.zeros((64, 64), np.int32)
    few[5:15, 5:15], few[20:30, 5:15], few[30:60, 30:64] = 1, 2, 3
    assert drop_implausible_bodies(few, 3)[1] == 3


def growing_column(
    heights: list[int], gap: int = 4, width=lambda h: 2 * h, top: int = 6, cols: int = 160, below: int = 6
):
    """A straight column whose bodies are ``heights`` tall (and ``width(h)`` wide), disks of ``gap`` rows
    between them, ``below`` empty rows under it: (vertebra, disk, the bodies' centre rows)."""
    rows = top + sum(heights) + gap * len(heights) + below
    vertebra, disk = np.zeros((rows, cols), bool), np.zeros((rows, cols), bool)
    row, centres = top, []
    for h in heights:
        half = width(h) // 2
        vertebra[row : row + h, 80 - half : 80 + half] = True
        disk[row + h : row + h + gap, 80 - half + 2 : 80 + half - 2] = True
        centres.append(row + h / 2)
        row += h + gap
    return vertebra, disk, centres


def test_predicted_bodies_are_measured_against_their_neighbours_not_the_whole_film():
    """A whole-spine film: bodies grow from 10 rows (upper thoracic) to 22 (lumbar). The film-wide
    median (the training rule) takes the lowest lumbar bodies for two merged ones and halves them; the
    rule for predicted masks measures each blob against its neighbours and keeps them whole, and still
    splits two small bodies whose disk the network did not draw."""
    heights = [10, 10, 11, 11, 12, 12, 13, 14, 15, 16, 18, 20, 22, 23, 24, 25, 26]
    vertebra, disk, centres = growing_column(heights)
    assert len(film_level_boxes(vertebra, disk, local=True)) == len(heights)
    assert len(film_level_boxes(vertebra, disk)) > len(heights)  # the film-wide rule splits the lumbar bodies
    bridged = disk.copy()
    bridged[int(centres[2]) : int(centres[3])] = False  # no disk drawn between the third and fourth body
    boxes = film_level_boxes(vertebra | (disk & ~bridged), bridged, local=True)
    assert len(boxes) == len(heights)
    np.testing.assert_allclose(boxes.centre[:, 0], centres, atol=2.0)


def test_specks_of_a_predicted_mask_do_not_shrink_the_typical_body():
    """Sixteen specks beside a column of 12 bodies: the film-wide median blob would be a speck and every
    body would look like several merged ones. They neither shrink the typical body nor stay as bodies."""
    vertebra, disk, centres = growing_column([16] * 12, width=lambda h: 30)
    specky = vertebra.copy()
    for k in range(16):
        specky[10 + 15 * k : 13 + 15 * k, 30:33] = True
    boxes = film_level_boxes(specky, disk, local=True)
    assert len(boxes) == 12
    np.testing.assert_allclose(boxes.centre[:, 0], centres, atol=1.0)


def test_a_curved_chain_of_merged_bodies_is_split_along_the_column_where_it_lies():
    """The upper thoracic column of a whole-spine film bends away from the film-wide axis and its bodies
    tilt with it: a chain of four merged bodies there is measured along its own stretch of column and
    split in four, each piece on its own body."""
    shape = (280, 220)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    vertebra, disk, centres = np.zeros(shape, bool), np.zeros(shape, bool), []
    for i in range(12):
        row, col = 14 + 20 * i, 60 + 0.002 * (14 + 20 * i - 250) ** 2  # a kyphotic curve
        along = np.array([1.0, 0.004 * (row - 250)]) / np.hypot(1.0, 0.004 * (row - 250))
        u = (rr - row) * along[0] + (cc - col) * along[1]  # along the column here
        v = (cc - col) * along[0] - (rr - row) * along[1]  # across it
        vertebra |= (np.abs(u) <= 7.5) & (np.abs(v) <= 12)
        space = (u > 7.5) & (u <= 12.5) & (np.abs(v) <= 10)
        if i in (1, 2, 3):  # bodies 2-5 merged: the network drew no disk between them
            vertebra |= space
        elif i < 11:
            disk |= space
        centres.append(row)
    boxes = film_level_boxes(vertebra, disk & ~vertebra, local=True)
    assert len(boxes) == 12
    np.testing.assert_allclose(boxes.centre[:, 0], centres, atol=2.5)


def test_blobs_beyond_a_gap_in_the_column_are_not_graded_but_missing_bodies_are_no_gap():
    """Some predicted masks draw a chain of blobs in the pelvis, in line with the column but well below
    L5: beyond a gap of more than MAX_COLUMN_GAP spacings they are left out. Two bodies the mask missed
    inside the column (a step of three spacings) break nothing."""
    vertebra, disk, centres = growing_column([16] * 10, width=lambda h: 30, below=180)
    pelvis = vertebra.copy()
    bottom = int(centres[-1]) + 5 * 20  # five spacings below the last body
    for k in range(3):
        pelvis[bottom + 18 * k : bottom + 18 * k + 12, 70:90] = True
    boxes = film_level_boxes(pelvis, disk, plausible_only=True, local=True)
    assert len(boxes) == 10 and boxes.centre[-1, 0] < bottom
    missing = vertebra.copy()
    missing[int(centres[4]) - 8 : int(centres[5]) + 9] = False  # bodies 5 and 6 not drawn
    boxes = film_level_boxes(missing, disk, plausible_only=True, local=True)
    assert len(boxes) == 8 and boxes.centre[0, 0] < centres[1] and boxes.centre[-1, 0] > centres[-2]


def test_the_inferer_scores_every_body_of_a_whole_spine_film():
    """Training caps a film at MAX_LEVELS bodies; at inference every body of a whole-spine film is scored."""
    heights = [10, 10, 11, 11, 12, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 22, 22, 22]
    vertebra, disk, _ = growing_column(heights)
    assert len(heights) > MAX_LEVELS
    logits = torch.where(torch.from_numpy(np.stack([vertebra, disk])), 5.0, -5.0)
    seg = torch.full((1, 8, *vertebra.shape), -5.0)
    seg[0, [MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Disk_Height")]] = logits
    levels = predicted_levels(seg, torch.ones(1))
    assert int(levels.valid.sum()) == len(heights) <= INFERENCE_MAX_LEVELS


def test_level_map_labels_each_body_with_its_truth_grade():
    vertebra, disk = column()
    boxes = film_level_boxes(vertebra, disk)
    truth = {
        "pixel_spacing_mm": [1.0, 1.0],
        "levels": [
            {
                "in_view_lat": True,
                "center_lat_px": list(map(float, c)),
                "heights_mm": {"posterior": 14.0},
                "fracture": {"grade": 2, "kind": "wedge"} if i == 3 else None,
            }
            for i, c in enumerate(boxes.centre)
        ],
    }
    level_map = level_map_from_truth(vertebra, disk, truth)
    labelled = film_level_boxes(vertebra, disk, 0, level_map)
    assert labelled.grade.tolist() == [0, 0, 0, 2, 0]
    assert decode_level(encode_level(2, "wedge")) == (2, "wedge")
    assert decode_level(0)[0] == -1


def test_level_boxes_transform_pads_and_keeps_grades_through_jitter():
    vertebra, disk = column()
    seg = torch.zeros(8, *vertebra.shape)
    seg[3], seg[5] = torch.from_numpy(vertebra).float(), torch.from_numpy(disk).float()
    avail = torch.zeros(8)
    avail[[3, 5]] = 1
    level_map = torch.zeros(1, *vertebra.shape)
    level_map[0][torch.from_numpy(vertebra)] = float(encode_level(0))
    transform = LevelBoxesd(max_levels=8)
    transform.set_random_state(0)
    out = transform({"seg_lat": seg, "avail_lat": avail, "levels_lat": level_map})
    assert out["level_valid"].tolist() == [1.0] * 5 + [0.0] * 3
    assert out["level_grade"][:5].tolist() == [0] * 5 and out["level_grade"][5:].tolist() == [-1] * 3


def test_scaled_box_jitter_gives_the_reference_boxes_at_zero_and_restores_the_transform():
    """The level refit's box_jitter: inside a Compose, factor 0 turns the training jitter off (the
    boxes of an unjittered transform, whatever the random state), and leaving restores it."""
    from monai.transforms import Compose

    item = column_item()
    exact = LevelBoxesd(max_levels=8, shift=0.0, scale=0.0, turn_deg=0.0)(item)
    jittered = LevelBoxesd(max_levels=8)
    pipeline = Compose([Compose([jittered])])
    pipeline.set_random_state(0)
    assert not torch.allclose(torch.as_tensor(pipeline(item)["level_centre"]), torch.as_tensor(exact["level_centre"]))
    with scaled_box_jitter(pipeline, 0.0) as found:
        assert found == 1
        for _ in range(3):
            out = pipeline(item)
            for key in ("level_centre", "level_axis", "level_size"):
                torch.testing.assert_close(torch.as_tensor(out[key]), torch.as_tensor(exact[key]))
    assert (jittered.shift, jittered.scale, jittered.turn_deg) == (0.06, 0.12, 6.0)
    with scaled_box_jitter(pipeline, 0.5):
        assert (jittered.shift, jittered.scale, jittered.turn_deg) == pytest.approx((0.03, 0.06, 3.0))
    with pytest.raises(ValueError, match="jitter"), scaled_box_jitter(pipeline, -1.0):
        pass


def test_kept_reference_boxes_are_the_unjittered_ones_and_the_jitter_draws_do_not_change():
    """The level refit reads each film once for both heads: with the reference boxes kept, the
    jittered boxes are those of the same random state without them, the reference boxes those of
    an unjittered transform, and leaving the block stops adding them."""
    from monai.transforms import Compose

    item = column_item()
    exact = LevelBoxesd(max_levels=8, shift=0.0, scale=0.0, turn_deg=0.0)(item)
    pipeline = Compose([LevelBoxesd(max_levels=8)])
    pipeline.set_random_state(3)
    plain = [pipeline(item) for _ in range(2)]
    pipeline.set_random_state(3)
    with reference_boxes_kept(pipeline) as found:
        kept = [pipeline(item) for _ in range(2)]
    assert found == 1 and "reference_level_centre" not in pipeline(item)
    for a, b in zip(plain, kept):
        for key in ("level_centre", "level_axis", "level_size", "level_valid"):
            torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]))
            if key != "level_valid":
                torch.testing.assert_close(torch.as_tensor(b[f"reference_{key}"]), torch.as_tensor(exact[key]))
    with pytest.raises(ValueError, match="no LevelBoxesd"), reference_boxes_kept(Compose([])):
        pass


def test_the_grade_head_grades_only_once_fitted_and_old_weights_load_without_one():
    """A network built with a grade head behaves as one without until the refit fits it: weights of
    bundle 0.8 (no grade head) load and give the same level logits; once fitted, P(grade >= 1) stays
    the level head's and the two grade columns are the grade head's. In training the grade head is
    frozen: the level loss sends it no gradient."""
    torch.manual_seed(0)
    old = SpineMultiTaskNet(decoder_channels=(32, 16, 16, 8, 8), grade_head=False).eval()
    net = SpineMultiTaskNet(decoder_channels=(32, 16, 16, 8, 8)).eval()
    net.load_state_dict(old.state_dict())  # the keys of a 0.8 model: no grade head
    assert not net.grades_fitted
    vertebra, disk = column(n=4, height=20, gap=6, shape=(128, 96))
    boxes = boxes_of(vertebra, disk)
    image = torch.rand(1, 1, 128, 96)
    with torch.no_grad():
        before = net.level_logits(image, boxes)["level_logits"]
        torch.testing.assert_close(before, old.level_logits(image, boxes)["level_logits"])
        grader = LevelHead(net.grade_head.fine[0].in_channels, net.grade_head.deep[0].in_features).eval()
        torch.nn.init.normal_(grader.out[-1].weight)
        net.fit_grade_head(grader.state_dict())
        after = net.level_logits(image, boxes)["level_logits"]
        rois = net.level_head.rois(*net.level_features(net.view_pass(image)), boxes)
        expected = with_grades(net.level_head.score(rois), grader.score(rois)).reshape(after.shape)
    assert net.grades_fitted and bool(net.state_dict()["grade_head_fitted"])
    torch.testing.assert_close(after[..., 0], before[..., 0])
    torch.testing.assert_close(after, expected)
    assert not torch.allclose(after[..., 1:], before[..., 1:])
    reloaded = SpineMultiTaskNet(decoder_channels=(32, 16, 16, 8, 8)).eval()
    reloaded.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded.level_logits(image, boxes)["level_logits"], after)
    net.train()
    out = net.forward_study(image, image, torch.ones(1, 2), boxes)
    out["level_logits"].sum().backward()
    assert all(p.grad is None for p in net.grade_head.parameters())
    assert any(p.grad is not None for p in net.level_head.parameters())


def test_roi_pooling_gives_one_logit_per_body_and_a_masked_body_contributes_nothing():
    torch.manual_seed(0)
    head = LevelHead(fine_channels=3, deep_channels=4, roi=16).eval()
    vertebra, disk = column(n=2, height=20, gap=6)
    boxes = boxes_of(vertebra, disk)
    fine = torch.rand(1, 3, *vertebra.shape)
    deep = torch.rand(1, 4, vertebra.shape[0] // 16, vertebra.shape[1] // 16)
    logits = head(fine, deep, boxes)
    assert logits.shape == (1, MAX_LEVELS, 3)
    assert int(boxes.valid.sum()) == 2
    # changing the pixels below both boxes changes nothing; changing body 2 changes its logits
    changed = fine.clone()
    changed[..., 100:, :] = 1.0 - changed[..., 100:, :]
    torch.testing.assert_close(head(changed, deep, boxes)[0, :2], logits[0, :2])
    changed[..., 40:60, :] = 1.0 - changed[..., 40:60, :]
    assert not torch.allclose(head(changed, deep, boxes)[0, 1], logits[0, 1])
    patches = sample_rois(fine, boxes, 16, tuple(vertebra.shape))
    assert patches.shape == (MAX_LEVELS, 3, 16, 16)
    # MIL: a masked-out (padding) level never changes the study logit, whatever its value
    level = logits[..., 0].detach().clone()
    level[0, 5] = 50.0
    for method in ("max", "lse", "noisy_or"):
        assert torch.allclose(
            mil_pool(level, boxes.valid, method), mil_pool(logits[..., 0].detach(), boxes.valid, method)
        )


def test_roi_pooling_reads_only_inside_the_box():
    vertebra, disk = column(n=2, height=20, gap=6)
    boxes = boxes_of(vertebra, disk)
    fine = torch.zeros(1, 1, *vertebra.shape)
    fine[..., 90:, :] = 1.0  # far below both bodies
    patches = sample_rois(fine, boxes, 8, tuple(vertebra.shape))
    assert float(patches[:2].abs().max()) == 0.0
    fine[..., 4:14, 24:40] = 5.0  # inside body 1, outside the box of body 2
    patches = sample_rois(fine, boxes, 8, tuple(vertebra.shape))
    assert float(patches[0].max()) > 0 and float(patches[1].max()) == 0.0


@pytest.mark.parametrize("method", ["max", "lse", "noisy_or"])
def test_mil_gradients_reach_only_the_levels_that_drive_the_study(method):
    logits = torch.tensor([[-4.0, 3.0, -5.0, 8.0]], requires_grad=True)
    valid = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last level is padding
    mil_pool(logits, valid, method).sum().backward()
    grad = logits.grad[0]
    assert grad[3] == 0.0  # padding gets nothing
    assert grad[1] == grad.abs().max()  # the most suspicious level gets the most
    if method == "max":
        assert grad[0] == 0.0 and grad[2] == 0.0
    else:
        assert float(grad[0] + grad[2]) < 0.05 * float(grad[1])


def test_no_level_gives_a_confident_normal_logit():
    out = mil_pool(torch.zeros(2, 3), torch.zeros(2, 3))
    assert torch.all(out < -5)


def test_ordinal_outputs_are_consistent():
    cumulative = torch.tensor([[3.0, -1.0, 2.0], [-3.0, -4.0, -5.0], [4.0, 3.0, 2.0]])
    assert predicted_grade(cumulative).tolist() == [1, 0, 3]  # P(>=3) above P(>=2) is capped
    assert cumulative_targets(torch.tensor([0, 2])).tolist() == [[0, 0, 0], [1, 1, 0]]


def test_network_and_loss_train_the_level_head_from_level_labels_only_where_known():
    torch.manual_seed(0)
    net = SpineMultiTaskNet(decoder_channels=(32, 16, 16, 8, 8))
    vertebra, disk = column(n=4, height=20, gap=6, shape=(128, 96))
    boxes = boxes_of(vertebra, disk)
    image = torch.rand(1, 1, 128, 96)
    out = net.forward_study(image, image, torch.ones(1, 2), boxes)
    assert out["level_logits"].shape == (1, MAX_LEVELS, 3) and out["cls_levels"].shape == (1,)
    target = {
        "seg_ap": torch.zeros(1, 8, 128, 96),
        "seg_lat": torch.zeros(1, 8, 128, 96),
        "avail_ap": torch.zeros(1, 8),
        "avail_lat": torch.zeros(1, 8),
        "label": torch.tensor([-1.0]),
        "present": torch.ones(1, 2),
        "level_valid": boxes.valid,
        "level_grade": torch.tensor([[0, -1, 3, 0] + [-1] * (MAX_LEVELS - 4)]),
    }
    loss = MultiTaskLoss()(out, target)
    net.zero_grad()
    grads = torch.autograd.grad(loss, out["level_logits"], retain_graph=True)[0][0]
    assert grads[1].abs().sum() == 0  # unknown grade
    assert grads[4:].abs().sum() == 0  # padding
    assert grads[2, 0] < 0 and grads[0, 0] > 0  # fractured up, normal down


@pytest.mark.parametrize("scale", [0.0, 0.25])
def test_level_grad_scale_scales_only_what_the_level_loss_sends_into_the_shared_features(scale: float) -> None:
    torch.manual_seed(0)
    plain, scaled = twin_networks((32, 16, 16, 8, 8), level_grad_scale=scale)
    vertebra, disk = column(n=4, height=20, gap=6, shape=(128, 96))
    boxes, image = boxes_of(vertebra, disk), torch.rand(1, 1, 128, 96)
    grads = []
    for model in (plain, scaled):
        out = model.forward_study(image, image, torch.ones(1, 2), boxes)
        model.zero_grad()
        out["level_logits"][..., 0].sum().backward()
        decoder_last = model.unet.segmentation_head[0].weight.grad  # not on the level path: no gradient
        grads.append((out, model.unet.encoder.conv1.weight.grad.clone(), model.level_head.out[-1].weight.grad.clone()))
        assert decoder_last is None or decoder_last.abs().sum() == 0
    (out_p, enc_p, head_p), (out_s, enc_s, head_s) = grads
    assert torch.equal(out_p["level_logits"], out_s["level_logits"])  # forward values do not depend on the scale
    assert torch.allclose(head_s, head_p)  # the level head itself learns in full
    assert enc_p.abs().sum() > 0 and torch.allclose(enc_s, scale * enc_p, atol=1e-7)


def test_roi_pooling_samples_each_film_s_boxes_from_that_film_with_gradients():
    """All boxes of a batch in one sampling call equal each box sampled alone from its own film's
    map, in values and in the gradient that reaches the maps (two films, so a mix-up shows)."""
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 40, 30, requires_grad=True)
    centre = torch.tensor([[[10.0, 12.0], [25.0, 15.0], [33.0, 8.0]], [[8.0, 20.0], [20.0, 14.0], [30.0, 16.0]]])
    angle = torch.tensor([[0.0, 0.2, -0.3], [0.1, 0.0, 0.4]])
    axis = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    boxes = LevelBatch(centre, axis, torch.tensor([[8.0, 10.0, 6.0], [9.0, 7.0, 12.0]]), torch.ones(2, 3))
    patches = sample_rois(maps, boxes, 5, (40, 30))
    weights = torch.rand_like(patches)
    (patches * weights).sum().backward()
    batched_grad = maps.grad.clone()
    maps.grad = None
    alone, total = [], torch.zeros(())
    for b in range(2):
        for k in range(3):
            one = LevelBatch(
                centre[b : b + 1, k : k + 1],
                axis[b : b + 1, k : k + 1],
                boxes.size[b : b + 1, k : k + 1],
                torch.ones(1, 1),
            )
            patch = sample_rois(maps[b : b + 1], one, 5, (40, 30))
            alone.append(patch)
            total = total + (patch * weights[b * 3 + k : b * 3 + k + 1]).sum()
    total.backward()
    torch.testing.assert_close(patches, torch.cat(alone))
    torch.testing.assert_close(batched_grad, maps.grad)
    assert float(batched_grad[0].abs().sum()) > 0 and float(batched_grad[1].abs().sum()) > 0


def test_batches_are_cut_after_their_longest_film_s_last_body():
    films = [pad_boxes(film_level_boxes(*column(n=3))), pad_boxes(film_level_boxes(*column(n=5)))]
    batch = {key: torch.stack([f[key] for f in films]) for key in films[0]} | {"label": torch.ones(2)}
    assert batch["level_valid"].shape == (2, MAX_LEVELS)
    cut = trim_levels(batch)
    assert cut["level_valid"].shape == (2, 5) and cut["level_grade"].shape == (2, 5)
    assert cut["level_centre"].shape == (2, 5, 2) and cut["label"] is batch["label"]
    assert cut["level_valid"].sum(dim=1).tolist() == [3.0, 5.0]  # no real level lost
    assert trim_levels({"label": batch["label"]}) == {"label": batch["label"]}  # no levels: unchanged
    none = trim_levels({"level_valid": torch.zeros(1, MAX_LEVELS)})
    assert none["level_valid"].shape == (1, 1)  # a film without a body keeps one padding level


def test_cutting_the_padding_changes_no_level_logit_and_the_training_batch_is_cut_alike():
    torch.manual_seed(0)
    net = SpineMultiTaskNet(decoder_channels=(32, 16, 16, 8, 8)).eval()
    vertebra, disk = column(n=4, height=20, gap=6, shape=(128, 96))
    boxes = boxes_of(vertebra, disk)
    image = torch.rand(1, 1, 128, 96)
    with torch.no_grad():
        full = net.forward_study(image, image, torch.ones(1, 2), boxes)
        cut = trim_levels(
            {
                "level_centre": boxes.centre,
                "level_axis": boxes.axis,
                "level_size": boxes.size,
                "level_valid": boxes.valid,
            }
        )
        trimmed = net.forward_study(image, image, torch.ones(1, 2), LevelBatch.from_batch(cut))
    assert trimmed["level_logits"].shape == (1, 4, 3)
    torch.testing.assert_close(trimmed["level_logits"], full["level_logits"][:, :4])
    torch.testing.assert_close(trimmed["cls_levels"], full["cls_levels"])
    # prepare_study_batch cuts the network's boxes and the loss's grades to the same levels
    raw = {"ap": image, "lat": image, "present": torch.ones(1, 2), "label": torch.ones(1)}
    raw |= {key: torch.zeros(1, 8, 128, 96) for key in ("seg_ap", "seg_lat")}
    raw |= {key: torch.ones(1, 8) for key in ("avail_ap", "avail_lat")}
    raw |= {key: torch.zeros(1, 12) for key in ("geom_ap", "geom_lat")}
    raw |= {key: value[None] for key, value in pad_boxes(film_level_boxes(vertebra, disk)).items()}
    inputs, targets = prepare_study_batch(raw)
    assert inputs["level_centre"].shape == (1, 4, 2) and targets["level_grade"].shape == (1, 4)


@pytest.mark.parametrize("value", [None, "null", "None", "NULL"])
def test_label_source_null_spellings_are_none(value) -> None:
    """A command line passes YAML's null as a string (--extra_level_labels null)."""
    assert check_label_source(value, "extra_level_labels") is None


def test_label_source_unknown_is_refused_by_name() -> None:
    assert check_label_source("truth", "level_labels") == "truth"
    with pytest.raises(ValueError, match="extra_level_labels must be one of"):
        check_label_source("nul", "extra_level_labels")
