"""The families benchmark (`mdlm.eval.bench.families`) at a tiny size: every path of a family runs, the
exact cache gives the uncached tokens, and the JSON, plot and table are written."""

from __future__ import annotations

import json

import pytest

from mdlm.eval.bench import families as bench


@pytest.mark.slow  # ~20 CPU seconds (minutes on a shared machine)
def test_the_families_benchmark_measures_every_path_and_writes_its_results(tmp_path):
    results = bench.main(["--output-dir", str(tmp_path), "--families", "sdar", "llada", "--quick"])
    saved = json.loads((tmp_path / "families.json").read_text())
    assert (tmp_path / "families.png").is_file() and saved["config"]["gen_length"] == 64
    sdar, llada = results["families"]["sdar"]["paths"], results["families"]["llada"]["paths"]
    assert list(sdar) == list(bench.BLOCK_CAUSAL_PATHS) and list(llada) == list(bench.BIDIRECTIONAL_PATHS)
    assert sdar["exact block KV"]["same_tokens_as_no_cache"] == 1.0  # exact
    assert llada["dual"]["nfe"] == llada["no cache"]["nfe"] == 64  # one token per step on every fixed path
    assert all(row["seconds_per_token"] > 0 for row in [*sdar.values(), *llada.values()])
    assert "| llada | dual |" in bench.markdown_table(results)
