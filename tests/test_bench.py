"""The speed benchmark runs end to end on tiny settings and reports every figure."""

from __future__ import annotations

import pytest

from spine_app.bench.speed import bench_speed, format_speed


def test_bench_speed_rows_and_table() -> None:
    rows = bench_speed(device="cpu", batch=1, canvas=(64, 64), steps=1, n=2)
    from spine_app.networks.precision import cpu_has_native_bf16

    expected = [("fp32", False), ("fp32", True)] + ([("bf16", False), ("bf16", True)] if cpu_has_native_bf16() else [])
    assert [(r["amp"], r["channels_last"]) for r in rows] == expected  # bf16 rows only where it is native
    for row in rows:
        assert row["step_s"] > 0 and row["images_per_s"] > 0 and 0 <= row["loader_wait_s"] < row["step_s"]
        assert 0 < row["infer_median_s"] <= row["infer_p95_s"]
    assert format_speed(rows).count("\n") == len(rows) + 1


def test_compare_runs_every_variant_with_a_one_step_budget(synth_root, tmp_path) -> None:
    import json

    from spine_app.bench.compare import VARIANTS, compare
    from spine_app.data.importer import import_dataset
    from spine_app.engines.metrics import segmentation_table

    datalist = tmp_path / "datalist.json"
    import_dataset(synth_root, datalist, seed=0, fractions=(0.5, 0.0, 0.5), workers=1)
    results = compare(str(datalist), tmp_path / "cmp", steps=1, batch=1, canvas=(64, 64), workers=0)
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert all(f"| {name} |" in table for name in VARIANTS)
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    ours, seed = saved["variants"]["ours"], saved["variants"]["seed-style (8 nets + classifier)"]
    assert seed["params"] > 5 * ours["params"] and seed["macs_per_study"] > 3 * ours["macs_per_study"]
    # the table's numbers are the bundle metric's: recompute from the stored per-study records
    entry = results["variants"]["ours"]
    assert entry["summary"]["segmentation"] == segmentation_table(entry["records"])
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0


def test_compare_table_has_one_separator_per_column() -> None:
    """The compare table (from the stored docs results) and the shared builder: a separator cell per
    header cell, else GitHub renders no table (compare.md once had one too few)."""
    import json
    from pathlib import Path

    from spine_app.bench.compare_report import markdown
    from spine_app.viz.tables import markdown_table

    stored = Path(__file__).resolve().parents[1] / "docs" / "figures" / "benchmarks" / "compare.json"
    lines = markdown(json.loads(stored.read_text())).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| variant |"))
    assert lines[header + 1].count("---") == lines[header].count("|") - 1
    assert markdown_table(["a", "b"], [[1, "x"], ["y", 2.5]]) == "| a | b |\n|---|---|\n| 1 | x |\n| y | 2.5 |"


def test_bench_all_rewrites_only_the_marked_blocks(synth_root, tmp_path) -> None:
    import json

    from spine_app.bench.suite import BenchSettings, run_all
    from spine_app.data.importer import import_dataset

    datalist = tmp_path / "datalist.json"
    import_dataset(synth_root, datalist, seed=0, fractions=(0.0, 0.0, 1.0), workers=1)
    doc = tmp_path / "benchmarks.md"
    prose = "Reading of the figures, kept as written.\n"
    doc.write_text(
        f"# B\n{prose}<!-- bench:morphometry -->\nold table\n<!-- /bench:morphometry -->\n"
        "<!-- bench:machine -->\n<!-- /bench:machine -->\n<!-- bench:compare -->\nkept\n<!-- /bench:compare -->\n"
    )
    result = run_all(BenchSettings(str(datalist), tmp_path / "out", device="cpu"), ["machine", "morphometry"], [doc])
    assert result["errors"] == {} and result["docs"] == {str(doc): ["machine", "morphometry"]}
    text = doc.read_text()
    assert prose in text and "old table" not in text and "kept" in text  # a part not run keeps its block
    assert result["tables"]["morphometry"] in text and "reference (the method alone)" in text
    morph = json.loads((tmp_path / "out" / "morphometry.json").read_text())
    assert morph["reference"]["studies"] == 6 and morph["model"]["studies"] == 6  # the model's masks were written
    assert json.loads((tmp_path / "out" / "machine.json").read_text())["cores"] >= 1


def test_bench_all_reports_a_failing_part_and_runs_the_others(tmp_path) -> None:
    import json

    from spine_app.bench.suite import BenchSettings, run_all

    missing = tmp_path / "missing.pt"
    result = run_all(
        BenchSettings("unused.json", tmp_path / "out", model=str(missing), device="cpu"), ["view", "machine"]
    )
    assert list(result["errors"]) == ["view"] and "\n" not in result["errors"]["view"]
    assert (tmp_path / "out" / "machine.md").is_file() and not (tmp_path / "out" / "view.md").exists()
    assert json.loads((tmp_path / "out" / "errors.json").read_text()) == result["errors"]
    with pytest.raises(ValueError, match="unknown benchmark part"):
        run_all(BenchSettings("unused.json", tmp_path / "out"), ["nope"])
