"""The finetuning benchmark's pieces: the live-tensor memory meter and the table/plot of its results."""

from __future__ import annotations

import torch

from mdlm.eval.bench.finetune import LiveTensorBytes, markdown_table, plot, summarise


def test_live_tensor_bytes_counts_what_is_made_inside_until_it_is_freed():
    weights = torch.zeros(1024, 256)  # 1 MiB that exists before
    memory = LiveTensorBytes()
    memory.track(weights)
    with memory:
        a = torch.ones(2048, 256)  # 2 MiB made inside
        b = a * 2  # 2 MiB more
        del a, b
        c = torch.ones(512, 256)  # 0.5 MiB after both were freed
    assert memory.peak == 5 * 2**20
    assert memory.current == int(1.5 * 2**20)
    del c


def test_the_table_and_plot_compare_each_variant_with_full_finetuning(tmp_path):
    rows = [{"family": "llada", "step": step, "variant": variant, "gradient_checkpointing": False,
             "params": 10, "trained_params": 10, "step_s": 1.0 + k, "peak_mib": peak}
            for step in ("sft", "rl") for k, (variant, peak) in enumerate((("full", 100.0), ("lora", 40.0),
                                                                          ("lora-bf16", 30.0)))]
    results = summarise(rows, "quick")
    assert results["target_met"] == {"llada sft lora": True, "llada sft lora-bf16": True, "llada rl lora": True,
                                     "llada rl lora-bf16": True}
    table = markdown_table(results)
    assert "| llada | SFT | no | 1.00 s, 100 | 2.00 s, 40 | 3.00 s, 30 | 0.40 | 0.30 |" in table
    plot(results, tmp_path / "finetune.png")
    assert (tmp_path / "finetune.png").stat().st_size > 0
