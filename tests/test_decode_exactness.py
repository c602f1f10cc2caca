"""Exactness of the samplers against the model's distribution enumerated by brute force.

A tiny random model (3 tokens + mask, length 3) with strongly context-dependent conditionals defines
p(x) = E over random orders of the product of its conditionals (any-order autoregressive form). The
first-hitting sampler and the many-step ancestral sampler must match it (chi-square goodness of fit);
the sampler that reveals every token in one step samples the product of the marginals and must fail the
same test (the test has power)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.decode import DecodeConfig, decode

TOKENS, LENGTH, MASK = 3, 3, 3
SAMPLES = 12000


@pytest.fixture(scope="module")
def sharp_model():
    torch.manual_seed(1)
    config = MDLMConfig(vocab_size=TOKENS + 1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=8, mask_token_id=MASK)
    model = MDLMForMaskedLM(config).eval()
    with torch.no_grad():  # large weights make the conditionals depend strongly on the context
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    return model


def enumerate_distribution(model) -> torch.Tensor:
    """(TOKENS^LENGTH,) float64: E over the L! orders of prod_k p(x_sigma(k) | x_sigma(<k))."""
    states = list(itertools.product(range(TOKENS + 1), repeat=LENGTH))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor(states)).logits.double(), -1)
    return order_mixture(logp, states, list(itertools.permutations(range(LENGTH))), TOKENS, LENGTH, MASK)


def order_mixture(logp, states, orders, tokens: int, length: int, mask: int) -> torch.Tensor:
    """(tokens^length,) float64: the mean over `orders` of prod_k p(x_sigma(k) | x_sigma(<k)), with
    `logp` (len(states), length, V) the log-conditionals at every partially masked state."""
    index = {s: i for i, s in enumerate(states)}
    outcomes = list(itertools.product(range(tokens), repeat=length))
    probs = torch.zeros(len(outcomes), dtype=torch.float64)
    for o, x in enumerate(outcomes):
        for order in orders:
            state, total = [mask] * length, 0.0
            for position in order:
                total += float(logp[index[tuple(state)], position, x[position]])
                state[position] = x[position]
            probs[o] += math.exp(total) / len(orders)
    return probs


def histogram(tokens: torch.Tensor) -> torch.Tensor:
    codes = (tokens * torch.tensor([TOKENS ** (LENGTH - 1 - i) for i in range(LENGTH)])).sum(-1)
    return torch.bincount(codes, minlength=TOKENS ** LENGTH).double()


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = torch.tensor(len(probs) - 1, dtype=torch.float64)
    return float(torch.special.gammaincc(dof / 2, statistic / 2))


def sample(model, config: DecodeConfig) -> torch.Tensor:
    canvas = torch.full((SAMPLES, LENGTH), MASK)
    return decode(model, canvas, config).tokens


@pytest.fixture(scope="module")
def exact(sharp_model):
    probs = enumerate_distribution(sharp_model)
    assert abs(float(probs.sum()) - 1) < 1e-9
    return probs


def test_the_model_is_far_from_independent(sharp_model, exact):
    with torch.no_grad():
        marginals = torch.softmax(sharp_model(torch.full((1, LENGTH), MASK)).logits[0].double(), -1)[:, :TOKENS]
    product = torch.ones(1, dtype=torch.float64)
    for i in range(LENGTH):
        product = (product[:, None] * marginals[i][None]).reshape(-1)
    assert 0.5 * float((product - exact).abs().sum()) > 0.1


def test_first_hitting_matches_the_enumerated_distribution(sharp_model, exact):
    counts = histogram(sample(sharp_model, DecodeConfig(sampler="first-hitting", seed=0)))
    assert chi_square_p_value(counts, exact) > 1e-3
    assert 0.5 * float((counts / counts.sum() - exact).abs().sum()) < 0.03


@pytest.mark.slow
def test_many_step_ancestral_matches_the_enumerated_distribution(sharp_model, exact):
    counts = histogram(sample(sharp_model, DecodeConfig(sampler="ancestral", steps=1000, seed=1)))
    assert chi_square_p_value(counts, exact) > 1e-3


def test_one_step_sampler_is_detected(sharp_model, exact):
    counts = histogram(sample(sharp_model, DecodeConfig(sampler="ancestral", steps=1, seed=2)))
    assert chi_square_p_value(counts, exact) < 1e-6


def test_confidence_sampler_at_one_token_per_step_with_random_positions_is_exact(sharp_model, exact):
    # Random position choice with one token per step is random-order autoregressive sampling too.
    config = DecodeConfig(sampler="confidence", remasking="random", steps=LENGTH, seed=3)
    counts = histogram(sample(sharp_model, config))
    assert chi_square_p_value(counts, exact) > 1e-3


@pytest.mark.parametrize("sampler", ["first-hitting", pytest.param("ancestral", marks=pytest.mark.slow)])
def test_cached_and_uncached_runs_give_identical_tokens(sharp_model, sampler):
    canvas = torch.full((1, 8), MASK)
    for seed in range(5):
        cached = decode(sharp_model, canvas, DecodeConfig(sampler=sampler, steps=200, seed=seed))
        uncached = decode(sharp_model, canvas, DecodeConfig(sampler=sampler, steps=200, seed=seed, use_cache=False))
        assert torch.equal(cached.tokens, uncached.tokens)
        if sampler == "ancestral":
            assert cached.nfe <= 8 < uncached.nfe


@pytest.mark.parametrize("sampler", ["first-hitting", "ancestral"])
def test_left_padded_batches_keep_fixed_tokens(sharp_model, sampler):
    pad = 0
    canvas = torch.tensor([[pad, pad, 1, MASK, MASK, 2], [0, 1, 2, MASK, MASK, MASK]])
    valid = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    result = decode(sharp_model, canvas, DecodeConfig(sampler=sampler, steps=50, seed=0, trace=True), valid=valid)
    fixed = canvas != MASK
    assert torch.equal(result.tokens[fixed], canvas[fixed]) and not (result.tokens == MASK).any()
    assert sum(int(s.revealed.sum()) for s in result.trace) == int((canvas == MASK).sum())
    if sampler == "first-hitting":
        assert result.nfe == 3 and all(bool((s.revealed.sum(-1) <= 1).all()) for s in result.trace)


@pytest.mark.parametrize("sampler", ["first-hitting", "ancestral", "confidence"])
def test_trace_log_probabilities_are_the_models(sharp_model, sampler):
    """RL optimises along traces: each revealed token's log-probability must be log p(token | state)."""
    canvas = torch.tensor([[0, MASK, MASK, MASK, 1, MASK], [MASK, 2, MASK, MASK, MASK, MASK]])
    result = decode(sharp_model, canvas, DecodeConfig(sampler=sampler, steps=4, seed=5, trace=True))
    for step, nxt in zip(result.trace, result.trace[1:] + [None]):
        after = nxt.state if nxt is not None else result.tokens
        with torch.no_grad():
            logp = torch.log_softmax(sharp_model(step.state).logits.double(), -1)
        chosen = logp.gather(-1, after[..., None])[..., 0]
        assert torch.allclose(step.logprob[step.revealed], chosen[step.revealed], atol=1e-5)
        assert bool((step.state[step.revealed] == MASK).all())
    assert sum(int(s.revealed.sum()) for s in result.trace) == int((canvas == MASK).sum())


def test_block_length_is_rejected_where_it_does_not_apply(sharp_model):
    with pytest.raises(ValueError, match="block_length applies to the confidence sampler"):
        decode(sharp_model, torch.full((1, 4), MASK), DecodeConfig(sampler="first-hitting", block_length=2))
