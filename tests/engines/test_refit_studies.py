"""The level refit's view of the training set: the extra studies' per-level labels read from another source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.data import CacheDataset, Dataset
from monai.data.utils import set_rnd
from monai.transforms import Compose, RandGaussianNoised

from spine_app.data.importer import import_dataset, load_datalist
from spine_app.data.study_transforms import LoadStudyd
from spine_app.engines.dataset import RelabelledStudies, refit_studies, with_extra_level_labels
from spine_app.engines.level_refit import RefitSettings


@pytest.fixture(scope="module")
def entries(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The six synthetic studies, the last three marked as extra studies that learn from their study label."""
    out = tmp_path_factory.mktemp("datalist") / "datalist.json"
    import_dataset(synth_root, out, seed=3)
    saved = load_datalist(out)
    studies = sorted(saved["training"] + saved["validation"] + saved["test"], key=lambda e: e["study_id"])
    return studies[:3] + with_extra_level_labels(studies[3:], "study")


def transform() -> Compose:
    # a random transform after the cached loading, as in training: the view must seed it the same way
    return Compose([LoadStudyd(canvas=(128, 96), level_labels="auto"), RandGaussianNoised(keys="lat", prob=1.0)])


def test_the_extra_studies_read_their_grades_and_the_others_stay_the_datasets_own(entries: list[dict]) -> None:
    base = CacheDataset(entries, transform(), cache_rate=1.0, progress=False)
    view = refit_studies(base, "truth")
    assert isinstance(view, RelabelledStudies) and view.transform is base.transform and len(view) == len(base)
    assert sorted(view.position) == [3, 4, 5]
    for i in range(len(entries)):
        set_rnd(base, seed=11)  # MONAI's loader worker seeding of the loader's dataset
        ours = base[i]
        set_rnd(view, seed=11)
        theirs = view[i]
        assert torch.equal(ours["lat"], theirs["lat"])  # the same random draw through the one transform
        if i < 3:
            assert torch.equal(ours["levels_lat"], theirs["levels_lat"])
        else:  # study labels: no level map in training; the refit's view has truth.json's per-level codes
            assert not ours["levels_lat"].any() and theirs["levels_lat"].any()
    assert [e.get("level_labels") for e in view.data] == [None, None, None, "truth", "truth", "truth"]
    assert [e.get("level_labels") for e in base.data][3:] == ["study"] * 3  # the training set is untouched


def test_a_dataset_without_studies_to_relabel_is_returned_as_it_is(entries: list[dict]) -> None:
    base = Dataset(entries, transform())
    assert refit_studies(base, None) is base
    assert refit_studies(base, "null") is base  # as a command line spells it
    assert refit_studies(Dataset(entries[:3], transform()), "truth").data == entries[:3]
    assert refit_studies(base, "study") is base  # they already read that source
    plain = refit_studies(base, "morphometry")  # a dataset that does not cache: loaded anew
    assert isinstance(plain.relabelled, Dataset) and plain[4]["levels_lat"].any()


def test_an_unknown_source_is_named() -> None:
    with pytest.raises(ValueError, match="level_refit_extra_labels"):
        RefitSettings(extra_labels="grades")
    assert RefitSettings(extra_labels="none").extra_labels is None


def test_only_the_extra_studies_of_the_named_framings_are_relabelled(entries: list[dict], tmp_path: Path) -> None:
    framed = []
    for entry, name in zip(entries[3:], ("thoracic", "whole_spine", "thoracic")):
        truth = json.loads(Path(entry["truth"]).read_text())
        truth["field_of_view"] = {"name": name}  # as the mixed_fov preset records it
        path = tmp_path / f"{entry['study_id']}.json"
        path.write_text(json.dumps(truth))
        framed.append({**entry, "truth": str(path)})
    base = Dataset(entries[:3] + framed, transform())
    view = refit_studies(base, "truth", ["thoracic", "lumbar"])
    assert sorted(view.position) == [3, 5]
    assert not view[4]["levels_lat"].any() and view[5]["levels_lat"].any()  # whole spine keeps its study label
    assert refit_studies(base, "truth", ["lumbar"]) is base  # no extra study of that framing
    with pytest.raises(ValueError, match="level_refit_extra_fields_of_view"):
        refit_studies(base, "truth", ["cervical"])
    with pytest.raises(ValueError, match="level_refit_extra_fields_of_view"):
        RefitSettings(extra_labels="truth", extra_fields_of_view=[])
