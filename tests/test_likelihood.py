"""The evaluation likelihoods: Monte Carlo ELBO against exact enumeration, variance, AR exactness."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from mdlm import MDLMForMaskedLM
from mdlm.eval.likelihood import (
    autoregressive_nll,
    diffusion_nll,
    exact_diffusion_nll,
    monte_carlo_nll,
    naive_monte_carlo_nll,
    sample_masks,
    stratified_mask_counts,
)
from mdlm.losses import ar_loss, exact_negative_elbo

REPEATS = 60


@pytest.fixture(scope="module")
def short_request(stdlib_tokenizer):
    context = stdlib_tokenizer("def add(a, b):\n")["input_ids"]
    continuation = stdlib_tokenizer("    return a + b\n")["input_ids"]
    assert 4 <= len(continuation) <= 8, "the estimator tests want a short continuation (exact enumeration)"
    return context, continuation


@pytest.fixture(scope="module")
def causal_model(stdlib_tokenizer):
    torch.manual_seed(1)
    return MDLMForMaskedLM(tiny_config(stdlib_tokenizer, attention="causal")).eval()


def repeated_estimates(estimator, model, request, mc_num, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.tensor([estimator(model, *request, mc_num=mc_num, generator=generator) for _ in range(REPEATS)],
                        dtype=torch.float64)


def test_stratified_counts_are_spread_and_each_uniform():
    counts = stratified_mask_counts(6, 12, torch.Generator().manual_seed(0))
    assert sorted(counts.tolist()) == sorted([1, 2, 3, 4, 5, 6] * 2)
    # Marginally uniform: over many groups, row 5's count takes every value about equally often.
    generator = torch.Generator().manual_seed(1)
    row5 = torch.stack([stratified_mask_counts(6, 8, generator)[5] for _ in range(3000)])
    frequencies = torch.bincount(row5, minlength=7)[1:] / 3000
    assert (frequencies - 1 / 6).abs().max() < 0.03


def test_masks_have_the_drawn_sizes_and_uniform_positions():
    generator = torch.Generator().manual_seed(0)
    masks, counts = sample_masks(5, 7, generator)
    assert masks.sum(1).tolist() == counts.tolist()
    # Each row alone is a uniform subset of its size: position frequencies are flat.
    hits = torch.zeros(5)
    for _ in range(2000):
        masks, counts = sample_masks(5, 3, generator)
        hits += masks[1].float() / counts[1]
    assert (hits / 2000 - 0.2).abs().max() < 0.03


def test_exact_enumeration_matches_the_loss_module(tiny_model, short_request):
    context, continuation = short_request
    ids = torch.tensor([context + continuation])
    fixed = torch.zeros_like(ids, dtype=torch.bool)
    fixed[0, : len(context)] = True
    per_token = float(exact_negative_elbo(tiny_model, ids, fixed)[0])
    assert exact_diffusion_nll(tiny_model, context, continuation) == pytest.approx(per_token * len(continuation),
                                                                                  rel=1e-9)


def test_monte_carlo_mean_matches_exact_within_standard_error(tiny_model, short_request):
    exact = exact_diffusion_nll(tiny_model, *short_request)
    estimates = repeated_estimates(monte_carlo_nll, tiny_model, short_request, mc_num=8)
    standard_error = estimates.std() / math.sqrt(REPEATS)
    assert abs(float(estimates.mean()) - exact) < 3 * float(standard_error)
    naive = repeated_estimates(naive_monte_carlo_nll, tiny_model, short_request, mc_num=8)
    assert abs(float(naive.mean()) - exact) < 3 * float(naive.std() / math.sqrt(REPEATS))


def test_standard_deviation_falls_with_mc_num_and_beats_naive(tiny_model, short_request):
    std = {mc: float(repeated_estimates(monte_carlo_nll, tiny_model, short_request, mc).std()) for mc in (4, 32)}
    naive_std = float(repeated_estimates(naive_monte_carlo_nll, tiny_model, short_request, 32).std())
    assert std[32] < std[4] / 2  # 8x the samples: sqrt(8) = 2.8x for plain MC, more with stratification
    assert std[32] < naive_std / 2


def test_single_token_continuation_is_exact_with_one_sample(tiny_model, short_request):
    context, continuation = short_request
    token = continuation[:1]
    with torch.no_grad():
        canvas = torch.tensor([context + [tiny_model.config.mask_token_id]])
        expected = float(F.cross_entropy(tiny_model(canvas).logits[0, -1], torch.tensor(token[0])))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        assert monte_carlo_nll(tiny_model, context, token, mc_num=1, generator=generator) == pytest.approx(expected,
                                                                                                         rel=1e-6)


def test_batched_requests_of_different_lengths_match_one_by_one(tiny_model, stdlib_tokenizer):
    requests = [(stdlib_tokenizer(c)["input_ids"], stdlib_tokenizer(x)["input_ids"])
                for c, x in [("import os\n", "import sys\n"), ("x = 1\ny = ", "2"), ("class A:\n", "    pass")]]
    assert all(2 ** len(x) - 1 <= 256 for _, x in requests)
    together = diffusion_nll(tiny_model, requests, mc_num=256, batch_size=64)  # short: exact enumeration
    alone = [exact_diffusion_nll(tiny_model, *r) for r in requests]
    assert together == pytest.approx(alone, rel=1e-5)


def test_autoregressive_likelihood_is_exact_and_reports_greedy(causal_model, short_request):
    context, continuation = short_request
    (nll, greedy), = autoregressive_nll(causal_model, [(context, continuation)])
    ids = torch.tensor([context + continuation])
    fixed = torch.zeros_like(ids, dtype=torch.bool)
    fixed[0, : len(context)] = True
    with torch.no_grad():
        assert nll == pytest.approx(float(ar_loss(causal_model, ids, fixed=fixed).sum_nll), rel=1e-5)
        logits = causal_model(ids).logits[0, len(context) - 1 : -1]
    greedy_continuation = logits.argmax(-1).tolist()
    assert greedy is (greedy_continuation == continuation)
    (_, greedy_self), = autoregressive_nll(causal_model, [(context, greedy_continuation[:1])])
    assert greedy_self is True
    # Padding inside a batch changes nothing.
    batch = autoregressive_nll(causal_model, [(context, continuation), (context[:2], continuation[:3])])
    assert batch[0][0] == pytest.approx(nll, rel=1e-5)


def test_bad_arguments_are_named(tiny_model, short_request):
    with pytest.raises(ValueError, match="mc_num"):
        diffusion_nll(tiny_model, [short_request], mc_num=0)
    with pytest.raises(ValueError, match="context is empty"):
        diffusion_nll(tiny_model, [([], short_request[1])])
    too_long = list(range(10)) * 10
    with pytest.raises(ValueError, match="beyond the model's context"):
        diffusion_nll(tiny_model, [(too_long, short_request[1])])


def test_the_elbo_runs_the_lm_head_at_the_masked_continuation_positions_only(tiny_model, short_request):
    from mdlm.decode.denoiser import MDLMDenoiser
    from mdlm.eval.likelihood import exact_diffusion_nll

    context, continuation = short_request
    head_positions = []
    original = tiny_model.forward

    def recording(*args, logits_at=None, **kwargs):
        head_positions.append(None if logits_at is None else logits_at.shape[1])
        return original(*args, logits_at=logits_at, **kwargs)

    denoiser = MDLMDenoiser(tiny_model)
    denoiser.model = type("Recorded", (), {"__call__": staticmethod(recording), "config": tiny_model.config,
                                          "parameters": tiny_model.parameters})()
    value = exact_diffusion_nll(denoiser, context, continuation[:4])
    assert head_positions and all(k is not None and k <= 4 for k in head_positions)
    assert value == pytest.approx(exact_diffusion_nll(tiny_model, context, continuation[:4]), rel=1e-5)
