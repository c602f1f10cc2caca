"""The README's result tables are generated from results/ (mdlm.eval.bench.report), never edited by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

from mdlm.eval.bench import report

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_committed_results():
    old = (ROOT / "README.md").read_text()
    assert report.render_readme(old, ROOT / "results") == old, \
        "README.md is out of date with results/: run python -m mdlm.eval.bench.report"


def test_a_block_in_a_results_subfolder_renders_that_file(tmp_path):
    from mdlm.eval.bench import rl

    (tmp_path / "rl-countdown").mkdir()
    shutil.copy(ROOT / "results" / "rl-countdown" / "rl.json", tmp_path / "rl-countdown" / "rl.json")
    shutil.copy(ROOT / "results" / "rl.json", tmp_path / "rl.json")
    text = "a\n<!-- results:rl-countdown/rl -->\nstale\n<!-- /results:rl-countdown/rl -->\n" \
           "<!-- results:rl -->\nstale\n<!-- /results:rl -->\n"
    out = report.render_readme(text, tmp_path)
    assert "stale" not in out
    countdown, sudoku = out.split("<!-- results:rl -->")
    assert "Held-out countdown accuracy" in countdown and "Held-out sudoku accuracy" in sudoku
    import json

    expected = rl.markdown_table(json.loads((tmp_path / "rl-countdown" / "rl.json").read_text()))
    assert expected.strip() in countdown


def test_a_missing_subfolder_result_names_the_benchmark_to_run(tmp_path):
    out = report.render_readme("<!-- results:rl-countdown/rl -->\n<!-- /results:rl-countdown/rl -->\n", tmp_path)
    assert "python -m mdlm.eval.bench.rl`" in out
