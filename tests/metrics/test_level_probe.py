"""The level head probed on the reference bodies: every truth body of a study read once in its group,
thresholds counted as flags, and the script's report and its bad command lines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from spine_app.data.importer import import_dataset
from spine_app.engines import datalist_split
from spine_app.evaluation.level_probe import GROUPS, BodyGroup, ExposureBand, probe_levels
from spine_app.networks import SpineMultiTaskNet
from tests.helpers import SCRIPTS, load_script

CANVAS = (192, 160)


@pytest.fixture(scope="module")
def test_datalist(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The six fixture studies, all in a test split."""
    path = tmp_path_factory.mktemp("probe") / "datalist.json"
    import_dataset(synth_root, path, seed=0, fractions=(0.0, 0.0, 1.0))
    return path


def truth_bodies(synth_root: Path) -> dict[str, int]:
    """In-view LAT levels of the fixture's truth.json files, by group."""
    counts = {"normal_in_normal": 0, "normal_in_damaged": 0, "fractured": 0}
    for path in synth_root.glob("*/*/truth.json"):
        truth = json.loads(path.read_text())
        for level in truth["levels"]:
            if level.get("in_view_lat"):
                if level.get("fracture"):
                    counts["fractured"] += 1
                else:
                    counts["normal_in_damaged" if truth["label"] else "normal_in_normal"] += 1
    return counts


def test_every_truth_body_is_read_in_its_group(synth_root: Path, test_datalist: Path) -> None:
    torch.manual_seed(0)
    net = SpineMultiTaskNet(decoder_channels=(32, 16, 16, 8, 8)).eval()
    entries = datalist_split(str(test_datalist), "test")
    probe = probe_levels(net, entries, CANVAS, threshold=0.5)
    truth = truth_bodies(synth_root)
    assert probe.studies == len(entries) == 6
    # a Normal study's bodies are all normal: each in-view level read once, in its reference box
    assert probe.groups["normal_in_normal"].bodies == truth["normal_in_normal"]
    assert probe.groups["fractured"].bodies >= 1 and probe.groups["normal_in_damaged"].bodies >= 1
    assert 0.0 <= probe.study_auroc <= 1.0
    again = probe_levels(net.train(), entries, CANVAS, threshold=0.5)
    # no jitter, no augmentation, eval mode whatever the caller's: the same figures again
    assert again.as_dict() == probe.as_dict()
    assert net.training  # the caller's mode is given back
    json.dumps(probe.as_dict())


def test_an_exposure_band_reads_the_same_bodies_on_a_brighter_film(synth_root: Path, test_datalist: Path) -> None:
    """The band changes what the head reads, not which bodies it reads (the boxes come from the masks)."""
    torch.manual_seed(0)
    net = SpineMultiTaskNet(decoder_channels=(32, 16, 16, 8, 8)).eval()
    entries = datalist_split(str(test_datalist), "test")
    plain = probe_levels(net, entries, CANVAS, threshold=0.5)
    banded = probe_levels(net, entries, CANVAS, threshold=0.5, band=ExposureBand(0.9, 0.5))
    for name in GROUPS:
        assert banded.groups[name].bodies == plain.groups[name].bodies
    assert banded.as_dict() != plain.as_dict()
    assert probe_levels(net, entries, CANVAS, 0.5, band=ExposureBand(0.0)).as_dict() == plain.as_dict()
    with pytest.raises(ValueError, match="exposure band"):
        ExposureBand(1.5)


def test_a_group_counts_its_flags_at_the_threshold() -> None:
    group = BodyGroup.of(torch.tensor([0.1, 0.2, 0.3, 0.9]).numpy(), threshold=0.3)
    assert group.bodies == 4 and group.flagged == pytest.approx(0.5)  # 0.3 and 0.9: at or above
    assert group.maximum == pytest.approx(0.9) and group.median == pytest.approx(0.25)
    empty = BodyGroup.of(torch.tensor([]).numpy(), threshold=0.3)
    assert empty.bodies == 0 and empty.flagged != empty.flagged  # NaN


def test_the_script_reports_and_refuses_bad_command_lines(
    test_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("level_probe")
    out = tmp_path / "probe.json"
    script.main(str(test_datalist), split="test", threshold=0.2, out=str(out))
    printed = capsys.readouterr().out
    assert "normal in normal" in printed and "study AUROC from the highest body" in printed
    report = json.loads(out.read_text())
    assert report["threshold"] == 0.2 and report["studies"] == 6
    assert set(report["groups"]) == set(GROUPS)
    for argv, reason in (
        ((str(tmp_path / "missing.json"),), "no such datalist"),
        ((str(test_datalist), "validation"), "split is empty"),
        ((str(test_datalist), "train"), "choose training, validation or test"),
        ((str(test_datalist), "test", None, None, None, 2.0), "--exposure_band 2.0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            script.main(*argv)
        assert exit_info.value.code == 2
        assert reason in capsys.readouterr().err
    assert (SCRIPTS / "level_probe.py").is_file()


def test_without_truth_grades_the_script_says_its_groups_are_empty(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    studies = tmp_path / "studies"
    shutil.copytree(synth_root, studies, ignore=shutil.ignore_patterns("truth.json", "datalist.json"))
    import_dataset(studies, studies / "datalist.json", seed=0, fractions=(0.0, 0.0, 1.0))
    load_script("level_probe").main(str(studies / "datalist.json"))
    printed = capsys.readouterr().out
    assert "no body of the split has a grade in a truth.json" in printed
