"""Position choice ("remasking" in LLaDA's terms): which of the predicted tokens a step commits.

Each policy turns the step's draw into a score in [0, 1]; the step commits the highest scores.
- random: uniform scores (LLaDA's "random" remasking).
- low-confidence (LLaDA): p(x0_i) of the drawn token under the model (never the Gumbel-noised score).
- margin: p(top1) - p(top2). entropy: exp(-H(p_i)), so confident rows score high.
- threshold (Fast-dLLM, Wu et al. 2025): commit every position whose confidence is >= tau, at least one.
- rcr (MDPO, running confidence remasking): uses the confidence too; the confidence sampler fills every
  masked position and remasks the lowest running confidences (see decode/confidence.py).
"""

from __future__ import annotations

import torch

from mdlm.kernels import CategoricalSample

# The policies that rank by more of the distribution than the drawn token's probability (the draw computes
# those statistics only when asked).
STATISTICS_POLICIES = ("margin", "entropy")


def position_scores(policy: str, sample: CategoricalSample, generator: torch.Generator | None = None):
    """Scores (N,) float64 in [0, 1] for N drawn positions; higher = commit earlier."""
    if policy == "random":
        return torch.rand(sample.tokens.shape, generator=generator, dtype=torch.float64).to(sample.tokens.device)
    if policy in ("low-confidence", "threshold", "rcr"):
        return sample.logprob.exp()
    if policy == "margin":
        return sample.top1_logprob.exp() - sample.top2_logprob.exp()
    if policy == "entropy":
        return torch.exp(-sample.entropy)
    raise ValueError(f"unknown remasking policy {policy!r}")


def select_top(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: per row the `counts[b]` highest finite scores (-inf marks non-candidates)."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device)
                                             .expand_as(order))
    return (ranks < counts[:, None]) & torch.isfinite(scores)


def select_above_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fast-dLLM: every candidate with score >= threshold, and each row's best one in any case."""
    candidates = torch.isfinite(scores)
    chosen = (scores >= threshold) & candidates
    best = select_top(scores, candidates.any(-1).long())
    return chosen | best
