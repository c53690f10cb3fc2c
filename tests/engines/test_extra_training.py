"""The main job's extra training studies (the widened generator): generated once into their own
folder, all in the training split, added after the main dataset's training split, never to its
validation or test split, and named in the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spine_app.drr.scenes import TRAINING_PLAN, framing_plan, scaled_plan
from spine_app.engines.dataset import (
    ExtraStudies,
    datalist_split,
    ensure_datalist,
    extra_training_datalist,
    field_of_view_name,
    fields_of_view_setting,
    keep_fields_of_view,
    training_entries,
)
from spine_app.engines.runs import default_run_name


def test_extra_studies_train_only_and_keep_the_benchmark_split(tmp_path: Path) -> None:
    main = ensure_datalist(str(tmp_path / "synthetic"), 6, 3, "easy")
    assert extra_training_datalist(str(tmp_path / "fov"), 0, 1, "mixed_fov") is None  # 0: none, nothing written
    assert not (tmp_path / "fov").exists()

    extra = extra_training_datalist(str(tmp_path / "fov"), 3, 1, "mixed_fov")
    assert extra is not None
    listed = json.loads(Path(extra).read_text())
    assert len(listed["training"]) == 3 and not listed["validation"] and not listed["test"]
    truths = [json.loads(Path(e["truth"]).read_text()) for e in datalist_split(extra, "training")]
    assert all(t["lat_facing"] == "left" for t in truths)  # lines supervised on canonical films
    assert all(t["field_of_view"]["name"] in {"lumbar", "thoracolumbar", "thoracic", "whole_spine"} for t in truths)

    own = datalist_split(main, "training")
    combined = training_entries(main, None, extra)
    assert [e["study_id"] for e in combined] == [e["study_id"] for e in own + datalist_split(extra, "training")]
    assert training_entries(main, 1, extra)[1:] == combined[len(own) :]  # train_limit cuts the main dataset only
    assert all("level_labels" not in e for e in combined)  # the run's level_labels for every study ...
    marked = training_entries(main, None, extra, "study")  # ... or the extra studies' own source
    assert [e.get("level_labels") for e in marked] == [None] * len(own) + ["study"] * 3
    with pytest.raises(ValueError, match="extra_level_labels"):
        training_entries(main, None, extra, "grades")
    framings = [t["field_of_view"]["name"] for t in truths]  # leave-one-field-of-view-out: keep some framings
    kept = training_entries(main, None, extra, None, [framings[0]])
    assert [field_of_view_name(e) for e in kept[len(own) :]] == [f for f in framings if f == framings[0]]
    assert training_entries(main, None, extra, None, None) == combined  # None: every framing
    with pytest.raises(ValueError, match="unknown"):
        training_entries(main, None, extra, None, ["cervical"])
    absent = [f for f in ("lumbar", "thoracolumbar", "thoracic", "whole_spine") if f not in framings]
    assert absent  # 3 studies cannot cover the 4 framings
    with pytest.raises(ValueError, match="no training study"):  # nothing left to train on: refused, not empty
        keep_fields_of_view(datalist_split(extra, "training"), absent[:1])
    # one source's own framings (the DRR studies' extra_drr_fields_of_view), on top of the run's
    own_framing = training_entries(main, None, [None, ExtraStudies(extra, (framings[0],))])
    assert own_framing == kept and training_entries(main, None, ExtraStudies(extra)) == combined
    with pytest.raises(ValueError, match="extra_drr_fields_of_view: unknown"):
        training_entries(main, None, ExtraStudies(extra, ("cervical",), "extra_drr_fields_of_view"))
    with pytest.raises(ValueError, match="no training study"):  # both filters: nothing in common, refused
        training_entries(main, None, ExtraStudies(extra, absent[:1]), None, [framings[0]])
    extra_ids = {e["study_id"] for e in datalist_split(extra, "training")}
    held_out = datalist_split(main, "validation") + datalist_split(main, "test")
    assert held_out and not extra_ids & {e["study_id"] for e in held_out}  # validation/test: the main dataset's
    assert default_run_name(main, [384, 288], "resnet18", extra) == "synthetic+fov-384x288-resnet18"
    assert default_run_name(main, [384, 288], "resnet18") == "synthetic-384x288-resnet18"

    again = extra_training_datalist(str(tmp_path / "fov"), 3, 1, "mixed_fov")
    assert Path(again).read_text() == Path(extra).read_text()  # reused, not regenerated


def test_more_default_studies_come_last_with_their_own_level_labels(tmp_path: Path) -> None:
    main = ensure_datalist(str(tmp_path / "synthetic"), 6, 3, "easy")
    fov = extra_training_datalist(str(tmp_path / "fov"), 2, 1, "mixed_fov")
    more = extra_training_datalist(str(tmp_path / "more"), 2, 2, "default")
    assert fov is not None and more is not None
    entries = training_entries(main, None, fov, "study", None, more)
    own, added = datalist_split(main, "training"), datalist_split(more, "training")
    assert [e["study_id"] for e in entries[-2:]] == [e["study_id"] for e in added]
    assert [e.get("level_labels") for e in entries] == [None] * len(own) + ["study"] * 2 + [None] * 2
    assert training_entries(main, None, None, None, None, more)[len(own) :] == added  # without the mixed_fov ones
    # several extra datalists (the framed studies and the DRR ones, extra_drr_studies), None skipped
    several = training_entries(main, None, [fov, None, more], "study")
    assert [e["study_id"] for e in several[len(own) :]] == [
        e["study_id"] for e in datalist_split(fov, "training") + added
    ]
    assert [e.get("level_labels") for e in several] == [None] * len(own) + ["study"] * 4
    assert training_entries(main, None, [None, None]) == own
    truths = [json.loads(Path(e["truth"]).read_text()) for e in added]
    assert all(t["lat_facing"] == "left" for t in truths)
    held_out = {e["study_id"] for e in datalist_split(main, "validation") + datalist_split(main, "test")}
    assert held_out and not held_out & {e["study_id"] for e in added}
    assert default_run_name(main, [384, 288], "resnet18", fov, more) == "synthetic+fov+more-384x288-resnet18"
    assert default_run_name(main, [384, 288], "resnet18", None, more) == "synthetic+more-384x288-resnet18"
    assert default_run_name(main, [384, 288], "resnet18", fov, None, more) == "synthetic+fov+more-384x288-resnet18"


def test_the_main_jobs_extras_are_for_the_embedded_default_only(tmp_path: Path, monkeypatch) -> None:
    from monai.bundle import ConfigParser

    from spine_app.bundle import BUNDLE_DIR
    from spine_app.engines.dataset import is_embedded_default

    assert is_embedded_default("data/synthetic", "data/synthetic/datalist.json")
    assert is_embedded_default("data/synthetic/", "./data/synthetic/datalist.json")
    assert not is_embedded_default("data/synthetic", str(tmp_path / "mine.json"))  # --datalist of one's own
    assert not is_embedded_default(str(tmp_path / "mine"), str(tmp_path / "mine" / "datalist.json"))

    # a run given its own datalist (a robustness experiment, a MONAI Label fine-tune) gets no extra
    # studies and no second cycle, and nothing is generated in the working directory's data/
    monkeypatch.chdir(tmp_path)
    datalist = tmp_path / "mine.json"
    datalist.write_text(json.dumps({"training": [], "validation": [], "test": []}))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_DIR / "configs" / "train.yaml"))
    parser["datalist"] = str(datalist)
    keys = ("extra_synthetic_studies", "extra_default_studies", "extra_drr_studies", "cycle2_epochs", "cycle2_studies")
    assert {key: parser.get_parsed_content(key) for key in keys} == dict.fromkeys(keys, 0)
    assert (
        parser.get_parsed_content("cycle2_datalist") is None and parser.get_parsed_content("extra_drr_datalist") is None
    )
    assert not (tmp_path / "data").exists()
    assert parser.get_parsed_content("extra_drr_framings") is None  # default: every framing
    parser["extra_drr_fields_of_view"] = ["thoracic", "thoracolumbar"]  # as the command line's fire parses it
    parser.parse()
    assert parser.get_parsed_content("extra_drr_framings") == ("thoracic", "thoracolumbar")


def test_the_drr_preset_renders_ray_cast_studies_of_every_framing_once(tmp_path: Path) -> None:
    folder = tmp_path / "drr"
    extra = extra_training_datalist(str(folder), 2, 5, "drr")  # 1 thoracic + 1 thoracolumbar scene
    entries = datalist_split(extra, "training")
    listed = json.loads(Path(extra).read_text())
    assert len(entries) == 2 and not listed["validation"] and not listed["test"]
    truths = [json.loads(Path(e["truth"]).read_text()) for e in entries]
    assert all(t["generator"] == "spine_app.drr" and t["geometry"]["beam"] == "divergent" for t in truths)
    assert all(e["meta_lat"]["spacing"] == [1.0, 1.0] for e in entries)  # framed on the bodies at 1 mm
    assert {field_of_view_name(e) for e in entries} <= {"thoracic", "thoracolumbar", "whole_spine"}
    assert sorted(p.name for p in (folder / ".scenes").iterdir()) == ["thoracic", "thoracolumbar"]  # CTs kept, hidden
    before = Path(extra).stat().st_mtime_ns
    assert extra_training_datalist(str(folder), 2, 5, "drr") == extra  # a second run reuses them
    assert Path(extra).stat().st_mtime_ns == before
    # chosen framings only, each scene preset with its place's seed (whole_spine: the third, seed 5 + 2)
    tall = extra_training_datalist(str(tmp_path / "tall"), 1, 5, "drr", ("whole_spine",))
    assert [field_of_view_name(e) for e in datalist_split(tall, "training")] == ["whole_spine"]
    assert [p.name for p in (tmp_path / "tall" / ".scenes").iterdir()] == ["whole_spine"]
    assert datalist_split(tall, "training")[0]["study_id"].startswith("syn7_")


def test_drr_framings_are_chosen_before_rendering_and_keep_their_seeds() -> None:
    plan = framing_plan(["thoracic", "thoracolumbar"])  # film framings: the lumbar scenes draw thoracolumbar films
    assert list(plan) == list(TRAINING_PLAN)  # every preset keeps its place (its seed: seed + place)
    assert plan == {**TRAINING_PLAN, "whole_spine": 0}
    # 80 studies of the two framings are those of the whole 96-study plan without its whole-spine ones
    assert scaled_plan(80, plan) == {**scaled_plan(96), "whole_spine": 0}
    assert sum(scaled_plan(7, plan).values()) == 7 and scaled_plan(7, plan)["whole_spine"] == 0
    assert framing_plan(None) == dict(TRAINING_PLAN)
    assert framing_plan("whole_spine") == {name: n if name == "whole_spine" else 0 for name, n in TRAINING_PLAN.items()}
    for wrong in (["cervical"], ["lumbar"], []):  # no DRR scene is framed as a lumbar film
        with pytest.raises(ValueError, match="no scene of the plan draws"):
            framing_plan(wrong)
    assert fields_of_view_setting("null", "x") is None and fields_of_view_setting(None, "x") is None
    assert fields_of_view_setting(["thoracic"], "x") == ("thoracic",)
    with pytest.raises(ValueError, match="extra_drr_fields_of_view: an empty list"):
        fields_of_view_setting([], "extra_drr_fields_of_view")
    with pytest.raises(ValueError, match="for the drr preset only"):  # other presets draw every framing
        extra_training_datalist("unused", 3, 1, "mixed_fov", ("thoracic",))
