"""The speed benchmark runs end to end on tiny settings and reports every figure."""

from __future__ import annotations

from spine_app.bench_speed import bench_speed, format_speed


def test_bench_speed_rows_and_table() -> None:
    rows = bench_speed(device="cpu", batch=1, canvas=(64, 64), steps=1, n=2)
    assert [(r["amp"], r["channels_last"]) for r in rows] == [(False, False), (False, True)]  # no AMP on CPU
    for row in rows:
        assert row["step_s"] > 0 and row["images_per_s"] > 0 and 0 <= row["loader_wait_s"] < row["step_s"]
        assert 0 < row["infer_median_s"] <= row["infer_p95_s"]
    assert format_speed(rows).count("\n") == 3


def test_compare_runs_every_variant_with_a_one_step_budget(synth_root, tmp_path) -> None:
    import json

    from spine_app.bench_compare import VARIANTS, compare
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
