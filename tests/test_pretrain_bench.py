"""The pretraining benchmark end to end on tiny runs (its real runs take ~20 minutes each)."""

from __future__ import annotations

import json

from mdlm.eval.bench.pretrain import main, markdown_table


def test_quick_benchmark_writes_results_plot_and_table(tmp_path, mdlm_cache, monkeypatch):
    monkeypatch.setenv("MDLM_BENCH_RUNS", str(tmp_path / "runs"))
    results = main(["--quick", "--max-steps", "12", "--output-dir", str(tmp_path / "results"),
                    "--validation-blocks", "16", "--elbo-repeats", "3", "--throughput-steps", "2"])
    saved = json.loads((tmp_path / "results" / "pretrain-quick.json").read_text())
    assert saved["throughput"]["ratio_mdlm_to_ar"] == results["throughput"]["ratio_mdlm_to_ar"] > 0
    assert (tmp_path / "results" / "pretrain-quick.png").stat().st_size > 5000
    for objective in ("mdlm", "ar"):
        run = saved[objective]
        assert run["training_tokens"] == 12 * 8 * 64
        assert [tokens for tokens, _ in run["curve"]] == [0, 12 * 8 * 64]  # evaluations at 0 and the end
        assert 0 < run["final"]["nats_per_token"] < 7 and run["final"]["tokens"] > 0
    assert saved["mdlm"]["final"]["stderr"] > 0 and saved["ar"]["final"]["stderr"] == 0  # AR NLL is exact
    assert saved["mdlm"]["final"]["nats_per_token"] > 0 and 4 < saved["unigram_nats_per_token"] < 7
    table = markdown_table(saved)
    assert "MDLM, t-DCE" in table and "AR baseline" in table and "Throughput ratio" in table
    # a second call reuses the runs and, when asked, the final validation numbers
    again = main(["--quick", "--max-steps", "12", "--output-dir", str(tmp_path / "results"), "--reuse-validation",
                  "--throughput-steps", "1"])
    assert again["mdlm"]["final"] == saved["mdlm"]["final"]
