"""The first-hitting speed benchmark on a tiny untrained model: both samplers timed, NFE as expected,
results written after each length (so a stopped run keeps what it measured)."""

from __future__ import annotations

import json

from mdlm.eval.bench.first_hitting_speed import ANCESTRAL_STEPS, main, markdown_table


def test_benchmark_times_both_samplers_and_writes_the_ratio(tmp_path):
    results = main(["--preset", "tiny", "--lengths", "8", "--repeats", "2", "--output-dir", str(tmp_path)])
    written = json.loads((tmp_path / "first_hitting_speed.json").read_text())
    assert written["lengths"] == results["lengths"] and (tmp_path / "first_hitting_speed.png").is_file()
    (row,) = written["lengths"]
    fhs, ancestral = row["samplers"]["first-hitting"], row["samplers"][f"ancestral T={ANCESTRAL_STEPS} uncached"]
    assert fhs["nfe"] == 8 and 8 < ancestral["nfe"] <= ANCESTRAL_STEPS  # one call per token vs one per step
    assert len(fhs["seconds"]) == len(ancestral["seconds"]) == 2
    assert row["speedup"] == ancestral["median_seconds"] / fhs["median_seconds"] > 1
    assert "OMP_NUM_THREADS=1" in written["note"] and "| 8 |" in markdown_table(written)


def test_lengths_not_reached_are_named_in_the_table():
    results = dict(model="m", batch=2, threads=1, asked_lengths=[128, 1024], lengths=[])
    assert "L = 128, 1024" in markdown_table(results)
