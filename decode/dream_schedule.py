"""Dream's unmasking schedule (Ye et al. 2025, "Dream 7B"; `DreamGenerationMixin._sample` of the published
generation_utils.py), as the step counts of the confidence decoder.

    timesteps = linspace(1, eps, steps + 1)                      (float32, eps = 1e-3)
    for i in 0..steps-1:  t, s = timesteps[i], timesteps[i + 1]
        n = number of tokens still masked
        reveal int(n * (1 - s / t)) tokens, all n at the last step

A step can reveal nothing (the floor of a small fraction); Dream still runs the model there, which at
any temperature changes no token, so the decoder skips that call. The Dream family's profile makes it
the default (`FamilyProfile.schedule`), so `mdlm-generate --model <Dream>` with Dream's --steps reveals
what `diffusion_generate(steps=...)` reveals.
"""

from __future__ import annotations

import torch

DREAM_EPS = 1e-3


def dream_counts(m: int, steps: int, eps: float = DREAM_EPS) -> list[int]:
    """Tokens revealed at each of `steps` steps for m masked tokens; sums to m."""
    timesteps = torch.linspace(1, eps, steps + 1)  # float32, as Dream computes it
    counts, left = [], m
    for i in range(steps):
        if i == steps - 1:
            n = left
        else:  # Dream's float32 arithmetic, so that the floor lands where its does
            n = int(torch.tensor(float(left)) * (1 - timesteps[i + 1] / timesteps[i]))
        counts.append(n)
        left -= n
    return counts
