"""Remasking policies ("remasking" in LLaDA's terms): which of a step's drawn tokens the step commits.

Each policy is an object the block loop (`mdlm.decode.confidence`) calls twice per step:
`scores(sample)` turns the step's draw into a score per drawn position (higher = commit earlier), and
`commit(...)` decides from the scores what becomes a token, what stays masked and what goes back to the
mask. Policies differ only in data (their score and their selection rule), never in the loop.
- random: uniform scores (LLaDA's "random" remasking).
- low-confidence (LLaDA): p(x0_i) of the drawn token under the model (never the Gumbel-noised score).
- margin: p(top1) - p(top2). entropy: exp(-H(p_i)), so confident positions score high.
  These four commit the n_s highest scores, n_s from the unmasking schedule.
- threshold (Fast-dLLM, Wu et al. 2025): commit every position whose confidence is >= tau, at least one;
  it sets its own number of steps.
- rcr (MDPO, He et al. 2025, running confidence remasking): fill every masked position of the block, then
  send the lowest running confidences back to the mask so that the schedule's cumulative count stays.
- entropy-bound (EB sampler; Ben-Hamu, Gat, Severo, Nolte, Karrer 2025, "Accelerated Sampling from Masked
  Diffusion Models via Entropy Bounded Unmasking", arXiv 2505.24857): sort the block's masked positions
  by entropy, ascending, and commit the longest prefix whose summed entropy minus its largest entropy is
  <= gamma (`DecodeConfig.entropy_bound`), at least one; it sets its own number of steps. Summed minus
  largest entropy bounds the dependence the parallel draw ignores, so nearly independent tokens go together.
  The entropies are those of the model's distribution (temperature 1), as for the "entropy" policy; with
  gamma = 0 one token per step, the lowest-entropy one: the "entropy" policy at one token per step.
"""

from __future__ import annotations

import torch

from mdlm.kernels import CategoricalSample


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


def select_entropy_bounded(scores: torch.Tensor, bound: float) -> torch.Tensor:
    """EB sampler: scores (B, L) are exp(-H_i) of the candidates (-inf elsewhere). Per row, with the
    candidates sorted by entropy ascending (scores descending, ties in column order as `select_top`),
    the longest prefix k with sum_{j<=k} H_j - max_{j<=k} H_j <= bound; at least one candidate."""
    sorted_scores = scores.sort(dim=-1, descending=True, stable=True).values
    entropy = torch.where(torch.isfinite(sorted_scores), -torch.log(sorted_scores),
                          torch.tensor(float("inf"), dtype=sorted_scores.dtype, device=scores.device))
    # Ascending entropies: the largest of a prefix is its last one. An infinite entry (no candidate) makes
    # inf - inf = nan, which is never <= bound, and the sums only grow, so the count is the prefix length.
    within_bound = torch.cumsum(entropy, dim=-1) - entropy <= bound
    counts = within_bound.sum(-1).clamp_min(1)
    return select_top(scores, counts)


def model_confidence(sample: CategoricalSample, generator=None) -> torch.Tensor:
    return sample.logprob.exp()


def uniform_scores(sample: CategoricalSample, generator=None) -> torch.Tensor:
    return torch.rand(sample.tokens.shape, generator=generator, dtype=torch.float64).to(sample.tokens.device)


def top_two_margin(sample: CategoricalSample, generator=None) -> torch.Tensor:
    return sample.top1_logprob.exp() - sample.top2_logprob.exp()


def negative_entropy(sample: CategoricalSample, generator=None) -> torch.Tensor:
    return torch.exp(-sample.entropy)


class RemaskingPolicy:
    """Commit the schedule's n_s highest scores of the step (LLaDA's rule).

    score: (sample, generator) -> (N,) float64 in [0, 1]. needs_statistics: the score reads the top-2
    log-probabilities or the entropy (the draw computes them only when asked). sets_own_steps: the policy
    decides how many tokens a step reveals, the unmasking schedule's counts do not apply."""

    needs_statistics = False
    sets_own_steps = False

    def __init__(self, name: str, score, needs_statistics: bool = False):
        self.name, self.score, self.needs_statistics = name, score, needs_statistics

    def start_block(self, x: torch.Tensor) -> None:
        """Called before the first step of each block (policies with per-block state reset it)."""

    def scores(self, sample: CategoricalSample, generator=None) -> torch.Tensor:
        return self.score(sample, generator)

    def commit(self, x, x0, masked, score, block, step: int, mask_id: int):
        """-> (tokens after the step, revealed (B, L), remasked (B, L) or None). `score` (B, L) is -inf
        outside `masked`; `block.counts[:, step]` is what the schedule reveals at this step."""
        chosen = self.select(score, block.counts[:, step] if not self.sets_own_steps else None)
        return torch.where(chosen, x0, x), chosen, None

    def select(self, score, count):
        return select_top(score, count)


class ThresholdPolicy(RemaskingPolicy):
    """Fast-dLLM: commit every masked position with confidence >= threshold, at least one per step."""

    sets_own_steps = True

    def __init__(self, threshold: float):
        super().__init__("threshold", model_confidence)
        self.threshold = threshold

    def select(self, score, count):
        return select_above_threshold(score, self.threshold)


class EntropyBoundPolicy(RemaskingPolicy):
    """EB sampler: commit the lowest-entropy positions while summed minus largest entropy <= bound."""

    sets_own_steps = True

    def __init__(self, bound: float):
        super().__init__("entropy-bound", negative_entropy, needs_statistics=True)
        self.bound = bound

    def select(self, score, count):
        return select_entropy_bounded(score, self.bound)


class RunningConfidencePolicy(RemaskingPolicy):
    """MDPO RCR: fill every masked position, then remask the lowest running confidences so that exactly
    the schedule's cumulative count stays revealed (nothing is remasked at the last step)."""

    def __init__(self):
        super().__init__("rcr", model_confidence)
        self.running_confidence = None

    def start_block(self, x):
        self.running_confidence = torch.zeros(x.shape, dtype=torch.float64, device=x.device)

    def commit(self, x, x0, masked, score, block, step: int, mask_id: int):
        self.running_confidence[masked] = score[masked]
        filled = torch.where(masked, x0, x)
        still_to_reveal = block.counts[:, step + 1:].sum(-1)
        candidates = torch.where(block.members, -self.running_confidence,
                                 torch.tensor(float("-inf"), dtype=torch.float64, device=x.device))
        remask = select_top(candidates, still_to_reveal)
        revealed = masked & ~remask
        remasked = ~masked & remask
        return filled.masked_fill(remask, mask_id), revealed, remasked


DEFAULT_ENTROPY_BOUND = 0.1  # nats; the paper's and DiffusionGemma's usual gamma

# name -> the policy of a DecodeConfig; adding a policy is one entry here (DecodeConfig and the CLI read the names).
POLICIES = {
    "random": lambda config: RemaskingPolicy("random", uniform_scores),
    "low-confidence": lambda config: RemaskingPolicy("low-confidence", model_confidence),
    "margin": lambda config: RemaskingPolicy("margin", top_two_margin, needs_statistics=True),
    "entropy": lambda config: RemaskingPolicy("entropy", negative_entropy, needs_statistics=True),
    "threshold": lambda config: ThresholdPolicy(config.threshold),
    "rcr": lambda config: RunningConfidencePolicy(),
    "entropy-bound": lambda config: EntropyBoundPolicy(DEFAULT_ENTROPY_BOUND if config.entropy_bound is None
                                                       else config.entropy_bound),
}


def remasking_policy(config) -> RemaskingPolicy:
    """The policy object of `config.remasking` (a fresh one per decoding run: RCR keeps per-block state)."""
    if config.remasking not in POLICIES:
        raise ValueError(f"unknown remasking policy {config.remasking!r}; choose one of {', '.join(POLICIES)}")
    return POLICIES[config.remasking](config)
