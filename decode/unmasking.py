"""Unmasking schedules: how many tokens each denoising step reveals (`DecodeConfig.unmasking_schedule`;
not the masking schedule alpha_t of training and of the ancestral sampler, which is `mdlm.schedules`).

- uniform (LLaDA): n_s = floor(m / S) + [s < m mod S].
- cosine (MaskGIT): after step s a fraction cos(pi/2 * (s+1)/S) of the m tokens is still masked, so
  early steps reveal few tokens and late steps many.
- ascending step size, ASS ("Taming Masked Diffusion Language Models via Consistency Trajectory
  Reinforcement Learning with Fewer Decoding Step", Yang et al. 2025): S = floor(log2 m) steps, step i
  reveals 2^i tokens and the last one the rest, m - (2^(S-1) - 1) (m = 256: 1, 2, 4, ..., 64, 129).
  With K blocks the steps are shared out: the last K-1 steps are one block each (the last block holds
  2^(S-1) + 1 tokens plus what exceeds 2^S, the ones before 2^(S-2), 2^(S-3), ...) and the first block
  takes the remainder with the first S-K+1 steps.
- EOSER (same paper): the confidence of a drawn EOS is scaled by gamma, rising to 1 over the steps:
  gamma = g_min + (1 - g_min) i/(T-1) (g_min = 0.4) for step counts of the uniform kind, and
  gamma = g_min + (1 - g_min) (2^(i+1) - 1)/2^S (g_min = 0.01) with ASS.
"""

from __future__ import annotations

import math


def uniform_counts(m: int, steps: int) -> list[int]:
    base, extra = divmod(m, steps)
    return [base + (s < extra) for s in range(steps)]


def cosine_counts(m: int, steps: int) -> list[int]:
    """When m >= steps every step reveals at least one token (rounding the cosine could leave a step
    empty, which would skip its network call and silently run fewer steps than asked)."""
    still_masked = [round(m * math.cos(0.5 * math.pi * (s + 1) / steps)) for s in range(steps)]
    still_masked[-1] = 0
    counts, before = [], m
    for s, after in enumerate(still_masked):
        after = min(after, before - 1) if m >= steps else min(after, before)
        if m >= steps:
            after = max(after, steps - s - 1)
        counts.append(before - after)
        before = after
    return counts


def ascending_num_steps(m: int) -> int:
    return max(1, int(math.floor(math.log2(m)))) if m > 0 else 1


def ascending_counts(m: int) -> list[int]:
    """ASS: 1, 2, 4, ..., 2^(S-2), then m - (2^(S-1) - 1); S = floor(log2 m) steps."""
    if m <= 0:
        return [0]
    steps = ascending_num_steps(m)
    return [2 ** i for i in range(steps - 1)] + [m - (2 ** (steps - 1) - 1)]


def ascending_blocks(m: int, num_blocks: int) -> list[list[int]]:
    """ASS over K blocks: per block, its step counts (the blocks' sizes are their sums).

    The global sequence of steps (1, 2, 4, ..., last) is kept; the last K-1 steps become one block each
    and the first block takes every earlier step."""
    counts = ascending_counts(m)
    num_blocks = max(1, min(num_blocks, len(counts)))
    split = len(counts) - (num_blocks - 1)
    return [counts[:split]] + [[c] for c in counts[split:]]


def step_counts(schedule: str, m: int, steps: int) -> list[int]:
    """Tokens revealed per step for m masked tokens; sums to m exactly."""
    if schedule == "uniform":
        return uniform_counts(m, steps)
    if schedule == "cosine":
        return cosine_counts(m, steps)
    if schedule == "ascending":
        return ascending_counts(m)
    if schedule == "dream":
        from mdlm.decode.dream_schedule import dream_counts

        return dream_counts(m, steps)
    raise ValueError(f"unknown unmasking schedule {schedule!r}; choose uniform, cosine, ascending or dream")


def eoser_gamma(step: int, total_steps: int, schedule: str, gamma_min: float | None = None) -> float:
    """EOSER's factor on the confidence of a drawn EOS at (global) step `step` of `total_steps`."""
    if schedule == "ascending":
        g = 0.01 if gamma_min is None else gamma_min
        return g + (1 - g) * (2 ** (step + 1) - 1) / 2 ** total_steps
    g = 0.4 if gamma_min is None else gamma_min
    if total_steps <= 1:
        return 1.0
    return g + (1 - g) * min(step, total_steps - 1) / (total_steps - 1)
