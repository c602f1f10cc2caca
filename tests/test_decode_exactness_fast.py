"""Fast siblings of the slow tests of test_decode_exactness.py: the same model, enumeration and chi-square
test on fewer samples and steps, with the one-step sampler as the negative control at the same sample size
(so the test still has power), and the cache check on fewer steps and seeds."""

from __future__ import annotations

import torch

from mdlm.decode import DecodeConfig, decode
from tests.test_decode_exactness import LENGTH, MASK, chi_square_p_value, exact, histogram, sharp_model  # noqa: F401

FEW_SAMPLES = 3000


def few_samples(model, config: DecodeConfig) -> torch.Tensor:
    return decode(model, torch.full((FEW_SAMPLES, LENGTH), MASK), config).tokens


def test_many_step_ancestral_matches_the_enumerated_distribution_on_fewer_samples(sharp_model, exact):
    # 200 steps: two of the 3 tokens share a step in about 1% of the samples, below what 3000 samples resolve
    counts = histogram(few_samples(sharp_model, DecodeConfig(sampler="ancestral", steps=200, seed=1)))
    assert chi_square_p_value(counts, exact) > 1e-3
    one_step = histogram(few_samples(sharp_model, DecodeConfig(sampler="ancestral", steps=1, seed=2)))
    assert chi_square_p_value(one_step, exact) < 1e-6


def test_cached_and_uncached_ancestral_runs_give_identical_tokens_in_fewer_steps(sharp_model):
    canvas = torch.full((1, 8), MASK)
    for seed in range(2):
        cached = decode(sharp_model, canvas, DecodeConfig(sampler="ancestral", steps=50, seed=seed))
        uncached = decode(sharp_model, canvas, DecodeConfig(sampler="ancestral", steps=50, seed=seed, use_cache=False))
        assert torch.equal(cached.tokens, uncached.tokens)
        assert cached.nfe <= 8 < uncached.nfe
