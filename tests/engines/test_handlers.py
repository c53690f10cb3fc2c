"""Bundle handlers that MONAI does not provide."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), (False, False), ("false", False), ("True", True), ("0", False)]
)
def test_epoch_checkpoint_resume_flag_parses_command_line_strings(value, expected) -> None:
    from spine_app.engines.handlers import EpochCheckpoint

    assert EpochCheckpoint("/nonexistent", {}, resume=value).resume is expected


def test_atomic_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch) -> None:
    """The temporary file is fsynced, renamed onto the target, then the folder is fsynced."""
    import os
    from pathlib import Path

    import torch

    from spine_app.data.io import write_torch

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the synced file descriptors")
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_torch(tmp_path / "model.pt", {"w": torch.ones(3)})
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    tmp = Path(events[1][1])
    assert tmp.parent == tmp_path and tmp.name.startswith(".model.pt.") and tmp.suffix == ".tmp"
    assert events[0][1] == str(tmp) and events[1][2] == str(tmp_path / "model.pt") and events[2][1] == str(tmp_path)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["w"].sum() == 3


def test_equal_weights_are_written_as_equal_bytes(tmp_path) -> None:
    """Two saves of the same state give the same file (its SHA-256 names the weights), wherever the
    temporary name fell."""
    import torch

    from spine_app.data.io import write_torch

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}
    first, second = write_torch(tmp_path / "a.pt", state), write_torch(tmp_path / "b" / "model.pt", state)
    assert first.read_bytes() == second.read_bytes()
    assert torch.equal(torch.load(second, weights_only=True)["w"], state["w"])


def test_atomic_disk_saver_removes_a_rotated_file_only_after_the_next_save(tmp_path) -> None:
    import torch

    from spine_app.engines.handlers import AtomicDiskSaver

    saver = AtomicDiskSaver(tmp_path)
    saver({"epoch": torch.tensor(1)}, "checkpoint_epoch=1.pt")
    saver.remove("checkpoint_epoch=1.pt")  # ignite rotates the old file out before it saves the new one
    assert (tmp_path / "checkpoint_epoch=1.pt").is_file()
    saver({"epoch": torch.tensor(2)}, "checkpoint_epoch=2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=2.pt"]

    best = AtomicDiskSaver(tmp_path / "best", filename="model.pt")  # MONAI's key_metric_filename
    best({"w": torch.zeros(2)}, "model_key_metric=0.1000.pt")
    best.remove("model_key_metric=0.1000.pt")
    assert torch.load(tmp_path / "best" / "model.pt", weights_only=True)["w"].sum() == 0
    best({"w": torch.ones(2)}, "model_key_metric=0.2000.pt")
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["model.pt"]
    assert torch.load(tmp_path / "best" / "model.pt", weights_only=True)["w"].sum() == 2


def test_default_run_name_is_readable_and_stable() -> None:
    from spine_app.engines.runs import default_run_name

    assert default_run_name("data/synthetic/datalist.json", [384, 288], "resnet18") == "synthetic-384x288-resnet18"
    assert (
        default_run_name("/x/my data/split2.json", (512, 384), "efficientnet-b0")
        == "my_data-split2-512x384-efficientnet-b0"
    )


def test_datalist_hash_is_of_its_content_not_of_when_it_was_written(tmp_path) -> None:
    import json

    from spine_app.engines import datalist_file_sha256, datalist_sha256

    content = {"format": "spine-app datalist v1", "created": "2026-12-01T10:00:00", "spine_app_version": "0.2.0"}
    content |= {"training": [{"study_id": "a", "label": 0}], "validation": [{"study_id": "b", "label": 1}]}
    first, again, resplit = tmp_path / "first.json", tmp_path / "again.json", tmp_path / "resplit.json"
    first.write_text(json.dumps(content))
    again.write_text(json.dumps({**content, "created": "2026-12-03T16:00:00", "spine_app_version": "0.5.3"}, indent=2))
    swapped = {**content, "training": content["validation"], "validation": content["training"]}
    resplit.write_text(json.dumps(swapped))
    assert datalist_sha256(first) == datalist_sha256(again)  # generated again from the same seeds
    assert datalist_file_sha256(first) != datalist_file_sha256(again)  # what spine-app 0.2.0 stored
    assert datalist_sha256(resplit) != datalist_sha256(first)  # another split is another dataset


def test_resume_accepts_the_fingerprint_an_older_version_stored_for_the_same_run(tmp_path) -> None:
    from spine_app.engines import EpochCheckpoint
    from spine_app.engines.runs import ResumeError

    handler = EpochCheckpoint(
        str(tmp_path),
        {},
        fingerprint={"datalist_sha256": "content", "patch_size": [64, 64]},
        also_accepted={"datalist_sha256": "file"},
    )
    for stored in ("content", "file"):
        handler.check(
            tmp_path / "c.pt", {"run": {"fingerprint": {"datalist_sha256": stored, "patch_size": [64, 64]}}}, []
        )
    with pytest.raises(ResumeError, match="datalist_sha256 'other' in the checkpoint"):
        handler.check(
            tmp_path / "c.pt", {"run": {"fingerprint": {"datalist_sha256": "other", "patch_size": [64, 64]}}}, []
        )
    with pytest.raises(ResumeError, match="patch_size"):  # an older value of one key excuses no other key
        handler.check(
            tmp_path / "c.pt", {"run": {"fingerprint": {"datalist_sha256": "file", "patch_size": [96, 64]}}}, []
        )


def test_a_run_from_before_level_lr_scale_resumes_only_at_its_one_group() -> None:
    """train.yaml's legacy entry: a fingerprint without level_lr_scale is a run at scale 1."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    from spine_app.engines import EpochCheckpoint
    from spine_app.engines.runs import ResumeError

    config = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "train.yaml"
    for scale, accepted in ((1.0, True), (3.0, False)):
        parser = ConfigParser()
        parser.read_config(str(config))
        parser["level_lr_scale"] = scale
        expected = {"level_lr_scale": parser.get_parsed_content("run_fingerprint#level_lr_scale")}
        legacy = {"level_lr_scale": parser.get_parsed_content("run_fingerprint_legacy#level_lr_scale")}
        handler = EpochCheckpoint("/nonexistent", {}, fingerprint=expected, also_accepted=legacy)
        old = {"run": {"fingerprint": {"datalist_sha256": "x"}}}  # written before the key existed
        if accepted:
            handler.check(Path("c.pt"), old, [])
        else:
            with pytest.raises(ResumeError, match="level_lr_scale None in the checkpoint, 3.0 now"):
                handler.check(Path("c.pt"), old, [])


def test_a_run_from_before_extra_drr_studies_resumes_without_them() -> None:
    """A checkpoint written before ``extra_drr_studies`` existed (no such fingerprint key) is a run
    without DRR studies: the default (0) resumes it."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    from spine_app.engines import EpochCheckpoint

    config = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "train.yaml"
    parser = ConfigParser()
    parser.read_config(str(config))
    key = "extra_drr_datalist_sha256"
    expected = {key: parser.get_parsed_content(f"run_fingerprint#{key}")}
    assert expected == {key: None}
    EpochCheckpoint("/nonexistent", {}, fingerprint=expected).check(
        Path("c.pt"), {"run": {"fingerprint": {"datalist_sha256": "x"}}}, []
    )


@pytest.mark.parametrize(("epochs", "expected"), [(5, [2, 4, 5]), (6, [2, 4, 6]), (1, [1])])
def test_periodic_validation_also_scores_the_last_epoch(epochs: int, expected: list[int]) -> None:
    import torch
    from ignite.engine import Engine, Events
    from monai.engines import SupervisedEvaluator

    from spine_app.engines import PeriodicValidation

    batch = {"image": torch.zeros(1, 1, 2, 2), "label": torch.zeros(1, 1, 2, 2)}
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=[batch], network=torch.nn.Identity())
    scored: list[int] = []
    evaluator.add_event_handler(Events.COMPLETED, lambda e: scored.append(e.state.epoch))
    trainer = Engine(lambda engine, item: None)
    PeriodicValidation(interval=2, validator=evaluator).attach(trainer)
    trainer.run([0, 1], max_epochs=epochs)
    assert scored == expected
