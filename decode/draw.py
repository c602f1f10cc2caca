"""The one draw step every sampler, the block decoder and ASSD take (Zheng et al. 2024, "Masked
Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical
Sampling": the draw is float64 Gumbel-max, never float32, through `mdlm.kernels`).

    1. scores = logits / temperature                 (temperature 0: argmax)
    2. keep the top-k, then the top-p nucleus of the tempered distribution (as transformers and vLLM)
    3. token = argmax(scores + Gumbel) in float64; its log p at temperature 1 comes with it
"""

from __future__ import annotations

import torch

from mdlm.kernels import CategoricalSample, categorical_probs, sample_categorical


def draw(logits: torch.Tensor, config, generator=None, statistics: bool = False) -> CategoricalSample:
    """One token per row of `logits` (..., V) with the config's temperature / top-k / top-p, and its log p.
    `statistics` adds the top-1/top-2 log-probabilities and the entropy (the margin and entropy policies)."""
    return sample_categorical(logits, config.temperature, config.top_k, config.top_p, generator=generator,
                              statistics=statistics)


def draw_probs(logits: torch.Tensor, config) -> torch.Tensor:
    """(..., V) float64: the distribution `draw` samples from (what speculative acceptance compares)."""
    return categorical_probs(logits, config.temperature, config.top_k, config.top_p)


def sample_from_probs(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One exact float64 draw per row of `probs` (..., V) (speculative residual and acceptance draws)."""
    logits = torch.where(probs > 0, probs.log(), torch.full_like(probs, float("-inf")))  # log 0 = -inf exactly
    return sample_categorical(logits, temperature=1.0, generator=generator, statistics=False).tokens


def tempered_logprob(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature)[token] per row in float64 (0 at temperature 0: the argmax is
    drawn with probability 1). Rows are (N, V) logits with their (N,) drawn tokens."""
    if temperature == 0:
        return torch.zeros(tokens.shape, dtype=torch.float64, device=tokens.device)
    scaled = logits.double() / temperature  # (N, V)
    return scaled.gather(-1, tokens[:, None])[:, 0] - torch.logsumexp(scaled, -1)


def model_logprob(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under softmax(logits) in float64, for logits (..., V) and tokens (...)."""
    return torch.log_softmax(logits.double(), -1).gather(-1, tokens[..., None])[..., 0]


def reveal_tokens(x, reveal, logits, config, generator, recorder):
    """Draw the tokens at the `reveal` (B, L) positions of x (B, L) from their logits (B, L, V), record
    the step and return the new canvas."""
    return reveal_drawn(x, reveal, logits[reveal], config, generator, recorder)


def reveal_drawn(x, reveal, revealed_logits, config, generator, recorder):
    """`reveal_tokens` given only the logits (N, V) of the N revealed positions, in row-major order of
    `reveal` (what a network call with `at=` those positions returns)."""
    sample = draw(revealed_logits, config, generator)  # (N,) for the N revealed positions
    logprob = torch.zeros(x.shape, dtype=torch.float64, device=x.device)  # (B, L)
    logprob[reveal] = sample.logprob
    recorder.record(x, reveal, logprob)
    x = x.clone()
    x[reveal] = sample.tokens
    return x
