"""Checkpoints and run folders of the real bundle training (train.yaml through ConfigWorkflow and
``python -m monai.bundle run`` subprocesses, tiny synthetic studies at a 64 x 64 canvas): training
writes bundle/runs/<run_name>/ and leaves bundle/models/model.pt alone, a real ``kill -9`` in the
middle of a save leaves the previous files loadable, resume skips an unreadable checkpoint, keeps
the best score and refuses another run's checkpoint, and publishing replaces the model with provenance."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from spine_app.engines import StudyMetrics, datalist_sha256, weights_sha256
from spine_app.synthetic.generator import generate_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
TRAIN, META, LOGGING = str(CONFIGS / "train.yaml"), str(CONFIGS / "metadata.json"), str(CONFIGS / "logging.conf")
TINY = {"patch_size": [64, 64], "num_workers": 0, "batch_size": 2, "cache_rate": 1.0, "val_interval": 1}
TEST_PAUSE_ENV = "SPINE_APP_TEST_PAUSE_IN_SAVE"  # spine_app.data.io: pause in the middle of a save
RUN_NAME = "data-64x64-resnet18"  # the default run name: dataset folder, canvas, backbone


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(data: Path, root: Path, **overrides) -> ConfigWorkflow:
    """Run train.yaml in this process; returns the finished workflow."""
    workflow = ConfigWorkflow(TRAIN, META, LOGGING, workflow_type="train", run_id="training", dataset_dir=str(data),
                              bundle_root=str(root), **{**TINY, **overrides})
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    workflow.started = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: workflow.started.append(engine.state.epoch))
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six easy studies and a 2-epoch run into a bundle_root whose models/model.pt stands for the shipped one."""
    tmp = tmp_path_factory.mktemp("runs")
    generate_dataset(tmp / "data", 6, seed=3, preset="easy", workers=2)
    root = tmp / "bundle"
    (root / "models").mkdir(parents=True)
    torch.save({"shipped": torch.arange(4.0)}, root / "models" / "model.pt")
    shipped = sha(root / "models" / "model.pt")
    train(tmp / "data", root, epochs=2)
    return {"data": tmp / "data", "root": root, "shipped_sha": shipped}


@pytest.fixture
def copy(trained: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A private copy of the trained bundle_root (tests change its files)."""
    root = tmp_path / "bundle"
    shutil.copytree(trained["root"], root)
    return {**trained, "root": root, "run": root / "runs" / RUN_NAME}


def command(data: Path, root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--meta_file", META,
            "--logging_file", LOGGING, "--dataset_dir", str(data), "--bundle_root", str(root),
            "--patch_size", "[64, 64]", "--num_workers", "0", "--batch_size", "2", "--val_interval", "1", *args]


def kill_while_saving(cmd: list[str], name_part: str, log: Path) -> None:
    """Start ``cmd``, wait until it is paused in the middle of writing a file whose name holds
    ``name_part`` (SPINE_APP_TEST_PAUSE_IN_SAVE), then kill -9 it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", TEST_PAUSE_ENV: f"600:{name_part}"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while f"{TEST_PAUSE_ENV}: paused writing" not in log.read_text():
            assert proc.poll() is None, (
                f"exited ({proc.returncode}) without pausing in a save:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, "no pause in a save within 300 s"
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup, like a power cut for the process
        proc.wait()
    assert proc.returncode == -9


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_training_writes_the_run_folder_and_leaves_the_shipped_model(trained) -> None:
    root = trained["root"]
    assert sha(root / "models" / "model.pt") == trained["shipped_sha"]
    run = root / "runs" / RUN_NAME
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "level_refit.json", "model.pt"]
    assert "unet.segmentation_head.0.weight" in load(run / "model.pt")
    checkpoint = load(run / "checkpoint_epoch=2.pt")
    fingerprint = checkpoint["run"]["fingerprint"]
    assert fingerprint == {"datalist_sha256": datalist_sha256(trained["data"] / "datalist.json"), "patch_size": [64, 64],
                           "backbone": "resnet18", "decoder_channels": [128, 64, 32, 16, 16], "level_labels": "auto",
                           "extra_datalist_sha256": None, "extra_level_labels": "study",
                           "extra_fields_of_view": None, "extra_default_datalist_sha256": None,
                           "extra_drr_datalist_sha256": None,
                           "level_lr_scale": 1.0, "cycle2": None}  # no extra studies, one cycle
    assert checkpoint["run"]["settings"]["epochs"] == 2
    assert checkpoint["run"]["settings"]["init_weights_sha256"] is None  # trained from scratch
    assert checkpoint["validation"]["best_epoch"] in (1, 2) and isinstance(
        checkpoint["validation"]["best_metric"], float
    )


def test_weights_sha256_names_what_a_run_starts_from(tmp_path: Path) -> None:
    weights = tmp_path / "start.pt"
    weights.write_bytes(b"weights a run starts from")
    assert weights_sha256(weights) == hashlib.sha256(b"weights a run starts from").hexdigest()
    assert weights_sha256(None) is None and weights_sha256("") is None


def test_kill_during_a_checkpoint_save_then_resume_and_publish(copy, tmp_path: Path) -> None:
    run, root = copy["run"], copy["root"]
    before = {name: sha(run / name) for name in ("checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt")}
    kill_while_saving(command(copy["data"], root, "--epochs", "3"), "checkpoint_epoch=", tmp_path / "killed.log")
    assert "resumed from" in (tmp_path / "killed.log").read_text()
    partial = list(run.glob(".checkpoint_epoch=3.pt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # killed in the middle of writing epoch 3
    assert not (run / "checkpoint_epoch=3.pt").exists()
    assert {name: sha(run / name) for name in before} == before
    assert load(run / "checkpoint_epoch=2.pt")["trainer"]["iteration"] > 0 and load(run / "model.pt")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rerun = subprocess.run(command(copy["data"], root, "--epochs", "3", "--publish", "true"),
                           capture_output=True, text=True, timeout=600, env=env)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    assert f"resumed from {run / 'checkpoint_epoch=2.pt'} (epoch 2)" in output
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt", "level_refit.json", "model.pt"]
    assert load(run / "checkpoint_epoch=3.pt")["run"]["settings"]["epochs"] == 3

    published = root / "models" / "model.pt"  # --publish true
    assert sha(published) != copy["shipped_sha"]
    assert_half_copy(published, run / "model.pt")
    provenance = json.loads((root / "models" / "model_provenance.json").read_text())
    assert provenance["run_dir"] == str(run.resolve()) and provenance["sha256"] == sha(published)
    assert provenance["fingerprint"]["datalist_sha256"] == datalist_sha256(copy["data"] / "datalist.json")
    assert provenance["settings"]["epochs"] == 3 and provenance["best_epoch"] in (1, 2, 3)
    assert "git" in provenance and provenance["versions"]["torch"] == str(torch.__version__)


def test_kill_during_the_best_model_save_keeps_the_previous_model(copy, tmp_path: Path) -> None:
    run = copy["run"]
    before = {name: sha(run / name) for name in ("model.pt", "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt")}
    # starting over: epoch 1's validation always writes a best model
    cmd = command(copy["data"], copy["root"], "--epochs", "1", "--resume", "False")
    kill_while_saving(cmd, "model.pt", tmp_path / "killed.log")
    partial = list(run.glob(".model.pt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    assert {name: sha(run / name) for name in before} == before  # old checkpoints go only after a new one is saved
    assert "unet.segmentation_head.0.weight" in load(run / "model.pt")


def test_resume_skips_an_unreadable_checkpoint(copy, capsys: pytest.CaptureFixture) -> None:
    run = copy["run"]
    (run / "checkpoint_epoch=2.pt").unlink()
    (run / "checkpoint_epoch=2.pt").touch()  # the 0-byte file a crash used to leave
    workflow = train(copy["data"], copy["root"], epochs=2)
    assert workflow.started == [2]  # resumed from epoch 1
    skipped = [
        line for line in capsys.readouterr().out.splitlines() if "cannot be read" in line
    ]  # the bundle logs to stdout
    assert len(skipped) == 1 and f"{run / 'checkpoint_epoch=2.pt'} (0 bytes): cannot be read (EOFError)" in skipped[0]
    assert load(run / "checkpoint_epoch=2.pt")["trainer"]["iteration"] == 2  # written again, whole


class WorseStudyMetrics(StudyMetrics):
    """The bundle's key metric, lowered by 10: every validation after the resume scores worse."""

    def compute(self) -> float:
        self.summary["score"] = super().compute() - 10.0
        return self.summary["score"]


def test_resume_keeps_the_best_score_and_model(copy) -> None:
    run = copy["run"]
    best = load(run / "checkpoint_epoch=2.pt")["validation"]
    model = sha(run / "model.pt")
    workflow = train(
        copy["data"],
        copy["root"],
        epochs=3,
        **{"validate#key_metric#val_score#_target_": f"{__name__}.WorseStudyMetrics"},
    )
    assert workflow.started == [3]
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.metrics["val_score"] < 0  # epoch 3 was validated, with a worse score
    assert sha(run / "model.pt") == model
    assert load(run / "checkpoint_epoch=3.pt")["validation"]["best_metric"] == best["best_metric"]
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (best["best_metric"], best["best_epoch"])


@pytest.mark.parametrize(
    "changed",
    [
        {"patch_size": [96, 64]},
        {"backbone": "resnet34", "decoder_channels": [64, 32, 16, 16, 16]},
        {"datalist": None},
        {"level_lr_scale": 3.0},  # the optimizer's parameter groups differ
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(copy, tmp_path: Path, changed: dict) -> None:
    run = copy["run"]
    if "datalist" in changed:  # the same studies, another split
        datalist = json.loads((copy["data"] / "datalist.json").read_text())
        datalist["training"], datalist["validation"] = (
            datalist["validation"] + datalist["training"][:1],
            datalist["training"][1:],
        )
        datalist["root"] = str(copy["data"])  # its paths stay relative to the dataset folder
        datalist.pop("paths", None)
        changed = {"datalist": str(tmp_path / "other.json")}
        Path(changed["datalist"]).write_text(json.dumps(datalist))
    before = {p.name: sha(p) for p in run.iterdir()}
    with pytest.raises(SystemExit) as err:  # refused before the first epoch: nothing cached
        train(copy["data"], copy["root"], epochs=3, run_name=RUN_NAME, cache_rate=0.0, **changed)
    message = str(err.value)
    assert message.startswith(f"error: {run / 'checkpoint_epoch=2.pt'}: made by a different run (")
    assert "--resume False" in message and "\n" not in message
    for key in changed:
        assert (key if key != "datalist" else "datalist_sha256") in message
    assert {p.name: sha(p) for p in run.iterdir()} == before


def test_resume_refuses_fewer_epochs_than_done(copy) -> None:
    with pytest.raises(SystemExit) as err:
        train(copy["data"], copy["root"], epochs=1, cache_rate=0.0)
    assert str(err.value) == (f"error: {copy['run'] / 'checkpoint_epoch=2.pt'}: already trained 2 epochs, more than "
                              "--epochs 1; pass a larger --epochs, or --resume False to start over")


def assert_half_copy(published: Path, source: Path) -> None:
    """``published`` is ``source``'s state dict with every floating-point tensor stored as fp16."""
    pub, src = (torch.load(p, map_location="cpu", weights_only=True) for p in (published, source))
    assert pub.keys() == src.keys()
    for key, value in src.items():
        assert pub[key].dtype == (torch.float16 if value.is_floating_point() else value.dtype)
        assert torch.equal(pub[key], value.half() if value.is_floating_point() else value)


def test_publish_command(copy, capsys: pytest.CaptureFixture) -> None:
    from spine_app.cli import publish

    run, root = copy["run"], copy["root"]
    publish(str(run), bundle=str(root))
    assert f"-> {root / 'models' / 'model.pt'}" in capsys.readouterr().out
    assert_half_copy(root / "models" / "model.pt", run / "model.pt")
    provenance = json.loads((root / "models" / "model_provenance.json").read_text())
    checkpoint = load(run / "checkpoint_epoch=2.pt")
    assert provenance["best_score"] == checkpoint["validation"]["best_metric"]
    assert provenance["fingerprint"] == checkpoint["run"]["fingerprint"]
    assert provenance["checkpoint"] == str((run / "checkpoint_epoch=2.pt").resolve())
    assert not list((root / "models").glob(".*.tmp"))

    (run / "model.pt").unlink()
    before = sha(root / "models" / "model.pt")
    with pytest.raises(SystemExit) as err:
        publish(str(run), bundle=str(root))
    assert err.value.code == 2
    assert (
        capsys.readouterr().err
        == f"error: {run / 'model.pt'}: no best model in this run folder (has a validation run yet?)\n"
    )
    assert sha(root / "models" / "model.pt") == before
