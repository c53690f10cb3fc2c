"""The MONAI bundle run for real through ConfigWorkflow on tiny synthetic studies: properties,
2-epoch training, resume, evaluation report, inference, network I/O, TorchScript export, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, verify_net_in_out
from PIL import Image

from spine_app.synthetic.generator import generate_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
TRAIN, EVALUATE, INFER, REFIT = (str(CONFIGS / f"{n}.yaml") for n in ("train", "evaluate", "inference", "refit"))
MULTI_GPU = str(CONFIGS / "multi_gpu_train.yaml")
META, LOGGING = str(CONFIGS / "metadata.json"), str(CONFIGS / "logging.conf")
SMALL = {"patch_size": [128, 96], "num_workers": 0, "batch_size": 2, "cache_rate": 1.0}


@pytest.fixture(scope="module")
def bundle_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six easy synthetic studies and a 2-epoch training run of the real train.yaml."""
    tmp = tmp_path_factory.mktemp("bundle")
    generate_dataset(tmp / "data", 6, seed=3, preset="easy", workers=2)
    paths = {"data": tmp / "data", "root": tmp / "bundle"}
    workflow = ConfigWorkflow(TRAIN, META, LOGGING, workflow_type="train", run_id="training",
                              dataset_dir=str(paths["data"]), bundle_root=str(paths["root"]), epochs=2, **SMALL)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return {**paths, "run": paths["root"] / "runs" / "data-128x96-resnet18"}  # the default run folder


def test_training_writes_best_model_and_epoch_checkpoint(bundle_run) -> None:
    models = bundle_run["run"]
    assert (models / "model.pt").is_file() and (models / "checkpoint_epoch=2.pt").is_file()
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert "unet.segmentation_head.0.weight" in state  # a plain state dict of network_def
    assert (bundle_run["data"] / "datalist.json").is_file()


def test_resume_continues_from_the_saved_epoch(bundle_run) -> None:
    workflow = ConfigWorkflow(TRAIN, META, LOGGING, workflow_type="train", dataset_dir=str(bundle_run["data"]),
                              bundle_root=str(bundle_run["root"]), epochs=3, **SMALL)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    started: list[int] = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: started.append(engine.state.epoch))
    workflow.run()
    workflow.finalize()
    assert started == [3]  # epochs 1-2 came from the checkpoint
    assert (bundle_run["run"] / "checkpoint_epoch=3.pt").is_file()


def test_evaluate_writes_the_report(bundle_run, tmp_path: Path) -> None:
    workflow = ConfigWorkflow([TRAIN, EVALUATE], META, LOGGING, workflow_type="train", run_id="evaluate",
                              dataset_dir=str(bundle_run["data"]), bundle_root=str(bundle_run["root"]),
                              ckpt_dir=str(bundle_run["run"]), output_dir=str(tmp_path), **SMALL)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    for name in ("metrics.json", "per_study.csv", "results.md", "per_mask_dice.png", "roc.png", "examples.png",
                 "embedding_map.png"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    points = json.loads((tmp_path / "embedding_map.json").read_text())["points"]
    assert len(points) == metrics["n_test"] and all(p["worst_grade"] >= 0 for p in points)  # truth.json read
    assert metrics["embedding_map"]["figure"] == "embedding_map.png"
    assert set(metrics["segmentation"]) == {
        "Ap_Vertebra", "Ap_Pedicle", "Ap_Spinous_Process", "Lat_Vertebra", "Lat_Spinous_Process",
        "Lat_Disk_Height", "Lat_Anterior_Vertebral_Line", "Lat_Posterior_Vertebral_Line"}
    assert set(metrics["classification"]) == {"fused", "AP only", "LAT only", "morphometry", "combined",
                                              "levels", "levels + fused"}
    assert "| Ap_Vertebra |" in (tmp_path / "results.md").read_text()
    # per-vertebra scores from the truth.json level labels (a small network: values, not quality)
    levels = metrics["levels"]
    assert levels["levels"] > 0 and 0.0 <= levels["threshold"] <= 1.0
    assert levels["fractured_found"]["n"] > 0 and levels["normal_flagged"]["n"] > 0


def test_inference_writes_masks_at_original_size(bundle_run, tmp_path: Path) -> None:
    workflow = ConfigWorkflow(INFER, META, LOGGING, workflow_type="infer", dataset_dir=str(bundle_run["data"]),
                              bundle_root=str(bundle_run["root"]), output_dir=str(tmp_path), patch_size=[128, 96],
                              ckpt_path=str(bundle_run["run"] / "model.pt"))
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    study = next(p for p in (bundle_run["data"] / "Normal").iterdir())
    out = tmp_path / study.name
    for view, name in (("AP", "Ap_Vertebra"), ("LAT", "Lat_Disk_Height")):
        assert Image.open(out / f"{name}.png").size == Image.open(study / f"{view}.png").size
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["damaged_probability"] <= 1.0 and set(result["view_probabilities"]) == {"AP", "LAT"}


def test_inference_explains_the_decision(bundle_run, tmp_path: Path) -> None:
    workflow = ConfigWorkflow(INFER, META, LOGGING, workflow_type="infer", dataset_dir=str(bundle_run["data"]),
                              bundle_root=str(bundle_run["root"]), output_dir=str(tmp_path), patch_size=[128, 96],
                              ckpt_path=str(bundle_run["run"] / "model.pt"), explain="gradcam")
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    study = next(p for p in (bundle_run["data"] / "Damaged").iterdir())
    out = tmp_path / study.name
    result = json.loads((out / "result.json").read_text())
    explanation = result["explanation"]
    assert explanation["method"] == "gradcam" and set(explanation["views"]) == {"AP", "LAT"}
    for view in ("AP", "LAT"):
        rows, cols = Image.open(study / f"{view}.png").size[::-1]
        picture = Image.open(out / f"saliency_{view}.png")
        assert picture.mode == "RGB" and picture.width == round(cols * min(1.0, 1024 / rows))  # the film, scaled
        peak = explanation["views"][view]["peak_px"]
        assert peak is None or (0 <= peak[0] < rows and 0 <= peak[1] < cols)  # in the film's own pixels


def test_verify_net_in_out() -> None:
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=INFER, bundle_root=str(CONFIGS.parent))


def test_early_stopping_follows_the_key_metric() -> None:
    """EarlyStopHandler scores an epoch by the evaluator's one key metric (MONAI's
    stopping_fn_from_metric), under the name the key metric has in the config."""
    from types import SimpleNamespace

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(TRAIN)
    (name,) = parser.get("validate#key_metric")
    stop = parser.get_parsed_content("validate#early_stop")
    engine = SimpleNamespace(state=SimpleNamespace(metrics={name: 0.75, "loss": 3.0}, key_metric_name=name))
    assert stop.score_function(engine) == 0.75 and stop.patience == parser.get_parsed_content("early_stop_patience")


def test_curvature_oversampling_gives_the_training_loader_a_weighted_sampler(bundle_run) -> None:
    """train.yaml's ``curvature_oversampling``: 0 shuffles uniformly, > 0 draws through a sampler
    weighted by each study's column bend (spine_app.data.sampling)."""
    from monai.bundle import ConfigParser
    from torch.utils.data import RandomSampler, WeightedRandomSampler

    for strength, kind in ((0.0, RandomSampler), (2.0, WeightedRandomSampler)):
        parser = ConfigParser()
        parser.read_config(TRAIN)
        parser.update(
            {"dataset_dir": str(bundle_run["data"]), "bundle_root": str(bundle_run["root"]), **SMALL}
            | {"curvature_oversampling": strength}
        )
        loader = parser.get_parsed_content("train#dataloader")
        assert isinstance(loader.sampler, kind)
        assert len(loader.sampler) == len(loader.dataset)


def test_a_second_cycle_restarts_the_learning_rate_and_draws_its_own_studies(bundle_run, tmp_path: Path) -> None:
    """train.yaml with ``cycle2_epochs``: the learning rate follows the cosine over ``epochs``, restarts
    at ``cycle2_learning_rate``, every epoch has the first cycle's length, only the second cycle draws the
    studies generated for it, and the checkpoint records the cycle."""
    root = tmp_path / "bundle"
    workflow = ConfigWorkflow(TRAIN, META, LOGGING, workflow_type="train", dataset_dir=str(bundle_run["data"]),
                              bundle_root=str(root), epochs=2, cycle2_epochs=2, cycle2_learning_rate=3e-4,
                              cycle2_studies=3, cycle2_dataset_dir=str(tmp_path / "cycle2"),
                              extra_synthetic_preset="easy", val_interval=2, run_name="two-cycles", **SMALL)
    workflow.initialize()
    parser = workflow.parser
    trainer, sampler = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("train#dataloader#sampler")
    first = len(parser.get_parsed_content("first_cycle_entries"))
    assert len(trainer.data_loader.dataset) == first + 3 and len(sampler) == first
    seen: list[tuple[float, list[int]]] = []
    trainer.add_event_handler(Events.EPOCH_STARTED,
                              lambda engine: seen.append((engine.optimizer.param_groups[0]["lr"], list(sampler))))
    workflow.run()
    workflow.finalize()
    lrs = [lr for lr, _ in seen]
    assert lrs == pytest.approx([1e-3, 5e-4, 3e-4, 1.5e-4])
    assert all(max(indices) < first for _, indices in seen[:2])
    assert any(max(indices) >= first for _, indices in seen[2:])
    checkpoint = torch.load(root / "runs" / "two-cycles" / "checkpoint_epoch=4.pt", map_location="cpu", weights_only=False)
    assert checkpoint["run"]["settings"]["cycle2"]["epochs"] == 2
    assert checkpoint["run"]["fingerprint"]["cycle2"]["first_epochs"] == 2


def test_the_run_ends_with_the_level_head_refitted_on_the_fixed_network(bundle_run, tmp_path: Path) -> None:
    """train.yaml's last phase refits the level head and fits the grade head: model.pt is the one
    level_refit.json says it wrote, and the refit reads only the encoder and decoder: from a copy of
    the model whose heads are scrambled, refit.yaml (the same phase on its own) writes the same
    model, byte for byte; with ``level_refit_box_jitter 0`` (the reference boxes) it writes another
    level head, the same grade head and the same trunk; with ``level_refit_level_head false`` it keeps
    the level head it was given and fits the same grade head. It refuses to rewrite the bundle's
    published model in place."""
    from spine_app.data.io import write_torch
    from spine_app.engines.writer import sha256_of

    run = bundle_run["run"]
    record = json.loads((run / "level_refit.json").read_text())
    assert record["model_sha256"] == sha256_of(run / "model.pt") and len(record["input_model_sha256"]) == 64
    assert record["bodies"] > 0 and record["settings"]["epochs"] == 15 and len(record["epoch_losses"]) == 15
    assert len(record["grade_head_epoch_losses"]) == 15 and record["epoch_losses"] != record["grade_head_epoch_losses"]
    assert record["settings"]["box_jitter"] == 1.0  # the training's jittered boxes
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    assert bool(state["grade_head_fitted"])
    heads = ("level_head.", "grade_head.")
    scrambled = {k: torch.randn_like(v) if k.startswith(heads) else v for k, v in state.items()}
    scrambled["grade_head_fitted"] = torch.tensor(False)

    def refit(folder: Path, **overrides) -> dict[str, torch.Tensor]:
        folder.mkdir()
        write_torch(folder / "model.pt", scrambled)
        workflow = ConfigWorkflow([TRAIN, REFIT], META, LOGGING, workflow_type="train", run_id="refit",
                                  dataset_dir=str(bundle_run["data"]), bundle_root=str(bundle_run["root"]),
                                  ckpt_dir=str(folder), epochs=2, **SMALL, **overrides)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        return torch.load(folder / "model.pt", map_location="cpu", weights_only=True)

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
        return all(torch.equal(a[k], b[k]) for k in b if k.startswith(prefix))

    refit(tmp_path / "same")
    assert sha256_of(tmp_path / "same" / "model.pt") == record["model_sha256"]
    exact = refit(tmp_path / "exact", level_refit_box_jitter=0.0)
    assert json.loads((tmp_path / "exact" / "level_refit.json").read_text())["settings"]["box_jitter"] == 0.0
    assert all(torch.equal(exact[k], state[k]) for k in state if not k.startswith("level_head."))
    assert not same(exact, state, "level_head.")
    grades = refit(tmp_path / "grades", level_refit_level_head=False)
    assert same(grades, scrambled, "level_head.") and same(grades, state, "grade_head") and same(grades, state, "unet.")
    assert "epoch_losses" not in json.loads((tmp_path / "grades" / "level_refit.json").read_text())
    workflow = ConfigWorkflow([TRAIN, REFIT], META, LOGGING, workflow_type="train", run_id="refit",
                              dataset_dir=str(bundle_run["data"]), bundle_root=str(bundle_run["root"]),
                              ckpt_dir=str(bundle_run["root"] / "models"), **SMALL)
    workflow.initialize()
    with pytest.raises(SystemExit, match="published model is not rewritten in place"):
        workflow.run()


def test_torchscript_export_matches_eager(bundle_run, tmp_path: Path) -> None:
    from monai.bundle import ckpt_export

    from spine_app.networks import SpineMultiTaskNet

    ckpt = bundle_run["run"] / "model.pt"
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(ckpt), meta_file=META,
                config_file=INFER, bundle_root=str(CONFIGS.parent), use_trace=True)
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    eager = SpineMultiTaskNet()
    eager.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    eager.eval()
    x = torch.rand(1, 1, 512, 384)
    with torch.no_grad():
        traced_out, eager_out = scripted(x), eager(x)
    torch.testing.assert_close(traced_out, eager_out, atol=1e-3, rtol=1e-3)  # kernel-order float noise only
    agree = ((traced_out > 0) == (eager_out > 0)).float().mean()
    assert agree > 0.9999  # the same masks


def test_metadata_json_is_formatted_like_the_zoo_hook() -> None:
    text = (CONFIGS / "metadata.json").read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n"
    meta = json.loads(text)
    assert meta["version"] in meta["changelog"]
    # the package version follows the bundle's, in the package, its build file and the bundle's requirement
    import tomllib

    import spine_app

    pyproject = tomllib.loads((CONFIGS.parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert spine_app.__version__ == pyproject == meta["required_packages_version"]["spine-app"] == meta["version"]
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values())[6] == "Lat_Anterior_Vertebral_Line"


def test_multi_process_training_with_gloo(tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (DDP over gloo) through multi_gpu_train.yaml, starting from an empty
    dataset_dir: rank 0 generates the synthetic default (the main job's fallback) while rank 1 waits."""
    root, data = tmp_path / "ddp", tmp_path / "empty"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "training", "--config_file", f"['{TRAIN}','{MULTI_GPU}']",
           "--meta_file", META, "--logging_file", LOGGING, "--dataset_dir", str(data), "--synthetic_studies", "6",
           "--bundle_root", str(root), "--epochs", "1", "--val_interval", "1", "--patch_size", "[128, 96]", "--num_workers", "0",
           "--batch_size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = root / "runs" / "empty-128x96-resnet18"
    assert (run / "checkpoint_epoch=1.pt").is_file() and (run / "model.pt").is_file()
    assert json.loads((run / "level_refit.json").read_text())["bodies"] > 0  # every rank refits, rank 0 writes
    assert json.loads((data / "synth_manifest.json").read_text())["n"] == 6 and (data / "datalist.json").is_file()
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    assert np.isfinite(np.array([float(v.float().sum()) for v in state.values()])).all()


def test_multi_process_training_with_a_second_cycle(bundle_run, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes through multi_gpu_train.yaml with ``cycle2_epochs``: the ranks
    share the cycle sampler's epochs and the run ends with the second cycle recorded."""
    root = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "training", "--config_file", f"['{TRAIN}','{MULTI_GPU}']",
           "--meta_file", META, "--logging_file", LOGGING, "--dataset_dir", str(bundle_run["data"]),
           "--bundle_root", str(root), "--epochs", "1", "--cycle2_epochs", "1", "--cycle2_studies", "2",
           "--cycle2_dataset_dir", str(tmp_path / "cycle2"), "--extra_synthetic_preset", "easy", "--val_interval", "1",
           "--patch_size", "[128, 96]", "--num_workers", "0", "--batch_size", "1", "--run_name", "ddp-cycles"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = torch.load(root / "runs" / "ddp-cycles" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    assert checkpoint["run"]["settings"]["cycle2"]["studies"] == 2
    assert "in the second cycle only" in result.stderr + result.stdout


def test_metadata_verifies_against_the_model_zoo_fields(tmp_path: Path) -> None:
    from monai.bundle import verify_metadata

    schema = str(CONFIGS.parent / "docs" / "meta_schema.json")
    verify_metadata(meta_file=META, filepath=schema)  # raises on an error
    broken = json.loads(Path(META).read_text())
    del broken["network_data_format"]["outputs"]["pred"]["num_channels"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="num_channels"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=schema)


def test_inference_across_two_processes_writes_each_study_once(bundle_run, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo) through multi_gpu_inference.yaml: the studies are shared
    between the ranks, each written once, and rank 0 merges the summary."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "--config_file", f"['{INFER}','{CONFIGS / 'multi_gpu_inference.yaml'}']",
           "--meta_file", META, "--logging_file", LOGGING, "--dataset_dir", str(bundle_run["data"]),
           "--bundle_root", str(bundle_run["root"]), "--output_dir", str(out), "--patch_size", "[128, 96]",
           "--ckpt_path", str(bundle_run["run"] / "model.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    studies = sorted(p.name for p in bundle_run["data"].glob("*/*") if (p / "AP.png").is_file())
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted(r["study_id"] for r in rows) == studies and all(r["status"] == "ok" for r in rows)
    ranks = [json.loads((out / s / "result.json").read_text())["process"] for s in studies]
    assert sorted(r["rank"] for r in ranks) == sorted([0, 1] * (len(studies) // 2) + [0] * (len(studies) % 2))
    assert all(r["world_size"] == 2 for r in ranks) and json.loads((out / "errors.json").read_text()) == []
