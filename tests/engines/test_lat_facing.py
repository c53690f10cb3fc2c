"""Lines on the right wall: flipped LAT training samples leave the lines unknown; inference mirrors
a LAT film that faces the other way before it draws the lines."""

from __future__ import annotations

import torch

from spine_app.channels import LINE_CHANNELS, MASK_NAMES
from spine_app.data.augment import RandFlipLatd
from spine_app.engines.inferer import StudyInferer, lat_faces_right

VB, SP = MASK_NAMES.index("Lat_Vertebra"), MASK_NAMES.index("Lat_Spinous_Process")
ANT, POST = (MASK_NAMES.index(n) for n in LINE_CHANNELS)


def _lat_logits(faces_right: bool, size: tuple[int, int] = (64, 48)) -> torch.Tensor:
    """(1, 8, H, W) logits: a vertebral column with spinous processes behind it (right of it when canonical)."""
    logits = torch.full((1, len(MASK_NAMES), *size), -5.0)
    body, spinous = (slice(28, 40), slice(8, 18)) if faces_right else (slice(8, 20), slice(30, 40))
    logits[0, VB, 5:60, body] = 5.0
    logits[0, SP, 5:60, spinous] = 5.0
    return logits


def test_lat_faces_right_from_the_spinous_side() -> None:
    both = torch.cat([_lat_logits(False), _lat_logits(True)])
    assert lat_faces_right(both).tolist() == [False, True]
    assert lat_faces_right(torch.full((1, len(MASK_NAMES), 64, 48), -5.0)).tolist() == [False]  # nothing found


def test_flipped_lat_sample_has_unknown_lines_and_mirrored_pixels() -> None:
    image = torch.arange(12.0).reshape(1, 3, 4)
    seg = torch.zeros(len(MASK_NAMES), 3, 4)
    seg[ANT, :, 0] = 1.0  # anterior line on the left wall
    data = {"lat": image, "seg_lat": seg, "avail_lat": torch.ones(len(MASK_NAMES))}
    flipped = RandFlipLatd(keys=["lat", "seg_lat"], prob=1.0)(data)
    assert torch.equal(torch.as_tensor(flipped["lat"]), torch.flip(image, dims=[-1]))
    assert torch.as_tensor(flipped["seg_lat"])[ANT, :, -1].all()
    assert flipped["avail_lat"][ANT] == 0 and flipped["avail_lat"][POST] == 0  # lines unknown when mirrored
    assert flipped["avail_lat"][VB] == 1 and flipped["avail_lat"][SP] == 1  # the rest stays supervised
    assert torch.equal(data["avail_lat"], torch.ones(len(MASK_NAMES)))  # the input is not modified
    kept = RandFlipLatd(keys=["lat", "seg_lat"], prob=0.0)(data)
    assert torch.equal(torch.as_tensor(kept["lat"]), image) and kept["avail_lat"].all()


class _CanonicalLines(torch.nn.Module):
    """A stand-in network that draws the column from the pixels it sees and the anterior line on the
    left edge of the body: right only for films facing the canonical way."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        faces_right = bool(image[0, 0, :, : image.shape[-1] // 2].sum() > image[0, 0, :, image.shape[-1] // 2 :].sum())
        out = _lat_logits(faces_right, tuple(image.shape[-2:])).repeat(image.shape[0], 1, 1, 1)
        body = (out[:, VB] > 0).float()
        first = body.cumsum(-1).eq(1) & (body > 0)  # left edge of the body
        out[:, ANT] = torch.where(first, 5.0, -5.0)
        return out

    def classify(self, ap: torch.Tensor, lat: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
        zeros = torch.zeros(ap.shape[0])
        return {"cls": zeros, "cls_ap": zeros, "cls_lat": zeros}


def test_inferer_mirrors_a_film_facing_right_and_draws_the_anterior_line_on_the_front() -> None:
    canonical = torch.zeros(1, 1, 64, 48)
    canonical[..., 30:40] = 1.0  # bright spinous side on the right: the film faces left (canonical)
    facing_right = torch.flip(canonical, dims=[-1])
    inferer = StudyInferer(roi_size=(64, 48))
    for image, expected in ((canonical, 0.0), (facing_right, 1.0)):
        out = inferer({"ap": image, "lat": image, "present": torch.ones(1, 2)}, _CanonicalLines())
        assert float(out["lat_mirrored"][0]) == expected
        columns = torch.nonzero(out["seg_lat"][0, ANT] > 0)[:, 1]
        body = torch.nonzero(out["seg_lat"][0, VB] > 0)[:, 1]
        spinous = torch.nonzero(out["seg_lat"][0, SP] > 0)[:, 1].float().mean()
        front = body.min() if spinous > body.float().mean() else body.max()  # the wall away from the spinous side
        assert columns.numel() and torch.all(columns == front), (expected, columns.unique(), front)


class _LeftLeaning(torch.nn.Module):
    """A stand-in whose logits are the image plus a left-to-right ramp: not mirror-equivariant, so
    the mirroring TTA changes its output in a way that can be computed by hand."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1.0, 1.0, image.shape[-1])
        return (image + ramp).repeat(1, len(MASK_NAMES), 1, 1)

    def classify(self, ap: torch.Tensor, lat: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
        zeros = torch.zeros(ap.shape[0])
        return {"cls": zeros, "cls_ap": zeros, "cls_lat": zeros}


def test_mirror_tta_averages_every_channel_but_the_lines() -> None:
    image = torch.rand(1, 1, 32, 24)
    inputs = {"ap": image, "lat": image, "present": torch.ones(1, 2)}
    plain = StudyInferer(roi_size=(32, 24))(inputs, _LeftLeaning())
    tta = StudyInferer(roi_size=(32, 24), mirror_tta=True)(inputs, _LeftLeaning())
    expected = image[0, 0]  # the ramp cancels: (x + r + x + flip(r)) / 2 = x
    for view in ("ap", "lat"):
        assert torch.allclose(tta[f"seg_{view}"][0, VB], expected, atol=1e-5)
        assert not torch.allclose(plain[f"seg_{view}"][0, VB], expected, atol=1e-2)
    for line in (ANT, POST):  # lines from the canonical-facing pass only
        assert torch.allclose(tta["seg_lat"][0, line], plain["seg_lat"][0, line])
