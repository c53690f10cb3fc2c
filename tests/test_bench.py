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
