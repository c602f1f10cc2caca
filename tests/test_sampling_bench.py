"""The sampling benchmark's pieces: the three draws, the ancestral sampler of the entropy experiment and
the README table."""

from __future__ import annotations

import math

import pytest
import torch

from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.eval.bench.sampling import (
    DRAWS, METHODS, ancestral_samples, markdown_table, measure_in_this_process, unigram_entropy,
)


def test_the_three_draws_sample_the_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, -2.0]).expand(20_000, -1).contiguous()
    target = torch.softmax(logits[0].double(), -1)
    for method in METHODS:
        counts = torch.bincount(DRAWS[method](logits, 0), minlength=4).double() / logits.shape[0]
        assert torch.allclose(counts, target, atol=0.015), (method, counts)


def test_measurement_reports_time_and_memory_for_each_method():
    """In a fresh process (as the benchmark measures), the naive draw's float64 copy of the logits shows in
    its peak memory and the chunked draw stays below it."""
    from mdlm.eval.bench.sampling import measure

    rows, vocab = 256, 8192
    measured = measure(rows, vocab, repeats=1)
    assert set(measured) == set(METHODS)
    logits_bytes = rows * vocab * 4
    for m in measured.values():
        assert 0 < m["seconds"] < 60 and m["logits_bytes"] == logits_bytes
    assert measured["b"]["peak_extra_bytes"] >= 2 * logits_bytes  # at least one (rows, vocab) float64 tensor
    assert measured["a"]["peak_extra_bytes"] < measured["b"]["peak_extra_bytes"]


def test_measurement_in_this_process_times_every_method():
    measured = measure_in_this_process(8, 1000, repeats=2)
    assert set(measured) == set(METHODS)
    for m in measured.values():
        assert 0 < m["seconds"] < 10 and m["logits_bytes"] == 8 * 1000 * 4


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_ancestral_sampler_reveals_every_position(precision):
    torch.manual_seed(0)
    model = MDLMForMaskedLM(MDLMConfig.from_preset("tiny", vocab_size=60, mask_token_id=59)).eval()
    tokens, logp = ancestral_samples(model, num_samples=5, length=12, steps=6, precision=precision, seed=1)
    assert tokens.shape == (5, 12) and not bool((tokens == 59).any())
    assert bool((logp < 0).all()) and bool(torch.isfinite(logp).all())
    assert 0 < unigram_entropy(tokens) <= math.log(12)


def test_markdown_table_lists_every_shape_and_the_entropy():
    method = dict(seconds=0.1, time_vs_c=1.2, memory_vs_logits=0.1)
    results = dict(grid=[dict(rows=4, vocab=10, logits_mb=0.0, methods={m: method for m in METHODS})],
                   entropy=dict(run="runs/x", num_samples=2, length=3, steps=4,
                                methods={m: dict(unigram_entropy=1.0, mean_surprisal=2.0, distinct_tokens=3)
                                         for m in ("a", "c")}),
                   gpu="no GPU")
    table = markdown_table(results)
    assert "| 4 x 10 |" in table and "unigram entropy" in table and "no GPU" in table


def test_device_measurement_runs_the_torch_methods_off_cuda():
    """The GPU part of the benchmark (Triton kernel against the torch paths) on CPU: torch methods only."""
    from mdlm.eval.bench.sampling import measure_on_device

    (small, large) = measure_on_device("cpu", [(4, 300), (64, 4096)], repeats=2)
    for entry, (rows, vocab) in ((small, (4, 300)), (large, (64, 4096))):
        assert (entry["rows"], entry["vocab"], entry["logits_mb"]) == (rows, vocab, rows * vocab * 4 / 2**20)
        assert set(entry["methods"]) == set(METHODS)  # no Triton entry off CUDA
        c = entry["methods"]["c"]["seconds"]
        for m in entry["methods"].values():
            assert 0 < m["seconds"] < 60 and m["peak_extra_mb"] is None  # memory is measured on CUDA only
            assert m["time_vs_c"] == pytest.approx(m["seconds"] / c)
    # 200x the entries take longer for every method: the timings measure the draws, not overhead
    assert all(large["methods"][m]["seconds"] > small["methods"][m]["seconds"] for m in METHODS)
