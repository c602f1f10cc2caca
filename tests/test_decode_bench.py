"""The decoding benchmark runs end to end on tiny run folders (random weights: a smoke test of the
pipeline and of its output format, not of the numbers)."""

from __future__ import annotations

import json

import pytest
import torch

from mdlm import MDLMForMaskedLM
from mdlm.eval.bench import decoding


@pytest.mark.slow
def test_benchmark_writes_json_plot_and_table(tmp_path, stdlib_tokenizer, tiny_model):
    from conftest import tiny_config

    mdlm_run, ar_run = tmp_path / "mdlm", tmp_path / "ar"
    tiny_model.save_pretrained(mdlm_run)
    stdlib_tokenizer.save_pretrained(mdlm_run)
    torch.manual_seed(1)
    MDLMForMaskedLM(tiny_config(stdlib_tokenizer, attention="causal")).save_pretrained(ar_run)
    stdlib_tokenizer.save_pretrained(ar_run)
    out = tmp_path / "results"
    code = decoding.main(["--mdlm-run", str(mdlm_run), "--ar-run", str(ar_run), "--length", "16", "--num-samples", "2",
                          "--batch-size", "2", "--speed-batch", "1", "--radd-seeds", "1", "--output-dir", str(out)])
    assert code == 0
    results = json.loads((out / "decoding.json").read_text())
    assert (out / "decoding.png").stat().st_size > 0
    rows = results["samplers"]
    assert rows["first-hitting"]["nfe"] == 16 and rows["ascending (ASS) T=4"]["nfe"] == 4
    assert all(row["gen_ppl"] > 1 and 0 <= row["js_bigram"] <= 0.7 for row in rows.values())
    radd = results["radd_cache"]
    assert radd["identical_tokens"] and radd["nfe_uncached"] > radd["nfe_cached"]
    table = decoding.markdown_table(results)
    assert "| first-hitting |" in table and "RADD cache" in table
