"""The benchmark tables and the paragraphs that read them are generated from results/ into the docs
(mdlm.eval.bench.report), never edited by hand."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

from mdlm.eval.bench import report

ROOT = Path(__file__).resolve().parents[1]


def test_pages_match_the_committed_results():
    for page in report.pages(ROOT):
        old = page.read_text(encoding="utf-8")
        assert report.render_text(old, ROOT / "results") == old, \
            f"{page.relative_to(ROOT)} is out of date with results/: run python -m mdlm.eval.bench.report"


def test_every_committed_benchmark_result_is_shown_in_the_docs():
    shown = {name for page in report.pages(ROOT) for name in report.block_names(page.read_text(encoding="utf-8"))}
    for path in sorted((ROOT / "results").rglob("*.json")):
        name = path.relative_to(ROOT / "results").with_suffix("").as_posix()
        if "quick" in path.parts:
            continue
        try:
            module = importlib.import_module(f"mdlm.eval.bench.{report.benchmark_module(name)}")
        except ModuleNotFoundError:
            continue  # not a benchmark's output (SFT curves, the RL seeds table)
        if hasattr(module, "markdown_table"):
            assert name in shown, f"results/{name}.json has no <!-- results:{name} --> block in README.md or docs/"


def test_a_block_renders_its_table_then_the_narrative_beside_the_data(tmp_path):
    from mdlm.eval.bench import lm_head

    shutil.copy(ROOT / "results" / "lm_head.json", tmp_path / "lm_head.json")
    text = "<!-- results:lm_head -->\nstale\n<!-- /results:lm_head -->\n"
    table = lm_head.markdown_table(json.loads((tmp_path / "lm_head.json").read_text())).strip()
    assert report.render_text(text, tmp_path) == f"<!-- results:lm_head -->\n{table}\n<!-- /results:lm_head -->\n"
    (tmp_path / "lm_head.md").write_text("**What it shows.** Less memory.\n")
    out = report.render_text(text, tmp_path)
    assert out.index(table) < out.index("**What it shows.** Less memory.") < out.index("<!-- /results:lm_head -->")


def test_a_table_block_renders_the_table_without_the_narrative(tmp_path):
    from mdlm.eval.bench import lm_head

    shutil.copy(ROOT / "results" / "lm_head.json", tmp_path / "lm_head.json")
    (tmp_path / "lm_head.md").write_text("**What it shows.** Less memory.\n")
    text = "<!-- results-table:lm_head -->\nstale\n<!-- /results-table:lm_head -->\n"
    table = lm_head.markdown_table(json.loads((tmp_path / "lm_head.json").read_text())).strip()
    assert report.render_text(text, tmp_path) == \
        f"<!-- results-table:lm_head -->\n{table}\n<!-- /results-table:lm_head -->\n"
    assert report.block_names(text) == ["lm_head"]


def test_a_block_in_a_results_subfolder_renders_that_file(tmp_path):
    from mdlm.eval.bench import rl

    (tmp_path / "rl-countdown").mkdir()
    shutil.copy(ROOT / "results" / "rl-countdown" / "rl.json", tmp_path / "rl-countdown" / "rl.json")
    (tmp_path / "rl-countdown" / "rl.md").write_text("Countdown narrative.\n")
    shutil.copy(ROOT / "results" / "rl.json", tmp_path / "rl.json")
    text = "a\n<!-- results:rl-countdown/rl -->\nstale\n<!-- /results:rl-countdown/rl -->\n" \
           "<!-- results:rl -->\nstale\n<!-- /results:rl -->\n"
    out = report.render_text(text, tmp_path)
    assert "stale" not in out
    countdown, sudoku = out.split("<!-- results:rl -->")
    assert "Held-out countdown accuracy" in countdown and "Held-out sudoku accuracy" in sudoku
    assert "Countdown narrative." in countdown and "Countdown narrative." not in sudoku
    expected = rl.markdown_table(json.loads((tmp_path / "rl-countdown" / "rl.json").read_text()))
    assert expected.strip() in countdown


def test_a_missing_subfolder_result_names_the_benchmark_to_run(tmp_path):
    out = report.render_text("<!-- results:rl-countdown/rl -->\n<!-- /results:rl-countdown/rl -->\n", tmp_path)
    assert "python -m mdlm.eval.bench.rl`" in out


def test_check_fails_on_a_stale_page_and_passes_once_it_is_regenerated(tmp_path, capsys):
    shutil.copy(ROOT / "results" / "lm_head.json", tmp_path / "lm_head.json")
    page = tmp_path / "page.md"
    page.write_text("# Numbers\n<!-- results:lm_head -->\nhand-edited\n<!-- /results:lm_head -->\n")
    common = ["--results", str(tmp_path), "--pages", str(page)]
    assert report.main(common + ["--check"]) == 1
    assert "out of date" in capsys.readouterr().err and "hand-edited" in page.read_text()
    assert report.main(common) == 0
    assert "hand-edited" not in page.read_text() and report.main(common + ["--check"]) == 0


def test_the_families_table_is_generated_from_the_registry(tmp_path):
    from mdlm.decode.families import families_table

    out = report.render_text("x\n<!-- families -->\n| stale |\n<!-- /families -->\ny\n", tmp_path)
    assert out == f"x\n<!-- families -->\n{families_table()}\n<!-- /families -->\ny\n"


def test_a_dashed_result_name_is_its_underscored_module():
    assert report.benchmark_module("rl-diagnose") == "rl_diagnose"
    assert report.benchmark_module("rl-countdown/rl") == "rl" and report.benchmark_module("lm_eval") == "lm_eval"


def test_the_command_exits_1_on_a_stale_page(tmp_path):
    import subprocess
    import sys

    shutil.copy(ROOT / "results" / "lm_head.json", tmp_path / "lm_head.json")
    page = tmp_path / "page.md"
    page.write_text("<!-- results:lm_head -->\nhand-edited\n<!-- /results:lm_head -->\n")
    done = subprocess.run([sys.executable, "-m", "mdlm.eval.bench.report", "--check", "--results", str(tmp_path),
                           "--pages", str(page)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "out of date" in done.stderr
