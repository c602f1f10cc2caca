"""eval/bench/serve.py: the request mix it sends (the measurement itself runs in the benchmark)."""

from __future__ import annotations

from mdlm.eval.bench.serve import NUM_REQUESTS, OUTPUT_LENGTHS, make_requests, percentile


def test_request_mix_fits_the_context_and_mixes_lengths(stdlib_tokenizer):
    context = 64
    requests = make_requests(stdlib_tokenizer, context)
    assert len(requests) == NUM_REQUESTS
    prompt_lengths = [len(stdlib_tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in requests]
    assert all(p + r["max_tokens"] <= context for p, r in zip(prompt_lengths, requests))
    assert len(set(prompt_lengths)) >= 8 and {r["max_tokens"] for r in requests} == set(OUTPUT_LENGTHS)
    assert all(r["steps"] * 2 == r["max_tokens"] for r in requests)
    assert make_requests(stdlib_tokenizer, context) == requests  # the same mix every run


def test_percentile():
    values = list(range(1, 101))
    assert percentile(values, 50) in (50, 51) and percentile(values, 95) in (95, 96) and percentile([3], 95) == 3
